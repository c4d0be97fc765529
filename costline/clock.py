"""The wall clock as costline reads it: report windows that end now, `costline usage`'s today, the collector's
budget gauges, prices at the time of a call without one.

Everything that needs "now" calls :func:`now`, so a test pins time in one place with :func:`pinned` instead of
depending on the day it runs. Spans keep the times their emitters gave them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


_clock: Clock = system_clock


def now() -> datetime:
    """The current time (timezone-aware, UTC) by the clock in force."""
    return _clock()


@contextmanager
def using(clock: Clock) -> Iterator[None]:
    """Read time from ``clock`` inside the block (the previous clock is restored after it)."""
    global _clock
    previous, _clock = _clock, clock
    try:
        yield
    finally:
        _clock = previous


@contextmanager
def pinned(moment: datetime) -> Iterator[datetime]:
    """Stop the clock at ``moment`` (naive means UTC) inside the block."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    with using(lambda: moment):
        yield moment
