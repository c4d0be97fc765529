"""`costline usage` (the router's own store) and `costline report` (the ledger) agree on today's escalations.

The real router talks to the simulated Ollama and Anthropic servers, exports its spans with the real OTLP/HTTP
exporter to a real collector, and records escalations in its usage store; then both commands are asked about today.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from ledger_fixtures import write_config
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from typer.testing import CliRunner

from collector.service import Collector
from costline import clock
from costline.cli import app
from costline.config import load_config
from costline.demo.fake_anthropic import ClaudeReply
from costline.demo.fake_ollama import OllamaError
from router import Router, Task

runner = CliRunner()
PRIMARY, FALLBACK, LAST = "qwen2.5-coder:14b", "qwen3:30b-a3b", "llama3.1:70b"


def cli_json(*args: str) -> Any:
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout, parse_float=Decimal)


def test_usage_and_reports_agree_for_today(fake_ollama, fake_anthropic, make_config, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.duckdb"
    config = make_config(
        collector={"ledger": str(ledger), "otlp_port": 0, "metrics_port": 0},
        escalation={"max_calls_per_hour": 3},
    )
    fake_anthropic.set_default(
        "claude-sonnet-4-6", ClaudeReply(input_tokens=900, output_tokens=350, cache_read_input_tokens=1200)
    )
    # The router and its spans run on the real clock; both commands are asked about the day the workload began,
    # with the clock stopped then, so a run that crosses midnight still sees every escalation on both sides.
    started = datetime.now(UTC)
    with Collector(config) as collector:
        provider = TracerProvider(resource=Resource.create({"service.name": "costline-router"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{collector.otlp_url}/v1/traces")))
        with Router(config, tracer_provider=provider) as router:
            assert router.run(Task("a local answer")).ok
            fake_ollama.script(PRIMARY, OllamaError(503))
            fake_ollama.script(FALLBACK, OllamaError(500))
            assert router.run(Task("two local failures", type="summarize")).escalated  # threshold
            fake_ollama.script(PRIMARY, OllamaError(503))
            assert router.run(Task("critical", type="code_generation")).escalated  # critical
            assert router.run(Task("asked for Claude", prefer_escalation=True)).escalated  # requested
            refused = router.run(Task("over the quota", prefer_escalation=True))
            assert refused.outcome == "quota_exhausted"
        provider.shutdown()  # every span acknowledged: durable in the ledger
    cli_config = write_config(
        tmp_path, ledger, extra=f'[escalation]\nmax_calls_per_hour = 3\nbase_url = "{fake_anthropic.url}"\n'
    )
    day, next_day = started.date().isoformat(), (started + timedelta(days=1)).date().isoformat()
    with clock.pinned(started):
        usage = cli_json("usage", "-c", str(cli_config))
        as_csv = runner.invoke(app, ["usage", "--format", "csv", "-c", str(cli_config)])
        escalations = cli_json("report", "escalations", "--from", day, "--to", next_day, "-c", str(cli_config))
        by_tier = cli_json("report", "--from", day, "--to", next_day, "--by", "tier", "-c", str(cli_config))
    assert usage["date"] == day
    assert as_csv.exit_code == 0, as_csv.output
    csv_rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [row["reason"] for row in csv_rows] == [row["reason"] for row in usage["escalations"]] + ["total"]
    assert Decimal(csv_rows[-1]["cost_usd"]) == sum(Decimal(row["cost_usd"]) for row in csv_rows[:-1]) > 0
    assert int(csv_rows[-1]["calls"]) == usage["total"]["calls"] and csv_rows[-1]["date"] == day
    assert usage["usage_db"] == str(tmp_path / "usage.sqlite")

    from_usage = {
        row["reason"]: (row["calls"], row["succeeded"], row["failed"], row["refused"]) for row in usage["escalations"]
    }
    reasons = escalations["tables"]["reasons"]["rows"]
    from_ledger = {
        row["reason"]: (row["escalations"], row["successes"], row["errors"], row["refused"]) for row in reasons
    }
    assert (
        from_usage
        == from_ledger
        == {
            "threshold": (1, 1, 0, 0),
            "critical": (1, 1, 0, 0),
            "requested": (1, 1, 0, 1),
        }
    )
    usage_cost = {row["reason"]: Decimal(str(row["cost_usd"])) for row in usage["escalations"]}
    ledger_cost = {row["reason"]: row["cost_usd"] for row in reasons}
    for reason, cost in ledger_cost.items():
        assert cost > 0
        assert cost.quantize(Decimal("0.000001")) == usage_cost[reason].quantize(Decimal("0.000001")), reason
    escalation_tier = next(row for row in by_tier["tables"]["cost"]["rows"] if row["tier"] == "escalation")
    assert escalation_tier["cost_usd"].quantize(Decimal("0.01")) == Decimal(str(usage["total"]["cost_usd"])).quantize(
        Decimal("0.01")
    )
    for kind in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
        assert escalation_tier[kind] == usage["total"][kind], kind
    # Three calls were sent to Claude and one escalation was refused by the quota before anything was sent:
    # the cost report names them apart, as the usage store does.
    assert (escalation_tier["attempts"], escalation_tier["refused"]) == (4, 1)
    assert escalation_tier["attempts"] - escalation_tier["refused"] == sum(row["calls"] for row in usage["escalations"])
    assert escalation_tier["input_tokens"] == 3 * (900 + 1200)


def test_usage_shows_each_team_budget_as_the_router_counts_it(fake_ollama, fake_anthropic, tmp_path: Path) -> None:
    fake_anthropic.set_default("claude-sonnet-4-6", ClaudeReply(text="done", input_tokens=100, output_tokens=100))
    path = tmp_path / "costline.toml"
    path.write_text(
        f'[router]\nusage_db = "{tmp_path / "usage.sqlite"}"\nollama_host = "{fake_ollama.url}"\n'
        f'[escalation]\nbase_url = "{fake_anthropic.url}"\nmax_tokens = 400\n'
        '[budgets.teams."search"]\ndaily_usd = 0.007\n[budgets.teams."support"]\n'
    )
    config = load_config(path, env={})
    # One fixed moment for the router's usage store and the command alike: the day is the same whenever this runs.
    with clock.pinned(datetime(2026, 6, 15, 12, tzinfo=UTC)), Router(config) as router:
        assert router.run(Task("review", prefer_escalation=True, team="search")).escalated  # $0.0018
        refused = router.run(Task("review again", prefer_escalation=True, team="search"))
        assert router.run(Task("review", prefer_escalation=True, team="ads")).escalated  # no budget of its own
        usage = cli_json("usage", "-c", str(path))
        table = runner.invoke(app, ["usage", "-c", str(path)], terminal_width=200)
    assert refused.outcome == "budget_exhausted"  # its bound of $0.0063 no longer fits under $0.007
    assert set(usage["teams"]) == {"search"}  # support is declared without budgets; ads is not declared
    search = usage["teams"]["search"]
    assert (search["daily"]["limit_usd"], search["daily"]["spent_usd"]) == (Decimal("0.007"), Decimal("0.0018"))
    assert search["monthly"]["limit_usd"] is None
    assert Decimal(str(usage["budgets"]["daily"]["spent_usd"])) == Decimal("0.0036")  # the global spend: both teams
    assert table.exit_code == 0, table.output
    assert "team search daily budget" in table.output and "team search monthly" not in table.output
