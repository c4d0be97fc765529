"""With routers fanning out over two collectors, each collector counts only its share: the recording rules must add
the shares up (counters, and the spent gauges each collector computes from its own ledger) and take the configured
limit once (every collector reports it alike). promtool runs the generated rules on series as two collectors in one
Prometheus job expose them."""

from __future__ import annotations

from pathlib import Path

import yaml
from promtools import promtool

from dashboards import metrics as m
from dashboards.stack import DEFAULT as STACK

ROOT = Path(__file__).resolve().parent.parent
RECORDING_RULES = ROOT / "prometheus" / "rules" / "costline-recording.yml"
ALERT_RULES = ROOT / "prometheus" / "rules" / "costline-alerts.yml"
MONTHLY_WARNING = "CostlineMonthlyBudgetNearlyExhausted"
DAILY_LIMIT_USD = 5


def series(metric: str, instance: str, values: str, **labels: str) -> dict[str, str]:
    shown = ",".join(f'{k}="{v}"' for k, v in {"job": STACK.collector_job, "instance": instance, **labels}.items())
    return {"series": f"{metric}{{{shown}}}", "values": values}


def expect(expr: str, value: float) -> dict:
    """``expr`` equals ``value`` to a millionth (promtool compares floats exactly)."""
    rounded = f"round({expr} * 1000000)"
    return {"expr": rounded, "eval_time": "30m", "exp_samples": [{"labels": "{}", "value": round(value * 1e6)}]}


def test_the_recording_rules_add_up_both_collectors_and_count_the_limit_once(tmp_path: Path) -> None:
    one, two = STACK.scale_collector_targets
    # Per minute: the first collector's share spends $0.60 and sees 10 tasks (2 escalated), the second's $1.20 and
    # 10 tasks (6 escalated). Both report the same configured daily budget.
    inputs = [
        series("costline_cost_usd_total", one, "0+0.6x60", provider="anthropic", model="claude-sonnet-4-6"),
        series("costline_cost_usd_total", two, "0+1.2x60", provider="anthropic", model="claude-sonnet-4-6"),
        series("costline_tasks_total", one, "0+8x60", task_type="general", outcome="completed", escalated="false"),
        series("costline_tasks_total", one, "0+2x60", task_type="general", outcome="completed", escalated="true"),
        series("costline_tasks_total", two, "0+4x60", task_type="general", outcome="completed", escalated="false"),
        series("costline_tasks_total", two, "0+6x60", task_type="general", outcome="completed", escalated="true"),
        series("costline_budget_limit_usd", one, f"{DAILY_LIMIT_USD}x60", period="daily"),
        series("costline_budget_limit_usd", two, f"{DAILY_LIMIT_USD}x60", period="daily"),
    ]
    dollars_per_second = (0.6 + 1.2) / 60
    checks = [
        expect("costline:cost_usd:rate5m", dollars_per_second),
        expect("costline:escalation_ratio:rate5m", (2 + 6) / 20),
        expect("costline:daily_budget_burn:rate5m", dollars_per_second * 86400 / DAILY_LIMIT_USD),
    ]
    run_promtool(tmp_path, inputs, checks)


def test_the_month_end_projection_starts_from_both_collectors_spend(tmp_path: Path) -> None:
    """Each collector's spent gauge is its own ledger's share of the month; the projection adds them up."""
    one, two = STACK.scale_collector_targets
    inputs = [
        series("costline_budget_spent_usd", one, "30x60", period="monthly"),
        series("costline_budget_spent_usd", two, "45x60", period="monthly"),
        # No spend in the window: the projection is the month's spend so far.
        series("costline_cost_usd_total", one, "10x60", provider="anthropic", model="claude-sonnet-4-6"),
        series("costline_cost_usd_total", two, "20x60", provider="anthropic", model="claude-sonnet-4-6"),
    ]
    run_promtool(tmp_path, inputs, [expect("costline:cost_usd:projected_month_end", 30 + 45)])


def test_headroom_panels_and_alerts_count_what_both_collectors_used_against_one_limit(tmp_path: Path) -> None:
    """Each collector's gauges see its own ledger: 8 and 9 of 20 quota calls used, $30 and $45 of a $100 month."""
    one, two = STACK.scale_collector_targets
    inputs = [
        series("costline_quota_limit", one, "20x60", quota="escalations_per_hour"),
        series("costline_quota_limit", two, "20x60", quota="escalations_per_hour"),
        series("costline_quota_used", one, "8x60", quota="escalations_per_hour"),
        series("costline_quota_used", two, "9x60", quota="escalations_per_hour"),
        series("costline_budget_limit_usd", one, "100x60", period="monthly"),
        series("costline_budget_limit_usd", two, "100x60", period="monthly"),
        series("costline_budget_spent_usd", one, "30x60", period="monthly"),
        series("costline_budget_spent_usd", two, "45x60", period="monthly"),
    ]
    generated = yaml.safe_load(ALERT_RULES.read_text(encoding="utf-8"))
    monthly = next(r for g in generated["groups"] for r in g["rules"] if r.get("alert") == MONTHLY_WARNING)
    checks = [
        labelled(m.QUOTA_HEADROOM_OVER_COLLECTORS, '{quota="escalations_per_hour"}', 1 - 17 / 20),
        labelled(m.BUDGET_HEADROOM_OVER_COLLECTORS, '{period="monthly"}', 1 - 75 / 100),
        labelled(f"{m.spent(m.MONTHLY)} / {m.budget_limit(m.MONTHLY)}", '{period="monthly"}', 0.75),
    ]
    run_promtool(tmp_path, inputs, checks)
    assert m.spent(m.MONTHLY) in monthly["expr"] and m.budget_limit(m.MONTHLY) in monthly["expr"]


def labelled(expr: str, labels: str, value: float) -> dict:
    return {
        "expr": f"round(({expr}) * 1000000)",
        "eval_time": "30m",
        "exp_samples": [{"labels": labels, "value": round(value * 1e6)}],
    }


def run_promtool(directory: Path, inputs: list[dict[str, str]], checks: list[dict]) -> None:
    test_file = directory / "two-collectors.test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(RECORDING_RULES)],
                "evaluation_interval": "1m",
                "tests": [{"interval": "1m", "input_series": inputs, "promql_expr_test": checks}],
            }
        ),
        encoding="utf-8",
    )
    result = promtool("test", "rules", test_file.name, cwd=directory)
    assert result.returncode == 0, result.stdout + result.stderr
