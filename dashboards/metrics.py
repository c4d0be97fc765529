"""Metric and label names the collector exports (DESIGN §5), and the names this package records.

Queries are built from these constants so that a renamed metric breaks one line, not forty strings.
"""

from __future__ import annotations

from typing import Final

from costline import spans as _spans

ATTEMPTS: Final = "costline_attempts_total"
TASKS: Final = "costline_tasks_total"
ESCALATIONS: Final = "costline_escalations_total"
COST: Final = "costline_cost_usd_total"
COUNTERFACTUAL: Final = "costline_counterfactual_usd_total"
TOKENS: Final = "costline_tokens_total"
DURATION_BUCKET: Final = "costline_attempt_duration_seconds_bucket"
QUOTA_HEADROOM: Final = "costline_quota_headroom_ratio"
QUOTA_LIMIT: Final = "costline_quota_limit"
QUOTA_USED: Final = "costline_quota_used"
BUDGET_LIMIT: Final = "costline_budget_limit_usd"
BUDGET_SPENT: Final = "costline_budget_spent_usd"
BUDGET_HEADROOM: Final = "costline_budget_headroom_ratio"
INGEST: Final = "costline_ingest_spans_total"
UNPRICED: Final = "costline_unpriced_attempts_total"

# Label values fixed by the contract.
ESCALATION_QUOTA: Final = 'quota="escalations_per_hour"'
DAILY: Final = 'period="daily"'
MONTHLY: Final = 'period="monthly"'
# Budget gauges carry a series per declared team besides the global one; the global budget is the one without a
# team label, and a selector on period alone would add team spend into it (or match many-to-many in a ratio).
GLOBAL_BUDGET: Final = 'team=""'
TEAM_BUDGET: Final = 'team!=""'  # a declared team's budget series (undeclared teams, 'other', have no budget)
ESCALATED: Final = 'escalated="true"'
LOCAL_PROVIDER: Final = 'provider="ollama"'
ROUTED_ATTEMPT: Final = 'tier!=""'  # attempts of other emitters carry tier "" and belong to no routed task
ERROR: Final = 'outcome="error"'
# Escalations the quota, a budget or a missing key refused: attempts that sent nothing and cost nothing.
REFUSED: Final = 'error_type=~"' + "|".join(_spans.REFUSAL_ERROR_TYPES) + '"'
SENT: Final = 'error_type!~"' + "|".join(_spans.REFUSAL_ERROR_TYPES) + '"'
REJECTED: Final = 'result="rejected"'

# Recording rules (level:metric:operations).
ESCALATION_RATIO: Final = "costline:escalation_ratio:rate{window}"
COST_RATE: Final = "costline:cost_usd:rate{window}"
MODEL_COST_RATE: Final = "model:costline_cost_usd:rate{window}"
DAILY_BURN: Final = "costline:daily_budget_burn:rate{window}"
TEAM_COST_RATE: Final = "team:costline_cost_usd:rate{window}"
TEAM_DAILY_BURN: Final = "team:costline_daily_budget_burn:rate{window}"
ATTEMPTS_PER_TASK: Final = "costline:attempts_per_task:rate{window}"
PROJECTED_MONTH_END: Final = "costline:cost_usd:projected_month_end"


def windowed(name: str, window: str) -> str:
    """``windowed(COST_RATE, "5m") == "costline:cost_usd:rate5m"``."""
    return name.format(window=window)


# With routers fanning out over several collectors, each collector's quota and budget gauges count only its own
# ledger's share while all report the same limit: what is used adds up over collectors, the limit is taken once.
def spent(period: str) -> str:
    """This period's escalation spend over every collector (``period`` is DAILY or MONTHLY)."""
    return f"sum by (period) ({BUDGET_SPENT}{{{period}, {GLOBAL_BUDGET}}})"


def budget_limit(period: str) -> str:
    return f"max by (period) ({BUDGET_LIMIT}{{{period}, {GLOBAL_BUDGET}}})"


BUDGET_HEADROOM_OVER_COLLECTORS: Final = (
    f"clamp_min(1 - sum by (period) ({BUDGET_SPENT}{{{GLOBAL_BUDGET}}})"
    f" / max by (period) ({BUDGET_LIMIT}{{{GLOBAL_BUDGET}}}), 0)"
)
TEAM_BUDGET_HEADROOM_OVER_COLLECTORS: Final = (
    f"clamp_min(1 - sum by (period, team) ({BUDGET_SPENT}{{{TEAM_BUDGET}}})"
    f" / max by (period, team) ({BUDGET_LIMIT}{{{TEAM_BUDGET}}}), 0)"
)
QUOTA_HEADROOM_OVER_COLLECTORS: Final = (
    f"clamp_min(1 - sum by (quota) ({QUOTA_USED}{{{ESCALATION_QUOTA}}})"
    f" / max by (quota) ({QUOTA_LIMIT}{{{ESCALATION_QUOTA}}}), 0)"
)
