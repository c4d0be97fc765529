"""`costline export parquet DIR`: the ledger as hive-partitioned Parquet (``day=YYYY-MM-DD``), for other engines."""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from collector.reports import Window
from costline.cli.app import CollectorUrlOption, ConfigOption, app, console, fail, load_or_exit
from costline.cli.report import FromOption, SinceOption, ToOption, window_or_exit
from costline.ledger_reader import LedgerError, LedgerReader

TABLES = ("attempts", "tasks")
_IN_WINDOW = "start_time >= CAST(? AS TIMESTAMPTZ) AND start_time < CAST(? AS TIMESTAMPTZ)"
PART_FILE = "part-0.parquet"

export_app = typer.Typer(help="Export the ledger for other engines.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("parquet")
def parquet(
    directory: Annotated[Path, typer.Argument(help="Target directory; gets attempts/ and tasks/ inside.")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier export's attempts/ and tasks/ in DIR.")
    ] = False,
    since: SinceOption = None,
    start: FromOption = None,
    end: ToOption = None,
    config: ConfigOption = None,
    collector_url: CollectorUrlOption = None,
) -> None:
    """Write attempts and tasks as Parquet partitioned by UTC day: DIR/attempts/day=2026-11-29/part-0.parquet. The
    whole ledger, or the window --since/--from/--to give."""
    cfg = load_or_exit(config, collector_url=collector_url)
    window = None if since is None and start is None and end is None else window_or_exit(since, start, end)
    if directory.exists() and not directory.is_dir():
        fail(f"{directory} exists and is not a directory")
    existing = [directory / name for name in TABLES if (directory / name).exists()]
    if existing and not overwrite:
        verb = "exists" if len(existing) == 1 else "exist"
        fail(f"{' and '.join(map(str, existing))} already {verb}; pass --overwrite to replace an earlier export")
    reader = LedgerReader.from_config(cfg)
    try:
        with reader:  # one connection for every day's query
            # Read the ledger before touching the target, so a missing ledger leaves no directory behind.
            plan = {name: partition_days(reader, name, window) for name in TABLES}
            directory.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".costline-export-", dir=directory))
            try:
                counts = {name: export_table(reader, name, days, staging / name, window) for name, days in plan.items()}
                for name in TABLES:
                    target = directory / name
                    if target.exists():
                        shutil.rmtree(target)
                    (staging / name).rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except LedgerError as exc:
        fail(str(exc))
    for name, rows in counts.items():
        console.print(
            f"{name}: {rows:,} rows in {len(plan[name])} day partition(s) under {directory / name}", highlight=False
        )


def partition_days(reader: LedgerReader, table: str, window: Window | None = None) -> list[date]:
    if table not in TABLES:
        raise ValueError(table)
    where, params = ("", []) if window is None else (f" WHERE {_IN_WINDOW}", list(window.params))
    days = reader.query(
        f"SELECT DISTINCT CAST(timezone('UTC', start_time) AS DATE) AS day FROM {table}{where} ORDER BY day", params
    )
    return days.column("day").to_pylist()


def export_table(reader: LedgerReader, table: str, days: list[date], target: Path, window: Window | None = None) -> int:
    """Write one table day by day, so memory holds one day at a time even when the collector serves the rows."""
    import pyarrow.parquet as pq  # only the export writes Parquet; every other command starts without it

    if table not in TABLES:
        raise ValueError(table)
    target.mkdir(parents=True)
    total = 0
    for day in days:
        start, end = _day_bounds(day, window)
        rows = reader.query(f"SELECT * FROM {table} WHERE {_IN_WINDOW} ORDER BY start_time", [start, end])
        partition = target / f"day={day.isoformat()}"
        partition.mkdir()
        pq.write_table(rows, partition / PART_FILE)
        total += rows.num_rows
    return total


def _day_bounds(day: date, window: Window | None) -> tuple[str, str]:
    """The day's UTC bounds, cut to the window: the first and last day of a window are partial."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    if window is not None:
        start, end = max(start, window.start), min(end, window.end)
    return start.isoformat(), end.isoformat()
