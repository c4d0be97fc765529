"""Documented views over the ledger, created by the collector so `duckdb costline.duckdb` users can query them.

Every report in `collector.reports` is written against these views, and docs/reports.md documents each one with its
columns, so that a report and a hand-written query in the `duckdb` CLI give the same figures.

Conventions shared by all views:
- ``model`` is the REQUEST model (the response model when no request model was recorded), like the metrics' label.
- ``day`` is the UTC calendar day of the attempt's start time; ``hour`` (a UTC timestamp), ``week`` (its Monday)
  and ``month`` (its first day) are its UTC hour, ISO week and month.
- Token counts of an attempt that reported none are 0; costs stay NULL when an attempt could not be priced, so a sum
  of ``cost_usd`` is the priced spend and ``unpriced_attempts`` says how much is missing from it. An attempt that
  reported no usage at all (``price_source = 'no-usage'``, typically a failed call) has a NULL cost too, but nothing
  is missing: it is not counted as unpriced.
- ``cost_disagreements`` counts attempts whose emitter-reported cost (``reported_cost_usd``) differs from costline's
  beyond the tolerance (``costline.pricing.COST_TOLERANCE_RATIO``).
- An attempt is local when its provider runs on your own hardware (Ollama); everything else is cloud spend.
"""

from __future__ import annotations

import duckdb

from costline.pricing import LOCAL_PROVIDERS, SOURCE_NO_USAGE
from costline.spans import REFUSAL_ERROR_TYPES, TIER_ESCALATION

_LOCAL_PROVIDERS_SQL = ", ".join(f"'{provider}'" for provider in sorted(LOCAL_PROVIDERS))

# One row per attempt, with the derived columns every report groups or sums by.
ATTEMPT_COSTS = f"""
SELECT start_time,
       CAST(timezone('UTC', start_time) AS DATE) AS day,
       date_trunc('hour', timezone('UTC', start_time)) AS hour,
       CAST(date_trunc('week', timezone('UTC', start_time)) AS DATE) AS week,
       CAST(date_trunc('month', timezone('UTC', start_time)) AS DATE) AS month,
       trace_id,
       span_id,
       task_id,
       task_type,
       tier,
       attempt_index,
       provider,
       coalesce(request_model, response_model) AS model,
       response_model,
       provider IN ({_LOCAL_PROVIDERS_SQL}) AS is_local,
       outcome,
       error_type,
       escalation_reason,
       coalesce(input_tokens, 0) AS input_tokens,
       coalesce(output_tokens, 0) AS output_tokens,
       coalesce(cache_read_tokens, 0) AS cache_read_tokens,
       coalesce(cache_write_tokens, 0) AS cache_write_tokens,
       duration_s,
       local_compute_s,
       cost_usd,
       reported_cost_usd,
       cost_disagrees,
       emitter,
       counterfactual_usd,
       price_source,
       service_name,
       team,
       project,
       user_id
FROM attempts
WHERE superseded_by IS NULL  -- a call described again, with its usage, by a later span
"""

# The cost measures of any group of attempts; reports use the same text over their window. ATTEMPT_MEASURES is all
# of them but the task count, which `collector.reports` counts in a pass of its own over a large window.
_REFUSALS_SQL = ", ".join(repr(t) for t in REFUSAL_ERROR_TYPES)
# `attempts` counts every attempt, as costline_attempts_total does; `refused` says how many of them were escalations
# the quota, a budget or a missing key stopped before anything was sent (never billed), so calls sent = the difference.
_ATTEMPT_COUNT = f"""
       count(*) AS attempts,
       count(*) FILTER (WHERE error_type IN ({_REFUSALS_SQL})) AS refused,"""
_TASK_COUNT = """
       count(DISTINCT task_id) AS tasks,"""
_ATTEMPT_SUMS = f"""
       coalesce(sum(input_tokens), 0) AS input_tokens,
       coalesce(sum(output_tokens), 0) AS output_tokens,
       coalesce(sum(cache_read_tokens), 0) AS cache_read_tokens,
       coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens,
       coalesce(sum(cost_usd), 0) AS cost_usd,
       sum(reported_cost_usd) AS reported_cost_usd,
       count(*) FILTER (WHERE cost_usd IS NULL AND price_source IS DISTINCT FROM '{SOURCE_NO_USAGE}')
         AS unpriced_attempts,
       count(*) FILTER (WHERE cost_disagrees) AS cost_disagreements"""
COST_MEASURES = _ATTEMPT_COUNT + _TASK_COUNT + _ATTEMPT_SUMS
ATTEMPT_MEASURES = _ATTEMPT_COUNT + _ATTEMPT_SUMS

DAILY_COST = f"""
SELECT day, provider, model,{COST_MEASURES}
FROM attempt_costs
GROUP BY day, provider, model
"""

MODEL_COST = f"""
SELECT provider, model,{COST_MEASURES},
       count(*) FILTER (WHERE outcome = 'success') AS successes
FROM attempt_costs
GROUP BY provider, model
"""

ESCALATIONS = f"""
SELECT trace_id,
       span_id,
       task_id,
       task_type,
       escalation_reason AS reason,
       model,
       outcome,
       error_type,
       start_time,
       day,
       cost_usd
FROM attempt_costs
WHERE tier = '{TIER_ESCALATION}'
"""

# A task escalated when one of its escalation-tier attempts was made: an escalation refused (quota, budget, no API
# key) never reached the cloud, so it does not count (as in the router's costline.task.escalated and the metrics).
ESCALATION_MADE = f"tier = '{TIER_ESCALATION}' AND coalesce(error_type, '') NOT IN ({_REFUSALS_SQL})"
ESCALATION_REFUSED = f"tier = '{TIER_ESCALATION}' AND error_type IN ({_REFUSALS_SQL})"

ESCALATION_RATE = f"""
SELECT day,
       task_type,
       count(DISTINCT task_id) AS tasks,
       count(DISTINCT task_id) FILTER (WHERE {ESCALATION_MADE}) AS escalated_tasks,
       count(DISTINCT task_id) FILTER (WHERE {ESCALATION_MADE}) / count(DISTINCT task_id) AS escalation_rate,
       count(DISTINCT task_id) FILTER (WHERE {ESCALATION_REFUSED}) AS refused_tasks
FROM attempt_costs
WHERE task_id IS NOT NULL
GROUP BY day, task_type
"""

LOCAL_FAILURES = """
SELECT day,
       provider,
       model,
       coalesce(error_type, 'unknown') AS error_type,
       count(*) AS failures
FROM attempt_costs
WHERE is_local AND outcome = 'error'
GROUP BY day, provider, model, coalesce(error_type, 'unknown')
"""

# The all-Claude baseline: what you would have paid had every task gone to the escalation model. Cloud calls that
# were made cost what they cost; each local success is replaced by its counterfactual cost on the escalation model.
# savings = baseline - actual spend, where actual spend includes the priced local compute.
_LOCAL_SUCCESS = "is_local AND outcome = 'success'"
_COUNTERFACTUAL = f"coalesce(sum(counterfactual_usd) FILTER (WHERE {_LOCAL_SUCCESS}), 0)"
_CLOUD_SPEND = "coalesce(sum(cost_usd) FILTER (WHERE NOT is_local), 0)"
_ACTUAL_SPEND = "coalesce(sum(cost_usd), 0)"
SAVINGS_MEASURES = f"""
       count(*) FILTER (WHERE {_LOCAL_SUCCESS}) AS local_successes,
       {_COUNTERFACTUAL} AS counterfactual_usd,
       count(*) FILTER (WHERE {_LOCAL_SUCCESS} AND counterfactual_usd IS NULL) AS uncounted_local_successes,
       {_CLOUD_SPEND} AS cloud_spend_usd,
       coalesce(sum(cost_usd) FILTER (WHERE is_local), 0) AS local_spend_usd,
       {_ACTUAL_SPEND} AS actual_spend_usd,
       {_CLOUD_SPEND} + {_COUNTERFACTUAL} AS baseline_usd,
       {_CLOUD_SPEND} + {_COUNTERFACTUAL} - {_ACTUAL_SPEND} AS savings_usd,
       100 * ({_CLOUD_SPEND} + {_COUNTERFACTUAL} - {_ACTUAL_SPEND}) / nullif({_CLOUD_SPEND} + {_COUNTERFACTUAL}, 0)
           AS savings_pct"""

DAILY_SAVINGS = f"""
SELECT day,{SAVINGS_MEASURES}
FROM attempt_costs
GROUP BY day
"""

# Ordered: a view may use the ones before it.
VIEW_DEFINITIONS: dict[str, str] = {
    "attempt_costs": ATTEMPT_COSTS,
    "daily_cost": DAILY_COST,
    "model_cost": MODEL_COST,
    "escalations": ESCALATIONS,
    "escalation_rate": ESCALATION_RATE,
    "local_failures": LOCAL_FAILURES,
    "daily_savings": DAILY_SAVINGS,
}


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    for name, body in VIEW_DEFINITIONS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")


def with_views(query: str, *names: str) -> str:
    """``query`` prefixed with the named views as CTEs, so it runs on any ledger that has the tables.

    Reports use this rather than the stored views: a ledger opened read-only cannot have its views created or
    refreshed, and the collector's query endpoint runs one SELECT only. The CTE bodies are the same text as the views.
    """
    needed = _with_dependencies(names)
    ctes = ",\n".join(f"{name} AS ({VIEW_DEFINITIONS[name]})" for name in needed)
    return f"WITH {ctes}\n{query}"


def _with_dependencies(names: tuple[str, ...]) -> list[str]:
    wanted = set(names)
    # Every view but attempt_costs reads attempt_costs; that is the only dependency.
    if wanted:
        wanted.add("attempt_costs")
    return [name for name in VIEW_DEFINITIONS if name in wanted]
