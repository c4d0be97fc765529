"""Escalation quota and USD budgets, shared by every router process on the machine (DESIGN §7).

One SQLite file in WAL mode. Each escalation call reserves its slot with ``BEGIN IMMEDIATE`` (one writer at a
time across processes) before the HTTP call, so two processes can never both take the last slot; the call's
priced cost is recorded afterwards. The hourly quota is a rolling 60-minute window of calls; budgets sum the
cost of calls made in the current UTC day and month. A restart forgets nothing: it is all in the file.
"""

from __future__ import annotations

import math
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from costline.config import Config
from costline.pricing import TokenUsage

WINDOW = timedelta(hours=1)
STATUS_RESERVED = "reserved"  # slot taken, call in flight (or the process died during the call)
STATUS_SUCCEEDED = "succeeded"
STATUS_FAILED = "failed"
STATUS_REFUSED = "refused"  # never called: quota or budget said no; takes no slot

SCHEMA = """
CREATE TABLE IF NOT EXISTS escalation_calls (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,                 -- unix seconds (UTC) when the slot was reserved
    task_id TEXT NOT NULL,
    reason TEXT NOT NULL,             -- threshold | critical | requested
    model TEXT NOT NULL,
    status TEXT NOT NULL,             -- reserved | succeeded | failed | refused
    error_type TEXT,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd TEXT NOT NULL DEFAULT '0'  -- exact decimal
);
CREATE INDEX IF NOT EXISTS escalation_calls_at ON escalation_calls (at);
"""

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Limits:
    max_calls_per_hour: int
    daily_usd: Decimal  # 0: no budget
    monthly_usd: Decimal

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        budgets = config.budgets
        return cls(
            config.escalation.max_calls_per_hour,
            Decimal(str(budgets.daily_usd)),
            Decimal(str(budgets.monthly_usd)),
        )


@dataclass(frozen=True)
class Reservation:
    call_id: int


@dataclass(frozen=True)
class Refusal:
    error_type: str  # quota_exhausted | budget_exhausted
    message: str


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


class UsageStore:
    def __init__(self, path: Path, limits: Limits, *, clock: Clock = utc_now, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.limits = limits
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._initialise()

    def _initialise(self) -> None:
        """Switch the file to WAL and create the tables, retrying while other processes do the same.

        SQLite answers "database is locked" at once, without waiting out the busy timeout, when two connections
        race to switch a new file to WAL or to upgrade a read lock to create tables: so routers started together
        retry here, with jitter, within the same timeout.
        """
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                with self._connect() as db:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.executescript(SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(random.uniform(0.005, 0.05))

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A connection per operation: safe across threads, and each process sees the others' commits.
        db = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        finally:
            db.close()

    def reserve(self, task_id: str, reason: str, model: str) -> Reservation | Refusal:
        """Take an escalation slot if the quota and budgets allow it; otherwise record and return the refusal."""
        now = self._clock()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                refusal = self._check(db, now)
                status = STATUS_REFUSED if refusal else STATUS_RESERVED
                cursor = db.execute(
                    "INSERT INTO escalation_calls (at, task_id, reason, model, status, error_type) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (now.timestamp(), task_id, reason, model, status, refusal.error_type if refusal else None),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return refusal or Reservation(int(cursor.lastrowid or 0))

    def record(
        self,
        reservation: Reservation,
        *,
        ok: bool,
        usage: TokenUsage,
        cost_usd: Decimal | None,
        error_type: str | None = None,
    ) -> None:
        """Record what a reserved call did and cost."""
        with self._connect() as db:
            db.execute(
                "UPDATE escalation_calls SET status = ?, error_type = ?, input_tokens = ?, output_tokens = ?, "
                "cache_read_tokens = ?, cache_write_tokens = ?, cost_usd = ? WHERE id = ?",
                (
                    STATUS_SUCCEEDED if ok else STATUS_FAILED,
                    error_type,
                    usage.input_tokens,
                    usage.output_tokens,
                    usage.cache_read_tokens,
                    usage.cache_write_tokens,
                    str(cost_usd if cost_usd is not None else Decimal(0)),
                    reservation.call_id,
                ),
            )

    def _check(self, db: sqlite3.Connection, now: datetime) -> Refusal | None:
        limit = self.limits.max_calls_per_hour
        window_start = (now - WINDOW).timestamp()
        rows = db.execute(
            "SELECT at FROM escalation_calls WHERE status != ? AND at > ? ORDER BY at",
            (STATUS_REFUSED, window_start),
        ).fetchall()
        if len(rows) >= limit:
            if limit == 0:
                return Refusal("quota_exhausted", "escalation quota is 0 (escalation.max_calls_per_hour = 0)")
            # The slot frees when enough of the oldest calls age out of the window.
            frees_at = datetime.fromtimestamp(rows[len(rows) - limit][0], UTC) + WINDOW
            minutes = max(1, math.ceil((frees_at - now).total_seconds() / 60))
            return Refusal("quota_exhausted", f"escalation quota reached ({limit}/h); next slot in {minutes} min")
        day_start, month_start = _day_start(now), _month_start(now)
        if self.limits.daily_usd > 0:
            spent = _spent_since(db, day_start)
            if spent >= self.limits.daily_usd:
                return Refusal(
                    "budget_exhausted",
                    f"daily budget reached (${_money(spent)} spent of ${_money(self.limits.daily_usd)}); "
                    "resets at 00:00 UTC",
                )
        if self.limits.monthly_usd > 0:
            spent = _spent_since(db, month_start)
            if spent >= self.limits.monthly_usd:
                resets = _next_month(month_start)
                return Refusal(
                    "budget_exhausted",
                    f"monthly budget reached (${_money(spent)} spent of ${_money(self.limits.monthly_usd)}); "
                    f"resets on {resets:%Y-%m-%d} at 00:00 UTC",
                )
        return None

    def headroom(self) -> Headroom:
        now = self._clock()
        with self._connect() as db:
            rows = db.execute(
                "SELECT at FROM escalation_calls WHERE status != ? AND at > ? ORDER BY at",
                (STATUS_REFUSED, (now - WINDOW).timestamp()),
            ).fetchall()
            limit = self.limits.max_calls_per_hour
            next_slot = None
            if len(rows) >= limit > 0:
                next_slot = datetime.fromtimestamp(rows[len(rows) - limit][0], UTC) + WINDOW
            return Headroom(
                calls_last_hour=len(rows),
                max_calls_per_hour=limit,
                next_slot_at=next_slot,
                spent_today_usd=_spent_since(db, _day_start(now)),
                daily_usd=self.limits.daily_usd,
                spent_month_usd=_spent_since(db, _month_start(now)),
                monthly_usd=self.limits.monthly_usd,
            )

    def usage_today(self) -> list[ReasonUsage]:
        """Escalation calls since 00:00 UTC, by reason."""
        since = _day_start(self._clock()).timestamp()
        with self._connect() as db:
            rows = db.execute(
                "SELECT reason, status, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
                "cost_usd FROM escalation_calls WHERE at >= ? ORDER BY reason",
                (since,),
            ).fetchall()
        by_reason: dict[str, list[tuple]] = {}
        for row in rows:
            by_reason.setdefault(row[0], []).append(row)
        return [
            ReasonUsage(
                reason=reason,
                calls=sum(1 for r in group if r[1] != STATUS_REFUSED),
                succeeded=sum(1 for r in group if r[1] == STATUS_SUCCEEDED),
                failed=sum(1 for r in group if r[1] == STATUS_FAILED),
                refused=sum(1 for r in group if r[1] == STATUS_REFUSED),
                input_tokens=sum(r[2] for r in group),
                output_tokens=sum(r[3] for r in group),
                cache_read_tokens=sum(r[4] for r in group),
                cache_write_tokens=sum(r[5] for r in group),
                cost_usd=sum((Decimal(r[6]) for r in group), Decimal(0)),
            )
            for reason, group in by_reason.items()
        ]


def _spent_since(db: sqlite3.Connection, start: datetime) -> Decimal:
    rows = db.execute("SELECT cost_usd FROM escalation_calls WHERE at >= ?", (start.timestamp(),)).fetchall()
    return sum((Decimal(r[0]) for r in rows), Decimal(0))


def _day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _month_start(now: datetime) -> datetime:
    return _day_start(now).replace(day=1)


def _next_month(month_start: datetime) -> datetime:
    return (month_start + timedelta(days=32)).replace(day=1)


def _money(value: Decimal) -> str:
    return f"{value:.2f}"
