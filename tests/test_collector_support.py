"""Shared pieces for the collector tests: a collector on free loopback ports, the real OTel SDK pointed at it,
router-shaped spans, and /metrics parsed into exact samples. (No tests here.)"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from prometheus_client.parser import text_string_to_metric_families

from collector.service import Collector
from costline import spans as S
from costline.config import Config, load_config, with_overrides

SONNET_45 = "claude-sonnet-4-5"
LOCAL = "qwen3:8b"


def collector_config(ledger: Path, **sections: Any) -> Config:
    base = with_overrides(
        load_config(env={}),
        collector={"otlp_port": 0, "metrics_port": 0, "ledger": str(ledger)},
        router={"usage_db": str(ledger.parent / "usage.sqlite")},
    )
    return with_overrides(base, **sections) if sections else base


@contextmanager
def otel(collector: Collector, service: str = "costline-router") -> Iterator[tuple[Tracer, TracerProvider]]:
    """The real SDK: TracerProvider + BatchSpanProcessor + the OTLP/HTTP protobuf exporter."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=f"{collector.otlp_url}/v1/traces", timeout=10)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    try:
        yield provider.get_tracer("costline.test"), provider
    finally:
        provider.shutdown()


def ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def attempt(
    tracer: Tracer,
    *,
    start: datetime,
    seconds: float = 1.5,
    provider: str = S.PROVIDER_ANTHROPIC,
    model: str = SONNET_45,
    tier: str = "escalation",
    index: int = 0,
    task_id: str = "task-1",
    input_tokens: int = 1000,
    output_tokens: int = 500,
    cache_read: int = 0,
    cache_write: int = 0,
    error_type: str | None = None,
    reason: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """One router attempt span (DESIGN §2), as a child of the current span."""
    attributes: dict[str, Any] = {
        S.OPERATION_NAME: S.OPERATION_CHAT,
        S.PROVIDER_NAME: provider,
        S.REQUEST_MODEL: model,
        S.RESPONSE_MODEL: model,
        S.USAGE_INPUT_TOKENS: input_tokens,
        S.USAGE_OUTPUT_TOKENS: output_tokens,
        S.USAGE_CACHE_READ_INPUT_TOKENS: cache_read,
        S.USAGE_CACHE_CREATION_INPUT_TOKENS: cache_write,
        S.SERVER_ADDRESS: "127.0.0.1",
        S.SERVER_PORT: 11434 if provider == S.PROVIDER_OLLAMA else 443,
        S.TASK_ID: task_id,
        S.TASK_TYPE: "general",
        S.ATTEMPT_INDEX: index,
        S.ATTEMPT_TIER: tier,
    }
    if reason:
        attributes[S.ESCALATION_REASON] = reason
    if error_type:
        attributes[S.ERROR_TYPE] = error_type
    attributes.update(extra or {})
    start_ns = ns(start)
    span = tracer.start_span(
        S.attempt_span_name(model), kind=SpanKind.CLIENT, attributes=attributes, start_time=start_ns
    )
    span.set_status(Status(StatusCode.ERROR, error_type) if error_type else Status(StatusCode.OK))
    span.end(end_time=start_ns + int(seconds * 1e9))


@contextmanager
def task(
    tracer: Tracer,
    *,
    start: datetime,
    task_id: str = "task-1",
    outcome: str = "completed",
    escalated: bool = False,
    attempts: int = 1,
    task_type: str = "general",
) -> Iterator[None]:
    attributes = {
        S.TASK_ID: task_id,
        S.TASK_TYPE: task_type,
        S.TASK_CRITICAL: False,
        S.TASK_OUTCOME: outcome,
        S.TASK_ESCALATED: escalated,
        S.TASK_ATTEMPTS: attempts,
    }
    start_ns = ns(start)
    span = tracer.start_span(
        S.task_span_name(task_type), kind=SpanKind.INTERNAL, attributes=attributes, start_time=start_ns
    )
    from opentelemetry import trace

    with trace.use_span(span, end_on_exit=False):
        yield
    span.end(end_time=start_ns + 5_000_000_000)


def scrape(collector: Collector) -> str:
    with urllib.request.urlopen(f"{collector.metrics_url}/metrics", timeout=10) as response:
        return response.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page, keyed by (sample name, labels).

    A label with an empty value is dropped, as Prometheus does at ingestion: ``team=""`` and no ``team`` label are
    the same series."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, _label_set(sample.labels))] = sample.value
    return out


def sample(values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return values.get((name, _label_set(labels)))


def _label_set(labels: dict[str, str]) -> frozenset[tuple[str, str]]:
    return frozenset((name, value) for name, value in labels.items() if value != "")


def rows(collector: Collector, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    con = collector.connection
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


# Span times are fixed, not read from the clock: a live collector stores any time that is not in the future, and
# what the tests assert must not depend on the day they run.
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
