"""Router faults: Ollama that hangs, flaps or dies mid-stream; Claude 429/529 storms and timeouts. Every wait is
bounded, the quota and budgets hold, and every attempt reaches the ledger (through the real exporter and the
collector) with the right error.type."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from recorded_waits import RecordedWaits

from collector.service import Collector
from costline.config import Config
from costline.demo.fake_anthropic import ClaudeError, ClaudeHang, ClaudeReply
from costline.demo.fake_ollama import (
    OllamaDisconnect,
    OllamaError,
    OllamaHang,
    OllamaReply,
    OllamaStreamError,
)
from router import Router, Task
from router.task import TaskResult

PRIMARY, FALLBACK, LAST = "qwen2.5-coder:14b", "qwen3:30b-a3b", "llama3.1:70b"
CLAUDE = "claude-sonnet-4-6"


@contextmanager
def routed_to_ledger(config: Config) -> Iterator[tuple[Router, Callable[[], list[tuple[Any, ...]]]]]:
    """A router whose spans go through the real OTLP exporter into a real collector; yields (router, ledger rows)."""
    with Collector(config) as collector:
        provider = TracerProvider(resource=Resource.create({"service.name": "fault-suite"}))
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{collector.otlp_url}/v1/traces", timeout=30))
        )

        def ledger() -> list[tuple[Any, ...]]:
            provider.force_flush()
            con = collector.connection
            try:
                return con.execute(
                    "SELECT task_id, attempt_index, provider, request_model, tier, outcome, error_type "
                    "FROM attempts ORDER BY task_id, attempt_index"
                ).fetchall()
            finally:
                con.close()

        try:
            with Router(config, tracer_provider=provider) as router:
                yield router, ledger
        finally:
            provider.shutdown()


def expected_rows(results: list[TaskResult]) -> list[tuple[Any, ...]]:
    return sorted(
        (r.task_id, a.index, a.provider, a.model, a.tier, "success" if a.ok else "error", a.error_type)
        for r in results
        for a in r.attempts
    )


@pytest.fixture
def config(make_config: Callable[..., Config], tmp_path: Path) -> Callable[..., Config]:
    def make(**sections: Any) -> Config:
        collector = {"otlp_port": 0, "metrics_port": 0, "ledger": str(tmp_path / "ledger.duckdb")}
        return make_config(collector=collector, **sections)

    return make


def test_a_hanging_ollama_is_cut_off_at_the_timeout_and_the_chain_moves_on(fake_ollama, config):
    fake_ollama.script(PRIMARY, OllamaHang(seconds=30))
    # Each chunk comes within the read timeout, but the whole answer would take 4 s: the answer deadline cuts it.
    fake_ollama.script(FALLBACK, OllamaReply(content="slow " * 20, chunks=20, delay_s=4.0))
    with routed_to_ledger(config(router={"timeout_s": 0.5}, escalation={"enabled": False})) as (router, ledger):
        result = router.run(Task("hello"))
        rows = ledger()
    assert result.ok and result.text == "ok"
    attempts = [(a.model, a.error_type) for a in result.attempts]
    assert attempts == [(PRIMARY, "timeout"), (FALLBACK, "timeout"), (LAST, None)]
    assert all(a.duration_s < 3.0 for a in result.attempts)  # bounded by the timeout, not by the backend
    assert rows == expected_rows([result])


def test_a_flapping_ollama_records_each_failure_with_its_own_error_type(fake_ollama, config):
    flaps = itertools.cycle(
        [
            OllamaError(503),
            OllamaReply(content="fine"),
            OllamaDisconnect(after_chunks=0),
            OllamaStreamError(after_chunks=2),
            OllamaDisconnect(after_chunks=2),  # dies mid-stream
            OllamaError(500),
        ]
    )
    fake_ollama.set_default(PRIMARY, lambda body: next(flaps))
    with routed_to_ledger(config(router={"timeout_s": 2.0}, escalation={"enabled": False})) as (router, ledger):
        results = [router.run(Task(f"task {i}")) for i in range(12)]
        rows = ledger()
    primary = [r.attempts[0].error_type for r in results]
    assert primary == ["overloaded", None, "connection", "stream_error", "connection", "server_error"] * 2
    assert all(r.ok for r in results)  # the fallback answered whenever the primary failed
    assert [len(r.attempts) for r in results] == [2, 1, 2, 2, 2, 2] * 2
    assert rows == expected_rows(results)


def test_ollama_dying_between_tasks_is_a_connection_failure_not_a_hang(fake_ollama, make_config, tmp_path):
    with routed_to_ledger(
        make_config(
            router={"timeout_s": 2.0},
            escalation={"enabled": False},
            collector={"otlp_port": 0, "metrics_port": 0, "ledger": str(tmp_path / "ledger.duckdb")},
        )
    ) as (router, ledger):
        before = router.run(Task("while it runs"))
        fake_ollama.stop()
        after = router.run(Task("after it died"))
        rows = ledger()
    assert before.ok and not after.ok and after.outcome == "failed"
    assert [a.error_type for a in after.attempts] == ["connection"] * 3
    assert all(a.duration_s < 2.0 for a in after.attempts)
    assert rows == expected_rows([before, after])


@pytest.mark.parametrize(("status", "error_type"), [(429, "rate_limited"), (529, "overloaded")])
def test_a_claude_storm_is_retried_a_bounded_number_of_times_free_of_charge(fake_anthropic, config, status, error_type):
    fake_anthropic.set_default(CLAUDE, ClaudeError(status, retry_after=0))
    with routed_to_ledger(config(router={"max_retries": 2}, escalation={"max_calls_per_hour": 5})) as (
        router,
        ledger,
    ):
        results = [router.run(Task(f"storm {i}", prefer_escalation=True)) for i in range(3)]
        headroom = router.usage.headroom()
        rows = ledger()
    # Each task tries 1 + max_retries times and gives up; errors answered before generation are not billed, so they
    # cost nothing and hold no slot of the hourly quota.
    assert len(fake_anthropic.message_requests()) == 9
    assert [[a.error_type for a in r.attempts] for r in results] == [[error_type] * 3] * 3
    assert [r.outcome for r in results] == ["failed"] * 3
    assert all(r.cost_usd == 0 for r in results) and headroom.calls_last_hour == 0
    assert rows == expected_rows(results)


def test_claude_timeouts_are_bounded_retried_and_recorded(fake_anthropic, config):
    fake_anthropic.set_default(CLAUDE, ClaudeHang(seconds=30))
    with routed_to_ledger(config(router={"max_retries": 1}, escalation={"timeout_s": 0.5})) as (router, ledger):
        router.waits = RecordedWaits()
        result = router.run(Task("slow claude", prefer_escalation=True))
        rows = ledger()
    assert [a.error_type for a in result.attempts] == ["timeout", "timeout"]
    assert all(a.duration_s < 5.0 for a in result.attempts)
    assert not result.ok and result.outcome == "failed"
    assert rows == expected_rows([result])


def test_the_daily_budget_stops_escalations_that_could_overspend_it(fake_ollama, fake_anthropic, config):
    fake_ollama.set_default(PRIMARY, OllamaError(500))
    fake_ollama.set_default(FALLBACK, OllamaError(503))
    # 100k input + 20k output tokens on Sonnet 4.6 ($3 / $15 per MTok) = $0.60. A 100 kB prompt and max_tokens 20k
    # bound each call at about $0.68: the first fits the $1 budget, the second could overspend it and is refused.
    fake_anthropic.set_default(CLAUDE, ClaudeReply(text="expensive", input_tokens=100_000, output_tokens=20_000))
    context = "x" * 100_000
    settings = config(escalation={"max_tokens": 20_000}, budgets={"daily_usd": 1.0, "monthly_usd": 0})
    with routed_to_ledger(settings) as (router, ledger):
        results = [router.run(Task(f"t{i} {context}")) for i in range(3)]
        rows = ledger()
    assert len(fake_anthropic.message_requests()) == 1
    assert results[0].escalated and results[0].cost_usd == Decimal("0.6")
    for later in results[1:]:
        assert [a.error_type for a in later.attempts] == ["server_error", "overloaded", "budget_exhausted", None]
        assert later.ok and not later.escalated  # budgets never block the local models
    assert rows == expected_rows(results)
