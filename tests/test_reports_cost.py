"""`costline report`: figures reconcile with the ledger rows, in every format, for any window and grouping."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from ledger_fixtures import NOW, attempt, scenario, write_config, write_ledger
from typer.testing import CliRunner

from collector.reports import Window, parse_window
from costline import clock
from costline.cli import app

runner = CliRunner()


def run(*args: str) -> Any:
    return runner.invoke(app, list(args))


@pytest.fixture
def recent(tmp_path: Path) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    """A ledger whose rows sit at fixed distances before NOW, with the clock stopped at NOW (for --since windows)."""
    data = scenario(NOW)
    ledger = write_ledger(tmp_path / "ledger.duckdb", data.attempts, data.tasks)
    with clock.pinned(NOW):
        yield write_config(tmp_path, ledger), data.attempts


@pytest.fixture
def fixed(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """A ledger around 2026-11-29 12:00 UTC (for --from/--to windows)."""
    data = scenario(NOW)
    ledger = write_ledger(tmp_path / "ledger.duckdb", data.attempts, data.tasks)
    return write_config(tmp_path, ledger), data.attempts


def squash(text: str) -> str:
    """Text without whitespace: the error console wraps long lines."""
    return "".join(text.split())


def model_of(row: dict[str, Any]) -> str:
    return row["request_model"] or row["response_model"]


def expected(rows: list[dict[str, Any]], key: Any = lambda row: ()) -> dict[Any, dict[str, Any]]:
    groups: dict[Any, dict[str, Any]] = defaultdict(
        lambda: {"attempts": 0, "tasks": set(), "input_tokens": 0, "cost_usd": Decimal(0), "unpriced_attempts": 0}
    )
    for row in rows:
        g = groups[key(row)]
        g["attempts"] += 1
        if row["task_id"]:
            g["tasks"].add(row["task_id"])
        g["input_tokens"] += row["input_tokens"] or 0
        if row["cost_usd"] is None:
            g["unpriced_attempts"] += 1
        else:
            g["cost_usd"] += row["cost_usd"]
    return {k: {**v, "tasks": len(v["tasks"])} for k, v in groups.items()}


def report_json(*args: str) -> dict[str, Any]:
    result = run("report", *args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout, parse_float=Decimal)


def test_total_for_30_days_reconciles_with_the_ledger_rows(recent: tuple[Path, list[dict[str, Any]]]) -> None:
    config, rows = recent
    in_window = [r for r in rows if r["start_time"] > NOW - timedelta(days=30)]
    assert len(in_window) == len(rows) - 1  # the 40-day-old row is outside
    want = expected(in_window)[()]
    doc = report_json("--since", "30d", "-c", str(config))
    (total,) = doc["tables"]["cost"]["rows"]
    assert total["attempts"] == want["attempts"] == 12
    assert total["tasks"] == want["tasks"] == 5
    assert total["input_tokens"] == want["input_tokens"] == 12_410
    assert total["cost_usd"] == want["cost_usd"] == Decimal("0.0551")
    assert total["unpriced_attempts"] == want["unpriced_attempts"] == 2
    assert total["reported_cost_usd"] == Decimal("0.002")
    assert total["cache_read_tokens"] == 2000
    assert total["cache_write_tokens"] == 500


def test_since_24h_keeps_only_the_last_day(recent: tuple[Path, list[dict[str, Any]]]) -> None:
    config, rows = recent
    doc = report_json("--since", "24h", "--by", "model", "-c", str(config))
    got = {row["model"]: row for row in doc["tables"]["cost"]["rows"]}
    cutoff = NOW - timedelta(hours=24)
    want = expected([r for r in rows if r["start_time"] > cutoff], model_of)
    assert (
        set(got)
        == set(want)
        == {
            "qwen2.5-coder:14b",
            "claude-sonnet-4-6",
            "qwen3:30b-a3b",
            "gpt-4o-mini",
            "claude-imaginary-9",
        }
    )
    for model, figures in want.items():
        for column in ("attempts", "tasks", "input_tokens", "cost_usd", "unpriced_attempts"):
            assert got[model][column] == figures[column], (model, column)


def test_group_by_provider_and_day_in_a_date_window(fixed: tuple[Path, list[dict[str, Any]]]) -> None:
    config, rows = fixed
    doc = report_json("--from", "2026-11-27", "--to", "2026-11-29", "--by", "provider,day", "-c", str(config))
    table = doc["tables"]["cost"]
    got = {(row["provider"], row["day"]): row for row in table["rows"]}
    want = expected(
        [r for r in rows if r["start_time"] >= datetime(2026, 11, 27, tzinfo=UTC)],
        lambda r: (r["provider"], r["start_time"].date().isoformat()),
    )
    assert set(got) == set(want)
    for key, figures in want.items():
        assert got[key]["attempts"] == figures["attempts"]
        assert got[key]["cost_usd"] == figures["cost_usd"]
    assert got[("anthropic", "2026-11-29")]["cost_usd"] == Decimal("0.0421")
    assert got[("anthropic", "2026-11-27")]["unpriced_attempts"] == 1
    # Rows are in day order, and the total is every row of the window.
    assert [row["day"] for row in table["rows"]] == sorted(row["day"] for row in table["rows"])
    assert table["total"]["attempts"] == sum(f["attempts"] for f in want.values()) == 12
    assert table["total"]["cost_usd"] == sum(f["cost_usd"] for f in want.values())


def test_to_date_is_inclusive_and_from_is_a_day_start(fixed: tuple[Path, list[dict[str, Any]]]) -> None:
    config, _ = fixed
    doc = report_json("--from", "2026-11-28", "--to", "2026-11-28", "--by", "day", "-c", str(config))
    assert [(r["day"], r["attempts"]) for r in doc["tables"]["cost"]["rows"]] == [("2026-11-28", 3)]
    assert doc["window"] == {"from": "2026-11-28T00:00:00+00:00", "to": "2026-11-29T00:00:00+00:00"}


def test_group_by_tier_and_task_type_keeps_other_emitters_apart(fixed: tuple[Path, list[dict[str, Any]]]) -> None:
    config, rows = fixed
    doc = report_json("--from", "2026-11-01", "--by", "tier,task_type", "-c", str(config))
    got = {(row["tier"], row["task_type"]): row for row in doc["tables"]["cost"]["rows"]}
    want = expected(
        [r for r in rows if r["start_time"] >= datetime(2026, 11, 1, tzinfo=UTC)],
        lambda r: (r["tier"], r["task_type"]),
    )
    assert {k: (v["attempts"], v["cost_usd"]) for k, v in got.items()} == {
        k: (v["attempts"], v["cost_usd"]) for k, v in want.items()
    }
    assert got[(None, None)]["reported_cost_usd"] == Decimal("0.002")
    assert got[("escalation", "summarize")]["unpriced_attempts"] == 1


def test_csv_parses_back_to_the_json_figures(fixed: tuple[Path, list[dict[str, Any]]]) -> None:
    config, _ = fixed
    args = ["--from", "2026-11-01", "--by", "model,day", "-c", str(config)]
    doc = report_json(*args)
    result = run("report", *args, "--format", "csv")
    assert result.exit_code == 0, result.output
    parsed = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(parsed) == len(doc["tables"]["cost"]["rows"]) == 11
    for from_csv, from_json in zip(parsed, doc["tables"]["cost"]["rows"], strict=True):
        assert from_csv["model"] == from_json["model"]
        assert from_csv["day"] == from_json["day"]
        assert int(from_csv["attempts"]) == from_json["attempts"]
        assert Decimal(from_csv["cost_usd"]) == from_json["cost_usd"]
        reported = from_json["reported_cost_usd"]
        assert from_csv["reported_cost_usd"] == ("" if reported is None else str(reported))
    # Full precision: nine decimal places, exactly as stored.
    sonnet = next(r for r in parsed if r["model"] == "claude-sonnet-4-6" and r["day"] == "2026-11-29")
    assert sonnet["cost_usd"] == "0.042100000"


def test_table_prints_dollars_to_the_cent(tmp_path: Path) -> None:
    from ledger_fixtures import attempt

    rows = [
        attempt(NOW, provider="anthropic", request_model="claude-sonnet-4-6", cost_usd=Decimal("1234.565000001")),
        attempt(NOW, provider="anthropic", request_model="claude-haiku-4-5", cost_usd=Decimal("0.004999999")),
    ]
    config = write_config(tmp_path, write_ledger(tmp_path / "l.duckdb", rows))
    result = run("report", "--from", "2026-11-29", "--to", "2026-11-29", "--by", "model", "-c", str(config))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    sonnet = next(line for line in lines if "claude-sonnet-4-6" in line)
    haiku = next(line for line in lines if "claude-haiku-4-5" in line)
    total = next(line for line in lines if line.strip().startswith("total"))
    assert "$1,234.57" in sonnet
    assert "$0.00" in haiku
    assert "$1,234.57" in total
    assert "reported cost" not in result.stdout  # no emitter carried a cost: no empty column
    assert "2026-11-29 to 2026-11-30 (UTC, end exclusive)" in result.stdout


def test_markdown_report_is_a_pipe_table(fixed: tuple[Path, list[dict[str, Any]]]) -> None:
    config, _ = fixed
    result = run("report", "--from", "2026-11-29", "--by", "provider", "--format", "markdown", "-c", str(config))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "### Cost by provider" in lines
    header = next(line for line in lines if line.startswith("| provider |"))
    assert header.split(" | ")[-2:] == ["unpriced", "cost disagrees |"]  # shown: some emitter reported a cost
    assert "| anthropic | 2 | 0 | 1 | 5,010 | 1,810 | 2,000 | 500 | $0.04 | — | 1 | 0 |" in lines, "\n".join(lines)
    assert "| **total** | **" in result.stdout


def test_empty_window_prints_an_empty_report(fixed: tuple[Path, list[dict[str, Any]]]) -> None:
    config, _ = fixed
    result = run("report", "--from", "2020-01-01", "--to", "2020-01-31", "--by", "model", "-c", str(config))
    assert result.exit_code == 0, result.output
    assert "no attempts in this window" in result.stdout
    doc = report_json("--from", "2020-01-01", "--to", "2020-01-31", "-c", str(config))
    (total,) = doc["tables"]["cost"]["rows"]
    assert total["attempts"] == 0
    assert total["cost_usd"] == 0
    assert (total["input_tokens"], total["output_tokens"], total["unpriced_attempts"]) == (0, 0, 0)
    assert total["reported_cost_usd"] is None
    grouped = report_json("--from", "2020-01-01", "--to", "2020-01-31", "--by", "day", "-c", str(config))
    assert grouped["tables"]["cost"]["rows"] == []
    result = run("report", "--from", "2020-01-01", "--to", "2020-01-31", "--format", "csv", "-c", str(config))
    assert result.stdout.splitlines()[1].split(",")[:2] == ["0", "0"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "7days"], "--since '7days' is not a window: give a number of minutes, hours, days or weeks"),
        (["--since", "0d"], "is not a window"),
        (["--from", "29/11/2026"], "--from '29/11/2026' is not a date: give a UTC date YYYY-MM-DD"),
        (["--from", "2026-11-01", "--to", "2026-13-01"], "--to '2026-13-01' is not a date: give a UTC date YYYY-MM-DD"),
        (["--to", "2026-11-01T25:00"], "--to '2026-11-01T25:00' is not a date"),
        (["--since", "7d", "--from", "2026-11-01"], "use either --since or --from, not both"),
        (["--from", "2026-11-05", "--to", "2026-11-01"], "--to (2026-11-01) must be after --from (2026-11-05)"),
        (["--by", "model,colour"], "--by colour: not a column; use any of model, provider, task_type, tier, reason,"),
        (["--by", "model; DROP TABLE attempts"], "not a column"),
    ],
)
def test_bad_windows_and_groupings_name_the_expected_form(
    fixed: tuple[Path, list[dict[str, Any]]], args: list[str], message: str
) -> None:
    config, _ = fixed
    result = run("report", *args, "-c", str(config))
    assert result.exit_code == 2
    assert squash(message) in squash(result.stderr)
    assert result.stdout == ""


def test_bad_window_on_the_sub_reports(fixed: tuple[Path, list[dict[str, Any]]]) -> None:
    config, _ = fixed
    for sub in ("escalations", "savings"):
        result = run("report", sub, "--since", "week", "-c", str(config))
        assert result.exit_code == 2
        assert squash("give a number of minutes, hours, days or weeks such as 90m, 24h, 7d or 2w") in squash(
            result.stderr
        )


def test_unknown_format_is_refused(fixed: tuple[Path, list[dict[str, Any]]]) -> None:
    config, _ = fixed
    result = run("report", "--format", "xml", "-c", str(config))
    assert result.exit_code == 2
    assert "xml" in result.output


@pytest.mark.parametrize("command", [["report"], ["report", "escalations"], ["report", "savings"]])
def test_missing_ledger_names_the_path_and_creates_nothing(tmp_path: Path, command: list[str]) -> None:
    ledger = tmp_path / "nowhere" / "ledger.duckdb"
    config = write_config(tmp_path, ledger)
    result = run(*command, "-c", str(config))
    assert result.exit_code == 1
    assert squash(f"no ledger at {ledger}") in squash(result.stderr)
    assert not ledger.exists()
    assert not ledger.parent.exists()


@pytest.mark.parametrize("models", [63, 64])
def test_task_counts_stay_exact_with_more_groups_than_the_task_mask_holds(tmp_path: Path, models: int) -> None:
    # Up to 63 models (and the NULL model) are counted with one bit each; 64 count distinct task ids per group.
    rows = []
    for index in range(models):
        start = NOW - timedelta(hours=1, minutes=index)
        rows.append(attempt(start, request_model=f"m{index:02d}", task_id=f"task-{index // 2}"))
        rows.append(attempt(start, request_model=f"m{index:02d}", task_id=f"task-{index // 2}"))
        rows.append(attempt(start, request_model=f"m{index:02d}", task_id="shared"))
    rows.append(attempt(NOW - timedelta(hours=2), request_model=None, response_model=None, task_id="shared"))
    config = write_config(tmp_path, write_ledger(tmp_path / "ledger.duckdb", rows))
    table = report_json("--from", "2026-11-29", "--by", "model", "-c", str(config))["tables"]["cost"]
    assert table["total"]["tasks"] == (models + 1) // 2 + 1
    assert table["total"]["attempts"] == 3 * models + 1
    assert {row["model"]: row["tasks"] for row in table["rows"]} == {
        **{f"m{index:02d}": 2 for index in range(models)},
        None: 1,
    }


def _utc(row: dict[str, Any]) -> datetime:
    return row["start_time"].astimezone(UTC)


@pytest.mark.parametrize(
    ("by", "column", "key"),
    [
        ("hour", "hour", lambda row: _utc(row).strftime("%Y-%m-%dT%H:00:00")),
        ("week", "week", lambda row: (_utc(row).date() - timedelta(days=_utc(row).weekday())).isoformat()),
        ("month", "month", lambda row: _utc(row).strftime("%Y-%m-01")),
        ("outcome", "outcome", lambda row: row["outcome"]),
        ("service", "service_name", lambda row: row["service_name"]),
        ("reason", "escalation_reason", lambda row: row["escalation_reason"]),
    ],
)
def test_time_buckets_and_the_other_groupings_add_up(
    fixed: tuple[Path, list[dict[str, Any]]], by: str, column: str, key: Any
) -> None:
    config, rows = fixed
    result = run("report", "--from", "2026-11-01", "--by", by, "--format", "json", "-c", str(config))
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout, parse_float=Decimal)["tables"]["cost"]
    got = {None if row[column] is None else str(row[column]): row["attempts"] for row in table["rows"]}
    want: dict[Any, int] = defaultdict(int)
    for row in rows:
        if _utc(row) >= datetime(2026, 11, 1, tzinfo=UTC):
            want[key(row)] += 1
    assert got == dict(want)
    assert sum(row["cost_usd"] for row in table["rows"]) == table["total"]["cost_usd"]


def test_since_takes_minutes_and_weeks_and_to_alone_ends_the_window() -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert parse_window("90m", None, None, now=now) == Window(now - timedelta(minutes=90), now)
    assert parse_window("2w", None, None, now=now) == Window(now - timedelta(weeks=2), now)
    end = datetime(2026, 11, 21, tzinfo=UTC)  # --to 2026-11-20 is inclusive
    assert parse_window(None, None, "2026-11-20", now=now) == Window(end - timedelta(days=7), end)
    assert parse_window("24h", None, "2026-11-20", now=now) == Window(end - timedelta(hours=24), end)


def test_top_keeps_the_groups_that_cost_most_and_the_total_of_all(fixed: tuple[Path, list[dict[str, Any]]]) -> None:
    config, _ = fixed
    every = report_json("--from", "2026-11-01", "--by", "model", "-c", str(config))["tables"]["cost"]
    top = report_json("--from", "2026-11-01", "--by", "model", "--top", "2", "-c", str(config))["tables"]["cost"]
    by_cost = sorted(every["rows"], key=lambda row: (row["cost_usd"], row["attempts"]), reverse=True)
    assert len(every["rows"]) > 2
    assert top["rows"] == by_cost[:2]
    assert top["total"] == every["total"]
    assert f"{len(every['rows']) - 2} more group(s) not shown" in " ".join(top["notes"])
    refused = run("report", "--top", "2", "-c", str(config))
    assert refused.exit_code == 2 and "--top needs --by" in refused.output
