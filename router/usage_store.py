"""Escalation quota and USD budgets, shared by every router process on the machine — or, with PostgreSQL, on every
machine (DESIGN §7, §9).

Each escalation call reserves its quota slot AND an upper bound of its cost in one exclusive transaction (see
:mod:`router.usage_db`) before the HTTP call, so concurrent calls can never together spend more than a budget; the
call is settled at its actual cost when it returns, or at the reservation, marked estimated, when its usage never
arrived. The hourly quota is a rolling 60-minute window of calls; budgets sum the cost of calls made in the current
UTC day and month, in-flight reservations included. A restart forgets nothing, and a call whose process died stays
counted at its reservation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from costline import clock as wall_clock
from costline import spans as attr
from costline.config import Config
from costline.pricing import TokenUsage
from router.usage_db import Execute, open_database

WINDOW = timedelta(hours=1)
STATUS_RESERVED = "reserved"  # slot and cost bound taken, call in flight (or its process died during the call)
STATUS_SUCCEEDED = "succeeded"
STATUS_FAILED = "failed"  # the call failed after Claude may have billed it (answer rejected, cut off, broken stream)
STATUS_UNBILLED = "unbilled"  # Claude answered an error before generating (429, 529, 4xx): no cost, no slot
STATUS_REFUSED = "refused"  # never called: quota or budget said no; takes no slot
NOT_COUNTED = (STATUS_REFUSED, STATUS_UNBILLED)  # statuses that hold no quota slot

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Budget:
    daily_usd: Decimal  # 0: no budget
    monthly_usd: Decimal

    @classmethod
    def of(cls, daily_usd: float, monthly_usd: float) -> Budget:
        return cls(Decimal(str(daily_usd)), Decimal(str(monthly_usd)))


@dataclass(frozen=True)
class Limits:
    max_calls_per_hour: int
    daily_usd: Decimal  # 0: no budget
    monthly_usd: Decimal
    teams: Mapping[str, Budget] = field(default_factory=dict)  # a team's own budgets, within the global ones

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        budgets = config.budgets
        return cls(
            config.escalation.max_calls_per_hour,
            Decimal(str(budgets.daily_usd)),
            Decimal(str(budgets.monthly_usd)),
            {team: Budget.of(b.daily_usd, b.monthly_usd) for team, b in config.team_budgets.items()},
        )


@dataclass(frozen=True)
class Reservation:
    call_id: int
    bound_usd: Decimal = Decimal(0)


@dataclass(frozen=True)
class Refusal:
    error_type: str  # quota_exhausted | budget_exhausted | missing_credentials | usage_store_unavailable
    message: str
    retry_after_s: float | None = field(default=None, compare=False)  # when the quota or budget has room again


@dataclass(frozen=True)
class Settlement:
    """What a reserved call turned out to be."""

    status: str  # succeeded | failed | unbilled
    usage: TokenUsage
    cost_usd: Decimal | None  # None: unknown (usage never arrived, or unpriced): the reservation stands, estimated
    error_type: str | None = None


@dataclass(frozen=True)
class CallRow:
    """One escalation call as the usage store holds it (for ``costline reconcile``)."""

    at: datetime
    task_id: str
    model: str
    status: str
    error_type: str | None
    cost_usd: Decimal
    estimated: bool
    trace_id: str | None
    span_id: str | None


@dataclass(frozen=True)
class ReasonUsage:
    reason: str
    calls: int
    succeeded: int
    failed: int
    refused: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: Decimal


@dataclass(frozen=True)
class Headroom:
    calls_last_hour: int
    max_calls_per_hour: int
    next_slot_at: datetime | None  # when the oldest call in the window ages out (None: a slot is free)
    spent_today_usd: Decimal
    daily_usd: Decimal
    spent_month_usd: Decimal
    monthly_usd: Decimal
    reserved_usd: Decimal = Decimal(0)  # upper bounds held by calls in flight (counted in spent_* too)


class UsageStore:
    """The quota and budgets over one usage database: a SQLite path, or a ``postgresql://`` URL."""

    def __init__(
        self, location: Path | str, limits: Limits, *, clock: Clock = wall_clock.now, busy_timeout_s: float = 30.0
    ) -> None:
        self.db = open_database(location, busy_timeout_s=busy_timeout_s)
        self.location = self.db.location
        self.limits = limits
        self._clock = clock

    def reserve(
        self,
        task_id: str,
        reason: str,
        model: str,
        *,
        bound_usd: Decimal = Decimal(0),
        trace_id: str | None = None,
        span_id: str | None = None,
        team: str | None = None,
    ) -> Reservation | Refusal:
        """Take a quota slot and reserve ``bound_usd`` (the most the call can cost) if the quota and budgets allow
        both; otherwise record and return the refusal. One exclusive transaction, so concurrent callers can't both
        pass."""
        now = self._clock()
        with self.db.exclusive() as execute:
            refusal = self._check(execute, now, bound_usd, team)
            held = Decimal(0) if refusal else bound_usd
            ((call_id,),) = execute(
                "INSERT INTO escalation_calls (at, task_id, reason, model, status, error_type, cost_usd, reserved_usd, "
                "estimated, trace_id, span_id, team) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    now.timestamp(),
                    task_id,
                    reason,
                    model,
                    STATUS_REFUSED if refusal else STATUS_RESERVED,
                    refusal.error_type if refusal else None,
                    held,
                    held,
                    0 if refusal else 1,
                    trace_id,
                    span_id,
                    team,
                ),
            )
        return refusal or Reservation(int(call_id), bound_usd)

    def settle(self, reservation: Reservation, settlement: Settlement) -> Decimal:
        """Record what a reserved call did; returns what now counts against the budgets.

        An unknown cost keeps the reservation, marked estimated: a call whose usage never arrived may still have
        been billed, and the upper bound is the only figure that cannot under-count it.
        """
        if settlement.status == STATUS_UNBILLED:
            cost, estimated = Decimal(0), False
        elif settlement.cost_usd is None:
            cost, estimated = reservation.bound_usd, True
        else:
            cost, estimated = settlement.cost_usd, False
        u = settlement.usage
        with self.db.exclusive() as execute:
            execute(
                "UPDATE escalation_calls SET status = ?, error_type = ?, input_tokens = ?, output_tokens = ?, "
                "cache_read_tokens = ?, cache_write_tokens = ?, cost_usd = ?, estimated = ?, settled_at = ? "
                "WHERE id = ?",
                (
                    settlement.status,
                    settlement.error_type,
                    u.input_tokens,
                    u.output_tokens,
                    u.cache_read_tokens,
                    u.cache_write_tokens,
                    cost,
                    int(estimated),
                    self._clock().timestamp(),
                    reservation.call_id,
                ),
            )
        return cost

    def _check(self, execute: Execute, now: datetime, bound_usd: Decimal, team: str | None) -> Refusal | None:
        limit = self.limits.max_calls_per_hour
        rows = _calls_in_window(execute, now)
        if len(rows) >= limit:
            if limit == 0:
                return Refusal(attr.ERROR_QUOTA_EXHAUSTED, "escalation quota is 0 (escalation.max_calls_per_hour = 0)")
            # The slot frees when enough of the oldest calls age out of the window.
            frees_at = datetime.fromtimestamp(rows[len(rows) - limit][0], UTC) + WINDOW
            minutes = max(1, math.ceil((frees_at - now).total_seconds() / 60))
            return Refusal(
                attr.ERROR_QUOTA_EXHAUSTED,
                f"escalation quota reached ({limit}/h); next slot in {minutes} min",
                (frees_at - now).total_seconds(),
            )
        budgets = [("", Budget(self.limits.daily_usd, self.limits.monthly_usd), None)]
        if team is not None and team in self.limits.teams:
            budgets.append((f"team {team}'s ", self.limits.teams[team], team))
        day_start, month_start = _day_start(now), _month_start(now)
        for whose, budget, only_team in budgets:
            for period, limit, since, reset_at in (
                ("daily", budget.daily_usd, day_start, day_start + timedelta(days=1)),
                ("monthly", budget.monthly_usd, month_start, _next_month(month_start)),
            ):
                if limit <= 0:
                    continue
                spent, reserved = _spent_since(execute, since, only_team)
                if spent + reserved + bound_usd > limit:
                    resets = "at 00:00 UTC" if period == "daily" else f"on {reset_at:%Y-%m-%d} at 00:00 UTC"
                    return Refusal(
                        attr.ERROR_BUDGET_EXHAUSTED,
                        f"{whose}{period} budget of ${_money(limit)} reached: ${_money(spent)} spent + "
                        f"${_money(reserved)} reserved by calls in flight, and this call may cost up to "
                        f"${_money(bound_usd)}; resets {resets}",
                        (reset_at - now).total_seconds(),
                    )
        return None

    def headroom(self) -> Headroom:
        now = self._clock()
        with self.db.read() as execute:
            rows = _calls_in_window(execute, now)
            limit = self.limits.max_calls_per_hour
            next_slot = None
            if len(rows) >= limit > 0:
                next_slot = datetime.fromtimestamp(rows[len(rows) - limit][0], UTC) + WINDOW
            spent_today, reserved_today = _spent_since(execute, _day_start(now))
            spent_month, reserved_month = _spent_since(execute, _month_start(now))
        return Headroom(
            calls_last_hour=len(rows),
            max_calls_per_hour=limit,
            next_slot_at=next_slot,
            spent_today_usd=spent_today + reserved_today,
            daily_usd=self.limits.daily_usd,
            spent_month_usd=spent_month + reserved_month,
            monthly_usd=self.limits.monthly_usd,
            reserved_usd=reserved_month,
        )

    def team_spend(self) -> dict[str, tuple[Decimal, Decimal]]:
        """(today, this month) of each team with a budget: settled spend plus the reservations of calls in flight,
        as the team's budget checks count them."""
        now = self._clock()
        spend = {}
        with self.db.read() as execute:
            for team in sorted(self.limits.teams):
                day = sum(_spent_since(execute, _day_start(now), team), Decimal(0))
                month = sum(_spent_since(execute, _month_start(now), team), Decimal(0))
                spend[team] = (day, month)
        return spend

    def usage_today(self) -> list[ReasonUsage]:
        """Escalation calls since 00:00 UTC, by reason."""
        since = _day_start(self._clock()).timestamp()
        with self.db.read() as execute:
            rows = execute(
                "SELECT reason, status, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
                "cost_usd FROM escalation_calls WHERE at >= ? ORDER BY reason",
                (since,),
            )
        by_reason: dict[str, list[tuple]] = {}
        for row in rows:
            by_reason.setdefault(row[0], []).append(row)
        return [
            ReasonUsage(
                reason=reason,
                calls=sum(1 for r in group if r[1] not in NOT_COUNTED),
                succeeded=sum(1 for r in group if r[1] == STATUS_SUCCEEDED),
                failed=sum(1 for r in group if r[1] in (STATUS_FAILED, STATUS_UNBILLED)),
                refused=sum(1 for r in group if r[1] == STATUS_REFUSED),
                input_tokens=sum(r[2] for r in group),
                output_tokens=sum(r[3] for r in group),
                cache_read_tokens=sum(r[4] for r in group),
                cache_write_tokens=sum(r[5] for r in group),
                cost_usd=sum((Decimal(r[6]) for r in group), Decimal(0)),
            )
            for reason, group in by_reason.items()
        ]

    def calls(self, since: datetime, until: datetime) -> list[CallRow]:
        """Every escalation call the router made in [since, until): refusals excluded, since they called nothing."""
        with self.db.read() as execute:
            rows = execute(
                "SELECT at, task_id, model, status, error_type, cost_usd, estimated, trace_id, span_id "
                "FROM escalation_calls WHERE at >= ? AND at < ? AND status != ? ORDER BY at",
                (since.timestamp(), until.timestamp(), STATUS_REFUSED),
            )
        return [
            CallRow(
                at=datetime.fromtimestamp(r[0], UTC),
                task_id=r[1],
                model=r[2],
                status=r[3],
                error_type=r[4],
                cost_usd=Decimal(r[5]),
                estimated=bool(r[6]),
                trace_id=r[7],
                span_id=r[8],
            )
            for r in rows
        ]


def open_usage_store(config: Config, *, clock: Clock = wall_clock.now) -> UsageStore:
    """The store ``router.usage_db`` names: a SQLite file (the default) or a ``postgresql://`` URL."""
    return UsageStore(config.usage_db_location, Limits.from_config(config), clock=clock)


def _calls_in_window(execute: Execute, now: datetime) -> list[tuple[float]]:
    """The calls holding a quota slot in the rolling hour before ``now``, oldest first."""
    return execute(
        f"SELECT at FROM escalation_calls WHERE status NOT IN ({', '.join('?' for _ in NOT_COUNTED)}) AND at > ? "
        "ORDER BY at",
        (*NOT_COUNTED, (now - WINDOW).timestamp()),
    )


def _spent_since(execute: Execute, start: datetime, team: str | None = None) -> tuple[Decimal, Decimal]:
    """(settled spend, reservations of calls still in flight) since ``start``, of one team or of everyone."""
    spent = reserved = Decimal(0)
    sql, params = "SELECT cost_usd, status FROM escalation_calls WHERE at >= ?", [start.timestamp()]
    if team is not None:
        sql, params = sql + " AND team = ?", [*params, team]
    for cost, status in execute(sql, params):
        if status == STATUS_RESERVED:
            reserved += Decimal(cost)
        else:
            spent += Decimal(cost)
    return spent, reserved


def _day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _month_start(now: datetime) -> datetime:
    return _day_start(now).replace(day=1)


def _next_month(month_start: datetime) -> datetime:
    return (month_start + timedelta(days=32)).replace(day=1)


def _money(value: Decimal) -> str:
    """Cents from a dollar up; below, four decimals, so that small calls and budgets do not all read $0.00."""
    return f"{value:.2f}" if value >= 1 else f"{value:.4f}"
