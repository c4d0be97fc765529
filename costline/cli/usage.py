"""`costline usage`: today's escalations (UTC), quota and budget headroom, from the router's usage store."""

from __future__ import annotations

import json
from dataclasses import asdict
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.table import Table

from costline import clock
from costline.cli.app import ConfigOption, app, console, load_or_exit
from costline.cli.report import rows_csv


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


USAGE_COUNTS = (
    "calls",
    "succeeded",
    "failed",
    "refused",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
)


@app.command()
def usage(
    output: Annotated[Format, typer.Option("--format", "-f", help="table, json or csv (escalations by reason).")] = (
        Format.table
    ),
    config: ConfigOption = None,
) -> None:
    """Today's (UTC) escalations, tokens and cost by reason, with quota and budget headroom."""
    from router.usage_store import Headroom, Limits, open_usage_store

    cfg = load_or_exit(config)
    limits = Limits.from_config(cfg)
    if cfg.usage_db_shared or cfg.usage_db_path.exists():
        store = open_usage_store(cfg, clock=clock.now)
        rows, headroom, team_spend = store.usage_today(), store.headroom(), store.team_spend()
    else:  # nothing escalated yet on this machine; do not create the file just to read it
        rows = []
        headroom = Headroom(
            0, limits.max_calls_per_hour, None, Decimal(0), limits.daily_usd, Decimal(0), limits.monthly_usd
        )
        team_spend = {team: (Decimal(0), Decimal(0)) for team in limits.teams}
    report = _report(rows, headroom, str(cfg.usage_db_location))
    report["teams"] = {
        team: _budgets(team_spend[team][0], budget.daily_usd, team_spend[team][1], budget.monthly_usd)
        for team, budget in sorted(limits.teams.items())
        if budget.daily_usd > 0 or budget.monthly_usd > 0
    }
    if output is Format.json:
        typer.echo(json.dumps(report, indent=2))
        return
    if output is Format.csv:
        # Exact dollars, as the usage store keeps them; one row per reason, then the day's total.
        header = ["date", "reason", *USAGE_COUNTS, "cost_usd"]
        lines = [[report["date"], row.reason, *(getattr(row, k) for k in USAGE_COUNTS), row.cost_usd] for row in rows]
        total = sum((row.cost_usd for row in rows), Decimal(0))
        lines.append([report["date"], "total", *(report["total"][k] for k in USAGE_COUNTS), total])
        typer.echo(rows_csv(header, lines), nl=False)
        return
    _print_tables(report)


def _ratio(used: float, limit: float) -> float:
    """Headroom = (limit - used) / limit, clamped to [0, 1]."""
    if limit <= 0:
        return 0.0
    return min(max((limit - used) / limit, 0.0), 1.0)


def _budgets(spent_day: Decimal, daily: Decimal, spent_month: Decimal, monthly: Decimal) -> dict[str, Any]:
    budgets = {}
    for period, spent, limit in (("daily", spent_day, daily), ("monthly", spent_month, monthly)):
        budgets[period] = {
            "limit_usd": float(limit) if limit > 0 else None,
            "spent_usd": float(spent),  # settled calls plus the reservations of calls in flight
            "headroom_ratio": _ratio(float(spent), float(limit)) if limit > 0 else None,
        }
    return budgets


def _report(rows: list, headroom: Any, path: str) -> dict[str, Any]:
    escalations = []
    for row in rows:
        entry = asdict(row)
        entry["cost_usd"] = float(row.cost_usd)
        escalations.append(entry)
    total: dict[str, Any] = {k: sum(r[k] for r in escalations) for k in USAGE_COUNTS}
    total["cost_usd"] = float(sum((r.cost_usd for r in rows), Decimal(0)))
    h = headroom
    budgets = _budgets(h.spent_today_usd, h.daily_usd, h.spent_month_usd, h.monthly_usd)
    in_flight = float(h.reserved_usd)
    return {
        "date": clock.now().date().isoformat(),
        "usage_db": path,
        "escalations": escalations,
        "total": total,
        "quota": {
            "quota": "escalations_per_hour",
            "used": h.calls_last_hour,
            "limit": h.max_calls_per_hour,
            "headroom_ratio": _ratio(h.calls_last_hour, h.max_calls_per_hour),
            "next_slot_at": h.next_slot_at.isoformat() if h.next_slot_at else None,
        },
        "budgets": budgets,
        "reserved_in_flight_usd": in_flight,
    }


def _print_tables(report: dict[str, Any]) -> None:
    table = Table(title=f"Escalations on {report['date']} (UTC)", title_justify="left")
    table.add_column("reason", no_wrap=True)
    for name in ("calls", "ok", "refused", "input", "output", "cache r/w"):
        table.add_column(name, justify="right")
    table.add_column("cost USD", justify="right", no_wrap=True)
    rows = [*report["escalations"], {"reason": "total", **report["total"]}]
    for row in rows:
        table.add_row(
            row["reason"],
            f"{row['calls']:,}",
            f"{row['succeeded']:,}",
            f"{row['refused']:,}",
            f"{row['input_tokens']:,}",
            f"{row['output_tokens']:,}",
            f"{row['cache_read_tokens']:,}/{row['cache_write_tokens']:,}",
            f"${row['cost_usd']:.6f}",
            end_section=row is rows[-2] if len(rows) > 1 else False,
        )
    console.print(table)

    limits = Table(title="Headroom", title_justify="left")
    for name in ("limit", "used", "of", "headroom", "note"):
        limits.add_column(name, justify="left" if name in ("limit", "note") else "right")
    q = report["quota"]
    note = f"next slot at {q['next_slot_at'][11:16]} UTC" if q["next_slot_at"] else "rolling 60 min"
    limits.add_row("escalations per hour", str(q["used"]), str(q["limit"]), f"{q['headroom_ratio']:.0%}", note)
    owners = [("", report["budgets"])] + [(f"team {team} ", b) for team, b in report["teams"].items()]
    for whose, budgets in owners:
        for period, resets in (("daily", "resets 00:00 UTC"), ("monthly", "resets on the 1st")):
            b = budgets[period]
            if b["limit_usd"] is None:
                if not whose:  # a team without this period's budget is under the global one only
                    limits.add_row(f"{period} budget", f"${b['spent_usd']:.2f}", "none", "-", "no budget set")
                continue
            limits.add_row(
                f"{whose}{period} budget",
                f"${b['spent_usd']:.2f}",
                f"${b['limit_usd']:.2f}",
                f"{b['headroom_ratio']:.0%}",
                resets,
            )
    console.print(limits)
    if report["reserved_in_flight_usd"]:
        console.print(
            f"spent includes ${report['reserved_in_flight_usd']:.4f} reserved by calls in flight (their upper bound "
            "until they return)",
            highlight=False,
        )
