"""The OTLP/HTTP receiver's protocol edges, the probes, the bearer token, the read-only query endpoint, and
ledger trouble at start."""

from __future__ import annotations

import fcntl
import gzip
import json
import multiprocessing
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from test_collector_support import NOW, SONNET_45, collector_config, rows, sample, samples, scrape

from collector import decode_pool
from collector import ledger as ledger_module
from collector.decode_pool import warm_up
from collector.ledger import LedgerError
from collector.service import Collector
from costline import spans as S

START_NS = int((NOW - timedelta(minutes=5)).timestamp()) * 1_000_000_000
TRACE = "5b8efff798038103d269b633813fc60c"


def _json_span(span_id: str, **attributes: Any) -> dict[str, Any]:
    def value(v: Any) -> dict[str, Any]:
        if isinstance(v, bool):
            return {"boolValue": v}
        if isinstance(v, int):
            return {"intValue": str(v)}  # int64 as a string, as OTLP/JSON says
        if isinstance(v, float):
            return {"doubleValue": v}
        return {"stringValue": v}

    return {
        "traceId": TRACE,
        "spanId": span_id,
        "parentSpanId": "eee19b7ec3c1b174",
        "name": "chat",
        "kind": 3,
        "startTimeUnixNano": str(START_NS),
        "endTimeUnixNano": str(START_NS + 1_250_000_000),
        "attributes": [{"key": k, "value": value(v)} for k, v in attributes.items()],
        "status": {"code": 1},
    }


def _claude(**overrides: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        S.OPERATION_NAME: "chat",
        S.PROVIDER_NAME: "anthropic",
        S.REQUEST_MODEL: SONNET_45,
        S.USAGE_INPUT_TOKENS: 1000,
        S.USAGE_OUTPUT_TOKENS: 500,
        S.USAGE_CACHE_READ_INPUT_TOKENS: 200,
        S.USAGE_CACHE_CREATION_INPUT_TOKENS: 100,
        S.ATTEMPT_TIER: "escalation",
    }
    attributes.update(overrides)
    return {k: v for k, v in attributes.items() if v is not None}


def _json_body(*spans: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-emitter"}}]},
                    "scopeSpans": [{"scope": {"name": "t"}, "spans": list(spans)}],
                }
            ]
        }
    ).encode()


def _post(
    url: str, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": content_type, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def collector(tmp_path: Path):  # type: ignore[no-untyped-def]
    with Collector(collector_config(tmp_path / "ledger.duckdb", collector={"max_request_bytes": 64 * 1024})) as c:
        yield c


def test_json_with_hex_ids_and_string_int64_is_stored_exactly(collector: Collector) -> None:
    status, headers, body = _post(
        f"{collector.otlp_url}/v1/traces", _json_body(_json_span("00f067aa0ba902b7", **_claude())), "application/json"
    )
    assert (status, headers["Content-Type"], json.loads(body)) == (200, "application/json", {})
    assert rows(
        collector,
        "SELECT trace_id, span_id, parent_span_id, input_tokens, output_tokens, cost_usd, duration_s, service_name "
        "FROM attempts",
    ) == [(TRACE, "00f067aa0ba902b7", "eee19b7ec3c1b174", 1000, 500, Decimal("0.010035"), 1.25, "json-emitter")]


def test_gzip_protobuf_is_accepted(collector: Collector) -> None:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id = bytes.fromhex(TRACE), bytes.fromhex("00f067aa0ba902b8")
    span.name, span.start_time_unix_nano, span.end_time_unix_nano = "chat", START_NS, START_NS + 10**9
    for key, value in _claude().items():
        attribute = span.attributes.add(key=key)
        if isinstance(value, int):
            attribute.value.int_value = value
        else:
            attribute.value.string_value = value
    status, headers, body = _post(
        f"{collector.otlp_url}/v1/traces",
        gzip.compress(request.SerializeToString(), mtime=0),
        "application/x-protobuf",
        {"Content-Encoding": "gzip"},
    )
    assert status == 200 and headers["Content-Type"] == "application/x-protobuf"
    assert ExportTraceServiceResponse.FromString(body) == ExportTraceServiceResponse()
    assert rows(collector, "SELECT span_id, cost_usd FROM attempts") == [("00f067aa0ba902b8", Decimal("0.010035"))]


def test_a_body_over_the_limit_after_decompression_is_413(collector: Collector) -> None:
    padding = _claude(**{"gen_ai.response.id": "x" * 100_000})  # 100 kB of attributes, tiny once gzipped
    compressed = gzip.compress(_json_body(_json_span("00f067aa0ba902b9", **padding)), mtime=0)
    assert len(compressed) < 64 * 1024
    status, _, body = _post(
        f"{collector.otlp_url}/v1/traces", compressed, "application/json", {"Content-Encoding": "gzip"}
    )
    assert status == 413
    assert json.loads(body) == {"code": 8, "message": "request larger than 65536 bytes after gzip"}
    assert rows(collector, "SELECT count(*) FROM attempts") == [(0,)]


@pytest.mark.parametrize(
    ("body", "content_type", "encoding", "message"),
    [
        (b"\x0a\xff\xff\xff", "application/x-protobuf", None, "not an OTLP ExportTraceServiceRequest protobuf"),
        (b'{"resourceSpans": [', "application/json", None, "not valid JSON"),
        (b'{"resourceSpans": {"a": 1}}', "application/json", None, "resourceSpans must be a JSON array"),
        (gzip.compress(b"{}", mtime=0)[:-6], "application/json", "gzip", "truncated gzip body"),  # same bytes, same id
        (b"not gzip at all", "application/json", "gzip", "malformed gzip body"),
    ],
)
def test_malformed_input_is_400_with_a_status_body(
    collector: Collector, body: bytes, content_type: str, encoding: str | None, message: str
) -> None:
    headers = {"Content-Encoding": encoding} if encoding else {}
    status, response_headers, response = _post(f"{collector.otlp_url}/v1/traces", body, content_type, headers)
    assert status == 400
    if content_type == "application/json":
        decoded = json.loads(response)
        code, text = decoded["code"], decoded["message"]
    else:
        parsed = status_pb2.Status.FromString(response)
        code, text = parsed.code, parsed.message
    assert response_headers["Content-Type"] == content_type
    assert code == 3 and text.startswith(message)


def test_other_content_types_are_415(collector: Collector) -> None:
    status, _, body = _post(f"{collector.otlp_url}/v1/traces", b"hello", "text/plain")
    assert status == 415
    assert body.startswith(b"unsupported Content-Type 'text/plain'")


def test_unaccountable_genai_spans_are_a_partial_success(collector: Collector) -> None:
    spans = [
        _json_span("00000000000000a1", **_claude()),
        _json_span("00000000000000a2", **_claude(**{S.REQUEST_MODEL: None})),  # spend without a model: unpriced
        _json_span("00000000000000a3", **_claude(**{S.USAGE_INPUT_TOKENS: -5})),
        # Cache above the input of an emitter nobody knows: only the exclusive reading is possible, so it is taken.
        _json_span("00000000000000a4", **_claude(**{S.USAGE_CACHE_READ_INPUT_TOKENS: 5000})),
        _json_span("00000000000000a5", **{"http.route": "/health"}),  # not GenAI: ignored, not rejected
    ]
    status, _, body = _post(f"{collector.otlp_url}/v1/traces", _json_body(*spans), "application/json")
    assert status == 200
    assert json.loads(body) == {
        "partialSuccess": {
            "rejectedSpans": "1",
            "errorMessage": "1 GenAI span(s) rejected: negative gen_ai.usage.input_tokens (span 00000000000000a3)",
        }
    }
    assert rows(
        collector, "SELECT span_id, input_tokens, cost_usd IS NULL, price_source FROM attempts ORDER BY span_id"
    ) == [
        ("00000000000000a1", 1000, False, "genai-prices"),
        ("00000000000000a2", 1000, True, "unpriced"),
        ("00000000000000a4", 6100, False, "genai-prices"),
    ]
    values = samples(scrape(collector))
    assert sample(values, "costline_ingest_spans_total", result="rejected") == 1
    assert sample(values, "costline_ingest_spans_total", result="stored") == 3


def _stall_ledger_writes(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Each ledger write waits for ``release``; ``entered`` is set once one has started."""
    release, entered = threading.Event(), threading.Event()
    original = ledger_module.LedgerWriter.write

    def slow_write(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        entered.set()
        assert release.wait(10)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ledger_module.LedgerWriter, "write", slow_write)
    return release, entered


def test_a_full_queue_answers_503_with_retry_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release, entered = _stall_ledger_writes(monkeypatch)
    config = collector_config(tmp_path / "ledger.duckdb", collector={"max_queued_spans": 1})
    with Collector(config) as collector:
        url = f"{collector.otlp_url}/v1/traces"
        first: list[int] = []
        sender = threading.Thread(
            target=lambda: first.append(
                _post(url, _json_body(_json_span("00000000000000b1", **_claude())), "application/json")[0]
            )
        )
        sender.start()
        assert entered.wait(10)  # the first request is being committed and still counts against the queue
        status, headers, body = _post(url, _json_body(_json_span("00000000000000b2", **_claude())), "application/json")
        release.set()
        sender.join(10)
        assert status == 503 and int(headers["Retry-After"]) >= 1
        assert json.loads(body)["message"].startswith("ingest queue is full; retry in")
        assert first == [200]
        assert rows(collector, "SELECT span_id FROM attempts") == [("00000000000000b1",)]


def test_the_bearer_token_guards_ingest_and_queries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSTLINE_INGEST_TOKEN", "s3cret-token")
    with Collector(collector_config(tmp_path / "ledger.duckdb")) as collector:
        url, body = f"{collector.otlp_url}/v1/traces", _json_body(_json_span("00000000000000c1", **_claude()))
        denied = _post(url, body, "application/json", {"Authorization": "Bearer wrong"})
        missing = _post(url, body, "application/json")
        allowed = _post(url, body, "application/json", {"Authorization": "Bearer s3cret-token"})
        query = json.dumps({"sql": "SELECT 1"}).encode()
        query_denied = _post(f"{collector.metrics_url}/api/v1/query", query, "application/json")
        query_allowed = _post(
            f"{collector.metrics_url}/api/v1/query", query, "application/json", {"Authorization": "Bearer s3cret-token"}
        )
        page = scrape(collector)
    assert (denied[0], missing[0], allowed[0]) == (401, 401, 200)
    assert json.loads(denied[2]) == {"code": 16, "message": "missing or wrong bearer token"}
    assert (query_denied[0], query_allowed[0]) == (401, 200)
    assert "s3cret" not in page and b"s3cret" not in denied[2] + query_denied[2]


def test_probes(collector: Collector) -> None:
    for base in (collector.otlp_url, collector.metrics_url):
        for path, expected in (("/healthz", b"ok\n"), ("/readyz", b"ready\n")):
            with urllib.request.urlopen(f"{base}{path}", timeout=5) as response:
                assert (response.status, response.read()) == (200, expected)


def _query(collector: Collector, sql: str, params: list[Any] | None = None) -> tuple[int, Any]:
    status, headers, body = _post(
        f"{collector.metrics_url}/api/v1/query",
        json.dumps({"sql": sql, "params": params or []}).encode(),
        "application/json",
    )
    if status == 200:
        assert headers["Content-Type"] == "application/vnd.apache.arrow.stream"
        return status, pa.ipc.open_stream(body).read_all().to_pylist()
    return status, json.loads(body)


def test_the_query_endpoint_answers_selects_in_arrow(collector: Collector) -> None:
    _post(
        f"{collector.otlp_url}/v1/traces", _json_body(_json_span("00000000000000d1", **_claude())), "application/json"
    )
    assert _query(collector, "SELECT span_id, cost_usd FROM attempts WHERE request_model = ?", [SONNET_45]) == (
        200,
        [{"span_id": "00000000000000d1", "cost_usd": Decimal("0.010035")}],
    )
    assert _query(collector, "SELECT model, attempts FROM model_cost")[0] == 200
    status, error = _query(collector, "SELECT * FROM no_such_table")
    assert status == 400 and "no_such_table" in error["error"]


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM attempts",
        "INSERT INTO tasks SELECT * FROM tasks",
        "DROP TABLE attempts",
        "WITH gone AS (DELETE FROM attempts RETURNING *) SELECT count(*) FROM gone",
        "WITH x AS (UPDATE attempts SET cost_usd = 0 RETURNING *) SELECT 1",
        "SELECT 1; DELETE FROM attempts",
        "COPY attempts TO '/tmp/leak.csv'",
        "ATTACH '/tmp/other.duckdb' AS other",
        "SET memory_limit = '1GB'",
        "CHECKPOINT",
        "SELECT * FROM checkpoint()",
    ],
)
def test_the_query_endpoint_refuses_writes(collector: Collector, sql: str) -> None:
    _post(
        f"{collector.otlp_url}/v1/traces", _json_body(_json_span("00000000000000e1", **_claude())), "application/json"
    )
    status, error = _query(collector, sql)
    assert status == 400 and error["error"].startswith("only read-only queries are allowed")
    assert rows(collector, "SELECT count(*), sum(cost_usd) FROM attempts") == [(1, Decimal("0.010035"))]


def test_the_query_endpoint_cannot_read_files(collector: Collector, tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    status, error = _query(collector, f"SELECT * FROM read_csv('{secret}')")
    assert status == 400 and "disabled by configuration" in error["error"]


def _hold_ledger(path: str, ready: Any, release: Any) -> None:
    import duckdb

    con = duckdb.connect(path)
    ready.set()
    release.wait(30)
    con.close()


def test_a_ledger_locked_by_another_process_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.duckdb"
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_ledger, args=(str(path), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(LedgerError, match=r"is in use by another process \(is another `costline serve` running"):
            Collector(collector_config(path))
    finally:
        release.set()
        holder.join(30)


def test_a_corrupt_ledger_is_a_clear_error_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "ledger.duckdb"
    garbage = b"this is not a database" * 500
    path.write_bytes(garbage)
    with pytest.raises(LedgerError, match="exists but cannot be opened as a DuckDB database"):
        Collector(collector_config(path))
    assert path.read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.duckdb"]


def test_worker_processes_decode_large_requests(tmp_path: Path) -> None:
    config = collector_config(tmp_path / "ledger.duckdb", collector={"decode_workers": 1})
    with Collector(config) as collector:
        collector.decoder.pool_min_bytes = 0  # every request goes to the worker process once it is up
        collector.decoder.start()
        assert collector.decoder.wait_ready(120)
        url = f"{collector.otlp_url}/v1/traces"
        spans = [_json_span(f"00000000000001{i:02x}", **_claude()) for i in range(40)]
        ok = _post(url, _json_body(*spans), "application/json")
        negative = _json_span("0000000000000201", **_claude(**{S.USAGE_OUTPUT_TOKENS: -1}))
        partial = _post(url, _json_body(negative), "application/json")
        malformed = _post(url, b"\x0a\xff\xff\xff", "application/x-protobuf")
        stored = rows(collector, "SELECT count(*), sum(cost_usd) FROM attempts")
    assert ok[0] == 200 and json.loads(ok[2]) == {}
    assert json.loads(partial[2])["partialSuccess"]["rejectedSpans"] == "1"
    assert malformed[0] == 400
    assert status_pb2.Status.FromString(malformed[2]).message.startswith("not an OTLP ExportTraceServiceRequest")
    assert stored == [(40, Decimal("0.010035") * 40)]


def test_a_port_in_use_fails_start_and_releases_the_ledger(tmp_path: Path) -> None:
    config = collector_config(tmp_path / "ledger.duckdb")
    with Collector(config) as first:
        port = int(first.otlp_url.rsplit(":", 1)[1])
        clash = collector_config(tmp_path / "other.duckdb", collector={"otlp_port": port})
        with pytest.raises(OSError), Collector(clash):
            pass
    probe = "import duckdb, sys; duckdb.connect(sys.argv[1]).close()"  # another process can take the file
    subprocess.run([sys.executable, "-c", probe, str(tmp_path / "other.duckdb")], check=True, timeout=60)


def test_too_many_bodies_in_flight_answer_503_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release, entered = _stall_ledger_writes(monkeypatch)
    body = _json_body(_json_span("00000000000000f1", **_claude()))
    monkeypatch.setattr("collector.service.MAX_IN_FLIGHT_BYTES", 1)  # the bound: one body, not two
    config = collector_config(tmp_path / "ledger.duckdb", collector={"max_request_bytes": len(body) + 10})
    with Collector(config) as collector:
        url = f"{collector.otlp_url}/v1/traces"
        first: list[int] = []
        sender = threading.Thread(target=lambda: first.append(_post(url, body, "application/json")[0]))
        sender.start()
        assert entered.wait(10)
        second = _json_body(_json_span("00000000000000f2", **_claude()))
        status, headers, answer = _post(url, second, "application/json")
        release.set()
        sender.join(10)
        again = _post(url, second, "application/json")
        stored = rows(collector, "SELECT span_id FROM attempts ORDER BY span_id")
    assert (status, headers["Retry-After"]) == (503, "1")
    assert json.loads(answer)["message"] == "the collector is busy decoding other requests; retry shortly"
    assert first == [200] and again[0] == 200
    assert stored == [("00000000000000f1",), ("00000000000000f2",)]


def test_the_start_up_warm_up_prices_every_configured_model_and_stores_nothing(tmp_path: Path) -> None:
    config = collector_config(tmp_path / "ledger.duckdb")
    with Collector(config) as collector:
        warm = warm_up(config, collector._pricer)
        stored = rows(collector, "SELECT (SELECT count(*) FROM attempts) + (SELECT count(*) FROM tasks)")
        attempts = sample(samples(scrape(collector)), "costline_ingest_spans_total", result="stored")
    assert warm.rejected == []
    assert warm.attempts.column("request_model").to_pylist() == [*config.router.models, config.escalation.model]
    assert None not in warm.attempts.column("cost_usd").to_pylist()  # each model's prices were found and loaded
    assert stored == [(0,)] and attempts == 0


def test_a_warming_collector_is_ready_only_once_its_decode_workers_are(tmp_path: Path) -> None:
    config = collector_config(tmp_path / "ledger.duckdb", collector={"decode_workers": 1})
    with Collector(config) as collector:
        collector.decoder.start()  # as `costline serve` does
        answers = []
        for _ in range(1200):
            try:
                with urllib.request.urlopen(f"{collector.otlp_url}/readyz", timeout=5) as response:
                    answers.append(response.status)
                    break
            except urllib.error.HTTPError as exc:
                answers.append(exc.code)
            threading.Event().wait(0.1)
        workers_up = collector.decoder.wait_ready(0)
    assert answers[-1] == 200 and set(answers[:-1]) <= {503}
    assert workers_up  # ready means the first large request already goes to a worker


def test_the_decoder_pool_pipes_hold_a_whole_request(tmp_path: Path) -> None:
    """Small pipes stall a worker on its own output until the collector reads it (bench/README.md)."""
    get_size = getattr(fcntl, "F_GETPIPE_SZ", None)
    if get_size is None:
        pytest.skip("this platform cannot size pipes")
    config = collector_config(tmp_path / "ledger.duckdb", collector={"decode_workers": 1})
    with Collector(config) as collector:
        collector.decoder.start()
        assert collector.decoder.wait_ready(120)
        pool = collector.decoder._pool
        sizes = [fcntl.fcntl(end.fileno(), get_size) for end in (pool._call_queue._writer, pool._result_queue._reader)]
    assert sizes == [decode_pool.PIPE_BYTES] * 2


def test_a_collector_whose_decode_workers_cannot_start_is_ready_and_decodes_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class NoProcesses(decode_pool.ProcessPoolExecutor):
        def submit(self, *args: Any, **kwargs: Any) -> Any:
            raise OSError("Resource temporarily unavailable")  # what fork/spawn says at the process limit

    monkeypatch.setattr(decode_pool, "ProcessPoolExecutor", NoProcesses)
    config = collector_config(tmp_path / "ledger.duckdb", collector={"decode_workers": 1})
    with Collector(config) as collector:
        collector.decoder.start()
        collector.decoder.pool_min_bytes = 0
        spans = [_json_span(f"00000000000003{i:02x}", **_claude()) for i in range(3)]
        answer = _post(f"{collector.otlp_url}/v1/traces", _json_body(*spans), "application/json")
        assert collector.ready
        stored = rows(collector, "SELECT count(*) FROM attempts")
    assert answer[0] == 200 and stored == [(3,)]


def test_serve_on_a_busy_port_names_it_and_leaves_no_empty_ledger(tmp_path: Path) -> None:
    costline = str(Path(sys.executable).parent / "costline")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "c.toml"
        ledger = tmp_path / "new.duckdb"
        config.write_text(f'[collector]\nledger = "{ledger}"\notlp_port = 0\nmetrics_port = {port}\n', encoding="utf-8")
        done = subprocess.run([costline, "serve", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"(port {port}, collector.metrics_port)" in " ".join(done.stderr.split())
    assert not ledger.exists()
