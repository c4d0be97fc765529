"""`costline export parquet DIR`: hive-partitioned Parquet that reads back in DuckDB with the ledger's totals."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from ledger_fixtures import NOW, scenario, write_config, write_ledger
from typer.testing import CliRunner

from costline.cli import app

runner = CliRunner()


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    data = scenario(NOW)
    return write_ledger(tmp_path / "ledger.duckdb", data.attempts, data.tasks)


@pytest.fixture
def config(tmp_path: Path, ledger: Path) -> Path:
    return write_config(tmp_path, ledger)


def totals(con: duckdb.DuckDBPyConnection, source: str) -> list[tuple]:
    return con.sql(
        f"""SELECT CAST(timezone('UTC', start_time) AS DATE) AS d, count(*), sum(cost_usd), sum(counterfactual_usd),
                   sum(input_tokens), sum(output_tokens), count(DISTINCT span_id)
            FROM {source} GROUP BY d ORDER BY d"""
    ).fetchall()


def test_export_reads_back_with_the_same_totals(tmp_path: Path, ledger: Path, config: Path) -> None:
    out = tmp_path / "export"
    result = runner.invoke(app, ["export", "parquet", str(out), "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "attempts: 13 rows in 4 day partition(s)" in " ".join(result.stdout.split())
    assert sorted(p.name for p in (out / "attempts").iterdir()) == [
        "day=2026-10-20",
        "day=2026-11-27",
        "day=2026-11-28",
        "day=2026-11-29",
    ]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no staging left behind
    source = duckdb.connect(str(ledger), read_only=True)
    exported = duckdb.connect()
    attempts = f"read_parquet('{out}/attempts/*/*.parquet', hive_partitioning = true)"
    tasks = f"read_parquet('{out}/tasks/*/*.parquet', hive_partitioning = true)"
    assert totals(exported, attempts) == totals(source, "attempts")
    task_days = (
        "SELECT CAST(timezone('UTC', start_time) AS DATE) AS d, count(*), sum(attempts) FROM {} GROUP BY d ORDER BY d"
    )
    assert exported.sql(task_days.format(tasks)).fetchall() == source.sql(task_days.format("tasks")).fetchall()
    assert exported.sql(f"SELECT count(*) FROM {tasks}").fetchall() == [(6,)]
    # The partition key comes back as a DATE column, and each row sits in its own day.
    assert exported.sql(f"SELECT typeof(day) FROM {attempts} LIMIT 1").fetchall() == [("DATE",)]
    assert exported.sql(
        f"SELECT count(*) FROM {attempts} WHERE day <> CAST(timezone('UTC', start_time) AS DATE)"
    ).fetchall() == [(0,)]
    # Exact decimals survive: the column type is the ledger's DECIMAL(18, 9).
    assert exported.sql(f"SELECT typeof(cost_usd) FROM {attempts} LIMIT 1").fetchall() == [("DECIMAL(18,9)",)]
    source.close()


def test_export_refuses_to_overwrite_unless_asked(tmp_path: Path, config: Path) -> None:
    out = tmp_path / "export"
    assert runner.invoke(app, ["export", "parquet", str(out), "-c", str(config)]).exit_code == 0
    marker = out / "attempts" / "day=2026-11-29" / "part-0.parquet"
    before = marker.read_bytes()
    again = runner.invoke(app, ["export", "parquet", str(out), "-c", str(config)])
    assert again.exit_code == 1
    assert "already exist; pass --overwrite to replace an earlier export" in " ".join(again.stderr.split())
    assert marker.read_bytes() == before
    replaced = runner.invoke(app, ["export", "parquet", str(out), "--overwrite", "-c", str(config)])
    assert replaced.exit_code == 0, replaced.output
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/attempts/*/*.parquet')").fetchall() == [(13,)]


def test_export_of_a_missing_ledger_names_it_and_writes_nothing(tmp_path: Path) -> None:
    ledger = tmp_path / "absent.duckdb"
    out = tmp_path / "export"
    result = runner.invoke(app, ["export", "parquet", str(out), "-c", str(write_config(tmp_path, ledger))])
    assert result.exit_code == 1
    assert f"no ledger at {ledger}" in "".join(result.stderr.split("\n"))
    assert not out.exists()
    assert not ledger.exists()


def test_export_into_a_file_is_refused(tmp_path: Path, config: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("keep me")
    result = runner.invoke(app, ["export", "parquet", str(target), "-c", str(config)])
    assert result.exit_code == 1
    assert "is not a directory" in result.stderr
    assert target.read_text() == "keep me"


def test_export_of_a_window_holds_exactly_the_rows_in_it(tmp_path: Path, ledger: Path, config: Path) -> None:
    out = tmp_path / "window"
    start, end = "2026-11-28T06:00:00+00:00", "2026-11-29T06:00:00+00:00"  # partial first and last days
    result = runner.invoke(app, ["export", "parquet", str(out), "--from", start, "--to", end, "-c", str(config)])
    assert result.exit_code == 0, result.output
    source = duckdb.connect(str(ledger), read_only=True)
    in_window = f"WHERE start_time >= TIMESTAMPTZ '{start}' AND start_time < TIMESTAMPTZ '{end}'"
    expected = source.sql(f"SELECT span_id FROM attempts {in_window} ORDER BY span_id").fetchall()
    source.close()
    exported = duckdb.connect()
    got = exported.sql(f"SELECT span_id FROM '{out}/attempts/*/*.parquet' ORDER BY span_id").fetchall()
    assert got == expected and 0 < len(got) < 13
    assert sorted(p.name for p in (out / "attempts").iterdir()) == ["day=2026-11-28", "day=2026-11-29"]
