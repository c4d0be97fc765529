"""The ledger's invariants: what no input, fault or crash may ever leave behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Query = Callable[[str], list[tuple[Any, ...]]]

# A span is its (trace_id, span_id): the same ids sent again, whatever the start time, are the same span (an
# exporter's retry, a spool re-sending, or a sender that reuses ids) and must be stored once.
_SAME_SPAN = "GROUP BY trace_id, span_id"

# Each check selects the offending rows; an empty result means the invariant holds.
ATTEMPT_CHECKS = {
    "negative token count": "SELECT span_id FROM attempts WHERE least(input_tokens, output_tokens, "
    "cache_read_tokens, cache_write_tokens) < 0",
    "absurd token count": "SELECT span_id FROM attempts WHERE greatest(input_tokens, output_tokens, "
    "cache_read_tokens, cache_write_tokens) > 100000000",
    "cached tokens above input": "SELECT span_id FROM attempts "
    "WHERE coalesce(cache_read_tokens, 0) + coalesce(cache_write_tokens, 0) > coalesce(input_tokens, 0)",
    "bad trace id": "SELECT span_id FROM attempts WHERE NOT regexp_full_match(trace_id, '[0-9a-f]{32}') "
    "OR trace_id = repeat('0', 32)",
    "bad span id": "SELECT span_id FROM attempts WHERE NOT regexp_full_match(span_id, '[0-9a-f]{16}') "
    "OR span_id = repeat('0', 16)",
    "bad parent id": "SELECT span_id FROM attempts WHERE parent_span_id IS NOT NULL "
    "AND NOT regexp_full_match(parent_span_id, '[0-9a-f]{16}')",
    "time before 2000": "SELECT span_id FROM attempts WHERE start_time < TIMESTAMPTZ '2000-01-01 00:00:00+00'",
    "time far in the future": "SELECT span_id FROM attempts WHERE start_time > now() + INTERVAL 2 DAY",
    "end before start": "SELECT span_id FROM attempts WHERE end_time < start_time OR duration_s < 0",
    "no provider": "SELECT span_id FROM attempts WHERE provider IS NULL OR provider = '' OR length(provider) > 256",
    "no model": "SELECT span_id FROM attempts WHERE coalesce(request_model, response_model) IS NULL",
    "negative cost": "SELECT span_id FROM attempts WHERE cost_usd < 0 OR counterfactual_usd < 0",
    "bad outcome": "SELECT span_id FROM attempts WHERE outcome NOT IN ('success', 'error')",
    "duplicate attempt": f"SELECT span_id FROM attempts {_SAME_SPAN} HAVING count(*) > 1",
}
TASK_CHECKS = {
    "bad task ids": "SELECT span_id FROM tasks WHERE NOT regexp_full_match(trace_id, '[0-9a-f]{32}') "
    "OR NOT regexp_full_match(span_id, '[0-9a-f]{16}')",
    "task without id": "SELECT span_id FROM tasks WHERE task_id IS NULL OR task_id = ''",
    "task time": "SELECT span_id FROM tasks WHERE start_time < TIMESTAMPTZ '2000-01-01 00:00:00+00' "
    "OR start_time > now() + INTERVAL 2 DAY OR end_time < start_time",
    "duplicate task": f"SELECT span_id FROM tasks {_SAME_SPAN} HAVING count(*) > 1",
}


def violations(query: Query) -> dict[str, list[Any]]:
    """Every broken invariant with (up to 5 of) the offending span ids; empty when the ledger is sound."""
    found: dict[str, list[Any]] = {}
    for name, sql in {**ATTEMPT_CHECKS, **TASK_CHECKS}.items():
        rows = query(sql)
        if rows:
            found[name] = [row[0] for row in rows[:5]]
    return found


def stored_span_ids(query: Query) -> list[str]:
    """Every stored span id, attempts and tasks, repeats kept (so a duplicate shows)."""
    return [row[0] for row in query("SELECT span_id FROM attempts UNION ALL SELECT span_id FROM tasks")]
