"""The real OTel SDK and OTLP/HTTP exporter → the collector → the DuckDB ledger and /metrics, asserted exactly."""

from __future__ import annotations

import logging
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import emitter_spans
import pyarrow as pa
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from promtools import binary
from test_collector_support import (
    LOCAL,
    NOW,
    SONNET_45,
    attempt,
    collector_config,
    ns,
    otel,
    rows,
    sample,
    samples,
    scrape,
    task,
)

from collector.reports import cost_report, parse_window
from collector.service import Collector
from costline import spans as S
from costline.config import ModelPrice

RECENT = (NOW - timedelta(minutes=10)).replace(microsecond=0)


def _two_tasks(tracer: trace.Tracer) -> None:
    """Task 1: two local failures, then an escalation. Task 2: a local success."""
    with task(tracer, start=RECENT, task_id="t1", escalated=True, attempts=3):
        attempt(
            tracer,
            start=RECENT,
            provider="ollama",
            model=LOCAL,
            tier="primary",
            index=0,
            task_id="t1",
            error_type="timeout",
            input_tokens=0,
            output_tokens=0,
            seconds=0.5,
        )
        attempt(
            tracer,
            start=RECENT + timedelta(seconds=1),
            provider="ollama",
            model=LOCAL,
            tier="fallback",
            index=1,
            task_id="t1",
            error_type="invalid_output",
            seconds=0.03,
        )
        attempt(
            tracer,
            start=RECENT + timedelta(seconds=2),
            index=2,
            task_id="t1",
            reason="threshold",
            cache_read=200,
            cache_write=100,
            seconds=1.5,
        )
    with task(tracer, start=RECENT + timedelta(seconds=10), task_id="t2"):
        attempt(
            tracer,
            start=RECENT + timedelta(seconds=10),
            provider="ollama",
            model=LOCAL,
            tier="primary",
            index=0,
            task_id="t2",
            seconds=2.0,
        )


def test_router_spans_land_in_the_ledger_and_metrics_exactly(tmp_path: Path) -> None:
    with Collector(collector_config(tmp_path / "ledger.duckdb")) as collector:
        with otel(collector) as (tracer, provider):
            _two_tasks(tracer)
            assert provider.force_flush()
        got = rows(
            collector,
            "SELECT task_id, attempt_index, tier, provider, operation, request_model, response_model, outcome, "
            "error_type, escalation_reason, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
            "cost_usd, counterfactual_usd, price_source, duration_s, server_port, service_name, length(trace_id), "
            "length(span_id), parent_span_id IS NOT NULL FROM attempts ORDER BY task_id, attempt_index",
        )
        values = samples(scrape(collector))
        tasks = rows(
            collector,
            "SELECT task_id, task_type, critical, outcome, escalated, attempts, duration_s FROM tasks ORDER BY task_id",
        )

    common = ("costline-router", 32, 16, True)
    assert got == [
        (
            "t1",
            0,
            "primary",
            "ollama",
            "chat",
            LOCAL,
            LOCAL,
            "error",
            "timeout",
            None,
            0,
            0,
            0,
            0,
            Decimal(0),
            None,
            "local-free",
            0.5,
            11434,
            *common,
        ),
        (
            "t1",
            1,
            "fallback",
            "ollama",
            "chat",
            LOCAL,
            LOCAL,
            "error",
            "invalid_output",
            None,
            1000,
            500,
            0,
            0,
            Decimal(0),
            None,
            "local-free",
            0.03,
            11434,
            *common,
        ),
        (
            "t1",
            2,
            "escalation",
            "anthropic",
            "chat",
            SONNET_45,
            SONNET_45,
            "success",
            None,
            "threshold",
            1000,
            500,
            200,
            100,
            Decimal("0.010035"),
            None,
            "genai-prices",
            1.5,
            443,
            *common,
        ),
        (
            "t2",
            0,
            "primary",
            "ollama",
            "chat",
            LOCAL,
            LOCAL,
            "success",
            None,
            None,
            1000,
            500,
            0,
            0,
            Decimal(0),
            Decimal("0.0105"),
            "local-free",
            2.0,
            11434,
            *common,
        ),
    ]
    assert tasks == [
        ("t1", "general", False, "completed", True, 3, 5.0),
        ("t2", "general", False, "completed", False, 1, 5.0),
    ]

    def m(name: str, **labels: str) -> float | None:
        return sample(values, name, **labels)

    local, claude = {"provider": "ollama", "model": LOCAL}, {"provider": "anthropic", "model": SONNET_45}
    assert m("costline_attempts_total", **local, tier="primary", outcome="error", error_type="timeout") == 1
    assert m("costline_attempts_total", **local, tier="fallback", outcome="error", error_type="invalid_output") == 1
    assert m("costline_attempts_total", **local, tier="primary", outcome="success", error_type="") == 1
    assert m("costline_attempts_total", **claude, tier="escalation", outcome="success", error_type="") == 1
    assert m("costline_cost_usd_total", **claude) == 0.010035
    assert m("costline_cost_usd_total", **local) == 0
    assert m("costline_counterfactual_usd_total", model=LOCAL) == 0.0105
    assert m("costline_escalations_total", reason="threshold", model=SONNET_45) == 1
    assert m("costline_tasks_total", task_type="general", outcome="completed", escalated="true") == 1
    assert m("costline_tasks_total", task_type="general", outcome="completed", escalated="false") == 1
    assert m("costline_tokens_total", **claude, type="input") == 1000
    assert m("costline_tokens_total", **claude, type="output") == 500
    assert m("costline_tokens_total", **claude, type="cache_read") == 200
    assert m("costline_tokens_total", **claude, type="cache_write") == 100
    assert m("costline_tokens_total", **local, type="input") == 2000
    assert m("costline_attempt_duration_seconds_count", **claude) == 1
    assert m("costline_attempt_duration_seconds_sum", **claude) == 1.5
    assert m("costline_attempt_duration_seconds_bucket", **claude, le="1.28") == 0
    assert m("costline_attempt_duration_seconds_bucket", **claude, le="2.56") == 1
    assert m("costline_attempt_duration_seconds_bucket", **local, le="0.04") == 1
    assert m("costline_attempt_duration_seconds_bucket", **local, le="0.64") == 2
    assert m("costline_attempt_duration_seconds_bucket", **local, le="+Inf") == 3
    assert m("costline_ingest_spans_total", result="stored") == 6
    assert m("costline_ingest_spans_total", result="duplicate") == 0
    assert m("costline_ingest_spans_total", result="rejected") == 0
    assert not any(name.endswith("_created") for name, _ in values)
    families = {name.removesuffix("_total").rsplit("_bucket", 1)[0] for name, _ in values}
    assert all(name.startswith("costline_") for name in families)


def _captured_spans(tmp_path: Path) -> list:  # type: ignore[type-arg]
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "costline-router"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    _two_tasks(provider.get_tracer("t"))
    provider.shutdown()
    return list(memory.get_finished_spans())


def test_the_same_batch_exported_twice_is_stored_once(tmp_path: Path) -> None:
    spans = _captured_spans(tmp_path)
    with Collector(collector_config(tmp_path / "ledger.duckdb")) as collector:
        exporter = OTLPSpanExporter(endpoint=f"{collector.otlp_url}/v1/traces", timeout=10)
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        first = samples(scrape(collector))
        assert exporter.export(spans) is SpanExportResult.SUCCESS  # what an exporter retry does
        assert exporter.export(spans[:2] + spans[:2]) is SpanExportResult.SUCCESS  # repeats inside one batch too
        exporter.shutdown()
        again = samples(scrape(collector))
        counts = rows(
            collector,
            "SELECT (SELECT count(*) FROM attempts), (SELECT count(*) FROM tasks), "
            "(SELECT count(DISTINCT span_id) FROM attempts)",
        )
    assert counts == [(4, 2, 4)]
    assert sample(again, "costline_ingest_spans_total", result="stored") == 6
    assert sample(again, "costline_ingest_spans_total", result="duplicate") == 10
    for key, value in first.items():
        if key[0] != "costline_ingest_spans_total":
            assert again[key] == value, key


def test_a_restart_continues_every_counter_from_the_ledger(tmp_path: Path) -> None:
    config = collector_config(tmp_path / "ledger.duckdb")
    spans = _captured_spans(tmp_path)
    with Collector(config) as collector:
        exporter = OTLPSpanExporter(endpoint=f"{collector.otlp_url}/v1/traces", timeout=10)
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert exporter.export(spans[:1]) is SpanExportResult.SUCCESS  # one duplicate
        before = samples(scrape(collector))
    with Collector(config) as collector:
        after = samples(scrape(collector))
        with otel(collector) as (tracer, provider):
            with task(tracer, start=RECENT, task_id="t3"):
                attempt(tracer, start=RECENT, task_id="t3", reason="requested")
            assert provider.force_flush()
        later = samples(scrape(collector))
    assert after == before
    claude = {"provider": "anthropic", "model": SONNET_45}
    assert sample(before, "costline_ingest_spans_total", result="duplicate") == 1
    assert sample(later, "costline_cost_usd_total", **claude) == 0.010035 + 0.0105
    assert sample(later, "costline_ingest_spans_total", result="stored") == 8
    assert sample(later, "costline_escalations_total", reason="requested", model=SONNET_45) == 1
    assert sample(later, "costline_escalations_total", reason="threshold", model=SONNET_45) == 1


def test_every_emitter_is_accounted_from_its_real_span_shape(tmp_path: Path) -> None:
    start = ns(RECENT)
    with Collector(collector_config(tmp_path / "ledger.duckdb")) as collector:
        with otel(collector, service="someone-elses-app") as (_, provider):
            for n, fixture in enumerate(emitter_spans.SPANS):
                tracer = provider.get_tracer(fixture.scope)
                span = tracer.start_span(fixture.span_name, kind=SpanKind.CLIENT, attributes={
                    **fixture.attributes, "fixture": n}, start_time=start)  # fmt: skip
                span.end(end_time=start + 800_000_000)
            assert provider.force_flush()
        columns = ["provider", "request_model", "input_tokens", "output_tokens", "cache_read_tokens",
                   "cache_write_tokens", "cost_usd", "reported_cost_usd", "cost_disagrees", "emitter",
                   "price_source", "counterfactual_usd IS NOT NULL AS local"]  # fmt: skip
        got = rows(collector, f"SELECT {', '.join(columns)} FROM attempts ORDER BY start_time, span_id")
        by_name = [dict(zip([c.split()[-1] for c in columns], row, strict=True)) for row in got]
        values = samples(scrape(collector))
    assert len(by_name) == len(emitter_spans.SPANS)
    for fixture in emitter_spans.SPANS:
        expected = {k: Decimal(v) if k.endswith("_usd") and v is not None else v for k, v in fixture.expected.items()}
        matches = [r for r in by_name if all(r[k] == v for k, v in expected.items())]
        assert matches, (fixture.name, expected, by_name)
    assert sample(values, "costline_ingest_spans_total", result="stored") == len(emitter_spans.SPANS)
    assert sample(values, "costline_ingest_spans_total", result="rejected") in (None, 0)
    providers = {dict(labels)["provider"] for name, labels in values if name == "costline_attempts_total"}
    assert providers == {"anthropic", "ollama"}  # "Anthropic" and "Ollama" are the same providers
    assert (
        sample(values, "costline_unpriced_attempts_total", provider="ollama", model="") is None
    )  # no usage: not unpriced


def _sdk_attributes(model: str = SONNET_45) -> dict[str, object]:
    return {
        S.ALIAS_SYSTEM: "anthropic",
        S.OPERATION_NAME: "chat",
        S.REQUEST_MODEL: model,
        S.USAGE_INPUT_TOKENS: 1000,
        S.USAGE_OUTPUT_TOKENS: 500,
    }


def test_a_nested_sdk_span_counts_its_model_call_once(tmp_path: Path) -> None:
    with Collector(collector_config(tmp_path / "ledger.duckdb")) as collector:
        with otel(collector) as (tracer, provider):
            # 1. An SDK span inside the router's attempt span, exported together: the attempt span is kept.
            with task(tracer, start=RECENT, task_id="t1"):
                outer = tracer.start_span(
                    S.attempt_span_name(SONNET_45),
                    kind=SpanKind.CLIENT,
                    attributes={
                        **_sdk_attributes(),
                        S.PROVIDER_NAME: "anthropic",
                        S.ATTEMPT_TIER: "escalation",
                        S.TASK_ID: "t1",
                        S.ATTEMPT_INDEX: 0,
                    },
                )
                with trace.use_span(outer, end_on_exit=True):
                    tracer.start_span("anthropic.chat", kind=SpanKind.CLIENT, attributes=_sdk_attributes()).end()
            # 2. An SDK span whose parent is not a GenAI span counts.
            with tracer.start_as_current_span("handle request"):
                tracer.start_span("anthropic.chat", kind=SpanKind.CLIENT, attributes=_sdk_attributes()).end()
            assert provider.force_flush()
            # 3. The inner span exported in an earlier request than its outer span: still one row.
            late_outer = tracer.start_span("chat outer", kind=SpanKind.CLIENT, attributes=_sdk_attributes())
            with trace.use_span(late_outer, end_on_exit=False):
                tracer.start_span("anthropic.chat", kind=SpanKind.CLIENT, attributes=_sdk_attributes()).end()
            assert provider.force_flush()
            late_outer.end()
            assert provider.force_flush()
        got = rows(collector, "SELECT tier, task_id FROM attempts ORDER BY tier NULLS LAST")
        values = samples(scrape(collector))
    assert got == [("escalation", "t1"), (None, None), (None, None)]
    assert sample(values, "costline_tokens_total", provider="anthropic", model=SONNET_45, type="input") == 3000
    assert sample(values, "costline_ingest_spans_total", result="stored") == 4  # three calls and one task
    assert sample(values, "costline_ingest_spans_total", result="duplicate") == 2  # the two repeated accounts


def test_headroom_gauges_are_computed_from_the_ledger_at_scrape_time(tmp_path: Path) -> None:
    noon = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
    config = collector_config(
        tmp_path / "ledger.duckdb", escalation={"max_calls_per_hour": 4}, budgets={"daily_usd": 1.0, "monthly_usd": 0}
    )
    with Collector(config) as collector:
        collector.metrics.clock = lambda: noon
        with otel(collector) as (tracer, provider):
            attempt(tracer, start=noon - timedelta(minutes=30), reason="threshold")  # in the hour, today
            attempt(
                tracer,
                start=noon - timedelta(minutes=15),
                reason="critical",
                error_type="quota_exhausted",
                input_tokens=0,
                output_tokens=0,
            )  # refused: takes no slot, costs nothing
            attempt(tracer, start=noon - timedelta(minutes=90), reason="threshold")  # today, out of the hour
            attempt(tracer, start=datetime(2026, 6, 1, 8, tzinfo=UTC), reason="threshold")  # this month
            attempt(tracer, start=datetime(2026, 5, 31, 23, tzinfo=UTC), reason="threshold")  # last month
            attempt(tracer, start=noon - timedelta(minutes=5), provider="ollama", model=LOCAL, tier="primary")
            assert provider.force_flush()
        at_noon = samples(scrape(collector))
        collector.metrics.clock = lambda: noon + timedelta(hours=12, minutes=30)  # next day, no new spans
        next_day = samples(scrape(collector))

    quota = {"quota": "escalations_per_hour"}
    assert sample(at_noon, "costline_quota_limit", **quota) == 4
    assert sample(at_noon, "costline_quota_used", **quota) == 1
    assert sample(at_noon, "costline_quota_headroom_ratio", **quota) == 0.75
    assert sample(at_noon, "costline_budget_limit_usd", period="daily") == 1.0
    assert (
        sample(at_noon, "costline_budget_spent_usd", period="daily") == 0.021
    )  # two calls of 1000 in + 500 out at $3/$15 per million
    assert sample(at_noon, "costline_budget_headroom_ratio", period="daily") == 1.0 - 0.021
    assert sample(at_noon, "costline_budget_limit_usd", period="monthly") is None  # a 0 budget has no series
    assert sample(at_noon, "costline_escalations_total", reason="threshold", model=SONNET_45) == 4
    assert sample(at_noon, "costline_escalations_total", reason="critical", model=SONNET_45) is None
    assert sample(next_day, "costline_quota_used", **quota) == 0
    assert sample(next_day, "costline_quota_headroom_ratio", **quota) == 1.0
    assert sample(next_day, "costline_budget_spent_usd", period="daily") == 0
    assert sample(next_day, "costline_budget_headroom_ratio", period="daily") == 1.0


def test_an_unpriced_model_is_null_not_zero_and_is_reported(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="costline.collector")
    with Collector(collector_config(tmp_path / "ledger.duckdb")) as collector:
        with otel(collector) as (tracer, provider):
            attempt(tracer, start=RECENT, model="claude-imaginary-9")
            attempt(tracer, start=RECENT, model="claude-imaginary-9")
            assert provider.force_flush()
        got = rows(collector, "SELECT cost_usd, price_source FROM attempts")
        values = samples(scrape(collector))
    assert got == [(None, "unpriced"), (None, "unpriced")]
    imaginary = {"provider": "anthropic", "model": "claude-imaginary-9"}
    assert sample(values, "costline_unpriced_attempts_total", **imaginary) == 2
    assert sample(values, "costline_cost_usd_total", **imaginary) is None
    warnings = [r.getMessage() for r in caplog.records if "could not be priced" in r.getMessage()]
    assert warnings == [
        "2 attempt(s) of provider=anthropic model=claude-imaginary-9 could not be priced and were stored with a NULL "
        'cost; add [prices."claude-imaginary-9"] to the config to price them'
    ]


def test_promtool_accepts_the_metrics_page(tmp_path: Path) -> None:
    with Collector(collector_config(tmp_path / "ledger.duckdb")) as collector:
        with otel(collector) as (tracer, provider):
            _two_tasks(tracer)
            attempt(tracer, start=RECENT, model="claude-imaginary-9")
            assert provider.force_flush()
        page = scrape(collector)
    result = subprocess.run(
        [binary("promtool"), "check", "metrics"], input=page, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


HAIKU = "claude-haiku-4-5"


class _LedgerFile:
    """A report reader over a stopped collector's ledger file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, sql: str, params: Any = ()) -> pa.Table:
        with duckdb.connect(str(self.path), read_only=True) as con:
            return con.sql(sql, params=params).to_arrow_table()


def test_an_emitter_cost_that_disagrees_is_flagged_in_the_ledger_a_report_and_a_metric(tmp_path: Path) -> None:
    """Logfire reports its own price of the call (list prices, from genai-prices); this user pays a negotiated
    rate 20 % below list, set in the config, so the two figures disagree and every reader is told."""
    logfire = next(span for span in emitter_spans.SPANS if span.name.startswith("Logfire"))
    negotiated = ModelPrice(input=2.4, output=12.0, cache_read=0.24, cache_write=3.0)  # list: 3, 15, 0.30, 3.75
    ledger = tmp_path / "ledger.duckdb"
    config = collector_config(ledger, prices=lambda _: {emitter_spans.MODEL: negotiated})
    start = ns(RECENT)
    with Collector(config) as collector:
        with otel(collector, service="someone-elses-app") as (_, provider):
            tracer = provider.get_tracer(logfire.scope)
            tracer.start_span(logfire.span_name, attributes=logfire.attributes, start_time=start).end(start + 10**9)
            # A call whose emitter carried no cost: nothing to disagree with.
            tracer.start_span("chat", attributes=_sdk_attributes(HAIKU), start_time=start).end(start + 10**9)
            assert provider.force_flush()
        got = rows(collector, "SELECT request_model, cost_usd, reported_cost_usd, cost_disagrees, price_source "
                   "FROM attempts ORDER BY request_model")  # fmt: skip
        values = samples(scrape(collector))
    list_price = Decimal(emitter_spans.CALL_USD)
    assert got == [
        (HAIKU, Decimal("0.0035"), None, None, "genai-prices"),  # 1,000 × $1 + 500 × $5 per million
        (emitter_spans.MODEL, list_price * Decimal("0.8"), list_price, True, "config"),
    ]
    disagreements = "costline_cost_disagreements_total"
    assert sample(values, disagreements, provider="anthropic", model=emitter_spans.MODEL) == 1
    assert [dict(labels) for name, labels in values if name == disagreements] == [
        {"provider": "anthropic", "model": emitter_spans.MODEL}
    ]
    report = cost_report(_LedgerFile(ledger), parse_window(None, None, None, now=NOW), ("model",))
    (table,) = report.tables
    by_model = {row["model"]: row["cost_disagreements"] for row in table.rows}
    assert by_model == {emitter_spans.MODEL: 1, HAIKU: 0}
    assert table.total is not None and table.total["cost_disagreements"] == 1
    assert any("1 attempt(s) carry a cost reported by their emitter that differs" in note for note in table.notes)


def _framework_and_sdk_spans(provider: TracerProvider, *, flush_between: bool = False) -> None:
    """A framework's GenAI span that records no usage around the SDK span of the same call, which does (20k input
    and 2k output tokens), in OpenLLMetry's attribute names; with ``flush_between``, the outer span is exported (and
    stored) in a request before the inner one."""
    start = ns(RECENT)
    outer = provider.get_tracer("opentelemetry.instrumentation.langchain").start_span(
        f"chat {SONNET_45}",
        kind=SpanKind.CLIENT,
        attributes={S.ALIAS_SYSTEM: "Anthropic", S.OPERATION_NAME: "chat", S.REQUEST_MODEL: SONNET_45},
        start_time=start,
    )
    with trace.use_span(outer, end_on_exit=False):
        inner = provider.get_tracer("opentelemetry.instrumentation.anthropic").start_span(
            "anthropic.chat",
            kind=SpanKind.CLIENT,
            attributes={
                **_without_usage(_sdk_attributes()),
                S.ALIAS_SYSTEM: "Anthropic",
                S.ALIAS_PROMPT_TOKENS: 20_000,
                S.ALIAS_COMPLETION_TOKENS: 2_000,
            },
            start_time=start + 10**6,
        )
    outer.end(start + 2 * 10**9)
    if flush_between:
        assert provider.force_flush()
    inner.end(start + 10**9 + 5 * 10**8)


CALL_20K_2K = Decimal("0.09")  # 20,000 × $3 + 2,000 × $15 per million


def _without_usage(attributes: dict[str, object]) -> dict[str, object]:
    """Without the token counts, which the caller sets in the emitter's own names."""
    return {k: v for k, v in attributes.items() if k not in (S.USAGE_INPUT_TOKENS, S.USAGE_OUTPUT_TOKENS)}


def test_of_an_empty_framework_span_and_its_sdk_span_the_one_with_usage_is_kept(tmp_path: Path) -> None:
    with Collector(collector_config(tmp_path / "ledger.duckdb")) as collector:
        with otel(collector, service="someone-elses-app") as (_, provider):
            _framework_and_sdk_spans(provider)
            assert provider.force_flush()
        got = rows(collector, "SELECT span_id IS NOT NULL, input_tokens, output_tokens, cost_usd FROM attempts")
        values = samples(scrape(collector))
    assert got == [(True, 20_000, 2_000, CALL_20K_2K)]
    assert sample(values, "costline_cost_usd_total", provider="anthropic", model=SONNET_45) == float(CALL_20K_2K)
    assert sample(values, "costline_ingest_spans_total", result="duplicate") == 1  # the empty account of the call


def test_an_empty_span_stored_first_is_superseded_by_the_span_with_usage_arriving_later(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.duckdb"
    with Collector(collector_config(ledger)) as collector:
        with otel(collector, service="someone-elses-app") as (_, provider):
            _framework_and_sdk_spans(provider, flush_between=True)
            assert provider.force_flush()
        stored = rows(collector, "SELECT input_tokens, price_source, superseded_by IS NOT NULL FROM attempts "
                      "ORDER BY start_time")  # fmt: skip
        costs = rows(collector, "SELECT count(*), sum(cost_usd), sum(input_tokens) FROM attempt_costs")
        values = samples(scrape(collector))
    # The empty row stays for the counters that already saw it, marked; every view and report leaves it out.
    assert stored == [(None, "no-usage", True), (20_000, "genai-prices", False)]
    assert costs == [(1, CALL_20K_2K, 20_000)]
    assert sample(values, "costline_cost_usd_total", provider="anthropic", model=SONNET_45) == float(CALL_20K_2K)
    assert sample(values, "costline_tokens_total", provider="anthropic", model=SONNET_45, type="input") == 20_000
    report = cost_report(_LedgerFile(ledger), parse_window(None, None, None, now=NOW), ("model",))
    (table,) = report.tables
    assert [(row["model"], row["attempts"], row["cost_usd"]) for row in table.rows] == [(SONNET_45, 1, CALL_20K_2K)]


def test_distinct_model_names_beyond_the_series_cap_are_counted_under_other(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """Label cardinality and log lines stay bounded whatever names arrive; totals stay exact; folding is counted."""
    caplog.set_level(logging.WARNING, logger="costline.collector")
    config = collector_config(tmp_path / "ledger.duckdb", collector={"max_series_per_metric": 5})
    names = [f"claude-imaginary-{i}" for i in range(12)]

    def series(values: dict, name: str) -> dict[str, float]:
        return {dict(labels)["model"]: v for (sample_name, labels), v in values.items() if sample_name == name}

    with Collector(config) as collector:
        with otel(collector) as (tracer, provider):
            for i, model in enumerate(names):
                for _ in range(2 if i < 3 else 1):  # the first three models are the largest
                    attempt(tracer, start=RECENT, model=model)
            assert provider.force_flush()
        values = samples(scrape(collector))
    attempts = series(values, "costline_attempts_total")
    assert len(attempts) == 6 and sum(attempts.values()) == 15  # five label sets kept, then 'other'
    assert attempts["other"] == 15 - sum(v for model, v in attempts.items() if model != "other")
    assert sample(values, "costline_metric_folded_updates_total", metric="costline_attempts") == 7
    assert len(series(values, "costline_unpriced_attempts_total")) == 6
    warnings = [r.getMessage() for r in caplog.records if "could not be priced" in r.getMessage()]
    assert len(warnings) == 6 and warnings[-1].startswith("7 more attempt(s) could not be priced")

    # A restart seeds the largest label sets first: the three models with two attempts keep their own series.
    with Collector(config) as collector:
        again = series(samples(scrape(collector)), "costline_attempts_total")
    assert sum(again.values()) == 15 and len(again) == 6
    assert set(names[:3]) <= set(again)
