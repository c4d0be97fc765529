"""Large ledgers made fast: the collector's own schema (``collector.ledger.open_ledger``), rows from DuckDB SQL.

Rows look like a routed workload: eight models (five local Ollama models, three Claude models reached by
escalation), failures with the router's error types, tokens, costs, counterfactual costs for local successes, and
the collector's dedupe keys (``span_key``, ``parent_key``) computed exactly as the ledger's backfill does, so the
collector's duplicate probe sees the same kind of table it builds itself. Start times rise with the row number
(a ledger grows in time order), spread evenly over the chosen window.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import duckdb

from collector.ledger import open_ledger

MODELS = (
    # share (per mille, cumulative), provider, model, tier, USD per million input, output tokens
    (400, "ollama", "qwen2.5-coder:14b", "primary", 0, 0),
    (550, "ollama", "qwen3:30b-a3b", "fallback", 0, 0),
    (650, "ollama", "llama3.1:70b", "fallback", 0, 0),
    (720, "ollama", "gemma3:27b", "primary", 0, 0),
    (780, "ollama", "mistral-small:24b", "primary", 0, 0),
    (900, "anthropic", "claude-sonnet-4-6", "escalation", 3, 15),
    (960, "anthropic", "claude-haiku-4-5", "escalation", 1, 5),
    (1000, "anthropic", "claude-opus-4-1", "escalation", 15, 75),
)
TASK_TYPES = ("general", "summarise", "code_generation", "classify", "extract")


def _case(index: int) -> str:
    """A CASE over the row's model draw ``r`` picking field ``index`` of MODELS."""
    arms = " ".join(f"WHEN r < {m[0]} THEN {_sql(m[index])}" for m in MODELS[:-1])
    return f"CASE {arms} ELSE {_sql(MODELS[-1][index])} END"


def _sql(value: object) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)


def _h(expr: str, k: int) -> str:
    """A 64-bit hash of ``expr`` for the k-th field. DuckDB's multi-argument hash() combines linearly, so two
    fields of one row would XOR to a constant; one argument per call keeps them independent."""
    return f"hash(({expr}) * 32 + {k} + $seed * {1 << 40})"


_TASK_TYPES = "[" + ", ".join(f"'{t}'" for t in TASK_TYPES) + "]"
_TEAMS = "['search', 'ads', 'billing']"  # attribution, so --by team has groups to show


def _hex16(expr: str) -> str:
    return f"lower(lpad(to_hex({expr}), 16, '0'))"


_ATTEMPTS = f"""
INSERT INTO attempts
WITH g AS (
    SELECT i,
           {_h("i * 4 // 5", 20)} AS t_hi, {_h("i * 4 // 5", 21)} AS t_lo, {_h("i", 3)} AS s,
           {_h("i * 4 // 5", 22)} AS p,  -- the task span is the parent
           {_h("i", 5)} % 1000 AS r,
           {_h("i", 6)} % 1000 AS e,
           200 + {_h("i", 7)} % 4000 AS input_tokens,
           20 + {_h("i", 8)} % 900 AS output_tokens,
           0.3 + ({_h("i", 9)} % 8700) / 1000.0 AS duration_s,
           make_timestamp(CAST($start_us + (i - $first) * $step_us AS BIGINT))::TIMESTAMPTZ AS start_time
    FROM range($first, $first + $rows) t(i)
), m AS (
    SELECT *, {_case(1)} AS provider, {_case(2)} AS model, {_case(3)} AS tier,
           {_case(4)} AS usd_in, {_case(5)} AS usd_out,
           e < CASE WHEN r < 780 THEN 120 ELSE 30 END AS failed
    FROM g
)
SELECT {_hex16("t_hi")} || {_hex16("t_lo")} AS trace_id,
       {_hex16("s")} AS span_id,
       {_hex16("p")} AS parent_span_id,
       {_hex16(_h("i * 4 // 5", 10))} || {_hex16(_h("i * 4 // 5", 11))} AS task_id,
       {_TASK_TYPES}[1 + CAST({_h("i * 4 // 5", 12)} % 5 AS BIGINT)] AS task_type,
       tier,
       CASE tier WHEN 'primary' THEN 0 WHEN 'fallback' THEN 1 ELSE 2 END AS attempt_index,
       provider, 'chat', model, model,
       CASE WHEN failed THEN 'error' ELSE 'success' END AS outcome,
       CASE WHEN NOT failed THEN NULL WHEN provider = 'anthropic' THEN 'rate_limited'
            ELSE ['invalid_output', 'timeout', 'empty_output'][1 + CAST(e % 3 AS BIGINT)] END AS error_type,
       CASE WHEN tier = 'escalation'
            THEN ['threshold', 'critical', 'requested'][1 + CAST(e % 3 AS BIGINT)] END AS reason,
       start_time,
       start_time + to_microseconds(CAST(duration_s * 1e6 AS BIGINT)) AS end_time,
       duration_s,
       input_tokens, output_tokens,
       CASE WHEN provider = 'anthropic' THEN input_tokens // 4 ELSE 0 END AS cache_read_tokens,
       0 AS cache_write_tokens,
       CASE WHEN provider = 'ollama' THEN duration_s * 0.9 END AS local_compute_s,
       CAST((input_tokens * usd_in + output_tokens * usd_out) / 1e6 AS DECIMAL(18, 9)) AS cost_usd,
       CASE WHEN provider = 'ollama' AND NOT failed
            THEN CAST((input_tokens * 3 + output_tokens * 15) / 1e6 AS DECIMAL(18, 9)) END AS counterfactual_usd,
       NULL AS reported_cost_usd,
       CASE WHEN provider = 'ollama' THEN 'local-free' ELSE 'genai-prices' END AS price_source,
       CASE WHEN provider = 'ollama' THEN '127.0.0.1' ELSE 'api.anthropic.com' END AS server_address,
       CASE WHEN provider = 'ollama' THEN 11434 ELSE 443 END AS server_port,
       'costline-router' AS service_name,
       start_time + to_microseconds(CAST(duration_s * 1e6 AS BIGINT)) AS ingested_at,
       s AS span_key,
       p AS parent_key,
       NULL AS cost_disagrees,
       'costline' AS emitter,
       NULL AS superseded_by,
       {_TEAMS}[1 + CAST({_h("i * 4 // 5", 13)} % 3 AS BIGINT)] AS team,  -- the task's team, as on its task row
       NULL AS project,
       NULL AS user_id
FROM m
"""

# One task row per task id of the attempts above (four tasks per five attempts).
_TASKS = f"""
INSERT INTO tasks
SELECT {_hex16(_h("k", 20))} || {_hex16(_h("k", 21))} AS trace_id,
       {_hex16(_h("k", 22))} AS span_id,
       {_hex16(_h("k", 10))} || {_hex16(_h("k", 11))} AS task_id,
       {_TASK_TYPES}[1 + CAST({_h("k", 12)} % 5 AS BIGINT)] AS task_type,
       {_h("k", 12)} % 5 = 2 AS critical,
       CASE WHEN {_h("k", 23)} % 100 < 3 THEN 'failed' ELSE 'completed' END AS outcome,
       {_h("k", 23)} % 100 < 22 AS escalated,
       1 + {_h("k", 24)} % 3 AS attempts,
       make_timestamp(CAST($start_us + k * 5 // 4 * $step_us AS BIGINT))::TIMESTAMPTZ AS start_time,
       make_timestamp(CAST($start_us + k * 5 // 4 * $step_us AS BIGINT) + 4000000)::TIMESTAMPTZ AS end_time,
       4.0 AS duration_s,
       'costline-router' AS service_name,
       make_timestamp(CAST($start_us + k * 5 // 4 * $step_us AS BIGINT) + 4000000)::TIMESTAMPTZ AS ingested_at,
       {_h("k", 22)} AS span_key,
       {_TEAMS}[1 + CAST({_h("k", 13)} % 3 AS BIGINT)] AS team,
       NULL AS project,
       NULL AS user_id
FROM range($first * 4 // 5, ($first + $rows) * 4 // 5) t(k)
"""


def fill(
    con: duckdb.DuckDBPyConnection,
    rows: int,
    *,
    start: datetime,
    end: datetime,
    seed: int = 1,
    first: int = 0,
    tasks: bool = True,
) -> None:
    """Append ``rows`` attempts (and their task rows) with start times evenly spread over [start, end)."""
    start_us = int(start.timestamp() * 1_000_000)
    step_us = (end - start).total_seconds() * 1_000_000 / max(rows, 1)
    params = {"seed": seed, "first": first, "rows": rows, "start_us": start_us, "step_us": step_us}
    con.execute("SET TimeZone = 'UTC'")
    con.execute(_ATTEMPTS, params)
    if tasks:
        con.execute(_TASKS, params)


def make_ledger(path: Path, rows: int, *, start: datetime, end: datetime, seed: int = 1, tasks: bool = True) -> float:
    """Create ``path`` with the collector's schema and ``rows`` attempts; returns the seconds it took."""
    began = time.perf_counter()
    con = open_ledger(path, memory_limit="4GB")
    try:
        if rows:
            fill(con, rows, start=start, end=end, seed=seed, tasks=tasks)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return time.perf_counter() - began
