"""Build real DuckDB ledgers for report tests: the collector's DDL and views, plus rows the test chooses."""

from __future__ import annotations

import functools
import itertools
import socket
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from collector.schema import SCHEMA_VERSION, TABLES
from collector.views import create_views

_ids = itertools.count(1)

ATTEMPT_DEFAULTS: dict[str, Any] = {
    "parent_span_id": None,
    "task_id": None,
    "task_type": "general",
    "tier": "primary",
    "attempt_index": 0,
    "provider": "ollama",
    "operation": "chat",
    "request_model": "qwen2.5-coder:14b",
    "response_model": None,
    "outcome": "success",
    "error_type": None,
    "escalation_reason": None,
    "duration_s": 1.0,
    "input_tokens": 100,
    "output_tokens": 40,
    "cache_read_tokens": 0,
    "cache_write_tokens": 0,
    "local_compute_s": None,
    "cost_usd": Decimal(0),
    "counterfactual_usd": None,
    "reported_cost_usd": None,
    "price_source": "local-free",
    "server_address": "127.0.0.1",
    "server_port": 11434,
    "service_name": "costline-router",
}


def attempt(start: datetime, **values: Any) -> dict[str, Any]:
    """One attempts row; ids are unique, end = start + duration."""
    n = next(_ids)
    row = {**ATTEMPT_DEFAULTS, **values}
    row.setdefault("trace_id", f"{n:032x}")
    row.setdefault("span_id", f"{n:016x}")
    row["start_time"] = start
    row["end_time"] = start + timedelta(seconds=row["duration_s"])
    row["ingested_at"] = row["end_time"]
    return row


def task(start: datetime, task_id: str, **values: Any) -> dict[str, Any]:
    n = next(_ids)
    row: dict[str, Any] = {
        "trace_id": f"{n:032x}",
        "span_id": f"{n:016x}",
        "task_id": task_id,
        "task_type": "general",
        "critical": False,
        "outcome": "completed",
        "escalated": False,
        "attempts": 1,
        "duration_s": 2.0,
        "service_name": "costline-router",
        **values,
    }
    row["start_time"] = start
    row["end_time"] = start + timedelta(seconds=row["duration_s"])
    row["ingested_at"] = row["end_time"]
    return row


@functools.cache
def _empty_ledger() -> bytes:
    """The bytes of a ledger file as the collector creates it (tables, schema version, views), with no rows."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "empty.duckdb"
        con = duckdb.connect(str(path))
        try:
            con.execute(TABLES)
            con.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION])
            create_views(con)
        finally:
            con.close()
        return path.read_bytes()


def write_ledger(path: Path, attempts: Iterable[Mapping[str, Any]], tasks: Iterable[Mapping[str, Any]] = ()) -> Path:
    """Create the ledger file as the collector would (tables, schema version, views) and insert the rows."""
    path.write_bytes(_empty_ledger())  # a copy: building the schema and views again costs a tenth of a second
    con = duckdb.connect(str(path))
    try:
        _insert(con, "attempts", attempts)
        _insert(con, "tasks", tasks)
    finally:
        con.close()
    return path


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
    rows = list(rows)
    if not rows:
        return
    columns = list(rows[0])
    placeholders = ", ".join("?" for _ in columns)
    con.executemany(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})",
        [[row[c] for c in columns] for row in rows],
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(tmp_path: Path, ledger: Path, *, metrics_port: int | None = None, extra: str = "") -> Path:
    """A config file that points at ``ledger`` and at a collector port nothing listens on (unless given)."""
    port = metrics_port if metrics_port is not None else free_port()
    config = tmp_path / "costline.toml"
    config.write_text(
        f'[router]\nusage_db = "{tmp_path / "usage.sqlite"}"\n\n'
        f'[collector]\nledger = "{ledger}"\nmetrics_port = {port}\notlp_port = 0\n\n{extra}',
        encoding="utf-8",
    )
    return config


# A fixed "now" for window tests; the scenario's rows sit at known distances before it.
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
SONNET = "claude-sonnet-4-6"


@dataclass(frozen=True)
class Scenario:
    attempts: list[dict[str, Any]]
    tasks: list[dict[str, Any]]


def scenario(now: datetime = NOW) -> Scenario:
    """A realistic mix over three days and one old row:

    - t1 general: primary success (counterfactual $0.0123456789 on Sonnet)
    - t2 code_generation (critical): primary timeout, escalation (critical) success $0.0421
    - t3 summarize: primary model_not_found, fallback timeout, escalation (threshold) success $0.0105
    - t4 summarize: primary timeout, fallback invalid_output, escalation refused by quota (no cost)
    - t5 general: fallback success with local compute cost $0.0004 (counterfactual $0.0031)
    - another emitter's OpenAI call: no task, carried cost $0.002 (reported), priced $0.0021
    - an unknown Anthropic model: unpriced (NULL cost)
    - t6 general, 40 days ago: primary success (outside 30d)
    """
    h = timedelta(hours=1)
    d = timedelta(days=1)
    a = [
        attempt(
            now - 2 * h,
            task_id="t1",
            request_model="qwen2.5-coder:14b",
            input_tokens=1200,
            output_tokens=300,
            counterfactual_usd=Decimal("0.012345679"),
        ),
        attempt(
            now - 3 * h,
            task_id="t2",
            task_type="code_generation",
            outcome="error",
            error_type="timeout",
            input_tokens=0,
            output_tokens=0,
        ),
        attempt(
            now - 3 * h + timedelta(seconds=30),
            task_id="t2",
            task_type="code_generation",
            tier="escalation",
            attempt_index=1,
            provider="anthropic",
            request_model=SONNET,
            response_model="claude-sonnet-4-6-20260101",
            escalation_reason="critical",
            input_tokens=5000,
            output_tokens=1800,
            cache_read_tokens=2000,
            cache_write_tokens=500,
            cost_usd=Decimal("0.042100000"),
            price_source="genai-prices",
            server_port=443,
        ),
        attempt(
            now - d - 5 * h,
            task_id="t3",
            task_type="summarize",
            outcome="error",
            error_type="model_not_found",
            request_model="qwen2.5-coder:14b",
            input_tokens=0,
            output_tokens=0,
        ),
        attempt(
            now - d - 5 * h + timedelta(seconds=1),
            task_id="t3",
            task_type="summarize",
            tier="fallback",
            attempt_index=1,
            outcome="error",
            error_type="timeout",
            request_model="qwen3:30b-a3b",
            input_tokens=0,
            output_tokens=0,
        ),
        attempt(
            now - d - 5 * h + timedelta(seconds=60),
            task_id="t3",
            task_type="summarize",
            tier="escalation",
            attempt_index=2,
            provider="anthropic",
            request_model=SONNET,
            escalation_reason="threshold",
            input_tokens=2000,
            output_tokens=300,
            cost_usd=Decimal("0.010500000"),
            price_source="genai-prices",
        ),
        attempt(
            now - 2 * d,
            task_id="t4",
            task_type="summarize",
            outcome="error",
            error_type="timeout",
            input_tokens=0,
            output_tokens=0,
        ),
        attempt(
            now - 2 * d + timedelta(seconds=5),
            task_id="t4",
            task_type="summarize",
            tier="fallback",
            attempt_index=1,
            outcome="error",
            error_type="invalid_output",
            request_model="qwen3:30b-a3b",
            input_tokens=800,
            output_tokens=90,
        ),
        attempt(
            now - 2 * d + timedelta(seconds=9),
            task_id="t4",
            task_type="summarize",
            tier="escalation",
            attempt_index=2,
            provider="anthropic",
            request_model=SONNET,
            escalation_reason="threshold",
            outcome="error",
            error_type="quota_exhausted",
            input_tokens=0,
            output_tokens=0,
            cost_usd=None,
            price_source="unpriced",
        ),
        attempt(
            now - 5 * h,
            task_id="t5",
            tier="fallback",
            attempt_index=1,
            request_model="qwen3:30b-a3b",
            input_tokens=400,
            output_tokens=100,
            local_compute_s=1.44,
            cost_usd=Decimal("0.000400000"),
            price_source="local-compute",
            counterfactual_usd=Decimal("0.003100000"),
        ),
        attempt(
            now - 6 * h,
            task_type=None,
            tier=None,
            attempt_index=None,
            provider="openai",
            request_model="gpt-4o-mini",
            input_tokens=3000,
            output_tokens=700,
            cost_usd=Decimal("0.002100000"),
            reported_cost_usd=Decimal("0.002000000"),
            price_source="genai-prices",
            service_name="other-app",
        ),
        attempt(
            now - 7 * h,
            task_type=None,
            tier=None,
            attempt_index=None,
            provider="anthropic",
            request_model="claude-imaginary-9",
            input_tokens=10,
            output_tokens=10,
            cost_usd=None,
            price_source="unpriced",
            service_name="other-app",
        ),
        attempt(
            now - 40 * d,
            task_id="t6",
            cost_usd=Decimal(0),
            counterfactual_usd=Decimal("0.500000000"),
            input_tokens=50_000,
            output_tokens=9_000,
        ),
    ]
    t = [
        task(now - 2 * h, "t1"),
        task(now - 3 * h, "t2", task_type="code_generation", critical=True, escalated=True, attempts=2),
        task(now - d - 5 * h, "t3", task_type="summarize", escalated=True, attempts=3),
        task(now - 2 * d, "t4", task_type="summarize", outcome="quota_exhausted", escalated=True, attempts=3),
        task(now - 5 * h, "t5", attempts=2),
        task(now - 40 * d, "t6"),
    ]
    return Scenario(a, t)
