"""Hostile requests to a live collector, each with the answer it must get and the spans it must leave stored.

Used by tests/test_collector_hostile.py (each input is a regression test) and by ``make soak``, which prints the
inputs and their outcomes as one table.
"""

from __future__ import annotations

import json
import random
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from costline import spans as S
from faults.otlp import PROTOBUF, Answer, make_batch, post
from faults.payloads import gzip_bomb, gzipped


@dataclass(frozen=True)
class Request:
    body: bytes
    headers: dict[str, str]
    content_type: str = PROTOBUF


@dataclass(frozen=True)
class Hostile:
    name: str
    make: Callable[[random.Random], Request]
    status: int  # the answer it must get
    stored: int  # the spans it must add to the ledger
    query: bool = False  # sent to the query API (/api/v1/query) rather than the OTLP receiver


@dataclass(frozen=True)
class Outcome:
    name: str
    status: int | None
    expected_status: int
    stored: int
    expected_stored: int
    ready_after: bool
    metrics_kb: float

    @property
    def ok(self) -> bool:
        return (self.status, self.stored, self.ready_after) == (self.expected_status, self.expected_stored, True)


GZIP = {"Content-Encoding": "gzip"}


def _request(body: bytes, **headers: str) -> Request:
    return Request(body, headers)


def _batch(rng: random.Random, tasks: int = 1) -> ExportTraceServiceRequest:
    """``tasks`` router tasks of 3 spans each (a task and two attempts) under one resource."""
    request = ExportTraceServiceRequest.FromString(make_batch(rng, 2).body)
    spans = request.resource_spans[0].scope_spans[0].spans
    for _ in range(tasks - 1):
        spans.extend(
            ExportTraceServiceRequest.FromString(make_batch(rng, 2).body).resource_spans[0].scope_spans[0].spans
        )
    return request


def _two_gzip_members(rng: random.Random) -> Request:
    first, second = _batch(rng).SerializeToString(), _batch(rng).SerializeToString()
    return _request(gzipped(first) + gzipped(second), **GZIP)


def _gzip_then_garbage(rng: random.Random) -> Request:
    return _request(gzipped(_batch(rng).SerializeToString()) + b"not gzip", **GZIP)


def _huge_service_name(rng: random.Random) -> Request:
    request = _batch(rng, tasks=100)
    attributes = request.resource_spans[0].resource.attributes
    del attributes[:]
    attributes.append(KeyValue(key=S.SERVICE_NAME, value=AnyValue(string_value="s" * (2 << 20))))
    return _request(gzipped(request.SerializeToString()), **GZIP)


def _distinct_model_names(rng: random.Random) -> Request:
    request = _batch(rng, tasks=700)
    for n, span in enumerate(request.resource_spans[0].scope_spans[0].spans):
        for kv in span.attributes:
            if kv.key in (S.REQUEST_MODEL, S.RESPONSE_MODEL):
                kv.value.string_value = f"model-{n}"
    return _request(request.SerializeToString())


def _huge_model_name(rng: random.Random) -> Request:
    request = _batch(rng)
    first_attempt = request.resource_spans[0].scope_spans[0].spans[0]
    for kv in first_attempt.attributes:
        if kv.key == S.REQUEST_MODEL:
            kv.value.string_value = "m" * (5 << 20)
    return _request(request.SerializeToString())


def _json_int(value: str) -> Callable[[random.Random], Request]:
    def make(rng: random.Random) -> Request:
        start_ns = time.time_ns() - 60 * 1_000_000_000
        span = {
            "traceId": rng.randbytes(16).hex(),
            "spanId": rng.randbytes(8).hex(),
            "name": "chat claude-sonnet-4-5",
            "startTimeUnixNano": str(start_ns),
            "endTimeUnixNano": str(start_ns + 1_000_000),
            "attributes": [
                {"key": S.PROVIDER_NAME, "value": {"stringValue": "anthropic"}},
                {"key": S.REQUEST_MODEL, "value": {"stringValue": "claude-sonnet-4-5"}},
                {"key": S.USAGE_INPUT_TOKENS, "value": {"intValue": value}},
            ],
        }
        body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()
        return Request(body, {}, "application/json")

    return make


def _query(sql: str) -> Callable[[random.Random], Request]:
    return lambda rng: Request(json.dumps({"sql": sql}).encode(), {}, "application/json")


HOSTILE: tuple[Hostile, ...] = (
    Hostile("gzip bomb: 64 MiB of zeros in 64 KiB", lambda rng: _request(gzip_bomb(64 << 20), **GZIP), 413, 0),
    Hostile("random bytes as protobuf", lambda rng: _request(rng.randbytes(4096)), 400, 0),
    Hostile("two gzip members (RFC 1952): both read", _two_gzip_members, 200, 6),
    Hostile("a gzip member, then bytes that are not gzip", _gzip_then_garbage, 400, 0),
    Hostile("2 MiB service.name on 300 spans (stored cut)", _huge_service_name, 200, 300),
    Hostile("1,400 distinct model names (labels folded)", _distinct_model_names, 200, 2100),
    Hostile("5 MiB model name (that span refused, others kept)", _huge_model_name, 200, 2),
    Hostile('OTLP/JSON intValue "abc"', _json_int("abc"), 400, 0),
    Hostile('OTLP/JSON intValue "1e3" (protobuf JSON reads 1000)', _json_int("1e3"), 200, 1),
    Hostile("query: repeat('x', 200000000) (a 200 MB value)", _query("SELECT repeat('x', 200000000)"), 400, 0, True),
    Hostile(
        "query: string_agg past DuckDB's memory limit",
        _query("SELECT string_agg(repeat('x', 1000), '') FROM range(400000)"),
        400,
        0,
        True,
    ),
    Hostile(
        "query: DELETE inside a CTE",
        _query("WITH gone AS (DELETE FROM attempts RETURNING *) SELECT count(*) FROM gone"),
        400,
        0,
        True,
    ),
)


def send(url: str, request: Request, path: str = "/v1/traces") -> Answer:
    return post(f"{url}{path}", request.body, content_type=request.content_type, headers=request.headers)


def two_content_lengths(otlp_url: str) -> int | None:
    """A request with two Content-Length headers, which no client library will send: the status line's code."""
    parts = urllib.parse.urlsplit(otlp_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Length: 0\r\nContent-Length: 5\r\n\r\nhello"
        )
        line = conn.makefile("rb").readline().split()
    return int(line[1]) if len(line) > 1 else None


def ready(metrics_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{metrics_url}/readyz", timeout=10) as answer:
            return answer.status == 200
    except OSError:
        return False


def metrics_kb(metrics_url: str) -> float:
    with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=30) as answer:
        return len(answer.read()) / 1024


def run_all(otlp_url: str, metrics_url: str, stored: Callable[[], int], seed: int = 1) -> list[Outcome]:
    """Send every hostile input in turn; what each got and left behind."""
    rng = random.Random(seed)
    outcomes = []
    for hostile in HOSTILE:
        before = stored()
        request = hostile.make(rng)
        answer = send(metrics_url, request, "/api/v1/query") if hostile.query else send(otlp_url, request)
        outcomes.append(
            Outcome(
                hostile.name,
                answer.status,
                hostile.status,
                stored() - before,
                hostile.stored,
                ready(metrics_url),
                metrics_kb(metrics_url),
            )
        )
    before = stored()
    status = two_content_lengths(otlp_url)
    outcomes.append(
        Outcome(
            "two Content-Length headers",
            status,
            400,
            stored() - before,
            0,
            ready(metrics_url),
            metrics_kb(metrics_url),
        )
    )
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    width = max(len(o.name) for o in outcomes)
    lines = [f"  {'hostile input':<{width}}  answer  spans stored  ready  /metrics KB  as required"]
    for o in outcomes:
        lines.append(
            f"  {o.name:<{width}}  {o.status!s:>6}  {o.stored:>12,}  {'yes' if o.ready_after else 'NO':>5}"
            f"  {o.metrics_kb:>11,.0f}  {'yes' if o.ok else 'NO'}"
        )
    return "\n".join(lines)
