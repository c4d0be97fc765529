"""Fuzzing the OTLP decode and mapping (protobuf and JSON) with hypothesis: truncated and random bytes, invalid
UTF-8, gzip bombs and truncated gzip, huge attribute values, absurd token counts, timestamps far away, missing ids.
The decoder raises only DecodeError (→ 400), the mapping never raises, the collector answers 200/400/413/415 and
stays healthy, and no row that reaches the ledger breaks its invariants."""

from __future__ import annotations

import random
import socket
import urllib.request
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

from faults.ledger import stored_span_ids, violations
from faults.metrics import scrape, value
from faults.otlp import make_batch, post
from faults.payloads import (
    NOW_NS,
    gzip_bomb,
    gzipped,
    json_payload,
    protobuf_payload,
    spans_list,
    to_json,
    to_protobuf,
)
from faults.rows import UNFORESEEN, assert_rows_sound
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from collector.mapping import map_spans
from collector.otlp_decode import DecodeError, decode_json, decode_protobuf
from collector.price_cache import FastPricer
from collector.service import Collector
from costline import spans as S
from costline.config import load_config, with_overrides
from costline.pricing import Pricer

FIVE_MINUTES_BEFORE = NOW_NS - 300 * 10**9  # a fixed span time: the live collector stores any time not in the future
FUZZED: Counter[str] = Counter()  # inputs tried, by kind (bench/soak.py reports them)
ALLOWED_STATUSES = {200, 400, 413, 415}


def _config(ledger: Path | None = None):  # type: ignore[no-untyped-def]
    config = load_config(env={})
    if ledger is None:
        return config
    return with_overrides(
        config,
        collector={"otlp_port": 0, "metrics_port": 0, "ledger": str(ledger), "max_request_bytes": 4 * 1024 * 1024},
        router={"usage_db": str(ledger.parent / "usage.sqlite")},
    )


PRICER = FastPricer(Pricer(_config()))


def _decode_and_map(decode: Any, body: bytes) -> None:
    try:
        spans = decode(body)
    except DecodeError:
        return  # → 400
    mapped = map_spans(spans, PRICER, now_ns=NOW_NS)
    assert mapped.span_count + len(mapped.rejected) + mapped.ignored == len(spans)
    assert_rows_sound(mapped, NOW_NS)


def fuzz_decode(examples: int) -> None:
    """Protobuf and JSON bodies (valid, absurd, damaged, random) straight through decode and mapping."""

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=protobuf_payload)
    def protobuf(body: bytes) -> None:
        FUZZED["protobuf decode+map"] += 1
        _decode_and_map(decode_protobuf, body)

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=json_payload)
    def as_json(body: bytes) -> None:
        FUZZED["json decode+map"] += 1
        _decode_and_map(decode_json, body)

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(spans=spans_list)
    def both_agree(spans: list[dict[str, Any]]) -> None:
        """A well-formed request maps the same whichever encoding carried it."""
        FUZZED["protobuf/json agreement"] += 1
        by_protobuf = map_spans(decode_protobuf(to_protobuf(spans)), PRICER, now_ns=NOW_NS)
        by_json = map_spans(decode_json(to_json(spans)), PRICER, now_ns=NOW_NS)
        assert by_protobuf.attempts.to_pylist() == by_json.attempts.to_pylist()
        assert by_protobuf.tasks.to_pylist() == by_json.tasks.to_pylist()
        assert len(by_protobuf.rejected) == len(by_json.rejected)

    protobuf()
    as_json()
    both_agree()


def test_decoding_and_mapping_never_crash_and_never_yield_a_poisoned_row() -> None:
    fuzz_decode(300)


http_payload = st.one_of(
    st.tuples(st.just("application/x-protobuf"), protobuf_payload),
    st.tuples(st.just("application/json"), json_payload),
    st.tuples(st.sampled_from(["text/plain", "", "application/x-protobuf; charset=\xff"]), st.binary(max_size=64)),
)


def fuzz_http(collector: Collector, examples: int) -> Counter[int]:
    """Hostile requests at a live collector; returns the statuses it answered."""
    url = f"{collector.otlp_url}/v1/traces"
    statuses: Counter[int] = Counter()

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(payload=http_payload, encoding=st.sampled_from(["identity", "gzip", "truncated-gzip"]))
    def request(payload: tuple[str, bytes], encoding: str) -> None:
        FUZZED["http requests"] += 1
        content_type, body = payload
        headers = {}
        if encoding != "identity":
            headers["Content-Encoding"] = "gzip"
            body = gzipped(body)
            if encoding == "truncated-gzip":
                body = body[: len(body) // 2]
        answer = post(url, body, content_type=content_type, headers=headers, timeout=60)
        assert answer.status in ALLOWED_STATUSES, (answer.status, answer.body[:300])
        statuses[answer.status] += 1
        if answer.status == 200 and content_type == "application/x-protobuf":
            response = ExportTraceServiceResponse.FromString(answer.body)  # well-formed, partial_success or not
            assert UNFORESEEN not in response.partial_success.error_message, response

    request()
    return statuses


def assert_collector_sound(collector: Collector) -> None:
    """Still healthy, still storing, and nothing poisoned in the ledger."""
    with urllib.request.urlopen(f"{collector.otlp_url}/healthz", timeout=10) as answer:
        assert answer.status == 200
    good = make_batch(random.Random(99), 2)
    assert post(f"{collector.otlp_url}/v1/traces", good.body).status == 200
    con = collector.connection
    try:

        def query(sql: str) -> list[tuple[Any, ...]]:
            return con.execute(sql).fetchall()

        assert violations(query) == {}
        assert set(good.span_ids) <= set(stored_span_ids(query))
    finally:
        con.close()


def test_a_live_collector_answers_hostile_requests_with_4xx_or_partial_success(tmp_path: Path) -> None:
    with Collector(_config(tmp_path / "ledger.duckdb")) as collector:
        statuses = fuzz_http(collector, 150)
        assert_collector_sound(collector)
        metrics = scrape(collector.metrics_url)
    assert statuses[200] and statuses[400], statuses  # both paths were exercised
    assert value(metrics, "costline_ingest_spans_total", result="rejected") > 0


def test_gzip_bombs_huge_bodies_and_truncated_gzip_are_refused(tmp_path: Path) -> None:
    with Collector(_config(tmp_path / "ledger.duckdb")) as collector:
        url = f"{collector.otlp_url}/v1/traces"
        bomb = gzip_bomb(256 * 1024 * 1024)  # 256 MiB of zeros in ~250 KiB
        assert len(bomb) < 1024 * 1024
        answer = post(url, bomb, headers={"Content-Encoding": "gzip"})
        assert answer.status == 413 and b"after gzip" in answer.body
        assert _declared_length_status(collector, 5 * 1024 * 1024) == 413  # refused before any body is read
        good = gzipped(make_batch(random.Random(1), 3).body)
        truncated = post(url, good[:-10], headers={"Content-Encoding": "gzip"})
        assert truncated.status == 400 and b"truncated gzip" in truncated.body
        assert post(url, b"\x1f\x8bnot gzip", headers={"Content-Encoding": "gzip"}).status == 400
        assert post(url, good, headers={"Content-Encoding": "br"}).status == 415
        assert_collector_sound(collector)


def _declared_length_status(collector: Collector, length: int) -> int:
    """Announce a body over the limit and send none: the status line comes back without reading a byte."""
    host, port = collector.otlp_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            f"Content-Length: {length}\r\n\r\n".encode()
        )
        return int(sock.recv(1024).split(b" ", 2)[1])


def test_huge_attribute_values_are_cut_or_rejected_never_stored_whole(tmp_path: Path) -> None:
    span = {
        "trace_id": bytes(range(1, 17)),
        "span_id": bytes(range(1, 9)),
        "parent_span_id": b"",
        "name": "chat qwen3:8b",
        "kind": 3,
        "start": 0,
        "end": 0,
        "status": 1,
    }
    start = FIVE_MINUTES_BEFORE
    big = "y" * (1024 * 1024)
    ok = {
        **span,
        "start": start,
        "end": start + 10**9,
        "attributes": {"gen_ai.provider.name": "ollama", "gen_ai.request.model": "qwen3:8b", "costline.task.id": big},
    }
    bad = {
        **ok,
        "span_id": bytes(range(2, 10)),
        "attributes": {"gen_ai.provider.name": "ollama", "gen_ai.request.model": big},
    }
    with Collector(_config(tmp_path / "ledger.duckdb")) as collector:
        answer = post(f"{collector.otlp_url}/v1/traces", to_protobuf([ok, bad]))
        assert answer.status == 200
        partial = ExportTraceServiceResponse.FromString(answer.body).partial_success
        assert partial.rejected_spans == 1 and "request model longer than 256 characters" in partial.error_message
        con = collector.connection
        try:
            stored = con.execute("SELECT span_id, length(task_id), request_model FROM attempts").fetchall()
        finally:
            con.close()
    assert stored == [(bytes(range(1, 9)).hex(), 1024, "qwen3:8b")]


def test_a_list_or_map_where_a_name_belongs_is_accounted_not_a_dropped_connection(tmp_path: Path) -> None:
    """Found by the fuzzer: an array-valued gen_ai.operation.name used to raise in the mapping (unhashable list),
    so the receiver dropped the connection and the exporter retried a batch that could never succeed."""
    start = FIVE_MINUTES_BEFORE
    base = {"parent_span_id": b"", "name": "chat", "kind": 3, "start": start, "end": start + 10**9, "status": 1}
    spans = [
        {
            **base,
            "trace_id": bytes(range(1, 17)),
            "span_id": bytes([n, 1, 2, 3, 4, 5, 6, 7]),
            "attributes": {
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": "ollama",
                "gen_ai.request.model": "qwen3:8b",
            },
        }
        for n, operation in ((1, ["chat"]), (2, []), (3, "chat"))
    ]
    with Collector(_config(tmp_path / "ledger.duckdb")) as collector:
        url = f"{collector.otlp_url}/v1/traces"
        as_protobuf = post(url, to_protobuf(spans))
        assert as_protobuf.status == 200, as_protobuf.error
        as_json = post(url, to_json(spans), content_type="application/json")
        assert as_json.status == 200, as_json.error
        con = collector.connection
        try:
            stored = con.execute("SELECT span_id FROM attempts ORDER BY span_id").fetchall()
        finally:
            con.close()
    assert [row[0] for row in stored] == [bytes([n, 1, 2, 3, 4, 5, 6, 7]).hex() for n in (1, 2, 3)]


def test_an_absurd_carried_cost_is_dropped_and_the_call_still_accounted(tmp_path: Path) -> None:
    """Found by the fuzzer: gen_ai.usage.cost = 1e30 made Decimal.quantize raise, and the whole span (tokens and
    all) was rejected; a carried cost out of the ledger's range is ignored like any other unusable carried cost."""
    start = FIVE_MINUTES_BEFORE
    spans = [
        {
            "trace_id": bytes(range(1, 17)),
            "span_id": bytes([n, 9, 9, 9, 9, 9, 9, 9]),
            "parent_span_id": b"",
            "name": "chat",
            "kind": 3,
            "start": start,
            "end": start + 10**9,
            "status": 1,
            "attributes": {
                "gen_ai.provider.name": "ollama",
                "gen_ai.request.model": "qwen3:8b",
                "gen_ai.usage.input_tokens": 10,
                "gen_ai.usage.cost": cost,
            },
        }
        for n, cost in ((1, 1e30), (2, "1E+40"), (3, 10**25), (4, 0.25))
    ]
    with Collector(_config(tmp_path / "ledger.duckdb")) as collector:
        answer = post(f"{collector.otlp_url}/v1/traces", to_protobuf(spans))
        assert answer.status == 200
        assert ExportTraceServiceResponse.FromString(answer.body).partial_success.rejected_spans == 0
        con = collector.connection
        try:
            stored = con.execute(
                "SELECT span_id, input_tokens, reported_cost_usd FROM attempts ORDER BY span_id"
            ).fetchall()
        finally:
            con.close()
    ids = [bytes([n, 9, 9, 9, 9, 9, 9, 9]).hex() for n in (1, 2, 3, 4)]
    assert stored == [(ids[0], 10, None), (ids[1], 10, None), (ids[2], 10, None), (ids[3], 10, Decimal("0.25"))]


def test_a_span_is_its_ids_whatever_its_start_time(tmp_path: Path) -> None:
    """Found by the fuzzer, whose examples draw colliding ids against one collector: a span is identified by its
    (trace_id, span_id) alone, so the same ids sent again, with the same or another start time, are stored once; the
    same span id in another trace is another span."""

    def task_span(start: int, trace: int = 1) -> dict[str, Any]:
        return {
            "trace_id": bytes(15) + bytes([trace]),
            "span_id": bytes(7) + b"\x01",
            "parent_span_id": b"",
            "name": "task general",
            "kind": 1,
            "start": start,
            "end": start + 10**9,
            "status": 1,
            "attributes": {S.TASK_ID: "t1", S.TASK_TYPE: "general"},
        }

    with Collector(_config(tmp_path / "ledger.duckdb")) as collector:
        url = f"{collector.otlp_url}/v1/traces"
        for start in (FIVE_MINUTES_BEFORE, FIVE_MINUTES_BEFORE, FIVE_MINUTES_BEFORE - 3_600 * 10**9):
            assert post(url, to_protobuf([task_span(start)])).status == 200
        assert post(url, to_protobuf([task_span(FIVE_MINUTES_BEFORE, trace=2)])).status == 200
        con = collector.connection
        try:
            stored = con.execute("SELECT trace_id, epoch_ns(start_time) FROM tasks ORDER BY trace_id").fetchall()
            assert violations(lambda sql: con.execute(sql).fetchall()) == {}
        finally:
            con.close()
        metrics = scrape(collector.metrics_url)
    assert stored == [(f"{trace:032x}", FIVE_MINUTES_BEFORE) for trace in (1, 2)]
    assert value(metrics, "costline_ingest_spans_total", result="duplicate") == 2
