"""Dashboards and rules against a real Prometheus scraping a real collector fed by the router.

The router (real ollama and anthropic clients) talks to the simulated servers and exports spans over OTLP/HTTP to
a collector with a DuckDB ledger in tmp; a Prometheus on a free loopback port scrapes the collector every second
and evaluates the repository's recording rules and the generated alerts (with short ``for`` durations). Then every
expression of every dashboard panel must be valid PromQL that returns data, the escalation-ratio recording rule
must equal the ratio computed from the ledger, and the monthly budget alert must fire on a tiny test budget.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from promtools import Prometheus, binary

from collector.service import Collector
from costline.config import BudgetConfig, Config, ModelPrice, load_config, with_overrides
from costline.demo.fake_anthropic import ClaudeReply, FakeAnthropic
from costline.demo.fake_ollama import FakeOllama, OllamaError, OllamaReply
from dashboards import generate
from dashboards.queries import DEFAULT_VALUES, queries, substitute
from dashboards.stack import DEFAULT as STACK
from dashboards.thresholds import DEFAULT as THRESHOLDS
from router.router import Router
from router.task import Task

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PRIMARY, FALLBACK = "qwen2.5-coder:14b", "qwen3:30b-a3b"
CLAUDE = "claude-sonnet-4-6"
UNPRICED_CLAUDE = "claude-internal-preview"  # genai-prices does not know it; only one router's config prices it
MONTHLY_TEST_BUDGET = 0.0001  # USD: the first escalation exceeds it
ALERT = "CostlineMonthlyBudgetExhausted"
TEST_THRESHOLDS = replace(THRESHOLDS, monthly_exhausted_for="2s", evaluation_interval="1s")
WAIT_S = 60.0


def _ollama_behaviour(body: dict[str, Any]) -> Any:
    """Local models answer by what the prompt asks for: fail, answer badly, or answer well."""
    prompt = body["messages"][-1]["content"]
    model = body["model"]
    if "[local-fails]" in prompt or ("[primary-fails]" in prompt and model == PRIMARY):
        return OllamaError(503)
    if "[primary-rambles]" in prompt and model == PRIMARY:
        return OllamaReply(content="well, it depends", eval_count=25)
    return OllamaReply(content="- done", prompt_eval_count=150, eval_count=60)


def _workload(phase: int) -> list[tuple[str, Task]]:
    """(router, task) pairs covering every label combination the dashboards show; both phases are alike."""

    def bulleted(text: str) -> str | None:
        return None if text.startswith("- ") else "answer with a bullet list"

    def task(prompt: str, **kwargs: Any) -> Task:
        return Task(prompt=f"{prompt} (phase {phase})", **kwargs)

    return [
        ("main", task("summarise the notes", team="support")),
        ("main", task("summarise the notes again")),
        ("main", task("[primary-fails] classify the ticket")),
        ("main", task("[primary-rambles] summarise as bullets", validator=bulleted)),
        ("main", task("[local-fails] draft the reply")),
        ("main", task("[local-fails] write the parser", type="code_generation")),
        ("main", task("review this design", prefer_escalation=True, team="search")),
        ("unpriced", task("review this contract", prefer_escalation=True)),
        ("no_quota", task("review this plan", prefer_escalation=True)),
    ]


@contextmanager
def _routers(base: Config, collector: Collector) -> Iterator[dict[str, Router]]:
    telemetry = {"otlp_endpoint": collector.otlp_url}
    configs = {
        "main": with_overrides(base, telemetry=telemetry),
        # This router has a price for the model, the collector has none: its attempts arrive unpriced.
        "unpriced": with_overrides(
            base,
            telemetry=telemetry,
            escalation={"model": UNPRICED_CLAUDE},
            prices=lambda _: {UNPRICED_CLAUDE: ModelPrice(input=3.0, output=15.0)},
        ),
        "no_quota": with_overrides(base, telemetry=telemetry, escalation={"max_calls_per_hour": 0}),
    }
    with ExitStack() as stack:
        yield {name: stack.enter_context(Router(config)) for name, config in configs.items()}


def _run_phase(base: Config, collector: Collector, phase: int) -> list[Any]:
    with _routers(base, collector) as routers:
        results = [routers[name].run(task) for name, task in _workload(phase)]
    # Closing the routers flushed their spans; wait until the collector committed them and counted them.
    expected = len(results) * phase
    _wait(f"{expected} tasks in the ledger", lambda: _ledger(collector, "SELECT count(*) FROM tasks")[0][0] == expected)
    _wait(f"{expected} tasks on /metrics", lambda: _exposed(collector, "costline_tasks_total") == expected)
    return results


def _exposed(collector: Collector, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` (matching ``labels``) that the collector's /metrics shows right now."""
    with urllib.request.urlopen(f"{collector.metrics_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def _ledger(collector: Collector, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    con = collector.connection
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _wait(what: str, check: Any, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def _prometheus_config(directory: Path, collector: Collector) -> Path:
    """Scrape the collector every second and load the committed recording rules plus test-tuned alerts."""
    files = generate.render(TEST_THRESHOLDS)
    rules_dir = directory / "rules"
    rules_dir.mkdir(parents=True)
    recording = yaml.safe_load(files[generate.RECORDING_RULES])
    committed = yaml.safe_load((ROOT / generate.RECORDING_RULES).read_text(encoding="utf-8"))
    assert recording["groups"][0]["rules"] == committed["groups"][0]["rules"], "the test must run the repo's rules"
    (rules_dir / "costline-recording.yml").write_text(files[generate.RECORDING_RULES], encoding="utf-8")
    (rules_dir / "costline-alerts.yml").write_text(files[generate.ALERT_RULES], encoding="utf-8")
    target = collector.metrics_url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(rules_dir / "*.yml")],
        "scrape_configs": [{"job_name": STACK.collector_job, "static_configs": [{"targets": [target]}]}],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _finite_values(result: list[dict[str, Any]]) -> list[float]:
    values = [float(v) for series in result for _, v in series.get("values", [series.get("value", [0, "NaN"])])]
    return [v for v in values if math.isfinite(v)]


def _scalar(prometheus: Prometheus, expr: str) -> float | None:
    result = prometheus.query(expr)
    return float(result[0]["value"][1]) if len(result) == 1 else None


def test_dashboards_and_rules_against_a_real_prometheus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary("prometheus")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-e2e-test-key")
    for name in ("ANTHROPIC_BASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    with ExitStack() as stack:
        ollama = stack.enter_context(FakeOllama())
        claude = stack.enter_context(FakeAnthropic(api_key="sk-ant-e2e-test-key"))
        for model in (PRIMARY, FALLBACK):
            ollama.set_default(model, _ollama_behaviour)
        for model in (CLAUDE, UNPRICED_CLAUDE):
            claude.set_default(model, ClaudeReply(text="- reviewed", input_tokens=900, output_tokens=350))
        base = with_overrides(
            load_config(env={}),
            router={
                "ollama_host": ollama.url,
                "models": [PRIMARY, FALLBACK],
                "timeout_s": 5.0,
                "max_retries": 0,
                "usage_db": str(tmp_path / "usage.sqlite"),
            },
            escalation={"model": CLAUDE, "base_url": claude.url, "max_calls_per_hour": 1000},
            collector={"otlp_port": 0, "metrics_port": 0, "ledger": str(tmp_path / "ledger.duckdb")},
        )
        # The collector's budgets drive its gauges: a daily budget that holds, and a monthly one that is blown.
        collector = stack.enter_context(
            Collector(
                with_overrides(
                    base,
                    budgets={"daily_usd": 1000.0, "monthly_usd": MONTHLY_TEST_BUDGET},
                    team_budgets=lambda _: {"search": BudgetConfig(daily_usd=0.0, monthly_usd=500.0)},
                )
            )
        )
        # The budget gauges count from the start of the month the test began in, so a run that crosses into a new
        # month (or day) still compares the gauge with every escalation it made.
        began = datetime.now(UTC)
        collector.metrics.clock = lambda: began

        # Phase 1, before Prometheus starts: every series the dashboards read exists at its first scrape.
        phase1 = _run_phase(base, collector, 1)
        assert {r.outcome for r in phase1} == {"completed", "quota_exhausted"}

        prometheus = stack.enter_context(
            Prometheus(_prometheus_config(tmp_path / "prometheus", collector), tmp_path / "prometheus")
        )
        up = f'up{{job="{STACK.collector_job}"}}'
        prometheus.wait_for(
            "two successful scrapes", lambda: (_scalar(prometheus, f"sum_over_time({up}[1m])") or 0) >= 2
        )

        # Phase 2, while Prometheus watches: the counters' increase is exactly this phase's tasks.
        phase2_start = datetime.now(UTC)
        phase2 = _run_phase(base, collector, 2)
        assert [r.escalated for r in phase2] == [r.escalated for r in phase1]
        total_tasks = len(phase1) + len(phase2)
        prometheus.wait_for(
            "the phase-2 counters in Prometheus",
            lambda: _scalar(prometheus, "sum(costline_tasks_total)") == total_tasks,
        )

        escalated, tasks = _ledger(
            collector,
            "SELECT count(*) FILTER (WHERE escalated), count(*) FROM tasks WHERE start_time >= ?",
            [phase2_start],
        )[0]
        assert tasks == len(phase2)
        ledger_ratio = escalated / tasks
        assert 0 < ledger_ratio < 1
        whole_ledger = _ledger(collector, "SELECT avg(CASE WHEN escalated THEN 1.0 ELSE 0.0 END) FROM tasks")[0][0]
        assert float(whole_ledger) == pytest.approx(ledger_ratio)

        # The recording rules converge once the last phase-2 scrape has been evaluated; then they must be exact.
        for record in ("costline:escalation_ratio:rate5m", "costline:escalation_ratio:rate1h"):
            got = prometheus.wait_for(
                f"{record} to equal the ledger's {ledger_ratio}",
                lambda record=record: (
                    (v := _scalar(prometheus, record)) is not None and v == pytest.approx(ledger_ratio, rel=1e-9) and v
                ),
            )
            assert got == pytest.approx(ledger_ratio, rel=1e-9)

        # Every panel's expression is valid PromQL that returns data, evaluated now: every window of the test
        # variables ($__rate_interval = 1m, $__range = 1h) spans the whole of this test, phase 2 included.
        at = time.time()
        checked = []
        for path in sorted((ROOT / generate.DASHBOARD_DIR).glob("*.json")):
            dashboard = json.loads(path.read_text(encoding="utf-8"))
            for query in queries(dashboard):
                expr = substitute(query.expr)
                result = prometheus.query(expr, at=at)
                assert _finite_values(result), f"{query.dashboard} / {query.panel} [{query.ref_id}] no data: {expr}"
                checked.append(query.panel)
        assert len(checked) >= 25

        # The variables' label_values queries offer the workload's providers and models.
        providers = prometheus.api("label/provider/values", **{"match[]": "costline_attempts_total"})
        assert set(providers) == {"ollama", "anthropic"}
        models = prometheus.api("label/model/values", **{"match[]": 'costline_attempts_total{provider=~".*"}'})
        assert set(models) == {PRIMARY, FALLBACK, CLAUDE, UNPRICED_CLAUDE}

        # Choosing a provider and a model in the variables narrows the panels to them.
        overview = json.loads((ROOT / generate.DASHBOARD_DIR / "costline-overview.json").read_text(encoding="utf-8"))
        by_panel = {q.panel: q.expr for q in queries(overview) if q.ref_id == "A"}
        only_primary = {**DEFAULT_VALUES, "provider": "ollama", "model": PRIMARY}
        calls = by_panel["Calls by outcome per model, and refused escalations"]
        outcomes = prometheus.query(substitute(calls, only_primary), at=at)
        assert {(s["metric"]["model"], s["metric"]["outcome"]) for s in outcomes} == {
            (PRIMARY, "success"),
            (PRIMARY, "error"),
        }
        only_claude = {**DEFAULT_VALUES, "provider": "anthropic", "model": f"{CLAUDE}|{UNPRICED_CLAUDE}"}
        spend = prometheus.query(substitute(by_panel["Spend rate by model"], only_claude), at=at)
        assert {s["metric"]["model"] for s in spend} == {CLAUDE}  # the unpriced model has no cost series

        # The spend alert with the tiny monthly budget fires, on the collector's gauge, which matches the ledger.
        spent = _ledger(
            collector,
            "SELECT sum(cost_usd) FROM attempts WHERE tier = 'escalation' AND start_time >= ?",
            [began.replace(day=1, hour=0, minute=0, second=0, microsecond=0)],
        )[0][0]
        assert float(spent) > MONTHLY_TEST_BUDGET
        gauge = 'costline_budget_spent_usd{period="monthly", team=""}'
        assert _scalar(prometheus, gauge) == pytest.approx(float(spent), rel=1e-9)
        # The team's own gauge holds its share only; the spend-by-team panel names it and folds nothing else in.
        team_spent = _ledger(
            collector,
            "SELECT sum(cost_usd) FROM attempts WHERE tier = 'escalation' AND team = 'search' AND start_time >= ?",
            [began.replace(day=1, hour=0, minute=0, second=0, microsecond=0)],
        )[0][0]
        team_gauge = 'costline_budget_spent_usd{period="monthly", team="search"}'
        assert 0 < float(team_spent) < float(spent)
        assert _scalar(prometheus, team_gauge) == pytest.approx(float(team_spent), rel=1e-9)
        by_team = prometheus.query(substitute(by_panel["Spend by team"]), at=at)
        team_usd = {s["metric"]["team"]: float(s["value"][1]) for s in by_team}
        assert set(team_usd) == {"search", "other", "(no team)"}  # support is not declared in the collector's config
        assert team_usd["other"] == 0  # support's calls were local
        assert team_usd["search"] > 0
        description = f"This month's spend is ${float(spent):.2f}, at or over the monthly budget."

        def firing_alert() -> dict[str, Any] | None:
            return next(
                (
                    a
                    for a in prometheus.api("alerts")["alerts"]
                    if a["labels"]["alertname"] == ALERT
                    and a["state"] == "firing"
                    and a["annotations"]["description"].startswith(description)
                ),
                None,
            )

        firing = prometheus.wait_for(f"{ALERT} to fire with '{description}'", firing_alert)
        assert firing["labels"]["severity"] == "critical"
        assert firing["labels"]["period"] == "monthly"
        assert firing["annotations"]["runbook_url"] == "docs/runbook.md#costlinemonthlybudgetexhausted"
        quiet = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]}
        assert not quiet & {"CostlineCollectorDown", "CostlineCollectorRejectingSpans", "CostlineDailyBudgetBurnFast"}

        # Prometheus shows what the collector exposes, which is what the ledger holds.
        stored = _ledger(collector, "SELECT (SELECT count(*) FROM attempts) + (SELECT count(*) FROM tasks)")[0][0]
        assert _exposed(collector, "costline_ingest_spans_total", result="stored") == stored
        assert _scalar(prometheus, 'sum(costline_ingest_spans_total{result="stored"})') == stored
