"""`costline report`: cost, escalation and savings reports from the ledger, as a table, CSV, JSON or Markdown.

Tables print dollars to the cent; CSV and JSON keep the ledger's full decimal precision.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import typer
from rich import box
from rich.console import Console
from rich.table import Table

from collector.reports import (
    GROUP_COLUMNS,
    Column,
    Report,
    ReportInputError,
    ReportTable,
    Window,
    cost_report,
    escalation_report,
    parse_group_by,
    parse_window,
    savings_report,
)
from costline.cli.app import CollectorUrlOption, ConfigOption, LakeOption, app, fail, load_or_exit
from costline.config import Config
from costline.ledger_reader import LedgerError, LedgerReader

CENT = Decimal("0.01")
MISSING = "—"


class ReportFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    markdown = "markdown"


SinceOption = Annotated[
    str | None,
    typer.Option("--since", help="Window length: 90m, 24h, 7d, 2w (N m|h|d|w), ending now or at --to. Default 7d."),
]
FromOption = Annotated[str | None, typer.Option("--from", help="Window start, a UTC date YYYY-MM-DD (or date-time).")]
ToOption = Annotated[
    str | None,
    typer.Option(
        "--to", help="Window end, a UTC date (inclusive) or date-time; without --from, --since's span before it."
    ),
]
FormatOption = Annotated[ReportFormat | None, typer.Option("--format", "-f", help="Output format (default: table).")]

report_app = typer.Typer(help="Cost reports from the ledger (see also: escalations, savings).")
app.add_typer(report_app, name="report")


@dataclass(frozen=True)
class _Options:
    """Options given to `costline report` itself, for a sub-report named after them."""

    since: str | None
    start: str | None
    end: str | None
    fmt: ReportFormat | None
    config: Path | None
    collector_url: str | None
    lake: bool = False


@report_app.callback(invoke_without_command=True)
def report(
    ctx: typer.Context,
    since: SinceOption = None,
    start: FromOption = None,
    end: ToOption = None,
    by: Annotated[
        str | None, typer.Option("--by", help="Group by any of " + ", ".join(GROUP_COLUMNS) + " (comma list).")
    ] = None,
    top: Annotated[
        int | None, typer.Option("--top", min=1, help="With --by: only the N groups that cost most (the total: all).")
    ] = None,
    fmt: FormatOption = None,
    config: ConfigOption = None,
    collector_url: CollectorUrlOption = None,
    lake: LakeOption = False,
) -> None:
    """Attempts, tasks, tokens by type and cost for a window, grouped as you ask."""
    if ctx.invoked_subcommand is not None:
        if by is not None or top is not None:
            fail(
                f"--by and --top shape the cost report only; `costline report {ctx.invoked_subcommand}` has its own "
                "tables",
                2,
            )
        ctx.obj = _Options(since, start, end, fmt, config, collector_url, lake)
        return
    cfg = load_or_exit(config, collector_url=collector_url)
    window = window_or_exit(since, start, end)
    try:
        group_by = parse_group_by(by)
    except ReportInputError as exc:
        fail(str(exc), code=2)
    if top is not None and not group_by:
        fail("--top needs --by: the groups to keep the top N of", code=2)
    _run(lambda reader: cost_report(reader, window, group_by, top), reader_for(cfg, lake), fmt)


def _merged(
    ctx: typer.Context,
    since: str | None,
    start: str | None,
    end: str | None,
    fmt: ReportFormat | None,
    config: Path | None,
    collector_url: str | None,
) -> _Options:
    parent = ctx.obj if isinstance(ctx.obj, _Options) else _Options(None, None, None, None, None, None)
    if since is None and start is None and end is None:
        since, start, end = parent.since, parent.start, parent.end
    return _Options(
        since,
        start,
        end,
        fmt or parent.fmt,
        config or parent.config,
        collector_url or parent.collector_url,
        parent.lake,
    )


@report_app.command("escalations")
def escalations(
    ctx: typer.Context,
    since: SinceOption = None,
    start: FromOption = None,
    end: ToOption = None,
    fmt: FormatOption = None,
    config: ConfigOption = None,
    collector_url: CollectorUrlOption = None,
) -> None:
    """Escalation rate by task type, escalation reasons, and which local models fail most and how."""
    options = _merged(ctx, since, start, end, fmt, config, collector_url)
    cfg = load_or_exit(options.config, collector_url=options.collector_url)
    window = window_or_exit(options.since, options.start, options.end)
    _run(lambda reader: escalation_report(reader, window), reader_for(cfg, options.lake), options.fmt)


@report_app.command("savings")
def savings(
    ctx: typer.Context,
    since: SinceOption = None,
    start: FromOption = None,
    end: ToOption = None,
    fmt: FormatOption = None,
    config: ConfigOption = None,
    collector_url: CollectorUrlOption = None,
) -> None:
    """Local successes, their cost on the escalation model, actual spend, and savings against all-Claude."""
    options = _merged(ctx, since, start, end, fmt, config, collector_url)
    cfg = load_or_exit(options.config, collector_url=options.collector_url)
    window = window_or_exit(options.since, options.start, options.end)
    model = cfg.escalation.model
    _run(lambda reader: savings_report(reader, window, model), reader_for(cfg, options.lake), options.fmt)


def reader_for(config: Config, lake: bool) -> LedgerReader:
    """This ledger (or its collector), or with ``--lake`` the shared ledger of every collector."""
    if not lake:
        return LedgerReader.from_config(config)
    if not config.lake.enabled:
        fail("--lake reads the shared ledger: set [lake] catalog and data_path (or COSTLINE_LAKE_CATALOG)", code=2)
    from costline.lake_reader import LakeReader  # only with --lake: the extensions load on demand

    return LakeReader(config)


def window_or_exit(since: str | None, start: str | None, end: str | None) -> Window:
    try:
        return parse_window(since, start, end)
    except ReportInputError as exc:
        fail(str(exc), code=2)


def _run(build: Callable[[LedgerReader], Report], reader: LedgerReader, fmt: ReportFormat | None) -> None:
    try:
        with reader:
            result = build(reader)
    except LedgerError as exc:
        fail(str(exc))
    render_report(result, fmt or ReportFormat.table)


def render_report(report: Report, fmt: ReportFormat) -> None:
    if fmt is ReportFormat.json:
        _write(report_json(report) + "\n")
    elif fmt is ReportFormat.csv:
        _write(report_csv(report))
    elif fmt is ReportFormat.markdown:
        _write(report_markdown(report))
    else:
        _print_tables(report)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


# ---- plain values (CSV, JSON): full precision -------------------------------------------------------------------


def interval_text(value: Any) -> str | None:
    """An Arrow month-day-nano interval as ISO 8601 (P1M2DT5400S), or None when ``value`` is not one."""
    if not isinstance(value, pa.MonthDayNano):
        return None
    seconds = Decimal(value.nanoseconds) / 1_000_000_000
    text = "P" + (f"{value.months}M" if value.months else "") + (f"{value.days}D" if value.days else "")
    if seconds or text == "P":
        text += f"T{format(seconds.normalize(), 'f')}S"
    return text


def plain_text(value: Any) -> str:
    if value is None:
        return ""
    if (interval := interval_text(value)) is not None:
        return interval
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, date | datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple | dict):
        return to_json(value)
    return str(value)


def to_json(value: Any) -> str:
    """JSON where decimals are written as exact numbers (parse them with ``parse_float=Decimal``)."""
    if (interval := interval_text(value)) is not None:
        return json.dumps(interval)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else "null"
    if isinstance(value, date | datetime):
        return json.dumps(value.isoformat())
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return "null"
    if value is None or isinstance(value, bool | int | float | str):
        return json.dumps(value)
    if isinstance(value, bytes):
        return json.dumps(value.hex())
    return json.dumps(str(value))  # intervals, times, UUIDs: their usual text


def _ordered(row: dict[str, Any], table: ReportTable) -> dict[str, Any]:
    return {column.name: row.get(column.name) for column in table.columns}


def report_json(report: Report) -> str:
    document: dict[str, Any] = {
        "report": report.name,
        "window": {"from": report.window.start.isoformat(), "to": report.window.end.isoformat()},
    }
    if report.name == "cost":
        document["by"] = list(report.by)
    document["tables"] = {
        table.name: {
            "title": table.title,
            "rows": [_ordered(row, table) for row in table.rows],
            "total": _ordered(table.total, table) if table.total is not None else None,
            "notes": table.notes,
        }
        for table in report.tables
    }
    return to_json(document)


def rows_csv(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([plain_text(value) for value in row])
    return out.getvalue()


def report_csv(report: Report) -> str:
    """One CSV per table; a report of several tables heads each with `# name` and separates them by a blank line."""
    parts = []
    for table in report.tables:
        names = [column.name for column in table.columns]
        body = rows_csv(names, ([row.get(name) for name in names] for row in table.rows))
        parts.append(body if len(report.tables) == 1 else f"# {table.name}\n{body}")
    return "\n".join(parts)


# ---- human values (table, Markdown): dollars to the cent --------------------------------------------------------


def human(value: Any, kind: str) -> str:
    if value is None:
        return MISSING
    if kind == "usd":
        cents = Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)
        return f"-${-cents:,}" if cents < 0 else f"${cents:,}"
    if kind == "count":
        return f"{int(value):,}"
    if kind == "ratio":
        return f"{float(value) * 100:.1f} %"
    if kind == "percent":
        return f"{float(value):.1f} %"
    if isinstance(value, date | datetime):
        return value.isoformat()
    return str(value)


def _shown_columns(table: ReportTable) -> list[Column]:
    # "reported cost" and its disagreements only mean something when some emitter carried a cost.
    rows = [*table.rows, *([table.total] if table.total else [])]
    return [
        column
        for column in table.columns
        if column.name not in _WHEN_REPORTED or any(row.get("reported_cost_usd") is not None for row in rows)
    ]


_WHEN_REPORTED = ("reported_cost_usd", "cost_disagreements")


def _print_tables(report: Report) -> None:
    rendered = []
    for table in report.tables:
        columns = _shown_columns(table)
        grid = Table(title=table.title, box=box.SIMPLE_HEAVY, title_justify="left", caption_justify="left")
        for column in columns:
            numeric = column.kind in ("count", "usd", "ratio", "percent")
            grid.add_column(column.title, justify="right" if numeric else "left", no_wrap=numeric)
        for index, row in enumerate(table.rows):
            grid.add_row(
                *(human(row.get(c.name), c.kind) for c in columns),
                end_section=table.total is not None and index == len(table.rows) - 1,
            )
        if table.total is not None:
            cells = [human(table.total.get(c.name), c.kind) if c.kind not in ("text", "date") else "" for c in columns]
            cells[0] = cells[0] or "total"
            grid.add_row(*cells, style="bold")
        if table.notes:
            grid.caption = "\n".join(table.notes)
        rendered.append(grid)
    out = _output_console(rendered)
    out.print(f"[bold]{report.window.describe()}[/bold]", highlight=False)
    for grid in rendered:
        out.print(grid)


def _output_console(renderables: list[Table]) -> Console:
    """A console wide enough for the tables when the output is not a terminal (files, pipes, tests)."""
    probe = Console()
    if probe.is_terminal:
        return probe
    width = max([80, *(probe.measure(r, options=probe.options.update(width=10_000)).maximum for r in renderables)])
    return Console(width=width, highlight=False)


def report_markdown(report: Report) -> str:
    lines = [f"**{report.window.describe()}**", ""]
    for table in report.tables:
        columns = _shown_columns(table)
        lines += [f"### {table.title}", ""]
        lines.append("| " + " | ".join(c.title for c in columns) + " |")
        lines.append("|" + "|".join("---:" if c.kind not in ("text", "date") else "---" for c in columns) + "|")
        for row in table.rows:
            lines.append("| " + " | ".join(_md(human(row.get(c.name), c.kind)) for c in columns) + " |")
        if table.total is not None:
            cells = [
                f"**{human(table.total.get(c.name), c.kind)}**" if c.kind not in ("text", "date") else ""
                for c in columns
            ]
            cells[0] = cells[0] or "**total**"
            lines.append("| " + " | ".join(cells) + " |")
        lines += [*(f"_{note}_" for note in table.notes), ""]
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|")
