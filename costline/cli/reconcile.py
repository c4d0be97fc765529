"""`costline reconcile`: the router's usage store against the ledger, call by call.

Every escalation call the router made is a row in the usage store (with its attempt span's ids) and should be one
row in the ledger. A call found on one side only, or at another price, is listed with the dollars at stake; the
command exits 1 when anything differs, so it can run from cron or CI.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.table import Table

from costline.cli.app import ConfigOption, app, console, fail, load_or_exit
from costline.spans import REFUSAL_ERROR_TYPES, TIER_ESCALATION

NANO = Decimal("0.000000001")  # the ledger keeps costs to 9 decimals
ONLY_USAGE = "only in the usage store"
ONLY_LEDGER = "only in the ledger"
COST_DIFFERS = "cost differs"


class Format(StrEnum):
    table = "table"
    json = "json"


@dataclass(frozen=True)
class Difference:
    kind: str
    at: str
    task_id: str | None
    model: str | None
    span_id: str | None
    usage_usd: Decimal | None
    ledger_usd: Decimal | None
    note: str = ""

    @property
    def dollars(self) -> Decimal:
        return (self.usage_usd or Decimal(0)) - (self.ledger_usd or Decimal(0))


@app.command()
def reconcile(
    since: Annotated[str, typer.Option("--since", help="Window ending now: 24h, 7d (any N h or N d).")] = "24h",
    service: Annotated[
        str | None, typer.Option("--service", help="Only ledger rows from this service.name (other machines' routers).")
    ] = None,
    output: Annotated[Format, typer.Option("--format", "-f", help="table or json.")] = Format.table,
    config: ConfigOption = None,
) -> None:
    """Compare the escalation calls in the usage store with the ledger; exit 1 when any call is missing or differs."""
    from collector.reports import ReportInputError, parse_window
    from costline.ledger_reader import LedgerError, LedgerReader
    from router.usage_store import open_usage_store

    cfg = load_or_exit(config)
    try:
        window = parse_window(since, None, None)
    except ReportInputError as exc:
        fail(str(exc))
    calls = []
    if cfg.usage_db_shared or cfg.usage_db_path.exists():  # never create a store just to read it
        calls = open_usage_store(cfg).calls(window.start, window.end)
    # A span starts just before its call reserves; allow the longest call on both sides of the window.
    slack = timedelta(seconds=cfg.escalation.timeout_s)
    try:
        ledger = _ledger_calls(LedgerReader.from_config(cfg), window.start - slack, window.end + slack, service)
    except LedgerError as exc:
        fail(str(exc))
    differences, matched = _compare(calls, ledger, window.start, window.end)
    _print(differences, matched, window.describe(), output)
    if differences:
        raise typer.Exit(1)


def _ledger_calls(reader: Any, start: datetime, end: datetime, service: str | None) -> dict[str, dict[str, Any]]:
    refusals = ", ".join(f"'{t}'" for t in REFUSAL_ERROR_TYPES)
    sql = (
        "SELECT span_id, task_id, coalesce(request_model, response_model) AS model, start_time, cost_usd "
        f"FROM attempts WHERE tier = '{TIER_ESCALATION}' AND task_id IS NOT NULL "
        f"AND coalesce(error_type, '') NOT IN ({refusals}) AND start_time >= ? AND start_time < ?"
    )
    params: list[Any] = [start.isoformat(), end.isoformat()]
    if service is not None:
        sql += " AND service_name = ?"
        params.append(service)
    return {row["span_id"]: row for row in reader.query(sql, params).to_pylist()}


def _compare(
    calls: list[Any], ledger: dict[str, dict[str, Any]], start: datetime, end: datetime
) -> tuple[list[Difference], int]:
    differences: list[Difference] = []
    matched = 0
    for call in calls:
        row = ledger.pop(call.span_id, None) if call.span_id else None
        note = "estimated: the call ended before its usage arrived" if call.estimated else ""
        if call.status == "reserved":
            note = "never settled: its process died during the call, or it is still running"
        if row is None:
            differences.append(
                Difference(
                    ONLY_USAGE, call.at.isoformat(), call.task_id, call.model, call.span_id, call.cost_usd, None, note
                )
            )
            continue
        matched += 1
        ledger_cost = row["cost_usd"]
        if ledger_cost is None or call.cost_usd.quantize(NANO) != Decimal(ledger_cost).quantize(NANO):
            differences.append(
                Difference(
                    COST_DIFFERS,
                    call.at.isoformat(),
                    call.task_id,
                    call.model,
                    call.span_id,
                    call.cost_usd,
                    None if ledger_cost is None else Decimal(ledger_cost),
                    note or ("unpriced in the ledger" if ledger_cost is None else ""),
                )
            )
    for span_id, row in ledger.items():
        if start <= row["start_time"] < end:
            cost = row["cost_usd"]
            differences.append(
                Difference(
                    ONLY_LEDGER,
                    row["start_time"].isoformat(),
                    row["task_id"],
                    row["model"],
                    span_id,
                    None,
                    None if cost is None else Decimal(cost),
                    "made by a router with another usage store (another machine?), or the store was reset",
                )
            )
    return differences, matched


def _print(differences: list[Difference], matched: int, window: str, output: Format) -> None:
    net = sum((d.dollars for d in differences), Decimal(0))
    if output is Format.json:
        doc = {
            "window": window,
            "matched": matched,
            "differences": [
                {**asdict(d), "usage_usd": _text(d.usage_usd), "ledger_usd": _text(d.ledger_usd)} for d in differences
            ],
            "usage_minus_ledger_usd": str(net),
        }
        typer.echo(json.dumps(doc, indent=2))
        return
    console.print(f"Escalation calls {window}: {matched} in both", highlight=False)
    if not differences:
        console.print("The usage store and the ledger agree.", highlight=False)
        return
    table = Table(title=f"{len(differences)} differences", title_justify="left")
    for name in ("", "at", "task", "model", "span", "usage store", "ledger", "note"):
        table.add_column(name, overflow="fold")
    for d in differences:
        table.add_row(
            d.kind,
            d.at[:19],
            d.task_id or "",
            d.model or "",
            d.span_id or "",
            _money(d.usage_usd),
            _money(d.ledger_usd),
            d.note,
        )
    console.print(table)
    console.print(f"usage store minus ledger: ${net:.6f}", highlight=False)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _money(value: Decimal | None) -> str:
    return "—" if value is None else f"${value:.6f}"
