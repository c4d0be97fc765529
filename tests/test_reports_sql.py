"""`costline sql`: any read-only query over the ledger; anything that writes is refused and changes nothing."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from ledger_fixtures import NOW, scenario, write_config, write_ledger
from typer.testing import CliRunner

from costline import ledger_reader
from costline.cli import app

runner = CliRunner()


def squash(text: str) -> str:
    return "".join(text.split())


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    data = scenario(NOW)
    return write_ledger(tmp_path / "ledger.duckdb", data.attempts, data.tasks)


@pytest.fixture
def config(tmp_path: Path, ledger: Path) -> Path:
    return write_config(tmp_path, ledger)


def sql(config: Path, query: str, *args: str) -> Any:
    return runner.invoke(app, ["sql", query, "-c", str(config), *args])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_select_prints_a_table(config: Path) -> None:
    result = sql(config, "SELECT provider, count(*) AS n FROM attempts GROUP BY provider ORDER BY n DESC")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines() if line.strip()]
    assert ["provider", "n"] in lines
    assert ["ollama", "8"] in lines
    assert ["anthropic", "4"] in lines
    assert ["openai", "1"] in lines
    assert ["3", "rows"] in lines


def test_json_and_csv_keep_full_decimal_precision(config: Path) -> None:
    query = "SELECT provider, sum(cost_usd) AS cost FROM attempts GROUP BY provider ORDER BY provider"
    as_json = json.loads(sql(config, query, "--format", "json").stdout, parse_float=Decimal)
    assert as_json == [
        {"provider": "anthropic", "cost": Decimal("0.0526")},
        {"provider": "ollama", "cost": Decimal("0.0004")},
        {"provider": "openai", "cost": Decimal("0.0021")},
    ]
    as_csv = list(csv.DictReader(io.StringIO(sql(config, query, "--format", "csv").stdout)))
    assert as_csv == [
        {"provider": "anthropic", "cost": "0.052600000"},
        {"provider": "ollama", "cost": "0.000400000"},
        {"provider": "openai", "cost": "0.002100000"},
    ]


def test_documented_views_are_queryable(config: Path) -> None:
    result = sql(
        config,
        "SELECT day, sum(cost_usd) AS cost, sum(attempts) AS attempts FROM daily_cost GROUP BY day ORDER BY day",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout, parse_float=Decimal)
    assert rows[-3:] == [
        {"day": "2026-11-27", "cost": Decimal("0"), "attempts": 3},
        {"day": "2026-11-28", "cost": Decimal("0.0105"), "attempts": 3},
        {"day": "2026-11-29", "cost": Decimal("0.0446"), "attempts": 6},
    ]


def test_nulls_show_as_null_in_tables_and_json(config: Path) -> None:
    result = sql(config, "SELECT cost_usd FROM attempts WHERE request_model = 'claude-imaginary-9'")
    assert "NULL" in result.stdout
    as_json = json.loads(sql(config, "SELECT cost_usd FROM attempts WHERE cost_usd IS NULL", "-f", "json").stdout)
    assert as_json == [{"cost_usd": None}, {"cost_usd": None}]


WRITES = [
    ("INSERT INTO attempts SELECT * FROM attempts", "INSERT"),
    ("UPDATE attempts SET cost_usd = 0", "UPDATE"),
    ("DELETE FROM attempts", "DELETE"),
    ("DROP TABLE attempts", "DROP"),
    ("CREATE TABLE x AS SELECT 1", "CREATE"),
    ("CREATE OR REPLACE VIEW daily_cost AS SELECT 1", "CREATE"),
    ("ALTER TABLE attempts ADD COLUMN x INT", "ALTER"),
    ("COPY attempts TO 'out.csv'", "COPY"),
    ("ATTACH 'other.duckdb' AS other", "ATTACH"),
    ("CHECKPOINT", "CALL"),
    ("PRAGMA enable_profiling", "PRAGMA"),
    ("SET threads = 1", "SET"),
    ("EXPORT DATABASE 'dump'", "EXPORT"),
    ("INSTALL httpfs", "LOAD"),
    ("TRUNCATE attempts", "DELETE"),
]


@pytest.mark.parametrize(("query", "kind"), WRITES)
def test_writes_are_refused_and_the_ledger_is_unchanged(
    config: Path, ledger: Path, tmp_path: Path, query: str, kind: str
) -> None:
    before = digest(ledger)
    result = sql(config, query)
    assert result.exit_code == 1
    assert squash(f"only read-only queries are allowed: {kind} is not a read-only statement") in squash(result.stderr)
    assert digest(ledger) == before
    assert not (tmp_path / "out.csv").exists()


def test_a_write_hidden_after_a_select_is_refused(config: Path, ledger: Path) -> None:
    before = digest(ledger)
    result = sql(config, "SELECT 1; DELETE FROM attempts")
    assert result.exit_code == 1
    assert "one statement at a time, please: got 2" in result.stderr
    assert digest(ledger) == before


def test_a_write_hidden_in_a_select_is_refused(config: Path, ledger: Path) -> None:
    """DuckDB 1.5's parser refuses a data-modifying CTE outright (2.0 called it a SELECT and left the refusal to the
    read-only connection, which the next test checks on its own): either way it is refused as a write."""
    before = digest(ledger)
    result = sql(config, "WITH gone AS (DELETE FROM attempts RETURNING *) SELECT count(*) FROM gone")
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert "only read-only queries are allowed" in message
    assert digest(ledger) == before


def test_the_connection_itself_is_read_only(config: Path, ledger: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even if the statement check missed something, DuckDB refuses to write through the reader's connection."""
    before = digest(ledger)
    monkeypatch.setattr(ledger_reader, "check_read_only", lambda sql: None)
    monkeypatch.setattr("costline.cli.sql.check_read_only", lambda sql: None)
    result = sql(config, "DELETE FROM attempts")
    assert result.exit_code == 1
    assert squash("which is attached in read-only mode") in squash(result.stderr)
    assert digest(ledger) == before
    count = sql(config, "SELECT count(*) AS n FROM attempts", "-f", "json")
    assert json.loads(count.stdout) == [{"n": 13}]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELEC 1", 'Parser Error: syntax error at or near "SELEC"'),
        ("SELECT nope FROM attempts", 'Binder Error: Referenced column "nope" not found'),
        ("SELECT * FROM no_such_table", "Catalog Error: Table with name no_such_table does not exist"),
        ("   ", "the query is empty"),
    ],
)
def test_bad_sql_shows_duckdbs_message(config: Path, query: str, message: str) -> None:
    result = sql(config, query)
    assert result.exit_code == 1
    assert squash(message) in squash(result.stderr)
    assert result.stdout == ""


def test_missing_ledger_names_the_path_and_creates_nothing(tmp_path: Path) -> None:
    ledger = tmp_path / "absent.duckdb"
    result = sql(write_config(tmp_path, ledger), "SELECT 1")
    assert result.exit_code == 1
    assert squash(f"no ledger at {ledger}") in squash(result.stderr)
    assert not ledger.exists()


@pytest.fixture
def locked(ledger: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the ledger read-write, as a running collector does."""
    holder = textwrap.dedent(
        f"""
        import duckdb, sys
        con = duckdb.connect({str(ledger)!r})
        print("locked", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.stdin.close()  # type: ignore[union-attr]
    proc.wait(timeout=30)


def test_locked_ledger_without_a_collector_says_so(config: Path, ledger: Path, locked: subprocess.Popen[str]) -> None:
    result = sql(config, "SELECT count(*) FROM attempts")
    assert result.exit_code == 1
    message = squash(result.stderr)
    assert squash(f"the ledger {ledger} is locked by another process, and no collector answers at http://127.0.0.1:")
    assert squash(f"the ledger {ledger} is locked by another process") in message
    assert "/api/v1/query" in message
    report = runner.invoke(app, ["report", "-c", str(config)])
    assert report.exit_code == 1
    assert squash("is locked by another process") in squash(report.stderr)


def test_json_and_csv_carry_any_duckdb_type(config: Path) -> None:
    query = (
        "SELECT INTERVAL 90 MINUTE AS i, INTERVAL 1 MONTH + INTERVAL 2 DAY AS j, '\\x01\\xff'::BLOB AS b, "
        "[1, 2] AS l, {'k': 1.5} AS s, "
        "'6f1e9a8e-4a2b-4c55-9a1d-0d4c3f0e9b7a'::UUID AS u, TIME '12:30:00' AS t, 'NaN'::DOUBLE AS n"
    )
    result = sql(config, query, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {
            "i": "PT5400S",
            "j": "P1M2D",
            "b": "01ff",
            "l": [1, 2],
            "s": {"k": 1.5},
            "u": "6f1e9a8e-4a2b-4c55-9a1d-0d4c3f0e9b7a",
            "t": "12:30:00",
            "n": None,
        }
    ]
    as_csv = sql(config, query, "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    assert as_csv.stdout.splitlines()[0] == "i,j,b,l,s,u,t,n"
    assert as_csv.stdout.splitlines()[1] == (
        'PT5400S,P1M2D,01ff,"[1, 2]","{""k"": 1.5}",6f1e9a8e-4a2b-4c55-9a1d-0d4c3f0e9b7a,12:30:00,nan'
    )


def test_a_file_that_is_not_a_ledger_is_named_and_left_alone(tmp_path: Path) -> None:
    ledger = tmp_path / "notes.duckdb"
    ledger.write_text("not a database")
    result = sql(write_config(tmp_path, ledger), "SELECT 1")
    assert result.exit_code == 1
    assert squash(f"cannot open the ledger {ledger}") in squash(result.stderr)
    assert "is not a valid DuckDB database file" in " ".join(result.stderr.split())
    assert ledger.read_text() == "not a database"


def test_a_relative_ledger_path_is_shown_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.toml"
    config.write_text('[collector]\nledger = "costline.duckdb"\n', encoding="utf-8")
    result = sql(config, "SELECT 1")
    assert result.exit_code == 1
    assert squash(f"no ledger at {tmp_path / 'costline.duckdb'}") in squash(result.stderr)
    assert not (tmp_path / "costline.duckdb").exists()


def test_a_reader_used_as_a_context_answers_every_query_and_releases_the_file(ledger: Path) -> None:
    import duckdb

    reader = ledger_reader.LedgerReader(ledger_reader.LedgerSource(ledger, "http://127.0.0.1:9"))
    with reader:
        first = reader.query("SELECT count(*) AS n FROM attempts").column("n")[0].as_py()
        assert reader.query("SELECT count(*) AS n FROM attempts").column("n")[0].as_py() == first > 0
        assert reader.via == "file"
    # Released on the way out: a collector can open the ledger read-write right after a report.
    duckdb.connect(str(ledger)).close()
