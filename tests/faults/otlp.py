"""OTLP/HTTP protobuf batches whose span ids the test knows, and a plain HTTP POST that reports what happened."""

from __future__ import annotations

import http.client
import random
import time
import urllib.parse
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from costline import spans as S

PROTOBUF = "application/x-protobuf"
LOCAL_MODEL = "qwen3:8b"
CLAUDE_MODEL = "claude-sonnet-4-5"


@dataclass(frozen=True)
class Batch:
    """One export request: a task span and its attempt spans (ids in lowercase hex)."""

    body: bytes
    task_span_ids: tuple[str, ...]
    attempt_span_ids: tuple[str, ...]

    @property
    def span_ids(self) -> tuple[str, ...]:
        return self.task_span_ids + self.attempt_span_ids

    @property
    def span_count(self) -> int:
        return len(self.task_span_ids) + len(self.attempt_span_ids)


def _kv(key: str, value: str | int | bool) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _nonzero(rng: random.Random, size: int) -> bytes:
    while True:
        raw = rng.randbytes(size)
        if any(raw):
            return raw


def make_batch(rng: random.Random, attempts: int, *, start_ns: int | None = None) -> Batch:
    """A router-shaped task: ``attempts`` attempt spans (local failures, then a success) under one task span."""
    start_ns = start_ns if start_ns is not None else time.time_ns() - 60 * 1_000_000_000
    trace_id = _nonzero(rng, 16)
    task_span_id = _nonzero(rng, 8)
    task_id = rng.randbytes(16).hex()
    spans: list[Span] = []
    attempt_ids: list[str] = []
    for index in range(attempts):
        span_id = _nonzero(rng, 8)
        attempt_ids.append(span_id.hex())
        last = index == attempts - 1
        claude = last and attempts > 1
        model = CLAUDE_MODEL if claude else LOCAL_MODEL
        attributes = [
            _kv(S.OPERATION_NAME, S.OPERATION_CHAT),
            _kv(S.PROVIDER_NAME, S.PROVIDER_ANTHROPIC if claude else S.PROVIDER_OLLAMA),
            _kv(S.REQUEST_MODEL, model),
            _kv(S.RESPONSE_MODEL, model),
            _kv(S.USAGE_INPUT_TOKENS, 100 + index),
            _kv(S.USAGE_OUTPUT_TOKENS, 40 + index),
            _kv(S.TASK_ID, task_id),
            _kv(S.TASK_TYPE, "general"),
            _kv(S.ATTEMPT_INDEX, index),
            _kv(S.ATTEMPT_TIER, "escalation" if claude else ("primary" if index == 0 else "fallback")),
        ]
        if claude:
            attributes.append(_kv(S.ESCALATION_REASON, "threshold"))
        if not last:
            attributes.append(_kv(S.ERROR_TYPE, "timeout"))
        begin = start_ns + index * 1_000_000
        spans.append(
            Span(
                trace_id=trace_id,
                span_id=span_id,
                parent_span_id=task_span_id,
                name=S.attempt_span_name(model),
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=begin,
                end_time_unix_nano=begin + 500_000,
                attributes=attributes,
                status=Status(code=Status.STATUS_CODE_OK if last else Status.STATUS_CODE_ERROR),
            )
        )
    spans.append(
        Span(
            trace_id=trace_id,
            span_id=task_span_id,
            name=S.task_span_name("general"),
            kind=Span.SPAN_KIND_INTERNAL,
            start_time_unix_nano=start_ns,
            end_time_unix_nano=start_ns + attempts * 1_000_000,
            attributes=[
                _kv(S.TASK_ID, task_id),
                _kv(S.TASK_TYPE, "general"),
                _kv(S.TASK_CRITICAL, False),
                _kv(S.TASK_OUTCOME, "completed"),
                _kv(S.TASK_ESCALATED, attempts > 1),
                _kv(S.TASK_ATTEMPTS, attempts),
            ],
        )
    )
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource={"attributes": [_kv(S.SERVICE_NAME, "fault-suite")]},
                scope_spans=[ScopeSpans(spans=spans)],
            )
        ]
    )
    return Batch(request.SerializeToString(), (task_span_id.hex(),), tuple(attempt_ids))


def count_spans(body: bytes) -> int:
    request = ExportTraceServiceRequest.FromString(body)
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: the connection failed or broke before an answer
    headers: dict[str, str]
    body: bytes
    error: str | None = None


def post(
    url: str,
    body: bytes,
    *,
    content_type: str = PROTOBUF,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Answer:
    """POST and read the whole answer; a refused, reset or cut connection is an Answer with status None."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        connection.request(
            "POST",
            parts.path or "/",
            body=body,
            headers={"Content-Type": content_type, **(headers or {})},
        )
        response = connection.getresponse()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(None, {}, b"", f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()
