"""docs/reports.md stays true: its views have the columns it lists, and its SQL runs as written."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import duckdb
import pytest
from ledger_fixtures import NOW, scenario, write_config, write_ledger
from typer.testing import CliRunner

from collector.views import VIEW_DEFINITIONS
from costline.cli import app

REPORTS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "reports.md"


def reports_section() -> str:
    return REPORTS_PAGE.read_text(encoding="utf-8")


def documented_views() -> dict[str, list[str]]:
    views = {}
    for match in re.finditer(r"^\| `(\w+)` \| [^|]+ \| `([^`]+)`", reports_section(), re.MULTILINE):
        views[match.group(1)] = [name.strip() for name in match.group(2).split(",")]
    return views


def sql_examples() -> list[str]:
    (block,) = re.findall(r"```sql\n(.*?)```", reports_section(), re.DOTALL)
    return [statement.strip() for statement in block.split(";") if statement.strip()]


def as_of(statement: str, day: date) -> str:
    """The statement as it runs on ``day``: the examples' relative windows read ``current_date``, pinned here so
    their result does not depend on the day the test runs."""
    return statement.replace("current_date", f"DATE '{day.isoformat()}'")


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    data = scenario(NOW)
    return write_ledger(tmp_path / "costline.duckdb", data.attempts, data.tasks)


def test_every_view_is_documented_with_its_columns(ledger: Path) -> None:
    documented = documented_views()
    assert list(documented) == list(VIEW_DEFINITIONS)
    con = duckdb.connect(str(ledger), read_only=True)
    for view, columns in documented.items():
        actual = [column[0] for column in con.sql(f"SELECT * FROM {view} LIMIT 0").description]
        assert actual == columns, view
    con.close()


def test_the_sql_examples_run_as_written(ledger: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exported = CliRunner().invoke(
        app, ["export", "parquet", "ledger-parquet", "-c", str(write_config(tmp_path, ledger))]
    )
    assert exported.exit_code == 0, exported.output
    examples = sql_examples()
    assert len(examples) >= 6
    con = duckdb.connect(str(ledger), read_only=True)
    results = {example.splitlines()[0]: con.sql(as_of(example, NOW.date())).fetchall() for example in examples}
    con.close()
    savings = next(rows for title, rows in results.items() if "savings" in title)
    assert savings and savings[0][2] is not None
    readback = next(rows for title, rows in results.items() if "Parquet" in title)
    assert sum(row[1] for row in readback) == 13
