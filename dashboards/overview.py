"""The "LLM cost overview" dashboard: what is spent, how fast, how much headroom is left, what routing saved."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders

from dashboards import metrics as m
from dashboards.layout import new_dashboard
from dashboards.panels import (
    BY_MODEL,
    BY_PROVIDER_MODEL,
    COUNT,
    PER_SECOND,
    RATIO,
    SECONDS,
    USD,
    Query,
    bar_gauge_panel,
    gauge_panel,
    row,
    stat_panel,
    timeseries_panel,
)
from dashboards.stack import Stack
from dashboards.thresholds import Thresholds

UID = "costline-overview"
NO_TEAM = "(no team)"
TITLE = "LLM cost overview"


def _spend_so_far(period_selector: str) -> Query:
    # The collector's budget gauge is exact (it sums the ledger); without a budget for the period the gauge is not
    # exported, so fall back to Prometheus' own increase over the panel's range (today / this month). Summed: with
    # several collectors each gauge is one collector's share.
    return Query(
        f"sum({m.BUDGET_SPENT}{{{period_selector}, {m.GLOBAL_BUDGET}}})\nor\nsum(increase({m.COST}[$__range]))"
    )


def _by_team(expr: str) -> str:
    """``expr`` summed by team, with spend that named no team shown as "(no team)" rather than an empty legend."""
    return f'label_replace(sum by (team) ({expr}), "team", "{NO_TEAM}", "team", "")'


def _latency(quantile: float) -> Query:
    return Query(
        f"histogram_quantile({quantile:g}, sum by (le, model) "
        f"(rate({m.DURATION_BUCKET}{{{BY_PROVIDER_MODEL}}}[$__rate_interval])))",
        legend=f"p{quantile * 100:g} {{{{model}}}}",
    )


def build(t: Thresholds, stack: Stack) -> dashboard_builders.Dashboard:
    escalation_window = t.escalation_window
    return new_dashboard(
        UID,
        TITLE,
        "Spend, spend rate, projections, escalation rate and headroom of the costline router.",
        stack,
        [
            row("Spend"),
            stat_panel(
                "Spend today (UTC)",
                "Spend since 00:00 UTC, all providers and models (the collector's daily budget gauge when a daily "
                "budget is set).",
                USD,
                [_spend_so_far(m.DAILY)],
                time_from="now/d",
            ),
            stat_panel(
                "Spend this month (UTC)",
                "Spend since the first of the month, UTC, all providers and models.",
                USD,
                [_spend_so_far(m.MONTHLY)],
                time_from="now/M",
            ),
            stat_panel(
                "Projected month-end spend",
                f"Spend this month plus the average rate of the last {t.projection_window} until the month ends "
                "(needs budgets.monthly_usd > 0).",
                USD,
                [Query(m.PROJECTED_MONTH_END)],
            ),
            stat_panel(
                f"Escalation rate ({escalation_window})",
                f"Share of tasks of the last {escalation_window} that escalated to Claude.",
                RATIO,
                [Query(m.windowed(m.ESCALATION_RATIO, escalation_window))],
                steps=((None, "green"), (t.escalation_ratio, "red")),
            ),
            stat_panel(
                "Savings from local routing",
                "What the local successes in the time range would have cost on the escalation model.",
                USD,
                [Query(f"sum(increase({m.COUNTERFACTUAL}{{{BY_MODEL}}}[$__range]))")],
            ),
            stat_panel(
                "Unpriced attempts",
                "Attempts in the time range that had no price (spend is under-reported: add a price override).",
                COUNT,
                [Query(f"sum(increase({m.UNPRICED}{{{BY_PROVIDER_MODEL}}}[$__range]))")],
                steps=((None, "green"), (0.5, "orange")),
                no_value="0",
                decimals=0,
            ),
            row("Headroom"),
            gauge_panel(
                "Escalation quota headroom",
                "Share of the hourly escalation quota still free (rolling 60 minutes).",
                RATIO,
                [Query(m.QUOTA_HEADROOM_OVER_COLLECTORS)],
                steps=((None, "red"), (t.quota_headroom_ratio, "orange"), (0.5, "green")),
                width=8,
            ),
            gauge_panel(
                "Budget headroom",
                "Share of the daily and monthly budgets still unspent.",
                RATIO,
                [Query(m.BUDGET_HEADROOM_OVER_COLLECTORS, legend="{{period}}")],
                steps=((None, "red"), (0.001, "orange"), (round(1 - t.monthly_warning_ratio, 6), "green")),
                width=16,
            ),
            row("Teams"),
            bar_gauge_panel(
                "Spend by team",
                "Spend in the time range per team (X-Costline-Team, Task.team): teams declared in the collector's "
                '[budgets.teams."NAME"] by name, any other team as "other", calls naming none as "(no team)".',
                USD,
                [Query(_by_team(f"increase({m.COST}{{{BY_PROVIDER_MODEL}}}[$__range])"), "{{team}}")],
                width=8,
            ),
            timeseries_panel(
                "Spend rate by team",
                "USD per hour, average over the rate interval, per team.",
                USD,
                [Query(_by_team(f"rate({m.COST}{{{BY_PROVIDER_MODEL}}}[$__rate_interval])") + " * 3600", "{{team}}")],
                axis_label="USD per hour",
                stacked=True,
                width=8,
            ),
            gauge_panel(
                "Team budget headroom",
                "Share of each team's daily and monthly budget still unspent (teams with a budget in "
                '[budgets.teams."NAME"]).',
                RATIO,
                [Query(m.TEAM_BUDGET_HEADROOM_OVER_COLLECTORS, legend="{{team}} {{period}}")],
                steps=((None, "red"), (t.team_headroom_ratio, "orange"), (0.5, "green")),
                width=8,
            ),
            row("Spend rate"),
            timeseries_panel(
                "Spend rate by model",
                "USD per hour, 5-minute average, per provider and model.",
                USD,
                [
                    Query(
                        f"{m.windowed(m.MODEL_COST_RATE, '5m')}{{{BY_PROVIDER_MODEL}}} * 3600",
                        "{{provider}} / {{model}}",
                    )
                ],
                axis_label="USD per hour",
            ),
            timeseries_panel(
                "Spend rate by provider",
                "USD per hour, 5-minute average, per provider.",
                USD,
                [
                    Query(
                        f"sum by (provider) ({m.windowed(m.MODEL_COST_RATE, '5m')}{{{BY_PROVIDER_MODEL}}}) * 3600",
                        "{{provider}}",
                    )
                ],
                axis_label="USD per hour",
                stacked=True,
            ),
            timeseries_panel(
                "Escalation rate",
                "Share of tasks that escalated to Claude.",
                RATIO,
                [
                    Query(m.windowed(m.ESCALATION_RATIO, "5m"), "5m"),
                    Query(m.windowed(m.ESCALATION_RATIO, escalation_window), escalation_window),
                ],
            ),
            timeseries_panel(
                "Savings from local routing",
                "USD per hour that local successes saved, per local model (priced on the escalation model).",
                USD,
                [
                    Query(
                        f"sum by (model) (rate({m.COUNTERFACTUAL}{{{BY_MODEL}}}[$__rate_interval])) * 3600", "{{model}}"
                    )
                ],
                axis_label="USD per hour",
                stacked=True,
            ),
            row("Traffic"),
            timeseries_panel(
                "Tokens by type",
                "Tokens per second by type (input includes cache reads and writes).",
                COUNT,
                [Query(f"sum by (type) (rate({m.TOKENS}{{{BY_PROVIDER_MODEL}}}[$__rate_interval]))", "{{type}}")],
                axis_label="tokens/s",
            ),
            timeseries_panel(
                "Calls by outcome per model, and refused escalations",
                "Model calls sent per second, by model and outcome; escalations the quota, a budget or a missing "
                "API key refused before sending (never billed) apart.",
                PER_SECOND,
                [
                    Query(
                        f"sum by (model, outcome) (rate({m.ATTEMPTS}{{{BY_PROVIDER_MODEL}, {m.SENT}}}"
                        "[$__rate_interval]))",
                        "{{model}} {{outcome}}",
                    ),
                    Query(
                        f"sum by (model) (rate({m.ATTEMPTS}{{{BY_PROVIDER_MODEL}, {m.REFUSED}}}[$__rate_interval]))",
                        "{{model}} refused (not sent)",
                    ),
                ],
                stacked=True,
            ),
            timeseries_panel(
                "Attempt latency p50 / p95 per model",
                "Duration of model call attempts, 50th and 95th percentile, per model.",
                SECONDS,
                [_latency(0.5), _latency(0.95)],
            ),
            bar_gauge_panel(
                "Unpriced attempts by model",
                "Attempts in the time range without a price, per provider and model.",
                COUNT,
                [
                    Query(
                        f"sum by (provider, model) (increase({m.UNPRICED}{{{BY_PROVIDER_MODEL}}}[$__range]))",
                        "{{provider}} / {{model}}",
                    )
                ],
                decimals=0,
            ),
        ],
    )
