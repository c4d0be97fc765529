"""The router's span delivery (the real SDK's batch processor, the on-disk spool, OTLP/HTTP) through a proxy that
answers 503 and drops connections: every span is in the ledger exactly once, and the resends of batches the ledger
already held are counted as duplicates, not rows."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from faults.ledger import stored_span_ids, violations
from faults.metrics import scrape, value
from faults.otlp import count_spans
from faults.proxy import DROP_AFTER, DROP_BEFORE, FAULTS, REFUSE_503, REPLACE_503, FlakyProxy
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from collector.service import Collector
from costline import spans as S
from costline.config import load_config, with_overrides
from router.delivery import SpoolingExporter
from router.spool import Spool

TASKS = 60
ATTEMPTS_PER_TASK = 3


def _config(ledger: Path):  # type: ignore[no-untyped-def]
    return with_overrides(
        load_config(env={}),
        collector={"otlp_port": 0, "metrics_port": 0, "ledger": str(ledger)},
        router={"usage_db": str(ledger.parent / "usage.sqlite")},
    )


def _emit(provider: TracerProvider, tasks: int, seed: int) -> None:
    """Router-shaped tasks through the real SDK: a task span with local failures and then an answer."""
    rng = random.Random(seed)
    tracer = provider.get_tracer("fault-suite")
    for t in range(tasks):
        task_id = f"task-{seed}-{t}"
        with tracer.start_as_current_span(
            S.task_span_name("general"),
            kind=SpanKind.INTERNAL,
            attributes={S.TASK_ID: task_id, S.TASK_TYPE: "general", S.TASK_OUTCOME: "completed"},
        ):
            for index in range(ATTEMPTS_PER_TASK):
                ok = index == ATTEMPTS_PER_TASK - 1
                attributes = {
                    S.OPERATION_NAME: S.OPERATION_CHAT,
                    S.PROVIDER_NAME: S.PROVIDER_OLLAMA,
                    S.REQUEST_MODEL: "qwen3:8b",
                    S.USAGE_INPUT_TOKENS: rng.randint(1, 5000),
                    S.USAGE_OUTPUT_TOKENS: rng.randint(1, 2000),
                    S.TASK_ID: task_id,
                    S.ATTEMPT_INDEX: index,
                    S.ATTEMPT_TIER: "primary" if index == 0 else "fallback",
                }
                if not ok:
                    attributes[S.ERROR_TYPE] = "timeout"
                with tracer.start_as_current_span(
                    S.attempt_span_name("qwen3:8b"), kind=SpanKind.CLIENT, attributes=attributes
                ) as span:
                    span.set_status(Status(StatusCode.OK) if ok else Status(StatusCode.ERROR, "timeout"))


def run_exporter_through_faults(
    ledger: Path, *, tasks: int, seed: int, weights: dict[str, float], batch_size: int = 20
) -> dict[str, Any]:
    """Emit ``tasks`` tasks through the real SDK → flaky proxy → collector; return what each side saw."""
    memory = InMemorySpanExporter()
    with Collector(_config(ledger)) as collector:
        with FlakyProxy(collector.otlp_url, weights=weights, seed=seed, first=FAULTS) as proxy:
            provider = TracerProvider(resource=Resource.create({"service.name": "fault-suite"}))
            spool = Spool(ledger.parent / "spool", max_bytes=64 * 1024 * 1024)
            exporter = SpoolingExporter(f"{proxy.url}/v1/traces", {}, spool, timeout_s=30)
            provider.add_span_processor(SimpleSpanProcessor(memory))
            provider.add_span_processor(
                BatchSpanProcessor(
                    exporter, max_export_batch_size=batch_size, schedule_delay_millis=20, max_queue_size=100_000
                )
            )
            _emit(provider, tasks, seed)
            assert provider.force_flush(600_000)  # every batch is in the spool
            # Resend now instead of waiting out the sender's backoff: each pass stops at the first failed send.
            resends = 0
            while not exporter.force_flush() and resends < 1000:
                resends += 1
            provider.shutdown()
            assert exporter.waiting() == []
        con = collector.connection
        try:

            def query(sql: str) -> list[tuple[object, ...]]:
                return con.execute(sql).fetchall()

            stored = stored_span_ids(query)
            broken = violations(query)
        finally:
            con.close()
        metrics = scrape(collector.metrics_url)
    sent = [format(span.context.span_id, "016x") for span in memory.get_finished_spans()]
    unique = set(stored)
    return {
        "report": {
            "sent": len(sent),
            "acknowledged": len(sent) - exporter.spans_lost,
            "stored": len(unique),
            "duplicates": len(stored) - len(unique),
            "lost": len(set(sent) - unique),
            "faults injected": proxy.faults_injected,
            "re-sends absorbed as duplicates": int(value(metrics, "costline_ingest_spans_total", result="duplicate")),
        },
        "sent": sent,
        "stored": stored,
        "violations": broken,
        "faults": dict(proxy.faults),
        "faults_injected": proxy.faults_injected,
        "retried_after_commit": sum(count_spans(body) for body in proxy.committed_then_faulted),
        "metrics": metrics,
    }


def test_every_span_is_stored_exactly_once_through_503s_and_dropped_connections(tmp_path: Path) -> None:
    weights = {REFUSE_503: 0.15, DROP_BEFORE: 0.1, DROP_AFTER: 0.1, REPLACE_503: 0.15}
    seen = run_exporter_through_faults(tmp_path / "ledger.duckdb", tasks=TASKS, seed=7, weights=weights)
    assert seen["report"]["acknowledged"] == len(seen["sent"])  # the SDK saw every export succeed

    sent, stored = seen["sent"], seen["stored"]
    assert len(sent) == TASKS * (ATTEMPTS_PER_TASK + 1)
    assert sorted(stored) == sorted(sent)  # every span, none twice
    assert seen["violations"] == {}
    faults = seen["faults"]
    assert all(faults.get(kind, 0) > 0 for kind in FAULTS), faults  # each kind of fault really happened
    # Batches the collector had committed before the sender saw a failure came back as duplicates, not rows.
    metrics = seen["metrics"]
    assert seen["retried_after_commit"] > 0
    assert value(metrics, "costline_ingest_spans_total", result="duplicate") == seen["retried_after_commit"]
    assert value(metrics, "costline_ingest_spans_total", result="stored") == len(sent)
    assert value(metrics, "costline_ingest_spans_total", result="rejected") == 0
