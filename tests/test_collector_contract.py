"""Contract: the real router → real OTLP/HTTP exporter → this collector → ledger and /metrics, no mocks between.

The router talks to the simulated Ollama and Anthropic servers through the real client libraries.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from test_collector_support import rows, sample, samples, scrape

from collector.service import Collector
from costline.config import with_overrides
from costline.demo.fake_ollama import OllamaError
from router import Router, Task


def test_router_spans_land_in_the_ledger_exactly_once_with_the_routers_own_costs(
    fake_ollama, fake_anthropic, make_config, tmp_path: Path, monkeypatch
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)
    # Absent usage attributes (failed calls) are NULL in the ledger where the router's records say 0: tokens, and the
    # cost, which is unknown rather than $0 when a span reports no usage.
    config = make_config(collector={"otlp_port": 0, "metrics_port": 0, "ledger": str(tmp_path / "ledger.duckdb")})
    with Collector(config) as collector:
        routed = with_overrides(config, telemetry={"otlp_endpoint": collector.otlp_url})
        fake_ollama.script("qwen2.5-coder:14b", OllamaError(404))
        fake_ollama.script("qwen3:30b-a3b", OllamaError(503))
        with Router(routed) as router:
            escalated = router.run(Task("hard one", type="summarize", id="task-escalated"))
            local = router.run(Task("easy one", type="summarize", id="task-local"))
        assert escalated.ok and local.ok
        attempts = rows(
            collector,
            "SELECT task_id, attempt_index, tier, provider, request_model, outcome, error_type, escalation_reason, "
            "coalesce(input_tokens, 0), coalesce(output_tokens, 0), coalesce(cost_usd, 0), counterfactual_usd, "
            "price_source "
            "FROM attempts ORDER BY task_id, attempt_index",
        )
        tasks = rows(collector, "SELECT task_id, outcome, escalated, attempts FROM tasks ORDER BY task_id")
        values = samples(scrape(collector))

    router_rows = [
        (
            result.task_id,
            a.index,
            a.tier,
            a.provider,
            a.model,
            "success" if a.ok else "error",
            a.error_type,
            a.escalation_reason,
            a.input_tokens,
            a.output_tokens,
            a.cost_usd,
        )
        for result in (escalated, local)
        for a in result.attempts
    ]
    assert [row[:11] for row in attempts] == sorted(router_rows)
    assert [row[6] for row in attempts if row[0] == "task-escalated"] == ["model_not_found", "overloaded", None]
    assert [row[12] for row in attempts] == ["no-usage", "no-usage", "genai-prices", "local-free"]
    assert escalated.cost_usd == sum(row[10] for row in attempts if row[0] == "task-escalated")
    counterfactual = [row[11] for row in attempts if row[0] == "task-local"]
    assert len(counterfactual) == 1 and counterfactual[0] > Decimal(0)
    assert tasks == [("task-escalated", "completed", True, 3), ("task-local", "completed", False, 1)]
    claude = {"provider": "anthropic", "model": "claude-sonnet-4-6"}
    assert sample(values, "costline_escalations_total", reason="threshold", model="claude-sonnet-4-6") == 1
    assert sample(values, "costline_cost_usd_total", **claude) == float(escalated.attempts[-1].cost_usd)
    assert sample(values, "costline_ingest_spans_total", result="stored") == 6
    assert sample(values, "costline_ingest_spans_total", result="duplicate") == 0
