"""Every alert threshold, window and ``for`` duration, in one place.

The rule generator reads nothing else, so changing a number here (and running ``make dashboards``) changes the
alert, its description and the runbook link together. Tests build variants with :func:`dataclasses.replace`, e.g.
a short ``for`` so that an alert can fire within an end-to-end test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class Thresholds:
    # Daily budget burn: a burn rate of 1 spends exactly the daily budget in 24 h. Multi-window alerts (SRE
    # workbook): the long window proves the burn is sustained, the short one that it is still happening.
    burn_fast_factor: float = 6.0  # the whole daily budget gone within 4 h
    burn_fast_long_window: str = "1h"
    burn_fast_short_window: str = "5m"
    burn_fast_for: str = "2m"
    burn_slow_factor: float = 2.0  # the whole daily budget gone within 12 h
    burn_slow_long_window: str = "6h"
    burn_slow_short_window: str = "30m"
    burn_slow_for: str = "15m"
    # Monthly budget, from the collector's budget gauges.
    monthly_warning_ratio: float = 0.8
    monthly_warning_for: str = "5m"
    monthly_exhausted_for: str = "1m"
    # Month-end projection: spent so far plus the average rate over this window for the rest of the month.
    projection_window: str = "1d"
    projected_for: str = "1h"
    # Per-team budgets ([budgets.teams."NAME"]): the fast daily burn (same factor and windows as the global one)
    # and the share of a team's daily or monthly budget still unspent.
    team_burn_for: str = "2m"
    team_headroom_ratio: float = 0.1
    team_headroom_for: str = "5m"
    # Escalations: share of tasks that needed Claude, over the last hour, once enough tasks ran to judge.
    escalation_ratio: float = 0.3
    escalation_window: str = "1h"
    escalation_min_tasks: int = 10
    escalation_for: str = "15m"
    # Hourly escalation quota: fraction of the quota still free.
    quota_headroom_ratio: float = 0.1
    quota_for: str = "5m"
    # Attempts that could not be priced (spend is under-reported until a price is configured).
    unpriced_window: str = "1h"
    unpriced_for: str = "5m"
    # Collector health.
    collector_down_for: str = "5m"
    rejected_window: str = "5m"
    rejected_for: str = "5m"
    # Evaluation interval of the generated rule groups; empty: Prometheus' global evaluation_interval.
    evaluation_interval: str = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            is_duration = f.name.endswith(("_window", "_for")) or (f.name == "evaluation_interval" and value)
            if is_duration and (not isinstance(value, str) or not _DURATION.match(value)):
                raise ValueError(f"{f.name} = {value!r}: use a Prometheus duration such as '5m' or '1h'")
        for name in ("monthly_warning_ratio", "escalation_ratio", "quota_headroom_ratio", "team_headroom_ratio"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} = {getattr(self, name)!r}: must be a ratio in (0, 1]")
        for name in ("burn_fast_factor", "burn_slow_factor"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} = {getattr(self, name)!r}: must be > 0")
        if self.escalation_min_tasks < 1:
            raise ValueError(f"escalation_min_tasks = {self.escalation_min_tasks!r}: must be >= 1")

    @property
    def burn_windows(self) -> tuple[str, ...]:
        """The cost-rate windows the burn alerts need, each recorded once, shortest first."""
        windows = {
            self.burn_fast_short_window,
            self.burn_fast_long_window,
            self.burn_slow_short_window,
            self.burn_slow_long_window,
        }
        return tuple(sorted(windows, key=duration_seconds))


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800, "y": 31_536_000}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", text))


DEFAULT = Thresholds()
