"""Checkpoints happen between bursts (idle writer, stop), never change what is stored; commit deltas = seeded counts."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
from test_collector_support import LOCAL, NOW, SONNET_45, attempt, collector_config, otel, rows, task

from collector.ledger import LedgerWriter, checkpoint_threshold, open_ledger
from collector.mapping import ATTEMPT_SCHEMA, TASK_SCHEMA
from collector.metrics import LedgerMetrics, make_registry
from collector.service import Collector
from costline import spans as S

START = (NOW - timedelta(minutes=30)).replace(microsecond=0)


def _wal(ledger: Path) -> int:
    wal = ledger.with_name(ledger.name + ".wal")
    return wal.stat().st_size if wal.exists() else 0


def test_checkpoint_threshold_is_half_the_ledger_memory(tmp_path: Path) -> None:
    con = open_ledger(tmp_path / "ledger.duckdb", memory_limit="96MB")
    try:
        setting = con.execute("SELECT current_setting('checkpoint_threshold')").fetchone()
    finally:
        con.close()
    assert setting == ("45.7 MiB",)  # 48 MB as DuckDB prints it
    assert checkpoint_threshold("1GB") == "512MB"
    assert checkpoint_threshold("16MB") == "16MB"  # never below DuckDB's default
    assert checkpoint_threshold("lots") == "16MB"


def test_idle_writer_folds_the_wal_into_the_ledger(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.duckdb"
    with Collector(collector_config(ledger)) as collector:
        with otel(collector) as (tracer, _), task(tracer, start=START, task_id="t1"):
            attempt(tracer, start=START, provider=S.PROVIDER_OLLAMA, model=LOCAL, tier="primary", task_id="t1")
        assert rows(collector, "SELECT count(*) FROM attempts") == [(1,)]
        deadline = time.monotonic() + 20
        while _wal(ledger) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _wal(ledger) == 0  # small writes stay far below the threshold: only the idle checkpoint folds them
    con = duckdb.connect(str(ledger), read_only=True)
    try:
        assert con.execute("SELECT task_id, tier FROM attempts").fetchall() == [("t1", "primary")]
    finally:
        con.close()


def _attempts(specs: list[dict[str, object]]) -> pa.Table:
    columns: dict[str, list[object]] = {name: [] for name in ATTEMPT_SCHEMA.names}
    for i, spec in enumerate(specs):
        row: dict[str, object] = {name: None for name in ATTEMPT_SCHEMA.names}
        row.update(
            trace_id=f"{i + 1:032x}",
            span_id=f"{i + 1:016x}",
            span_key=i + 1,
            check_parent=False,
            start_time=START + timedelta(seconds=i),
            end_time=START + timedelta(seconds=i + 1),
            outcome="success",
            provider=S.PROVIDER_ANTHROPIC,
            request_model=SONNET_45,
        )
        row.update(spec)
        for name, value in row.items():
            columns[name].append(value)
    return pa.table(columns, schema=ATTEMPT_SCHEMA)


def _tasks(specs: list[dict[str, object]]) -> pa.Table:
    columns: dict[str, list[object]] = {name: [] for name in TASK_SCHEMA.names}
    for i, spec in enumerate(specs):
        row: dict[str, object] = {name: None for name in TASK_SCHEMA.names}
        row.update(
            trace_id=f"{i + 1:032x}",
            span_id=f"{i + 101:016x}",
            span_key=i + 101,
            task_id=f"t{i}",
            start_time=START,
            end_time=START,
            duration_s=0.0,
        )
        row.update(spec)
        for name, value in row.items():
            columns[name].append(value)
    return pa.table(columns, schema=TASK_SCHEMA)


def _exposition(metrics: LedgerMetrics) -> list[tuple[str, list[tuple[str, str]], float]]:
    registry = make_registry(metrics)
    return sorted(
        (sample.name, sorted(sample.labels.items()), sample.value)
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.startswith(("costline_quota", "costline_budget"))
    )


def test_commit_deltas_equal_the_counters_seeded_from_the_same_rows(tmp_path: Path) -> None:
    """A restart must show the same counters: what each commit added equals what the ledger's SQL aggregation gives."""
    cost = Decimal("0.000123456")
    attempts = _attempts(
        [
            {"duration_s": 0.01, "cost_usd": cost, "input_tokens": 10, "output_tokens": 3},  # on a bucket bound
            {"duration_s": 0.0100001, "cost_usd": cost, "cache_read_tokens": 7},
            {"duration_s": 0.0000025, "cost_usd": None},  # a half microsecond rounds away from zero; unpriced
            {"duration_s": 81.92, "cost_usd": None, "request_model": None, "response_model": "served-model"},
            {"duration_s": 100.0, "tier": "escalation", "escalation_reason": "critical", "cost_usd": cost},
            {"duration_s": 1.0, "tier": "escalation", "outcome": "error", "error_type": "quota_exhausted"},
            {
                "duration_s": 2.5,
                "outcome": "error",
                "error_type": "no-such-error",
                "provider": S.PROVIDER_OLLAMA,
                "request_model": LOCAL,
                "tier": "primary",
                "counterfactual_usd": Decimal("0.5"),
            },
            {"duration_s": 0.3, "outcome": "error", "error_type": "timeout", "tier": None},
            {"duration_s": 0.3, "provider": "vllm", "counterfactual_usd": Decimal("0.25"), "cache_write_tokens": 9},
        ]
    )
    tasks = _tasks(
        [
            {"task_type": "general", "outcome": "completed", "escalated": True},
            {"task_type": "general", "outcome": "completed", "escalated": False},
            {"task_type": None, "outcome": None, "escalated": None},
            {"task_type": "general", "outcome": "completed", "escalated": True},
        ]
    )
    config = collector_config(tmp_path / "ledger.duckdb")
    con = open_ledger(tmp_path / "ledger.duckdb")
    try:
        applied = LedgerMetrics(config, con.cursor)
        applied.seed(con)
        writer = LedgerWriter(con.cursor())
        unpriced: Counter[tuple[str, str]] = Counter()
        for part in (slice(0, 4), slice(4, 9)):  # two commits
            result = writer.write([attempts[part]], [tasks[part]])
            unpriced.update(applied.apply(result, rejected=0))  # Counter.update adds
        assert writer.checkpoint() is True
        assert writer.checkpoint() is False  # nothing committed since
        seeded = LedgerMetrics(config, con.cursor)
        seeded.seed(con)
        assert _exposition(applied) == _exposition(seeded)
        assert unpriced == {
            (S.PROVIDER_ANTHROPIC, SONNET_45): 3,
            (S.PROVIDER_ANTHROPIC, "served-model"): 1,
            (S.PROVIDER_OLLAMA, LOCAL): 1,
            ("vllm", SONNET_45): 1,
        }
        assert con.execute("SELECT count(*) FROM attempts").fetchone() == (9,)
    finally:
        con.close()


def test_checkpoint_is_postponed_while_another_transaction_has_written(tmp_path: Path) -> None:
    con = open_ledger(tmp_path / "ledger.duckdb")
    try:
        writer = LedgerWriter(con.cursor())
        writer.write([_attempts([{"duration_s": 1.0}])], [])
        other = con.cursor()
        other.execute("BEGIN")
        other.execute("UPDATE ingest_counts SET spans = spans + 1 WHERE result = 'rejected'")
        assert writer.checkpoint() is False  # DuckDB refuses; no error escapes, the next idle spell retries
        other.execute("ROLLBACK")
        other.close()
        assert writer.checkpoint() is True
        assert writer.checkpoint() is False
        assert con.execute("SELECT count(*) FROM attempts").fetchone() == (1,)
    finally:
        con.close()
