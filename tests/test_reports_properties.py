"""For any ledger: grouped rows add up to the total, the total is the exact sum of the rows, and CSV/JSON agree."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_fixtures import NOW, attempt, write_config, write_ledger
from typer.testing import CliRunner

from costline.cli import app

runner = CliRunner()
WINDOW = ["--from", "2026-11-01", "--to", "2026-11-29"]

costs = st.one_of(
    st.none(),
    st.decimals(min_value=0, max_value=Decimal("999.999999999"), places=9, allow_nan=False, allow_infinity=False),
)
rows = st.lists(
    st.fixed_dictionaries(
        {
            "provider": st.sampled_from(["ollama", "anthropic", "openai"]),
            "request_model": st.sampled_from(["qwen3:8b", "claude-sonnet-4-6", "gpt-4o-mini", "claude-haiku-4-5"]),
            "tier": st.sampled_from([None, "primary", "fallback", "escalation"]),
            "task_id": st.sampled_from([None, "t1", "t2", "t3", "t4"]),
            "outcome": st.sampled_from(["success", "error"]),
            "input_tokens": st.integers(min_value=0, max_value=10**7),
            "output_tokens": st.integers(min_value=0, max_value=10**6),
            "cost_usd": costs,
            "minutes_before": st.integers(min_value=0, max_value=60 * 24 * 40),
        }
    ),
    max_size=25,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows)
def test_grouped_rows_add_up_to_the_exact_total(generated: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        ledger_rows = [
            attempt(NOW - timedelta(minutes=row.pop("minutes_before")), **row) for row in [dict(r) for r in generated]
        ]
        config = write_config(tmp, write_ledger(tmp / "l.duckdb", ledger_rows))
        in_window = [r for r in ledger_rows if r["start_time"].date().isoformat() >= "2026-11-01"]
        result = runner.invoke(app, ["report", *WINDOW, "--by", "provider,day", "-f", "json", "-c", str(config)])
        assert result.exit_code == 0, result.output
        table = json.loads(result.stdout, parse_float=Decimal)["tables"]["cost"]
        total = table["total"]
        exact = sum((r["cost_usd"] for r in in_window if r["cost_usd"] is not None), Decimal(0))
        assert total["cost_usd"] == exact
        assert total["attempts"] == len(in_window)
        assert total["unpriced_attempts"] == sum(1 for r in in_window if r["cost_usd"] is None)
        assert total["input_tokens"] == sum(r["input_tokens"] for r in in_window)
        assert sum((row["cost_usd"] for row in table["rows"]), Decimal(0)) == exact
        assert sum(row["attempts"] for row in table["rows"]) == len(in_window)

        as_csv = runner.invoke(app, ["report", *WINDOW, "--by", "provider,day", "-f", "csv", "-c", str(config)])
        parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
        assert [(r["provider"], r["day"], Decimal(r["cost_usd"]), int(r["attempts"])) for r in parsed] == [
            (r["provider"], r["day"], r["cost_usd"], r["attempts"]) for r in table["rows"]
        ]


tasked_rows = st.lists(
    st.fixed_dictionaries(
        {
            "provider": st.sampled_from(["ollama", "anthropic"]),
            "request_model": st.sampled_from([None, "qwen3:8b", "claude-sonnet-4-6", "claude-haiku-4-5"]),
            "tier": st.sampled_from([None, "primary", "escalation"]),
            "task_type": st.sampled_from([None, "general", "code_generation"]),
            "task_id": st.sampled_from([None, "t1", "t2", "t3", "t4", "t5"]),
            "minutes_before": st.integers(min_value=0, max_value=60 * 24 * 40),
        }
    ),
    max_size=25,
)


def _exact_tasks(rows: list[dict], key) -> tuple[int, dict]:
    by_key: dict = {}
    for row in rows:
        by_key.setdefault(key(row), set())
        if row["task_id"] is not None:
            by_key[key(row)].add(row["task_id"])
    total = {row["task_id"] for row in rows if row["task_id"] is not None}
    return len(total), {k: len(v) for k, v in by_key.items()}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tasked_rows)
def test_task_counts_are_the_distinct_task_ids_of_each_group_and_of_the_window(generated: list[dict]) -> None:
    # Tasks spanning several groups count once in each and once in the total; attempts without a task count none;
    # a NULL group key (no model recorded, no tier) is a group of its own. --by provider,day takes the other path.
    groupings = {
        "model": lambda r: (r["request_model"],),
        "tier": lambda r: (r["tier"],),
        "task_type": lambda r: (r["task_type"],),
        "day": lambda r: (r["start_time"].date().isoformat(),),
        "provider,day": lambda r: (r["provider"], r["start_time"].date().isoformat()),
    }
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        ledger_rows = [
            attempt(NOW - timedelta(minutes=row.pop("minutes_before")), **row) for row in [dict(r) for r in generated]
        ]
        config = write_config(tmp, write_ledger(tmp / "l.duckdb", ledger_rows))
        in_window = [r for r in ledger_rows if r["start_time"].date().isoformat() >= "2026-11-01"]
        for by, key in groupings.items():
            result = runner.invoke(app, ["report", *WINDOW, "--by", by, "-f", "json", "-c", str(config)])
            assert result.exit_code == 0, result.output
            table = json.loads(result.stdout, parse_float=Decimal)["tables"]["cost"]
            total, by_key = _exact_tasks(in_window, key)
            assert table["total"]["tasks"] == total, by
            names = by.split(",")
            assert {tuple(row[n] for n in names): row["tasks"] for row in table["rows"]} == by_key, by
