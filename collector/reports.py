"""Cost, escalation and savings reports over the ledger, as parametrised SQL on the documented views.

User input never reaches the SQL text: the window bounds are bound parameters and group-by names are looked up in a
whitelist. Each report is a list of :class:`ReportTable` that the CLI renders as a table, CSV, JSON or Markdown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

import pyarrow as pa

from collector.views import ATTEMPT_MEASURES, ESCALATION_MADE, SAVINGS_MEASURES, with_views
from costline import clock
from costline.pricing import COST_TOLERANCE_RATIO
from costline.spans import ERROR_TRUNCATED, REFUSAL_ERROR_TYPES, TIER_ESCALATION

# --by names → columns of attempt_costs. Only these names ever reach the SQL text.
GROUP_COLUMNS: dict[str, str] = {
    "model": "model",
    "provider": "provider",
    "task_type": "task_type",
    "tier": "tier",
    "reason": "escalation_reason",
    "outcome": "outcome",
    "service": "service_name",
    "team": "team",
    "project": "project",
    "user": "user_id",
    "hour": "hour",
    "day": "day",
    "week": "week",
    "month": "month",
}
# Time buckets sort in time order, ahead of the cost order of the other groups.
_TIME_GROUPS = ("hour", "day", "week", "month")

_WINDOW_FILTER = "start_time >= CAST(? AS TIMESTAMPTZ) AND start_time < CAST(? AS TIMESTAMPTZ)"
_SINCE_RE = re.compile(r"^(\d+)([mhdw])$")
_SINCE_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
SINCE_FORM = "a number of minutes, hours, days or weeks such as 90m, 24h, 7d or 2w"
DATE_FORM = "a UTC date YYYY-MM-DD (or a date-time YYYY-MM-DDTHH:MM[:SS][+00:00])"


class ReportInputError(ValueError):
    """Bad report options; the message names the expected form."""


class Reader(Protocol):
    def query(self, sql: str, params: Sequence[Any] = ...) -> pa.Table: ...


@dataclass(frozen=True)
class Window:
    """Attempts that started in [start, end), UTC."""

    start: datetime
    end: datetime

    @property
    def params(self) -> list[str]:
        return [self.start.isoformat(), self.end.isoformat()]

    def describe(self) -> str:
        return f"{_show_time(self.start)} to {_show_time(self.end)} (UTC, end exclusive)"


def _show_time(moment: datetime) -> str:
    if moment.hour == moment.minute == moment.second == moment.microsecond == 0:
        return moment.strftime("%Y-%m-%d")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def parse_window(
    since: str | None, start: str | None, end: str | None, *, now: datetime | None = None, default: str = "7d"
) -> Window:
    """``--since 90m|24h|7d|2w`` ending now, or ending at ``--to``; or ``--from DATE [--to DATE]``. A ``--to`` DATE is
    inclusive; ``--to`` alone ends the default span there."""
    now = (now or clock.now()).astimezone(UTC)
    if since is not None and start is not None:
        raise ReportInputError("use either --since or --from, not both")
    if start is None:
        text = (since or default).strip().lower()
        match = _SINCE_RE.match(text)
        if not match or int(match.group(1)) == 0:
            raise ReportInputError(f"--since {since!r} is not a window: give {SINCE_FORM}")
        amount, unit = int(match.group(1)), match.group(2)
        # --to without --from: the span (--since, else the default) before that end.
        upper = _parse_bound("--to", end, inclusive_day=True) if end is not None else now
        try:
            return Window(upper - timedelta(**{_SINCE_UNITS[unit]: amount}), upper)
        except OverflowError:
            raise ReportInputError(f"--since {since!r} is too long a window: give {SINCE_FORM}") from None
    lower = _parse_bound("--from", start, inclusive_day=False)
    upper = _parse_bound("--to", end, inclusive_day=True) if end is not None else now
    if upper <= lower:
        raise ReportInputError(f"--to ({end}) must be after --from ({start})")
    return Window(lower, upper)


def _parse_bound(option: str, text: str, *, inclusive_day: bool) -> datetime:
    text = text.strip()
    try:
        if "T" not in text.upper() and " " not in text:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return moment + timedelta(days=1) if inclusive_day else moment
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise ReportInputError(f"{option} {text!r} is not a date: give {DATE_FORM}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_group_by(text: str | None) -> tuple[str, ...]:
    if text is None or not text.strip():
        return ()
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in GROUP_COLUMNS]
    if unknown:
        raise ReportInputError(f"--by {', '.join(unknown)}: not a column; use any of {', '.join(GROUP_COLUMNS)}")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # text | date | count | usd | percent | ratio
    title: str


@dataclass
class ReportTable:
    name: str
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]]
    total: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    name: str
    window: Window
    tables: list[ReportTable]
    by: tuple[str, ...] = ()


def _col(name: str, kind: str, title: str | None = None) -> Column:
    return Column(name, kind, title or name.replace("_", " "))


_GROUP_KINDS = {"day": "date", "week": "date", "month": "date", "hour": "text"}
_COST_COLUMNS = [
    _col("attempts", "count"),
    _col("refused", "count", "refused (not sent)"),
    _col("tasks", "count"),
    _col("input_tokens", "count", "input tok"),
    _col("output_tokens", "count", "output tok"),
    _col("cache_read_tokens", "count", "cache read tok"),
    _col("cache_write_tokens", "count", "cache write tok"),
    _col("cost_usd", "usd", "cost"),
    _col("reported_cost_usd", "usd", "reported cost"),
    _col("unpriced_attempts", "count", "unpriced"),
    _col("cost_disagreements", "count", "cost disagrees"),
]


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


def cost_report(reader: Reader, window: Window, by: Sequence[str] = (), top: int | None = None) -> Report:
    """Attempts, tasks, tokens by type and cost, grouped by any of the GROUP_COLUMNS; ``top``: only the N groups
    that cost most (the total still covers every group)."""
    groups = [GROUP_COLUMNS[name] for name in by]
    total_sql = with_views(f"SELECT {ATTEMPT_MEASURES}\nFROM attempt_costs WHERE {_WINDOW_FILTER}", "attempt_costs")
    total = _rows(reader.query(total_sql, window.params))[0]
    rows: list[dict[str, Any]] = []
    if groups:
        keys = ", ".join(groups)
        order = [g for g in groups if g in _TIME_GROUPS]
        order += ["cost_usd DESC", "attempts DESC", *(f"{g} NULLS LAST" for g in groups if g not in _TIME_GROUPS)]
        sql = with_views(
            f"SELECT {keys},{ATTEMPT_MEASURES}\nFROM attempt_costs WHERE {_WINDOW_FILTER}\n"
            f"GROUP BY {keys} ORDER BY {', '.join(order)}",
            "attempt_costs",
        )
        rows = _rows(reader.query(sql, window.params))
    group_keys = [tuple(row[g] for g in groups) for row in rows]
    if len(groups) <= 1 and sum(key[0] is not None for key in group_keys) <= _MAX_MASKED_KEYS:
        total_tasks, tasks_by_key = _task_counts_by_mask(reader, window, groups, group_keys)
    else:
        total_tasks, tasks_by_key = _task_counts_distinct(reader, window, groups)
    total = _with_tasks(total, total_tasks)
    rows = [_with_tasks(row, tasks_by_key.get(key, 0)) for row, key in zip(rows, group_keys, strict=True)]
    columns = [_col(g, _GROUP_KINDS.get(g, "text")) for g in groups] + _COST_COLUMNS
    title = "Cost by " + ", ".join(by) if by else "Cost"
    shown = rows
    if top is not None and groups and len(rows) > top:
        shown = sorted(rows, key=lambda row: (row["cost_usd"], row["attempts"]), reverse=True)[:top]
        title += f", top {top} by cost"
    table = ReportTable("cost", title, columns, shown if groups else [total], total if groups else None)
    if len(shown) < len(rows):
        table.notes.append(f"{len(rows) - len(shown)} more group(s) not shown; the total covers all {len(rows)}")
    if total["attempts"] == 0:
        table.notes.append("no attempts in this window")
    if total["unpriced_attempts"]:
        table.notes.append(
            f"{total['unpriced_attempts']} attempt(s) could not be priced: their cost is missing from the totals"
        )
    if total["cost_disagreements"]:
        table.notes.append(
            f"{total['cost_disagreements']} attempt(s) carry a cost reported by their emitter that differs from "
            f"costline's by more than {COST_TOLERANCE_RATIO:.0%}: `costline sql \"SELECT emitter, provider, model, "
            'cost_usd, reported_cost_usd FROM attempts WHERE cost_disagrees"` lists them'
        )
    return Report("cost", window, [table], tuple(by))


def _with_tasks(row: dict[str, Any], tasks: int) -> dict[str, Any]:
    """``row`` with its task count after the attempts, in the column order of COST_MEASURES."""
    ordered: dict[str, Any] = {}
    for name, value in row.items():
        ordered[name] = value
        if name == "attempts":
            ordered["tasks"] = tasks
    return ordered


# Counting distinct task ids per group is most of a large report's time (a set of 32-character ids per group). With
# one group column and at most 63 non-NULL keys, one GROUP BY task_id instead ORs together a bit per group each task
# has attempts in (bit 0: the group whose key is NULL) in a 64-bit mask; tallying the few distinct masks gives every
# group's count and the total, exactly, in one pass. Other groupings count DISTINCT task ids per group.
_MAX_MASKED_KEYS = 63
_GROUP_SQL_TYPES = {"day": "DATE", "week": "DATE", "month": "DATE", "hour": "TIMESTAMP"}


def _task_counts_by_mask(
    reader: Reader, window: Window, groups: Sequence[str], group_keys: Sequence[tuple[Any, ...]]
) -> tuple[int, dict[tuple[Any, ...], int]]:
    one = "CAST(1 AS UBIGINT)"
    params: list[Any] = []
    named = [key[0] for key in group_keys if key[0] is not None]
    if groups:
        column = groups[0]
        sql_type = _GROUP_SQL_TYPES.get(column, "VARCHAR")
        # A key missing from the list (a row that arrived after the grouped query) gets no bit: NULL is ignored.
        bit = (
            f"CASE WHEN {column} IS NULL THEN {one} "
            f"ELSE {one} << CAST(list_position(CAST(? AS {sql_type}[]), {column}) AS UBIGINT) END"
        )
        params.append([value.isoformat() if isinstance(value, date) else value for value in named])
    else:
        bit = one
    sql = with_views(
        f"""SELECT mask, count(*) AS tasks
FROM (
    SELECT task_id, bit_or({bit}) AS mask
    FROM attempt_costs WHERE task_id IS NOT NULL AND {_WINDOW_FILTER}
    GROUP BY task_id
)
GROUP BY mask""",
        "attempt_costs",
    )
    by_bit = [0] * (len(named) + 1)
    total = 0
    for row in _rows(reader.query(sql, [*params, *window.params])):
        mask, tasks = row["mask"] or 0, row["tasks"]
        total += tasks
        for index in range(len(by_bit)):
            if mask >> index & 1:
                by_bit[index] += tasks
    if not groups:
        return total, {}
    counts: dict[tuple[Any, ...], int] = {(None,): by_bit[0]}
    counts.update(((value,), by_bit[index]) for index, value in enumerate(named, start=1))
    return total, counts


def _task_counts_distinct(
    reader: Reader, window: Window, groups: Sequence[str]
) -> tuple[int, dict[tuple[Any, ...], int]]:
    keys = ", ".join(groups)
    total_sql = f"SELECT count(DISTINCT task_id) AS tasks FROM attempt_costs WHERE {_WINDOW_FILTER}"
    total = _rows(reader.query(with_views(total_sql, "attempt_costs"), window.params))[0]["tasks"]
    grouped_sql = (
        f"SELECT {keys}, count(DISTINCT task_id) AS tasks FROM attempt_costs WHERE {_WINDOW_FILTER} GROUP BY {keys}"
    )
    rows = _rows(reader.query(with_views(grouped_sql, "attempt_costs"), window.params))
    return total, {tuple(row[g] for g in groups): row["tasks"] for row in rows}


_ESCALATED = f"tier = '{TIER_ESCALATION}'"
_REFUSED = f"coalesce(error_type, '') IN ({', '.join(repr(t) for t in REFUSAL_ERROR_TYPES)})"
# Per task first, then per task type: one pass instead of several DISTINCT aggregates over every attempt.
_ESCALATION_BY_TASK_TYPE = f"""
SELECT task_type,
       grouping(task_type) AS is_total,
       count(*) AS tasks,
       count(*) FILTER (WHERE escalated) AS escalated_tasks,
       count(*) FILTER (WHERE escalated) / count(*) AS escalation_rate,
       coalesce(sum(escalations), 0) AS escalations,
       coalesce(sum(escalation_successes), 0) AS escalation_successes,
       coalesce(sum(escalations_refused), 0) AS escalations_refused,
       coalesce(sum(escalation_cost_usd), 0) AS escalation_cost_usd
FROM (
    SELECT task_type, task_id,
           bool_or({ESCALATION_MADE}) AS escalated,
           count(*) FILTER (WHERE {ESCALATION_MADE}) AS escalations,
           count(*) FILTER (WHERE {_ESCALATED} AND outcome = 'success') AS escalation_successes,
           count(*) FILTER (WHERE {_ESCALATED} AND {_REFUSED}) AS escalations_refused,
           sum(cost_usd) FILTER (WHERE {_ESCALATED}) AS escalation_cost_usd
    FROM attempt_costs
    WHERE task_id IS NOT NULL AND {_WINDOW_FILTER}
    GROUP BY task_type, task_id
)
GROUP BY GROUPING SETS ((task_type), ())
ORDER BY is_total, escalated_tasks DESC, tasks DESC, task_type NULLS LAST"""

_EMPTY_ESCALATION_TOTAL = {
    "task_type": None,
    "tasks": 0,
    "escalated_tasks": 0,
    "escalation_rate": None,
    "escalations": 0,
    "escalation_successes": 0,
    "escalations_refused": 0,
    "escalation_cost_usd": Decimal(0),
}


def escalation_report(reader: Reader, window: Window) -> Report:
    """Escalation rate by task type, escalations by reason, and how local models fail."""
    by_type: list[dict[str, Any]] = []
    type_total = dict(_EMPTY_ESCALATION_TOTAL)
    for row in _rows(reader.query(with_views(_ESCALATION_BY_TASK_TYPE, "attempt_costs"), window.params)):
        if row.pop("is_total"):
            type_total = row
        else:
            by_type.append(row)
    reasons = _rows(
        reader.query(
            with_views(
                f"""SELECT coalesce(reason, 'unknown') AS reason, model,
       count(*) FILTER (WHERE NOT {_REFUSED}) AS escalations,
       count(DISTINCT task_id) FILTER (WHERE NOT {_REFUSED}) AS tasks,
       count(*) FILTER (WHERE outcome = 'success') AS successes,
       count(*) FILTER (WHERE outcome = 'error' AND NOT {_REFUSED}) AS errors,
       count(*) FILTER (WHERE error_type = '{ERROR_TRUNCATED}') AS truncated,
       count(*) FILTER (WHERE {_REFUSED}) AS refused,
       coalesce(sum(cost_usd), 0) AS cost_usd
FROM escalations WHERE {_WINDOW_FILTER}
GROUP BY ALL ORDER BY escalations DESC, refused DESC, reason, model""",
                "escalations",
            ),
            window.params,
        )
    )
    failures = _rows(
        reader.query(
            with_views(
                f"""SELECT provider, model, error_type, failures, model_failures, model_attempts,
       failures / model_attempts AS share_of_attempts
FROM (
    SELECT provider, model, coalesce(error_type, 'unknown') AS error_type,
           count(*) FILTER (WHERE outcome = 'error') AS failures,
           sum(count(*) FILTER (WHERE outcome = 'error')) OVER (PARTITION BY provider, model) AS model_failures,
           sum(count(*)) OVER (PARTITION BY provider, model) AS model_attempts
    FROM attempt_costs WHERE is_local AND {_WINDOW_FILTER}
    GROUP BY provider, model, coalesce(error_type, 'unknown')
)
WHERE failures > 0
ORDER BY model_failures DESC, provider, model, failures DESC, error_type""",
                "attempt_costs",
            ),
            window.params,
        )
    )
    for row in failures:
        row["model_failures"] = int(row["model_failures"])
        row["model_attempts"] = int(row["model_attempts"])
    rate_columns = [
        _col("task_type", "text", "task type"),
        _col("tasks", "count"),
        _col("escalated_tasks", "count", "escalated"),
        _col("escalation_rate", "ratio", "rate"),
        _col("escalations", "count"),
        _col("escalation_successes", "count", "succeeded"),
        _col("escalations_refused", "count", "refused (quota/budget/key)"),
        _col("escalation_cost_usd", "usd", "escalation cost"),
    ]
    rate_table = ReportTable("by_task_type", "Escalation rate by task type", rate_columns, by_type, type_total)
    if type_total["tasks"] == 0:
        rate_table.notes.append("no routed tasks in this window")
    reason_columns = [
        _col("reason", "text"),
        _col("model", "text", "escalation model"),
        _col("escalations", "count"),
        _col("tasks", "count"),
        _col("successes", "count"),
        _col("errors", "count"),
        _col("truncated", "count", "cut off at max_tokens"),
        _col("refused", "count", "refused (quota/budget/key)"),
        _col("cost_usd", "usd", "cost"),
    ]
    failure_columns = [
        _col("provider", "text"),
        _col("model", "text", "local model"),
        _col("error_type", "text", "error type"),
        _col("failures", "count"),
        _col("model_failures", "count", "model failures"),
        _col("model_attempts", "count", "model attempts"),
        _col("share_of_attempts", "ratio", "share of attempts"),
    ]
    return Report(
        "escalations",
        window,
        [
            rate_table,
            ReportTable("reasons", "Escalations by reason", reason_columns, reasons),
            ReportTable("local_failures", "Local model failures (most failing first)", failure_columns, failures),
        ],
    )


def savings_report(reader: Reader, window: Window, escalation_model: str) -> Report:
    """Local successes, their counterfactual on the escalation model, actual spend, and savings vs all-Claude."""
    summary = _rows(
        reader.query(
            with_views(f"SELECT {SAVINGS_MEASURES}\nFROM attempt_costs WHERE {_WINDOW_FILTER}", "attempt_costs"),
            window.params,
        )
    )[0]
    by_model = _rows(
        reader.query(
            with_views(
                f"""SELECT provider, model,
       count(*) FILTER (WHERE outcome = 'success') AS local_successes,
       coalesce(sum(counterfactual_usd) FILTER (WHERE outcome = 'success'), 0) AS counterfactual_usd,
       coalesce(sum(cost_usd), 0) AS local_spend_usd,
       coalesce(sum(counterfactual_usd) FILTER (WHERE outcome = 'success'), 0) - coalesce(sum(cost_usd), 0)
           AS savings_usd
FROM attempt_costs WHERE is_local AND {_WINDOW_FILTER}
GROUP BY provider, model ORDER BY savings_usd DESC, provider, model""",
                "attempt_costs",
            ),
            window.params,
        )
    )
    summary_columns = [
        _col("local_successes", "count", "local successes"),
        _col("counterfactual_usd", "usd", f"their cost on {escalation_model}"),
        _col("uncounted_local_successes", "count", "no counterfactual"),
        _col("cloud_spend_usd", "usd", "cloud spend"),
        _col("local_spend_usd", "usd", "local compute"),
        _col("actual_spend_usd", "usd", "actual spend"),
        _col("baseline_usd", "usd", "all-Claude baseline"),
        _col("savings_usd", "usd", "savings"),
        _col("savings_pct", "percent", "savings %"),
    ]
    summary_table = ReportTable(
        "summary", "Savings of local routing against an all-Claude baseline", summary_columns, [summary]
    )
    if summary["uncounted_local_successes"]:
        summary_table.notes.append(
            f"{summary['uncounted_local_successes']} local success(es) have no counterfactual price: "
            "their savings are not counted"
        )
    if summary["baseline_usd"] == 0:
        summary_table.notes.append("nothing to compare in this window: the baseline is $0")
    model_columns = [
        _col("provider", "text"),
        _col("model", "text", "local model"),
        _col("local_successes", "count", "successes"),
        _col("counterfactual_usd", "usd", f"cost on {escalation_model}"),
        _col("local_spend_usd", "usd", "local compute"),
        _col("savings_usd", "usd", "savings"),
    ]
    return Report(
        "savings",
        window,
        [summary_table, ReportTable("by_local_model", "Savings by local model", model_columns, by_model)],
    )
