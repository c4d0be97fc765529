"""Documented views over the ledger, created by the collector so `duckdb costline.duckdb` users can query them."""

from __future__ import annotations

import duckdb

VIEWS = """
CREATE OR REPLACE VIEW daily_cost AS
SELECT CAST(date_trunc('day', start_time AT TIME ZONE 'UTC') AS DATE) AS day,
       provider,
       coalesce(response_model, request_model) AS model,
       count(*) AS attempts,
       sum(cost_usd) AS cost_usd,
       count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_attempts
FROM attempts
GROUP BY ALL;

CREATE OR REPLACE VIEW model_cost AS
SELECT provider,
       coalesce(response_model, request_model) AS model,
       count(*) AS attempts,
       count(*) FILTER (WHERE outcome = 'success') AS successes,
       sum(input_tokens) AS input_tokens,
       sum(output_tokens) AS output_tokens,
       sum(cache_read_tokens) AS cache_read_tokens,
       sum(cache_write_tokens) AS cache_write_tokens,
       sum(cost_usd) AS cost_usd,
       count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_attempts
FROM attempts
GROUP BY ALL;

CREATE OR REPLACE VIEW escalations AS
SELECT trace_id, span_id, task_id, task_type, escalation_reason AS reason,
       request_model AS model, outcome, error_type, start_time, cost_usd
FROM attempts
WHERE tier = 'escalation';
"""


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(VIEWS)
