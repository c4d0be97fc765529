"""Attribution columns (team, project, user_id) in the ledger, and a ledger written before they existed."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb

from collector.ledger import LedgerWriter, open_ledger
from collector.mapping import map_spans
from collector.otlp_decode import SpanRecord
from collector.price_cache import FastPricer
from collector.schema import SCHEMA_VERSION
from costline import spans as S
from costline.config import Config
from costline.pricing import Pricer

PRICER = FastPricer(Pricer(Config()))
NOW_NS = 1_764_000_000 * 10**9  # fixed: the mapping takes its 'now' from the test
START = datetime.fromtimestamp(NOW_NS // 10**9 - 3_600, UTC)

# The tables as schema 2 created them before the attribution columns, copied here as they were: the migration must
# upgrade files written by that code, whatever collector/schema.py says today.
SCHEMA_2_TABLES = """
CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE TABLE attempts (
    trace_id VARCHAR NOT NULL, span_id VARCHAR NOT NULL, parent_span_id VARCHAR, task_id VARCHAR, task_type VARCHAR,
    tier VARCHAR, attempt_index INTEGER, provider VARCHAR NOT NULL, operation VARCHAR, request_model VARCHAR,
    response_model VARCHAR, outcome VARCHAR NOT NULL, error_type VARCHAR, escalation_reason VARCHAR,
    start_time TIMESTAMPTZ NOT NULL, end_time TIMESTAMPTZ NOT NULL, duration_s DOUBLE NOT NULL, input_tokens BIGINT,
    output_tokens BIGINT, cache_read_tokens BIGINT, cache_write_tokens BIGINT, local_compute_s DOUBLE,
    cost_usd DECIMAL(18, 9), counterfactual_usd DECIMAL(18, 9), reported_cost_usd DECIMAL(18, 9),
    price_source VARCHAR, server_address VARCHAR, server_port INTEGER, service_name VARCHAR,
    ingested_at TIMESTAMPTZ NOT NULL, span_key UBIGINT, parent_key UBIGINT, cost_disagrees BOOLEAN, emitter VARCHAR,
    superseded_by VARCHAR
);
CREATE TABLE tasks (
    trace_id VARCHAR NOT NULL, span_id VARCHAR NOT NULL, task_id VARCHAR NOT NULL, task_type VARCHAR,
    critical BOOLEAN, outcome VARCHAR, escalated BOOLEAN, attempts INTEGER, start_time TIMESTAMPTZ NOT NULL,
    end_time TIMESTAMPTZ NOT NULL, duration_s DOUBLE NOT NULL, service_name VARCHAR, ingested_at TIMESTAMPTZ NOT NULL,
    span_key UBIGINT
);
"""
ATTRIBUTION = ("team", "project", "user_id")


def _schema_2_ledger(path: Path) -> None:
    con = duckdb.connect(str(path))
    try:
        con.execute(SCHEMA_2_TABLES)
        con.execute("INSERT INTO schema_version (version) VALUES (2)")
        con.execute(
            """INSERT INTO attempts (trace_id, span_id, task_id, provider, request_model, outcome, start_time,
                   end_time, duration_s, input_tokens, output_tokens, cost_usd, price_source, ingested_at,
                   span_key)
               VALUES (?, ?, 't-old', 'anthropic', 'claude-sonnet-4-5', 'success', ?, ?, 2.0, 1000, 100,
                   0.004500000, 'config', ?, ?)""",
            ["ab" * 16, "0000000000000011", START, START, START, 0x11],
        )
        con.execute(
            """INSERT INTO tasks (trace_id, span_id, task_id, outcome, start_time, end_time, duration_s, ingested_at,
                   span_key)
               VALUES (?, ?, 't-old', 'completed', ?, ?, 2.0, ?, ?)""",
            ["ab" * 16, "0000000000000022", START, START, START, 0x22],
        )
    finally:
        con.close()


def _attributed(span: int, name: str, attributes: dict[str, object]) -> SpanRecord:
    start = NOW_NS - 10**10
    return SpanRecord("cd" * 16, f"{span:016x}", "", name, 3, start, start + 10**9, 0, "costline", attributes)


def test_a_ledger_of_schema_2_gains_the_attribution_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.duckdb"
    _schema_2_ledger(path)
    con = open_ledger(path)
    try:
        old_attempt = con.execute(
            "SELECT task_id, cost_usd, team, project, user_id FROM attempts WHERE task_id = 't-old'"
        ).fetchall()
        old_task = con.execute("SELECT task_id, outcome, team, project, user_id FROM tasks").fetchall()
        assert old_attempt == [("t-old", Decimal("0.004500000"), None, None, None)]
        assert old_task == [("t-old", "completed", None, None, None)]
        assert con.execute("SELECT max(version) FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]

        attribution = {S.TEAM: "search", S.PROJECT: "atlas", S.USER_ID: "u-17"}
        call = {S.PROVIDER_NAME: "ollama", S.REQUEST_MODEL: "qwen3:8b", S.USAGE_INPUT_TOKENS: 10, S.TASK_ID: "t-new"}
        task = {S.TASK_ID: "t-new", S.TASK_OUTCOME: "completed"}
        mapped = map_spans(
            [
                _attributed(1, "chat qwen3:8b", {**call, **attribution}),
                _attributed(2, "task general", {**task, **attribution}),
            ],
            PRICER,
            now_ns=NOW_NS,
        )
        assert not mapped.rejected
        LedgerWriter(con).write([mapped.attempts], [mapped.tasks])
        columns = ", ".join(ATTRIBUTION)
        by_view = con.execute(f"SELECT task_id, {columns} FROM attempt_costs ORDER BY task_id").fetchall()
        tasks = con.execute(f"SELECT task_id, {columns} FROM tasks ORDER BY task_id").fetchall()
    finally:
        con.close()
    assert by_view == [("t-new", "search", "atlas", "u-17"), ("t-old", None, None, None)]
    assert tasks == [("t-new", "search", "atlas", "u-17"), ("t-old", None, None, None)]


def test_opening_a_migrated_ledger_again_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.duckdb"
    _schema_2_ledger(path)
    for _ in range(2):
        open_ledger(path).close()
    con = duckdb.connect(str(path), read_only=True)
    try:
        versions = con.execute("SELECT version FROM schema_version").fetchall()
        counts = con.execute("SELECT (SELECT count(*) FROM attempts), (SELECT count(*) FROM tasks)").fetchall()
        kinds = con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE column_name IN ('team', 'project', 'user_id') ORDER BY table_name, column_name"
        ).fetchall()
    finally:
        con.close()
    assert versions == [(2,)]
    assert counts == [(1, 1)]
    assert kinds == [
        (table, column, "VARCHAR") for table in ("attempt_costs", "attempts", "tasks") for column in sorted(ATTRIBUTION)
    ]
