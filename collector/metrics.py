"""Prometheus metrics (DESIGN §5), all derived from the ledger.

Counters are seeded from the ledger when the collector starts and then advanced by each commit, using the same
SQL aggregation over the committed batch that seeded them from the table — so a restart shows no drop and the
counters always agree with the rows. Quota and budget gauges are queried from the ledger at every scrape, so
headroom recovers when the hour or the day rolls over, with or without traffic.

Families are exactly those of DESIGN §5 (plus the shared ``error_type`` label on attempts), on a registry of their
own: no process or platform collectors, no ``_created`` series.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import duckdb
import prometheus_client
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from collector.ledger import WriteResult
from costline import clock
from costline.config import Config
from costline.pricing import SOURCE_NO_USAGE
from costline.spans import ERROR_TYPES, REFUSAL_ERROR_TYPES

prometheus_client.disable_created_metrics()

# OpenTelemetry GenAI semantic conventions: explicit bucket boundaries of gen_ai.client.operation.duration.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
QUOTA_ESCALATIONS = "escalations_per_hour"
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write")

_MODEL = "coalesce(request_model, response_model, '')"  # a span naming no model is labelled ""
_ERROR_TYPE_LABEL = (
    "CASE WHEN outcome = 'success' THEN '' "
    f"WHEN error_type IN ({', '.join(repr(t) for t in ERROR_TYPES)}) THEN error_type ELSE 'other' END"
)
# A team declared in config ([budgets.teams."NAME"]) is its own label value, any other team 'other', none "":
# the label's values are bounded by the config whatever callers send.
_TEAM_LABEL = (
    "CASE WHEN coalesce(team, '') = '' THEN '' "
    "WHEN list_contains(CAST($teams AS VARCHAR[]), team) THEN team ELSE 'other' END"
)
_NOT_REFUSED = f"coalesce(error_type, '') NOT IN ({', '.join(repr(t) for t in REFUSAL_ERROR_TYPES)})"

_BUCKET = (
    "CASE "
    + " ".join(f"WHEN duration_s <= {b} THEN {i}" for i, b in enumerate(DURATION_BUCKETS))
    + f" ELSE {len(DURATION_BUCKETS)} END"
)
# One row per label set and duration bucket (a CASE is far cheaper than a FILTER per bucket).
_ATTEMPT_AGGREGATES = f"""
SELECT provider, {_MODEL} AS model, coalesce(tier, '') AS tier, outcome, {_ERROR_TYPE_LABEL} AS error_type,
       count(*) AS attempts,
       coalesce(sum(cost_usd), 0) AS cost,
       count(*) FILTER (WHERE cost_usd IS NULL AND price_source IS DISTINCT FROM '{SOURCE_NO_USAGE}') AS unpriced,
       coalesce(sum(counterfactual_usd), 0) AS counterfactual,
       count(counterfactual_usd) AS counterfactual_n,
       coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
       coalesce(sum(cache_read_tokens), 0), coalesce(sum(cache_write_tokens), 0),
       count(*) FILTER (WHERE tier = 'escalation' AND {_NOT_REFUSED}) AS escalations,
       coalesce(escalation_reason, '') AS reason,
       coalesce(sum(CAST(round(duration_s * 1e6) AS BIGINT)), 0) AS duration_us,
       {_BUCKET} AS bucket,
       count(*) FILTER (WHERE cost_disagrees) AS disagreements,
       {_TEAM_LABEL} AS team
FROM {{source}}
GROUP BY ALL
"""
_TASK_AGGREGATES = """
SELECT coalesce(task_type, ''), coalesce(outcome, ''),
       CASE WHEN escalated IS NULL THEN '' WHEN escalated THEN 'true' ELSE 'false' END, count(*)
FROM {source}
GROUP BY ALL
"""


ATTEMPT_LABELS = ("provider", "model", "tier", "outcome", "error_type")
TASK_LABELS = ("task_type", "outcome", "escalated")
ESCALATION_LABELS = ("reason", "model")
MODEL_LABELS = ("provider", "model")
COST_LABELS = ("provider", "model", "team")
TOKEN_LABELS = ("provider", "model", "type", "team")
BUDGET_LABELS = ["period", "team"]  # team "" is the global budget
# Labels whose values come from span attributes as sent: any number of distinct values can arrive.
FREE_TEXT_LABELS = frozenset({"provider", "model", "tier", "reason", "task_type"})
OTHER = "other"


class _State:
    """Counter values keyed by label tuples. Decimal dollars keep the sums exact until exposition.

    Each metric holds at most ``max_series`` label sets; an update that would add one more is counted under its
    label set with every free-text label (:data:`FREE_TEXT_LABELS`) set to ``other``, so totals stay exact and
    ``/metrics`` stays small whatever names arrive. ``folded`` counts those updates per metric."""

    def __init__(self, max_series: int) -> None:
        self.max_series = max_series
        self.folded: dict[str, int] = {}
        self.attempts: dict[tuple[str, ...], int] = {}
        self.tasks: dict[tuple[str, ...], int] = {}
        self.escalations: dict[tuple[str, str], int] = {}
        self.cost: dict[tuple[str, str, str], Decimal] = {}
        self.counterfactual: dict[tuple[str], Decimal] = {}
        self.tokens: dict[tuple[str, str, str, str], int] = {}
        self.unpriced: dict[tuple[str, str], int] = {}
        self.disagreements: dict[tuple[str, str], int] = {}  # the emitter's reported cost differs from costline's
        self.duration: dict[tuple[str, str], list[int]] = {}  # count per bucket (last: above all bounds), sum in µs
        self.ingest: dict[str, int] = {"stored": 0, "duplicate": 0, "rejected": 0}

    def add_attempts(self, rows: Iterable[tuple[Any, ...]]) -> dict[tuple[str, str], int]:
        """Add aggregated attempt rows; returns the unpriced counts by (provider, model) in them."""
        unpriced_seen: dict[tuple[str, str], int] = {}
        for row in rows:
            provider, model, tier, outcome, error_type, n, cost, unpriced, cf, cf_n = row[:10]
            tokens = row[10:14]
            escalations, reason, duration_us, bucket, disagreements, team = row[14:20]
            pm = (provider, model)
            self._inc(
                "costline_attempts", ATTEMPT_LABELS, self.attempts, (provider, model, tier, outcome, error_type), n
            )
            if n > unpriced:  # an unpriced model gets no cost series (NULL is not $0)
                self._inc("costline_cost_usd", COST_LABELS, self.cost, (provider, model, team), cost)
            if unpriced:
                self._inc("costline_unpriced_attempts", MODEL_LABELS, self.unpriced, pm, unpriced)
                _inc(unpriced_seen, pm, unpriced)
            if disagreements:
                self._inc("costline_cost_disagreements", MODEL_LABELS, self.disagreements, pm, disagreements)
            if cf_n:
                self._inc("costline_counterfactual_usd", ("model",), self.counterfactual, (model,), cf)
            for kind, count in zip(TOKEN_TYPES, tokens, strict=True):
                self._inc("costline_tokens", TOKEN_LABELS, self.tokens, (provider, model, kind, team), count)
            if escalations:
                self._inc("costline_escalations", ESCALATION_LABELS, self.escalations, (reason, model), escalations)
            series = self._series("costline_attempt_duration_seconds", MODEL_LABELS, self.duration, pm)
            hist = self.duration.get(series)
            if hist is None:
                hist = self.duration[series] = [0] * (len(DURATION_BUCKETS) + 2)
            hist[bucket] += n  # per bucket here; cumulative at exposition
            hist[-1] += duration_us
        return unpriced_seen

    def add_tasks(self, rows: Iterable[tuple[Any, ...]]) -> None:
        for task_type, outcome, escalated, n in rows:
            self._inc("costline_tasks", TASK_LABELS, self.tasks, (task_type, outcome, escalated), n)

    def _series(self, metric: str, labels: tuple[str, ...], d: dict[Any, Any], key: tuple[str, ...]) -> tuple[str, ...]:
        """``key``, or its folded form when ``d`` already holds ``max_series`` label sets."""
        if key in d or len(d) < self.max_series:
            return key
        self.folded[metric] = self.folded.get(metric, 0) + 1
        return tuple(OTHER if name in FREE_TEXT_LABELS else value for name, value in zip(labels, key, strict=True))

    def _inc(self, metric: str, labels: tuple[str, ...], d: dict[Any, Any], key: tuple[str, ...], amount: Any) -> None:
        _inc(d, self._series(metric, labels, d, key), amount)


def _inc(d: dict[Any, Any], key: Any, amount: Any) -> None:
    d[key] = d.get(key, 0) + amount


class LedgerMetrics(Collector):
    """The collector's metrics; register on a fresh :class:`CollectorRegistry` (see :func:`make_registry`)."""

    def __init__(self, config: Config, reader: Callable[[], duckdb.DuckDBPyConnection]) -> None:
        self._config = config
        self._reader = reader
        self._lock = threading.Lock()
        self._state = _State(config.collector.max_series_per_metric)
        self._teams = sorted(config.team_budgets)
        self._team_values = pa.array(self._teams, pa.string())
        self.clock: Callable[[], datetime] = clock.now

    # --- counters ---------------------------------------------------------------------------------------------

    def seed(self, con: duckdb.DuckDBPyConnection) -> None:
        """Start the counters from what the ledger already holds."""
        state = _State(self._config.collector.max_series_per_metric)
        # Largest label sets first: when a metric has more than it may keep, the ones folded into 'other' are the
        # smallest, whatever order the rows were stored in.
        attempts = _ATTEMPT_AGGREGATES.format(source="attempts") + "ORDER BY attempts DESC"
        state.add_attempts(con.execute(attempts, {"teams": self._teams}).fetchall())
        state.add_tasks(con.execute(_TASK_AGGREGATES.format(source="tasks") + "ORDER BY 4 DESC").fetchall())
        stored = con.execute("SELECT (SELECT count(*) FROM attempts) + (SELECT count(*) FROM tasks)").fetchone()
        state.ingest["stored"] = int(stored[0]) if stored else 0
        for result, spans in con.execute("SELECT result, spans FROM ingest_counts").fetchall():
            state.ingest[result] = int(spans)
        with self._lock:
            self._state = state

    def warm_up(self, attempts: pa.Table) -> None:
        """Aggregate rows without counting them: the first commit then finds pyarrow's kernels loaded."""
        _attempt_aggregates(attempts, self._team_values)

    def apply(self, result: WriteResult, rejected: int) -> dict[tuple[str, str], int]:
        """Advance the counters by one commit; returns unpriced attempts by (provider, model) in it."""
        attempt_rows = _attempt_aggregates(result.attempts, self._team_values) if result.attempts.num_rows else []
        task_rows = _task_aggregates(result.tasks) if result.tasks.num_rows else []
        with self._lock:
            unpriced = self._state.add_attempts(attempt_rows)
            self._state.add_tasks(task_rows)
            ingest = self._state.ingest
            ingest["stored"] += result.attempts.num_rows + result.tasks.num_rows
            ingest["duplicate"] += result.duplicates + result.nested
            ingest["rejected"] += rejected
        return unpriced

    # --- exposition -------------------------------------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return []  # families are built at scrape time; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            s = self._state
            attempts, tasks, escalations = dict(s.attempts), dict(s.tasks), dict(s.escalations)
            cost, counterfactual, tokens = dict(s.cost), dict(s.counterfactual), dict(s.tokens)
            unpriced, ingest, disagreements = dict(s.unpriced), dict(s.ingest), dict(s.disagreements)
            folded = dict(s.folded)
            duration = {k: list(v) for k, v in s.duration.items()}

        yield _counter("costline_attempts", "Model call attempts.", ATTEMPT_LABELS, attempts)
        yield _counter("costline_tasks", "Routed tasks.", TASK_LABELS, tasks)
        yield _counter(
            "costline_escalations",
            "Escalations to the escalation model that were made.",
            ESCALATION_LABELS,
            escalations,
        )
        yield _counter("costline_cost_usd", "Priced cost of attempts in USD.", COST_LABELS, cost)
        yield _counter(
            "costline_counterfactual_usd",
            "What local successes would have cost on the escalation model, in USD.",
            ("model",),
            counterfactual,
        )
        yield _counter("costline_tokens", "Tokens by type.", TOKEN_LABELS, tokens)
        yield _counter(
            "costline_metric_folded_updates",
            "Updates counted under label value 'other' because the metric already had "
            "collector.max_series_per_metric label sets.",
            ("metric",),
            {(m,): n for m, n in folded.items()},
        )
        hist = HistogramMetricFamily(
            "costline_attempt_duration_seconds", "Attempt duration in seconds.", labels=list(MODEL_LABELS)
        )
        for labels, counts in sorted(duration.items()):
            cumulative, running = [], 0.0
            for bound, count in zip(DURATION_BUCKETS, counts, strict=False):
                running += count
                cumulative.append((_le(bound), running))
            running += counts[-2]
            cumulative.append(("+Inf", running))
            hist.add_metric(list(labels), cumulative, counts[-1] / 1e6)
        yield hist
        yield from self._headroom()
        yield _counter(
            "costline_ingest_spans",
            "Spans received, by what became of them.",
            ["result"],
            {(r,): n for r, n in ingest.items()},
        )
        yield _counter(
            "costline_unpriced_attempts",
            "Attempts that could not be priced (cost NULL).",
            MODEL_LABELS,
            unpriced,
        )
        yield _counter(
            "costline_cost_disagreements",
            "Attempts whose cost reported by the emitter differs from costline's beyond the tolerance.",
            MODEL_LABELS,
            disagreements,
        )

    def _headroom(self) -> Iterable[Metric]:
        now = self.clock()
        hour_ago = now - timedelta(hours=1)
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        month = day.replace(day=1)
        con = self._reader()
        try:
            row = con.execute(
                f"""
                SELECT count(*) FILTER (WHERE start_time > $hour_ago AND {_NOT_REFUSED}),
                       coalesce(sum(cost_usd) FILTER (WHERE start_time >= $day), 0),
                       coalesce(sum(cost_usd), 0)
                FROM attempts
                WHERE tier = 'escalation' AND start_time >= least($hour_ago, $month) AND start_time <= $now
                """,
                {"hour_ago": hour_ago, "day": day, "month": month, "now": now + timedelta(days=1)},
            ).fetchone()
        finally:
            con.close()
        used, spent_day, spent_month = row if row else (0, Decimal(0), Decimal(0))
        limit = self._config.escalation.max_calls_per_hour
        labels = [QUOTA_ESCALATIONS]
        yield _gauge("costline_quota_limit", "Escalation calls allowed per rolling hour.", ["quota"], labels, limit)
        yield _gauge("costline_quota_used", "Escalation calls in the last 60 minutes.", ["quota"], labels, used)
        yield _gauge(
            "costline_quota_headroom_ratio",
            "(limit - used) / limit, clamped to [0, 1].",
            ["quota"],
            labels,
            _ratio(limit, used),
        )
        budgets = [
            ("daily", "", self._config.budgets.daily_usd, spent_day),
            ("monthly", "", self._config.budgets.monthly_usd, spent_month),
        ]
        budgets += self._team_budgets(day, month, now)
        limit_f = GaugeMetricFamily("costline_budget_limit_usd", "Escalation budget in USD.", labels=BUDGET_LABELS)
        spent_f = GaugeMetricFamily(
            "costline_budget_spent_usd", "Escalation spend in the current UTC day or month.", labels=BUDGET_LABELS
        )
        ratio_f = GaugeMetricFamily(
            "costline_budget_headroom_ratio", "(limit - spent) / limit, clamped to [0, 1].", labels=BUDGET_LABELS
        )
        for period, team, limit_usd, spent in budgets:
            if limit_usd <= 0:  # no budget for the period: no series (a 0 limit is not "all spent")
                continue
            limit_f.add_metric([period, team], limit_usd)
            spent_f.add_metric([period, team], float(spent))
            ratio_f.add_metric([period, team], _ratio(limit_usd, float(spent)))
        yield limit_f
        yield spent_f
        yield ratio_f

    def _team_budgets(self, day: datetime, month: datetime, now: datetime) -> list[tuple[str, str, float, Any]]:
        """(period, team, limit, spent) of each declared team's budgets: its escalation spend, as the router's
        per-team reservations count it."""
        teams = {team: b for team, b in self._config.team_budgets.items() if b.daily_usd > 0 or b.monthly_usd > 0}
        if not teams:
            return []
        con = self._reader()
        try:
            spent = {
                team: (day_usd, month_usd)
                for team, day_usd, month_usd in con.execute(
                    """
                    SELECT team, coalesce(sum(cost_usd) FILTER (WHERE start_time >= $day), 0),
                           coalesce(sum(cost_usd), 0)
                    FROM attempts
                    WHERE tier = 'escalation' AND list_contains(CAST($teams AS VARCHAR[]), team)
                      AND start_time >= $month AND start_time <= $now
                    GROUP BY team
                    """,
                    {"teams": sorted(teams), "day": day, "month": month, "now": now + timedelta(days=1)},
                ).fetchall()
            }
        finally:
            con.close()
        rows: list[tuple[str, str, float, Any]] = []
        for team, budget in sorted(teams.items()):
            day_usd, month_usd = spent.get(team, (Decimal(0), Decimal(0)))
            rows.append(("daily", team, budget.daily_usd, day_usd))
            rows.append(("monthly", team, budget.monthly_usd, month_usd))
        return rows


# The commit's deltas are the SQL aggregates above computed in pyarrow, on the writer thread without a DuckDB
# query (about 5x cheaper); rows come out in the same shape and with the same values, so seed and apply agree.
_ERROR_TYPES = pa.array(sorted(ERROR_TYPES), pa.string())
_REFUSED = pa.array(REFUSAL_ERROR_TYPES, pa.string())
_ATTEMPT_SUMS = ("cost_usd", "unpriced", "counterfactual_usd", "input_tokens", "output_tokens")
_ATTEMPT_SUMS += ("cache_read_tokens", "cache_write_tokens", "escalation", "duration_us", "disagreements")
_ATTEMPT_KEYS = ("provider", "model", "tier", "outcome", "error_label", "reason", "bucket", "team")
# Literals as Arrow scalars, made once: converting a Python value costs pyarrow ~35 µs (it tries to import
# dateutil each time when that is not installed), and a commit would convert ~30 of them.
_SUCCESS, _ESCALATION, _OTHER, _EMPTY = (pa.scalar(v, pa.string()) for v in ("success", "escalation", "other", ""))
_TRUE_TEXT, _FALSE_TEXT = pa.scalar("true", pa.string()), pa.scalar("false", pa.string())
_FALSE = pa.scalar(False)
_BOUNDS = [pa.scalar(float(bound), pa.float64()) for bound in DURATION_BUCKETS]
_BUCKET_COUNT = pa.scalar(len(DURATION_BUCKETS), pa.int8())
_MICROS_PER_S = pa.scalar(1e6, pa.float64())


def _attempt_aggregates(rows: pa.Table, teams: pa.Array) -> list[tuple[Any, ...]]:
    """``_ATTEMPT_AGGREGATES`` over a committed batch, in the column order :meth:`_State.add_attempts` reads;
    ``teams`` are the declared teams (``_TEAM_LABEL``)."""
    tier = rows.column("tier")
    team = rows.column("team")
    no_team = pc.fill_null(pc.equal(team, _EMPTY), True)
    declared = pc.fill_null(pc.is_in(team, value_set=teams), _FALSE)
    error_type = rows.column("error_type")
    success = pc.fill_null(pc.equal(rows.column("outcome"), _SUCCESS), _FALSE)
    known = pc.fill_null(pc.is_in(error_type, value_set=_ERROR_TYPES), _FALSE)
    escalation = pc.and_(
        pc.fill_null(pc.equal(tier, _ESCALATION), _FALSE),
        pc.invert(pc.is_in(pc.fill_null(error_type, _EMPTY), value_set=_REFUSED)),
    )
    duration = rows.column("duration_s")
    # First bound the duration is <= (as SQL's CASE); NULL and NaN fall above all bounds.
    within = [pc.cast(pc.fill_null(pc.less_equal(duration, bound), _FALSE), pa.int8()) for bound in _BOUNDS]
    bucket = pc.subtract(_BUCKET_COUNT, _total(within))
    micros = pc.cast(pc.round(pc.multiply(duration, _MICROS_PER_S), round_mode="half_towards_infinity"), pa.int64())
    table = pa.table(
        {
            "provider": rows.column("provider"),
            "model": pc.coalesce(rows.column("request_model"), rows.column("response_model"), pa.scalar("")),
            "tier": pc.fill_null(tier, _EMPTY),
            "outcome": rows.column("outcome"),
            "error_label": pc.if_else(success, _EMPTY, pc.if_else(known, error_type, _OTHER)),
            "reason": pc.fill_null(rows.column("escalation_reason"), _EMPTY),
            "bucket": bucket,
            "team": pc.if_else(no_team, _EMPTY, pc.if_else(declared, team, _OTHER)),
            "cost_usd": rows.column("cost_usd"),
            "unpriced": pc.cast(
                pc.and_(
                    pc.is_null(rows.column("cost_usd")),
                    pc.fill_null(pc.not_equal(rows.column("price_source"), SOURCE_NO_USAGE), True),
                ),
                pa.int64(),
            ),
            "counterfactual_usd": rows.column("counterfactual_usd"),
            "input_tokens": rows.column("input_tokens"),
            "output_tokens": rows.column("output_tokens"),
            "cache_read_tokens": rows.column("cache_read_tokens"),
            "cache_write_tokens": rows.column("cache_write_tokens"),
            "escalation": pc.cast(escalation, pa.int64()),
            "duration_us": micros,
            "disagreements": pc.cast(pc.fill_null(rows.column("cost_disagrees"), _FALSE), pa.int64()),
        }
    )
    grouped = table.group_by(list(_ATTEMPT_KEYS), use_threads=False).aggregate(
        [([], "count_all"), *((name, "sum") for name in _ATTEMPT_SUMS), ("counterfactual_usd", "count")]
    )
    g = {name: grouped.column(name).to_pylist() for name in grouped.column_names}
    sums = {name: [0 if v is None else v for v in g[f"{name}_sum"]] for name in _ATTEMPT_SUMS}
    return list(
        zip(
            g["provider"],
            g["model"],
            g["tier"],
            g["outcome"],
            g["error_label"],
            g["count_all"],
            sums["cost_usd"],
            sums["unpriced"],
            sums["counterfactual_usd"],
            g["counterfactual_usd_count"],
            sums["input_tokens"],
            sums["output_tokens"],
            sums["cache_read_tokens"],
            sums["cache_write_tokens"],
            sums["escalation"],
            g["reason"],
            sums["duration_us"],
            g["bucket"],
            sums["disagreements"],
            g["team"],
            strict=True,
        )
    )


def _total(columns: list[Any]) -> Any:
    total = columns[0]
    for column in columns[1:]:
        total = pc.add(total, column)
    return total


def _task_aggregates(rows: pa.Table) -> list[tuple[Any, ...]]:
    """``_TASK_AGGREGATES`` over a committed batch."""
    escalated = rows.column("escalated")
    table = pa.table(
        {
            "task_type": pc.fill_null(rows.column("task_type"), _EMPTY),
            "outcome": pc.fill_null(rows.column("outcome"), _EMPTY),
            "escalated": pc.fill_null(pc.if_else(escalated, _TRUE_TEXT, _FALSE_TEXT), _EMPTY),
        }
    )
    grouped = table.group_by(["task_type", "outcome", "escalated"], use_threads=False).aggregate([([], "count_all")])
    return list(
        zip(
            grouped.column("task_type").to_pylist(),
            grouped.column("outcome").to_pylist(),
            grouped.column("escalated").to_pylist(),
            grouped.column("count_all").to_pylist(),
            strict=True,
        )
    )


def _counter(name: str, doc: str, labels: Sequence[str], values: dict[tuple[str, ...], Any]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for key, value in sorted(values.items()):
        family.add_metric(list(key), float(value))
    return family


def _gauge(name: str, doc: str, label_names: list[str], labels: list[str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=label_names)
    family.add_metric(labels, float(value))
    return family


def _ratio(limit: float, used: float) -> float:
    if limit <= 0:
        return 0.0
    return min(1.0, max(0.0, (limit - used) / limit))


def _le(bound: float) -> str:
    return repr(float(bound))


def make_registry(metrics: LedgerMetrics) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    return registry
