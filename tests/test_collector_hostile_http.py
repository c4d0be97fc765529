"""The OTLP receiver under hostile framing: gzip members and what follows them, idle and stalled bodies, repeated
Content-Length, the auth scheme's case and ``Expect: 100-continue``. Each request is stored whole and answered
200, or refused with a 4xx/5xx that says why; never 200 with spans left out."""

from __future__ import annotations

import gzip
import json
import random
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from faults.otlp import make_batch, post
from faults.payloads import gzip_bomb
from test_collector_support import collector_config, rows

from collector.service import Collector

MAX_REQUEST = 16 * 1024 * 1024


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    with Collector(collector_config(tmp_path / "ledger.duckdb", collector={"read_timeout_s": 1.0})) as c:
        yield c


def _stored_ids(collector: Collector) -> list[str]:
    return sorted(r[0] for r in rows(collector, "SELECT span_id FROM attempts UNION ALL SELECT span_id FROM tasks"))


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _raw_request(url: str, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes as they are; the status and the answer's body. The collector closes these connections."""
    with socket.create_connection(_address(url), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        return _read_answer(sock)


def _read_answer(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _head(length: int | str, *extra: str, content_type: str = "application/x-protobuf") -> str:
    lines = ["POST /v1/traces HTTP/1.1", "Host: collector", f"Content-Type: {content_type}"]
    lines += [f"Content-Length: {length}", *extra]
    return "\r\n".join(lines) + "\r\n\r\n"


# --- gzip --------------------------------------------------------------------------------------------------------


def test_every_member_of_a_multi_member_gzip_body_is_stored(collector: Collector) -> None:
    rng = random.Random(21)
    first, second = make_batch(rng, 2), make_batch(rng, 3)
    body = gzip.compress(first.body) + gzip.compress(second.body)  # RFC 1952 §2.2: a file is a series of members
    answer = post(f"{collector.otlp_url}/v1/traces", body, headers={"Content-Encoding": "gzip"})
    assert answer.status == 200
    assert _stored_ids(collector) == sorted(first.span_ids + second.span_ids)


def test_a_multi_member_json_body_that_is_not_one_document_is_refused_whole(collector: Collector) -> None:
    document = json.dumps({"resourceSpans": []}).encode()
    body = gzip.compress(document) + gzip.compress(document)
    answer = post(
        f"{collector.otlp_url}/v1/traces", body, content_type="application/json", headers={"Content-Encoding": "gzip"}
    )
    assert answer.status == 400 and "not valid JSON" in json.loads(answer.body)["message"]


@pytest.mark.parametrize("trailer", [b"garbage", b"\x00" * 8, b"\x1f"])
def test_bytes_after_the_last_gzip_member_are_refused_and_nothing_is_stored(
    collector: Collector, trailer: bytes
) -> None:
    batch = make_batch(random.Random(22), 2)
    answer = post(
        f"{collector.otlp_url}/v1/traces", gzip.compress(batch.body) + trailer, headers={"Content-Encoding": "gzip"}
    )
    assert answer.status == 400
    assert answer.body  # a google.rpc.Status saying why
    assert _stored_ids(collector) == []


def test_a_gzip_bomb_split_into_members_is_refused_as_a_whole(collector: Collector) -> None:
    quarter = gzip_bomb(MAX_REQUEST // 4 + (1 << 20))  # each member alone is under the limit, together over it
    answer = post(f"{collector.otlp_url}/v1/traces", quarter * 4, headers={"Content-Encoding": "gzip"})
    assert answer.status == 413 and b"after gzip" in answer.body


# --- framing and auth ------------------------------------------------------------------------------------------------


def test_duplicate_content_length_headers_are_refused(collector: Collector) -> None:
    batch = make_batch(random.Random(23), 1)
    length = len(batch.body)
    status, _ = _raw_request(collector.otlp_url, _head(length, f"Content-Length: {length}"), batch.body + batch.body)
    assert status == 400
    status, _ = _raw_request(collector.otlp_url, _head("+12"), batch.body)
    assert status == 411
    assert _stored_ids(collector) == []


@pytest.fixture
def guarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    monkeypatch.setenv("COSTLINE_INGEST_TOKEN", "tok-123")
    with Collector(collector_config(tmp_path / "ledger.duckdb")) as c:
        yield c


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_matched_case_insensitively(guarded: Collector, scheme: str) -> None:
    batch = make_batch(random.Random(24), 1)
    answer = post(f"{guarded.otlp_url}/v1/traces", batch.body, headers={"Authorization": f"{scheme} tok-123"})
    assert answer.status == 200
    wrong = post(f"{guarded.otlp_url}/v1/traces", batch.body, headers={"Authorization": f"{scheme} tok-124"})
    assert wrong.status == 401


def _expect_continue(url: str, head: str) -> bytes:
    """Send headers with Expect: 100-continue and no body; what the collector says before any body is sent."""
    with socket.create_connection(_address(url), timeout=30) as sock:
        sock.sendall(head.encode())
        return sock.recv(65536)


@pytest.mark.parametrize(
    ("extra", "content_type", "status"),
    [
        (("Authorization: Bearer wrong",), "application/x-protobuf", b"401"),
        (("Authorization: Bearer tok-123",), "text/plain", b"415"),
        (("Authorization: Bearer tok-123",), "application/x-protobuf", b"100"),
    ],
)
def test_100_continue_comes_only_after_the_auth_and_content_type_checks(
    guarded: Collector, extra: tuple[str, ...], content_type: str, status: bytes
) -> None:
    head = _head(100, "Expect: 100-continue", *extra, content_type=content_type)
    first_line = _expect_continue(guarded.otlp_url, head).split(b"\r\n", 1)[0]
    assert first_line.split(b" ")[1] == status


def test_a_body_sent_after_100_continue_is_stored(guarded: Collector) -> None:
    batch = make_batch(random.Random(25), 2)
    head = _head(len(batch.body), "Expect: 100-continue", "Authorization: Bearer tok-123", "Connection: close")
    with socket.create_connection(_address(guarded.otlp_url), timeout=30) as sock:
        sock.sendall(head.encode())
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100")
        sock.sendall(batch.body)
        status, _ = _read_answer(sock)
    assert status == 200
    assert _stored_ids(guarded) == sorted(batch.span_ids)


# --- idle and stalled bodies -----------------------------------------------------------------------------------------


def _announce(url: str, length: int) -> socket.socket:
    """A connection that announces a body of ``length`` bytes and sends none of it (yet)."""
    sock = socket.create_connection(_address(url), timeout=30)
    sock.sendall(_head(length).encode())
    return sock


def test_idle_connections_announcing_large_bodies_do_not_block_other_posts(tmp_path: Path) -> None:
    config = collector_config(tmp_path / "ledger.duckdb", collector={"read_timeout_s": 600.0})
    with Collector(config) as collector, ExitStack() as idle:
        for _ in range(4):  # 4 x 16 MiB promised: the whole 64 MiB in-flight budget, had promises counted
            idle.enter_context(_announce(collector.otlp_url, MAX_REQUEST))
        batch = make_batch(random.Random(26), 2)
        answer = post(f"{collector.otlp_url}/v1/traces", batch.body, timeout=30)
        assert answer.status == 200
        assert _stored_ids(collector) == sorted(batch.span_ids)
        assert collector.ready


def test_a_stalled_body_is_cut_off_after_the_read_timeout_and_frees_its_budget(collector: Collector) -> None:
    batch = make_batch(random.Random(27), 2)
    with _announce(collector.otlp_url, len(batch.body)) as sock:
        sock.sendall(batch.body[:10])  # part of the body, then nothing: the collector gives up on its own
        status, body = _read_answer(sock)
    assert status == 408 and b"no body bytes for" in body
    assert collector.otlp_in_flight_bytes == 0
    assert post(f"{collector.otlp_url}/v1/traces", batch.body).status == 200
    assert _stored_ids(collector) == sorted(batch.span_ids)


def test_a_connection_that_never_sends_its_headers_is_closed(collector: Collector) -> None:
    with socket.create_connection(_address(collector.otlp_url), timeout=30) as sock:
        sock.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n")  # the headers never end
        assert sock.recv(65536) == b""  # closed by the collector, no thread held forever
