"""Generated Prometheus rules: valid for promtool, unit-tested per alert, named by convention, tuned in one place."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from promtools import promtool

from dashboards import generate, rules
from dashboards.runbook import RUNBOOK, sections
from dashboards.stack import DEFAULT as STACK
from dashboards.thresholds import DEFAULT, Thresholds

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "prometheus" / "rules"
TESTS_DIR = ROOT / "prometheus" / "tests"
LEVEL_METRIC_OPERATIONS = re.compile(r"^[a-z][a-z0-9_]*:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*$")
EXPECTED_ALERTS = {
    "CostlineDailyBudgetBurnFast",
    "CostlineDailyBudgetBurnSlow",
    "CostlineMonthlyBudgetNearlyExhausted",
    "CostlineMonthlyBudgetExhausted",
    "CostlineProjectedMonthEndOverBudget",
    "CostlineTeamDailyBudgetBurnFast",
    "CostlineTeamBudgetHeadroomLow",
    "CostlineEscalationRateHigh",
    "CostlineEscalationQuotaHeadroomLow",
    "CostlineUnpricedAttempts",
    "CostlineCollectorDown",
    "CostlineCollectorRejectingSpans",
}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def committed_alerts() -> list[dict]:
    return [rule for group in load(RULES_DIR / "costline-alerts.yml")["groups"] for rule in group["rules"]]


def committed_records() -> list[dict]:
    return [rule for group in load(RULES_DIR / "costline-recording.yml")["groups"] for rule in group["rules"]]


def test_promtool_check_rules_accepts_the_generated_files():
    result = promtool("check", "rules", *sorted(RULES_DIR.glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 12 rules found" in result.stdout
    assert f"SUCCESS: {len(committed_records())} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", *sorted(p.name for p in TESTS_DIR.glob("*.yml")), cwd=TESTS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_fail_when_a_threshold_changes(tmp_path: Path):
    """The unit tests are not vacuous: with a 50 % escalation threshold the 40 % case must no longer fire."""
    loose = replace(DEFAULT, escalation_ratio=0.5)
    rules_dir = tmp_path / "rules"
    tests_dir = tmp_path / "tests"
    files = generate.render(loose)
    for relative in (generate.RECORDING_RULES, generate.ALERT_RULES):
        (rules_dir / Path(relative).name).parent.mkdir(parents=True, exist_ok=True)
        (rules_dir / Path(relative).name).write_text(files[relative], encoding="utf-8")
    tests_dir.mkdir()
    for test_file in TESTS_DIR.glob("*.yml"):
        (tests_dir / test_file.name).write_text(test_file.read_text(encoding="utf-8"), encoding="utf-8")
    result = promtool("test", "rules", *sorted(p.name for p in tests_dir.glob("*.yml")), cwd=tests_dir)
    assert result.returncode != 0
    failures = result.stdout + result.stderr
    assert "alertname: CostlineEscalationRateHigh" in failures
    assert "alertname: CostlineEscalationQuotaHeadroomLow" not in failures


def test_the_alert_list_is_the_one_the_issue_asks_for():
    assert {rule["alert"] for rule in committed_alerts()} == EXPECTED_ALERTS


def test_every_alert_has_a_firing_and_a_quiet_promtool_case():
    firing: set[str] = set()
    quiet: set[str] = set()
    for test_file in TESTS_DIR.glob("*.yml"):
        for case in load(test_file)["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing >= EXPECTED_ALERTS, f"no firing case for {sorted(EXPECTED_ALERTS - firing)}"
    assert quiet >= EXPECTED_ALERTS, f"no quiet case for {sorted(EXPECTED_ALERTS - quiet)}"


def test_every_alert_has_severity_summary_description_and_a_runbook_section():
    anchors = sections(RUNBOOK.read_text(encoding="utf-8"))
    for rule in committed_alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"].endswith("."), name
        assert len(rule["annotations"]["description"]) > 60, name
        assert rule["annotations"]["runbook_url"] == f"{STACK.runbook_base_url}#{anchors[name]}"
        assert rule["for"], name
    assert set(anchors) == EXPECTED_ALERTS, "docs/runbook.md must have exactly one section per alert"


def test_recording_rules_are_named_level_metric_operations_and_used():
    names = [rule["record"] for rule in committed_records()]
    assert len(names) == len(set(names))
    for name in names:
        assert LEVEL_METRIC_OPERATIONS.match(name), name
    assert {
        "costline:escalation_ratio:rate5m",
        "costline:escalation_ratio:rate1h",
        "model:costline_cost_usd:rate5m",
    } <= set(names)
    alert_exprs = " ".join(rule["expr"] for rule in committed_alerts())
    for referenced in re.findall(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b", alert_exprs):
        assert referenced in names, f"alerts use {referenced}, which no rule records"


def test_budget_alerts_read_the_collectors_budget_gauges():
    # Global budgets are the series without a team label; each declared team has its own series beside them.
    by_name = {rule["alert"]: rule["expr"] for rule in committed_alerts()}
    assert 'costline_budget_spent_usd{period="monthly", team=""}' in by_name["CostlineMonthlyBudgetExhausted"]
    assert 'costline_budget_limit_usd{period="monthly", team=""}' in by_name["CostlineMonthlyBudgetExhausted"]
    assert 'costline_budget_limit_usd{period="monthly", team=""}' in by_name["CostlineProjectedMonthEndOverBudget"]
    records = {rule["record"]: rule["expr"] for rule in committed_records()}
    burn = records["costline:daily_budget_burn:rate1h"]
    assert 'costline_budget_limit_usd{period="daily", team=""}' in burn
    # Global spend from the cost counter still sums every team.
    assert "sum(rate(costline_cost_usd_total[1h]))" in records["costline:cost_usd:rate1h"]
    assert 'up{job="costline-collector"} == 0' in by_name["CostlineCollectorDown"]


def test_thresholds_change_expression_for_and_description_together():
    strict = replace(
        DEFAULT, escalation_ratio=0.15, escalation_for="30m", monthly_warning_ratio=0.9, burn_fast_factor=10
    )
    generated = {alert.name: alert for alert in rules.alerts(strict, STACK)}
    escalation = generated["CostlineEscalationRateHigh"]
    assert "costline:escalation_ratio:rate1h > 0.15" in escalation.expr
    assert escalation.for_ == "30m"
    assert "warning above 15 %" in escalation.description
    assert generated["CostlineMonthlyBudgetNearlyExhausted"].expr.endswith(">= 0.9")
    assert "More than 90 % of the monthly budget" in generated["CostlineMonthlyBudgetNearlyExhausted"].summary
    fast = generated["CostlineDailyBudgetBurnFast"]
    assert "> 10\nand" in fast.expr and "within 2.4 h" in fast.description


def test_burn_windows_are_recorded_once_each():
    t = replace(DEFAULT, burn_fast_long_window="2h", burn_slow_short_window="2h")
    records = [rule["record"] for rule in rules.recording_rules(t)]
    assert records.count("costline:cost_usd:rate2h") == 1
    assert records.count("costline:daily_budget_burn:rate2h") == 1
    assert "costline:daily_budget_burn:rate1h" not in records


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("escalation_ratio", 1.5, "escalation_ratio = 1.5: must be a ratio in (0, 1]"),
        ("burn_fast_for", "two minutes", "burn_fast_for = 'two minutes': use a Prometheus duration"),
        ("burn_slow_factor", 0, "burn_slow_factor = 0: must be > 0"),
        ("escalation_min_tasks", 0, "escalation_min_tasks = 0: must be >= 1"),
    ],
)
def test_bad_thresholds_are_refused_with_the_field_and_the_fix(field: str, value: object, message: str):
    with pytest.raises(ValueError, match=re.escape(message)):
        Thresholds(**{field: value})


def test_an_alert_without_a_runbook_section_is_not_generated():
    text = RUNBOOK.read_text(encoding="utf-8").replace("## CostlineCollectorDown", "## Something else")
    with pytest.raises(LookupError, match=r"docs/runbook.md has no '## CostlineCollectorDown' section"):
        generate.render(runbook_text=text)


def test_runbook_links_follow_the_configured_base_url():
    stack = replace(STACK, runbook_base_url="https://git.example.com/costline/blob/main/docs/runbook.md")
    document = yaml.safe_load(generate.render(stack=stack)[generate.ALERT_RULES])
    urls = {r["alert"]: r["annotations"]["runbook_url"] for r in document["groups"][0]["rules"]}
    assert urls["CostlineUnpricedAttempts"] == (
        "https://git.example.com/costline/blob/main/docs/runbook.md#costlineunpricedattempts"
    )


def test_a_short_evaluation_interval_reaches_both_groups():
    t = replace(DEFAULT, evaluation_interval="1s")
    assert rules.recording_rule_file(t)["groups"][0]["interval"] == "1s"
    assert rules.alert_rule_file(t, STACK, RUNBOOK.read_text(encoding="utf-8"))["groups"][0]["interval"] == "1s"
    assert "interval" not in load(RULES_DIR / "costline-alerts.yml")["groups"][0]


def test_the_docs_list_every_alert_with_its_severity():
    section = (ROOT / "docs" / "dashboards-and-alerts.md").read_text(encoding="utf-8")
    for rule in committed_alerts():
        assert f"| `{rule['alert']}` | {rule['labels']['severity']} |" in section, rule["alert"]


def test_a_missing_binary_skips_with_the_install_command_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch):
    import promtools

    monkeypatch.setattr(promtools.shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"`promtool` not found on PATH: install it with `apt-get install"):
        promtools.binary("promtool")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install prometheus"):
        promtools.binary("promtool")
