"""`costline sql QUERY`: read-only SQL over the ledger, printed as a table, CSV or JSON."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated, Any

import pyarrow as pa
import typer
from rich import box
from rich.console import Console
from rich.table import Table

from costline.cli.app import CollectorUrlOption, ConfigOption, LakeOption, app, fail, load_or_exit
from costline.cli.report import plain_text, reader_for, rows_csv, to_json
from costline.ledger_reader import (
    LedgerError,
    NotReadOnlyError,
    QueryError,
    QueryInterrupted,
    check_read_only,
)

NULL = "NULL"


class SqlFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command("sql")
def sql(
    query: Annotated[str, typer.Argument(help='One read-only statement, e.g. "SELECT * FROM daily_cost".')],
    fmt: Annotated[SqlFormat, typer.Option("--format", "-f", help="Output format.")] = SqlFormat.table,
    config: ConfigOption = None,
    collector_url: CollectorUrlOption = None,
    lake: LakeOption = False,
) -> None:
    """Run read-only SQL over the ledger (tables attempts, tasks and the documented views)."""
    try:
        check_read_only(query)
    except NotReadOnlyError as exc:
        fail(f"{exc}; the ledger is read-only here")
    except QueryError as exc:
        fail(str(exc))
    cfg = load_or_exit(config, collector_url=collector_url)
    try:
        result = reader_for(cfg, lake).query(query)
    except QueryInterrupted as exc:
        fail(str(exc), code=130)
    except KeyboardInterrupt:  # Ctrl-C while waiting for the collector: it sees the connection close and stops
        fail("interrupted; the query was stopped", code=130)
    except LedgerError as exc:
        fail(str(exc))
    names = result.column_names
    rows = [tuple(row[i] for i in range(len(names))) for row in _tuples(result)]
    if fmt is SqlFormat.csv:
        sys.stdout.write(rows_csv(names, rows))
    elif fmt is SqlFormat.json:
        sys.stdout.write(to_json([dict(zip(names, row, strict=True)) for row in rows]) + "\n")
    else:
        _print_table(result.schema, names, rows)
    sys.stdout.flush()


def _tuples(result: pa.Table) -> list[tuple[Any, ...]]:
    columns = [column.to_pylist() for column in result.columns]
    return list(zip(*columns, strict=True)) if columns else []


def _print_table(schema: pa.Schema, names: list[str], rows: list[tuple[Any, ...]]) -> None:
    grid = Table(box=box.SIMPLE_HEAVY)
    for field in schema:
        numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_decimal(field.type)
        grid.add_column(field.name, justify="right" if numeric else "left")
    for row in rows:
        grid.add_row(*(NULL if value is None else plain_text(value) for value in row))
    grid.caption = f"{len(rows)} row{'s' if len(rows) != 1 else ''}"
    probe = Console()
    if probe.is_terminal:
        probe.print(grid)
        return
    width = max(80, probe.measure(grid, options=probe.options.update(width=10_000)).maximum)
    Console(width=width, highlight=False).print(grid)
