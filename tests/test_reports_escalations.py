"""`costline report escalations` and `costline report savings`: rates, reasons, failures and savings, exactly."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from ledger_fixtures import NOW, SONNET, attempt, scenario, write_config, write_ledger
from typer.testing import CliRunner

from costline.cli import app

runner = CliRunner()
WINDOW = ["--from", "2026-11-20", "--to", "2026-11-29"]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    data = scenario(NOW)
    return write_config(tmp_path, write_ledger(tmp_path / "ledger.duckdb", data.attempts, data.tasks))


def report(config: Path, sub: str, *args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["report", sub, *WINDOW, *args, "-c", str(config), "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout, parse_float=Decimal)


def test_escalation_rate_by_task_type(config: Path) -> None:
    table = report(config, "escalations")["tables"]["by_task_type"]
    rows = {row["task_type"]: row for row in table["rows"]}
    assert {k: (v["tasks"], v["escalated_tasks"], v["escalation_rate"]) for k, v in rows.items()} == {
        "summarize": (2, 1, Decimal("0.5")),
        "code_generation": (1, 1, 1),
        "general": (2, 0, 0),
    }
    summarize = rows["summarize"]
    assert summarize["escalations"] == 1  # t4's escalation was refused by the quota: not made, so not counted
    assert summarize["escalation_successes"] == 1
    assert summarize["escalations_refused"] == 1
    assert summarize["escalation_cost_usd"] == Decimal("0.0105")
    total = table["total"]
    assert (total["tasks"], total["escalated_tasks"], total["escalations"]) == (5, 2, 2)
    assert total["escalation_rate"] == Decimal("0.4")
    assert total["escalation_cost_usd"] == Decimal("0.0526")


def test_escalations_by_reason(config: Path) -> None:
    rows = report(config, "escalations")["tables"]["reasons"]["rows"]
    assert [
        (r["reason"], r["model"], r["escalations"], r["successes"], r["errors"], r["refused"], r["cost_usd"])
        for r in rows
    ] == [
        ("threshold", SONNET, 1, 1, 0, 1, Decimal("0.0105")),
        ("critical", SONNET, 1, 1, 0, 0, Decimal("0.0421")),
    ]


def test_which_local_models_fail_most_and_how(config: Path) -> None:
    rows = report(config, "escalations")["tables"]["local_failures"]["rows"]
    assert [(r["model"], r["error_type"], r["failures"], r["model_failures"], r["model_attempts"]) for r in rows] == [
        ("qwen2.5-coder:14b", "timeout", 2, 3, 4),
        ("qwen2.5-coder:14b", "model_not_found", 1, 3, 4),
        ("qwen3:30b-a3b", "invalid_output", 1, 2, 3),
        ("qwen3:30b-a3b", "timeout", 1, 2, 3),
    ]
    assert rows[0]["share_of_attempts"] == Decimal("0.5")


def test_escalations_csv_has_one_section_per_table(config: Path) -> None:
    result = runner.invoke(app, ["report", "escalations", *WINDOW, "-c", str(config), "--format", "csv"])
    assert result.exit_code == 0, result.output
    sections = {}
    for block in result.stdout.split("\n\n"):
        name, _, body = block.partition("\n")
        sections[name.removeprefix("# ")] = list(csv.DictReader(io.StringIO(body)))
    assert list(sections) == ["by_task_type", "reasons", "local_failures"]
    assert sections["by_task_type"][0]["task_type"] == "summarize"
    assert Decimal(sections["by_task_type"][0]["escalation_cost_usd"]) == Decimal("0.0105")
    assert [r["error_type"] for r in sections["local_failures"]] == [
        "timeout",
        "model_not_found",
        "invalid_output",
        "timeout",
    ]


def test_escalations_table_shows_rates_as_percentages(config: Path) -> None:
    result = runner.invoke(app, ["report", "escalations", *WINDOW, "-c", str(config)])
    assert result.exit_code == 0, result.output
    total = next(line for line in result.stdout.splitlines() if line.strip().startswith("total"))
    assert total.split() == ["total", "5", "2", "40.0", "%", "2", "2", "1", "$0.05"]


def test_savings_against_the_all_claude_baseline(config: Path) -> None:
    doc = report(config, "savings")
    (summary,) = doc["tables"]["summary"]["rows"]
    counterfactual = Decimal("0.012345679") + Decimal("0.0031")
    cloud = Decimal("0.0421") + Decimal("0.0105") + Decimal("0.0021")  # the unpriced ones add nothing
    local = Decimal("0.0004")
    assert summary["local_successes"] == 2
    assert summary["counterfactual_usd"] == counterfactual
    assert summary["cloud_spend_usd"] == cloud
    assert summary["local_spend_usd"] == local
    assert summary["actual_spend_usd"] == cloud + local
    assert summary["baseline_usd"] == cloud + counterfactual
    assert summary["savings_usd"] == counterfactual - local == Decimal("0.015045679")
    percent = 100 * (counterfactual - local) / (cloud + counterfactual)
    assert float(summary["savings_pct"]) == pytest.approx(float(percent))
    by_model = {row["model"]: row for row in doc["tables"]["by_local_model"]["rows"]}
    assert by_model["qwen2.5-coder:14b"]["savings_usd"] == Decimal("0.012345679")
    assert by_model["qwen3:30b-a3b"]["savings_usd"] == Decimal("0.0027")
    assert by_model["qwen3:30b-a3b"]["local_successes"] == 1


def test_savings_table_names_the_escalation_model_and_rounds_to_the_cent(tmp_path: Path) -> None:
    rows = [
        attempt(NOW, counterfactual_usd=Decimal("7.125"), cost_usd=Decimal("0.5")),
        attempt(NOW, provider="anthropic", request_model=SONNET, tier="escalation", cost_usd=Decimal("2.5")),
    ]
    config = write_config(
        tmp_path, write_ledger(tmp_path / "l.duckdb", rows), extra='[escalation]\nmodel = "claude-opus-4-5"\n'
    )
    result = runner.invoke(app, ["report", "savings", *WINDOW, "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "their cost on claude-opus-4-5" in result.stdout
    line = next(line for line in result.stdout.splitlines() if "$7.13" in line)
    # successes, counterfactual, uncounted, cloud, local, actual, baseline, savings, %
    assert line.split() == ["1", "$7.13", "0", "$2.50", "$0.50", "$3.00", "$9.63", "$6.63", "68.8", "%"]


def test_savings_of_an_empty_window(config: Path) -> None:
    result = runner.invoke(app, ["report", "savings", "--from", "2020-01-01", "--to", "2020-01-02", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "nothing to compare in this window: the baseline is $0" in " ".join(result.stdout.split())
    doc = json.loads(
        runner.invoke(
            app, ["report", "savings", "--from", "2020-01-01", "--to", "2020-01-02", "-c", str(config), "-f", "json"]
        ).stdout
    )
    (summary,) = doc["tables"]["summary"]["rows"]
    assert summary["savings_usd"] == 0
    assert summary["savings_pct"] is None
    assert doc["tables"]["by_local_model"]["rows"] == []


def test_escalations_of_an_empty_window(config: Path) -> None:
    result = runner.invoke(
        app, ["report", "escalations", "--from", "2020-01-01", "--to", "2020-01-02", "-c", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert "no routed tasks in this window" in result.stdout


def test_options_before_the_sub_report_apply_to_it(config: Path) -> None:
    args = ["report", "--from", "2020-01-01", "--to", "2020-01-02", "--format", "json", "-c", str(config)]
    result = runner.invoke(app, [*args, "savings"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["window"] == {"from": "2020-01-01T00:00:00+00:00", "to": "2020-01-03T00:00:00+00:00"}
    # The sub-report's own options win.
    result = runner.invoke(app, [*args, "escalations", *WINDOW])
    assert json.loads(result.stdout)["window"]["from"] == "2026-11-20T00:00:00+00:00"


def test_by_is_for_the_cost_report_only(config: Path) -> None:
    result = runner.invoke(app, ["report", "--by", "model", "escalations", "-c", str(config)])
    assert result.exit_code == 2
    assert "--by and --top shape the cost report only" in " ".join(result.stderr.split())


def test_a_local_success_without_a_counterfactual_is_flagged(tmp_path: Path) -> None:
    rows = [attempt(NOW, counterfactual_usd=None), attempt(NOW, counterfactual_usd=Decimal("0.25"))]
    config = write_config(tmp_path, write_ledger(tmp_path / "l.duckdb", rows))
    result = runner.invoke(app, ["report", "savings", *WINDOW, "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "1 local success(es) have no counterfactual price: their savings are not counted" in " ".join(
        result.stdout.split()
    )
    (summary,) = report(config, "savings")["tables"]["summary"]["rows"]
    assert (summary["local_successes"], summary["uncounted_local_successes"]) == (2, 1)
    assert summary["savings_usd"] == Decimal("0.25")
