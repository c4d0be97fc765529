"""Prometheus recording rules and alerts, generated from :mod:`dashboards.thresholds`.

Recording rules follow the ``level:metric:operations`` convention; alerts carry ``severity``, ``summary``,
``description`` and a ``runbook_url`` that points at the alert's own section of ``docs/runbook.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dashboards import metrics as m
from dashboards.runbook import runbook_url
from dashboards.stack import Stack
from dashboards.thresholds import SECONDS_PER_DAY, Thresholds, duration_seconds

RECORDING_GROUP = "costline.rules"
ALERT_GROUP = "costline.alerts"
SHORT_WINDOW = "5m"
SEVERITIES = ("critical", "warning", "info")

# Alert template snippets (Prometheus' Go templates, not Python formatting).
RATIO_VALUE = "{{ $value | humanizePercentage }}"
USD_VALUE = '${{ $value | printf "%.2f" }}'
FACTOR_VALUE = '{{ $value | printf "%.1f" }}'


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str


def _rate(metric: str, window: str, selector: str = "") -> str:
    return f"rate({metric}{{{selector}}}[{window}])" if selector else f"rate({metric}[{window}])"


def escalation_ratio_expr(window: str) -> str:
    """Share of routed tasks that escalated to Claude."""
    return f"sum({_rate(m.TASKS, window, m.ESCALATED)})\n/\nsum({_rate(m.TASKS, window)})"


def remaining_month_seconds_expr() -> str:
    """Seconds from now to the end of the current UTC month."""
    return f"((days_in_month() - day_of_month()) * {SECONDS_PER_DAY} + {SECONDS_PER_DAY} - time() % {SECONDS_PER_DAY})"


def recording_rules(t: Thresholds) -> list[dict[str, str]]:
    rules: list[dict[str, str]] = []
    for window in _unique([SHORT_WINDOW, t.escalation_window]):
        rules.append({"record": m.windowed(m.ESCALATION_RATIO, window), "expr": escalation_ratio_expr(window)})
    for window in _unique([SHORT_WINDOW, "1h"]):
        rules.append(
            {
                "record": m.windowed(m.MODEL_COST_RATE, window),
                "expr": f"sum by (provider, model) ({_rate(m.COST, window)})",
            }
        )
    for window in _unique([SHORT_WINDOW, *t.burn_windows, t.projection_window]):
        rules.append({"record": m.windowed(m.COST_RATE, window), "expr": f"sum({_rate(m.COST, window)})"})
    for window in t.burn_windows:
        rules.append(
            {
                "record": m.windowed(m.DAILY_BURN, window),
                "expr": f"{m.windowed(m.COST_RATE, window)} * {SECONDS_PER_DAY}\n/\n"
                f"max({m.BUDGET_LIMIT}{{{m.DAILY}, {m.GLOBAL_BUDGET}}})",
            }
        )
    for window in _unique([t.burn_fast_short_window, t.burn_fast_long_window]):
        rules.append(
            {
                "record": m.windowed(m.TEAM_COST_RATE, window),
                "expr": f"sum by (team) ({_rate(m.COST, window, m.TEAM_BUDGET)})",
            }
        )
        rules.append(
            {
                "record": m.windowed(m.TEAM_DAILY_BURN, window),
                "expr": f"{m.windowed(m.TEAM_COST_RATE, window)} * {SECONDS_PER_DAY}\n/ on (team)\n"
                f"max by (team) ({m.BUDGET_LIMIT}{{{m.DAILY}, {m.TEAM_BUDGET}}})",
            }
        )
    rules.append(
        {
            "record": m.windowed(m.ATTEMPTS_PER_TASK, SHORT_WINDOW),
            "expr": f"sum({_rate(m.ATTEMPTS, SHORT_WINDOW, m.ROUTED_ATTEMPT)})\n/\nsum({_rate(m.TASKS, SHORT_WINDOW)})",
        }
    )
    rules.append(
        {
            "record": m.PROJECTED_MONTH_END,
            "expr": (
                f"sum({m.BUDGET_SPENT}{{{m.MONTHLY}, {m.GLOBAL_BUDGET}}})\n"
                f"+\n{m.windowed(m.COST_RATE, t.projection_window)} * {remaining_month_seconds_expr()}"
            ),
        }
    )
    return rules


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:g} h"


def _percent(ratio: float) -> str:
    return f"{ratio * 100:g} %"


def _burning(burn_rule: str, long: str, short: str, factor: float) -> str:
    """Multi-window burn (SRE workbook): the long window proves the burn is sustained, the short one that it is
    still happening."""
    return f"{m.windowed(burn_rule, long)} > {factor:g}\nand\n{m.windowed(burn_rule, short)} > {factor:g}"


def alerts(t: Thresholds, stack: Stack) -> list[Alert]:
    day = duration_seconds("1d")
    burn_alerts = [
        Alert(
            name=f"CostlineDailyBudgetBurn{speed}",
            expr=_burning(m.DAILY_BURN, long, short, factor),
            for_=for_,
            severity=severity,
            summary=f"Spend is burning the daily budget more than {factor:g}x too fast.",
            description=(
                f"Over the last {long}, spend ran at {FACTOR_VALUE}x the pace that would use exactly the daily "
                f"budget in 24 h (alert above {factor:g}x, still above it over the last {short}). At this pace the "
                f"daily budget is gone within {_hours(day / factor)}; after that the router refuses escalations."
            ),
        )
        for speed, factor, long, short, for_, severity in (
            (
                "Fast",
                t.burn_fast_factor,
                t.burn_fast_long_window,
                t.burn_fast_short_window,
                t.burn_fast_for,
                "critical",
            ),
            ("Slow", t.burn_slow_factor, t.burn_slow_long_window, t.burn_slow_short_window, t.burn_slow_for, "warning"),
        )
    ]
    monthly_spent, monthly_limit = m.spent(m.MONTHLY), m.budget_limit(m.MONTHLY)
    up = f'up{{job="{stack.collector_job}"}}'
    return [
        *burn_alerts,
        Alert(
            name="CostlineMonthlyBudgetNearlyExhausted",
            expr=f"{monthly_spent}\n/\n{monthly_limit}\n>= {t.monthly_warning_ratio:g}",
            for_=t.monthly_warning_for,
            severity="warning",
            summary=f"More than {_percent(t.monthly_warning_ratio)} of the monthly budget is spent.",
            description=(
                f"{RATIO_VALUE} of this month's LLM budget is spent (warning at {_percent(t.monthly_warning_ratio)}). "
                "When it reaches 100 % the router refuses escalations to Claude until the month ends."
            ),
        ),
        Alert(
            name="CostlineMonthlyBudgetExhausted",
            expr=f"{monthly_spent}\n>=\n{monthly_limit}",
            for_=t.monthly_exhausted_for,
            severity="critical",
            summary="The monthly budget is spent.",
            description=(
                f"This month's spend is {USD_VALUE}, at or over the monthly budget. The router refuses escalations "
                "to Claude until the UTC month ends or budgets.monthly_usd is raised; local models keep working."
            ),
        ),
        Alert(
            name="CostlineProjectedMonthEndOverBudget",
            expr=f"{m.PROJECTED_MONTH_END}\n>\nmax({m.BUDGET_LIMIT}{{{m.MONTHLY}, {m.GLOBAL_BUDGET}}})",
            for_=t.projected_for,
            severity="warning",
            summary="Month-end spend is projected to exceed the monthly budget.",
            description=(
                f"Spend so far plus the average rate of the last {t.projection_window} for the rest of the month "
                f"comes to {USD_VALUE}, more than the monthly budget."
            ),
        ),
        Alert(
            name="CostlineTeamDailyBudgetBurnFast",
            expr=_burning(m.TEAM_DAILY_BURN, t.burn_fast_long_window, t.burn_fast_short_window, t.burn_fast_factor),
            for_=t.team_burn_for,
            severity="warning",
            summary="Team {{ $labels.team }} is burning its daily budget more than "
            f"{t.burn_fast_factor:g}x too fast.",
            description=(
                f"Over the last {t.burn_fast_long_window}, team {{{{ $labels.team }}}} spent at {FACTOR_VALUE}x the "
                f"pace that would use exactly its daily budget in 24 h (alert above {t.burn_fast_factor:g}x, still "
                f"above it over the last {t.burn_fast_short_window}). At this pace its daily budget is gone within "
                f"{_hours(day / t.burn_fast_factor)}; then the router refuses the team's escalations, other teams "
                "go on."
            ),
        ),
        Alert(
            name="CostlineTeamBudgetHeadroomLow",
            expr=f"{m.TEAM_BUDGET_HEADROOM_OVER_COLLECTORS} < {t.team_headroom_ratio:g}",
            for_=t.team_headroom_for,
            severity="warning",
            summary="Team {{ $labels.team }} has little of its {{ $labels.period }} budget left.",
            description=(
                f"Only {RATIO_VALUE} of team {{{{ $labels.team }}}}'s {{{{ $labels.period }}}} budget is left "
                f"(warning below {_percent(t.team_headroom_ratio)}). When it is spent, the router refuses that "
                "team's escalations to Claude until the UTC day or month ends; its local models keep working."
            ),
        ),
        Alert(
            name="CostlineEscalationRateHigh",
            expr=(
                f"{m.windowed(m.ESCALATION_RATIO, t.escalation_window)} > {t.escalation_ratio:g}\n"
                f"and\nsum(increase({m.TASKS}[{t.escalation_window}])) >= {t.escalation_min_tasks}"
            ),
            for_=t.escalation_for,
            severity="warning",
            summary=f"More than {_percent(t.escalation_ratio)} of tasks escalate to Claude.",
            description=(
                f"{RATIO_VALUE} of the tasks of the last {t.escalation_window} needed Claude (warning above "
                f"{_percent(t.escalation_ratio)}, once at least {t.escalation_min_tasks} tasks ran). Local models "
                "are failing more than usual, so spend rises."
            ),
        ),
        Alert(
            name="CostlineEscalationQuotaHeadroomLow",
            expr=f"{m.QUOTA_HEADROOM_OVER_COLLECTORS} < {t.quota_headroom_ratio:g}",
            for_=t.quota_for,
            severity="warning",
            summary="The hourly escalation quota is nearly used up.",
            description=(
                f"Only {RATIO_VALUE} of the hourly escalation quota is left (warning below "
                f"{_percent(t.quota_headroom_ratio)}). When it is used up, tasks that need Claude fail with "
                "quota_exhausted until the oldest call of the rolling hour ages out."
            ),
        ),
        Alert(
            name="CostlineUnpricedAttempts",
            expr=f"sum by (provider, model) (increase({m.UNPRICED}[{t.unpriced_window}])) > 0",
            for_=t.unpriced_for,
            severity="info",
            summary="Attempts on {{ $labels.provider }}/{{ $labels.model }} could not be priced.",
            description=(
                "{{ $value | humanize }} attempts on model {{ $labels.model }} (provider {{ $labels.provider }}) "
                f"in the last {t.unpriced_window} had no price, so reported spend is too low. Add a "
                '[prices."{{ $labels.model }}"] entry to the config.'
            ),
        ),
        Alert(
            name="CostlineCollectorDown",
            expr=f"{up} == 0\nor\nabsent({up})",
            for_=t.collector_down_for,
            severity="critical",
            summary="Prometheus cannot scrape the costline collector.",
            description=(
                f"The {stack.collector_job} target is down or missing. Spans the routers send are not stored and "
                "budget gauges are stale, so spend alerts cannot fire."
            ),
        ),
        Alert(
            name="CostlineCollectorRejectingSpans",
            expr=f"sum by (job, instance) (increase({m.INGEST}{{{m.REJECTED}}}[{t.rejected_window}])) > 0",
            for_=t.rejected_for,
            severity="warning",
            summary="The collector is rejecting spans.",
            description=(
                "The collector at {{ $labels.instance }} rejected {{ $value | humanize }} spans in the last "
                f"{t.rejected_window} (malformed, oversized or unauthorised requests). Rejected spans never reach "
                "the ledger, so their cost is missing."
            ),
        ),
    ]


def recording_rule_file(t: Thresholds) -> dict[str, Any]:
    group: dict[str, Any] = {"name": RECORDING_GROUP}
    if t.evaluation_interval:
        group["interval"] = t.evaluation_interval
    group["rules"] = recording_rules(t)
    return {"groups": [group]}


def alert_rule_file(t: Thresholds, stack: Stack, runbook_text: str) -> dict[str, Any]:
    rules = []
    for alert in alerts(t, stack):
        if alert.severity not in SEVERITIES:
            raise ValueError(f"{alert.name}: severity {alert.severity!r} is not one of {SEVERITIES}")
        rules.append(
            {
                "alert": alert.name,
                "expr": alert.expr,
                "for": alert.for_,
                "labels": {"severity": alert.severity},
                "annotations": {
                    "summary": alert.summary,
                    "description": alert.description,
                    "runbook_url": runbook_url(stack.runbook_base_url, alert.name, runbook_text),
                },
            }
        )
    group: dict[str, Any] = {"name": ALERT_GROUP}
    if t.evaluation_interval:
        group["interval"] = t.evaluation_interval
    group["rules"] = rules
    return {"groups": [group]}


def _unique(windows: list[str]) -> list[str]:
    return sorted(set(windows), key=duration_seconds)
