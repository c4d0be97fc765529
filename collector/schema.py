"""The ledger's tables (DESIGN §4). Column names are a public contract: users query them with plain SQL.

Costs are DECIMAL so that sums are exact to the cent; NULL cost means "could not be priced", never $0.
Span and trace ids are lowercase hex, as every OpenTelemetry UI shows them.
"""

from __future__ import annotations

SCHEMA_VERSION = 2  # 2: span_key is the span id itself; cost_disagrees and emitter

TABLES = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     INTEGER NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS attempts (
    trace_id            VARCHAR NOT NULL,   -- 32 hex chars
    span_id             VARCHAR NOT NULL,   -- 16 hex chars
    parent_span_id      VARCHAR,
    task_id             VARCHAR,            -- costline.task.id; NULL for other emitters' spans
    task_type           VARCHAR,
    tier                VARCHAR,            -- primary | fallback | escalation
    attempt_index       INTEGER,
    provider            VARCHAR NOT NULL,   -- gen_ai.provider.name (or gen_ai.system)
    operation           VARCHAR,            -- gen_ai.operation.name
    request_model       VARCHAR,
    response_model      VARCHAR,
    outcome             VARCHAR NOT NULL,   -- success | error
    error_type          VARCHAR,            -- error.type on failures
    escalation_reason   VARCHAR,            -- threshold | critical | requested
    start_time          TIMESTAMPTZ NOT NULL,
    end_time            TIMESTAMPTZ NOT NULL,
    duration_s          DOUBLE NOT NULL,
    input_tokens        BIGINT,             -- ALL input tokens, cache reads and writes included
    output_tokens       BIGINT,
    cache_read_tokens   BIGINT,
    cache_write_tokens  BIGINT,
    local_compute_s     DOUBLE,             -- costline.local.compute_seconds
    cost_usd            DECIMAL(18, 9),     -- NULL: unpriced
    counterfactual_usd  DECIMAL(18, 9),     -- local successes: the same tokens on the escalation model
    reported_cost_usd   DECIMAL(18, 9),     -- a cost the emitter computed (gen_ai.usage.cost, operation.cost)
    price_source        VARCHAR,            -- config | genai-prices | local-compute | local-free | unpriced | no-usage
    server_address      VARCHAR,
    server_port         INTEGER,
    service_name        VARCHAR,
    ingested_at         TIMESTAMPTZ NOT NULL,
    span_key            UBIGINT,            -- internal: the span id's 64 bits (ids are confirmed on a hit)
    parent_key          UBIGINT,            -- internal: span_key of the parent span
    cost_disagrees      BOOLEAN,            -- reported_cost_usd differs from cost_usd beyond the tolerance
    emitter             VARCHAR,            -- the instrumentation recognised (docs/emitters.md)
    superseded_by       VARCHAR,            -- span_id of a later span with the usage of this same call (see ledger.py)
    team                VARCHAR,            -- costline.team: attribution, NULL when the caller gave none
    project             VARCHAR,            -- costline.project
    user_id             VARCHAR             -- user.id
);

CREATE TABLE IF NOT EXISTS tasks (
    trace_id     VARCHAR NOT NULL,
    span_id      VARCHAR NOT NULL,
    task_id      VARCHAR NOT NULL,
    task_type    VARCHAR,
    critical     BOOLEAN,
    outcome      VARCHAR,                   -- completed | failed | quota_exhausted
    escalated    BOOLEAN,
    attempts     INTEGER,
    start_time   TIMESTAMPTZ NOT NULL,
    end_time     TIMESTAMPTZ NOT NULL,
    duration_s   DOUBLE NOT NULL,
    service_name VARCHAR,
    ingested_at  TIMESTAMPTZ NOT NULL,
    span_key     UBIGINT,                   -- internal: the span id's 64 bits
    team         VARCHAR,                   -- attribution of the task span, NULL when absent
    project      VARCHAR,
    user_id      VARCHAR
);

-- Attempts marked superseded after they were stored (see ledger.py), until the lake flusher has marked its copies
-- too: rows are only ever appended, so the flusher's rowid position cannot see a later UPDATE.
CREATE TABLE IF NOT EXISTS supersede_log (
    trace_id      VARCHAR NOT NULL,
    span_id       VARCHAR NOT NULL,
    start_time    TIMESTAMPTZ NOT NULL,
    superseded_by VARCHAR NOT NULL
);
"""
