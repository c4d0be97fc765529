"""The DuckDB ledger: one file, one writer, every span stored exactly once.

Writes come in batches of many requests (see :mod:`collector.writer`): the batch is one Arrow table, inserted in
one transaction. Deduplication never touches an index (``ON CONFLICT`` on a growing table slows to a crawl) and never
scans the table for a fresh span: each row carries ``span_key``, the span id as a UBIGINT, and the writer keeps every
stored key in memory (:class:`collector.span_keys.SpanKeys`, seeded when it starts). A batch key it does not hold is
a new span, whatever its start time; only the keys it holds are looked up in the ledger, and confirmed on the exact
(trace_id, span_id) before a row is treated as a duplicate, so distinct ids never collide.

A second probe, restricted to the batch's time range (DuckDB skips row groups by their min/max), resolves nesting:
of a GenAI parent and child describing one call, one is kept — the one with usage, else the outer one, else the one
stored first — so one model call is counted once whichever order the spans arrive in. When the span without usage
was stored in an earlier request and its partner with usage arrives later, the later one is stored and the earlier
row gets ``superseded_by``: the views (and so every report) leave superseded rows out, so the call counts once, at
its price. The row is kept rather than deleted because the metrics already counted it as an attempt (with no cost
and no tokens) and counters seeded from the ledger at the next start must not drop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from collector import span_keys
from collector.mapping import ATTEMPT_COLUMNS, EMPTY_ATTEMPTS, EMPTY_TASKS, TASK_COLUMNS
from collector.schema import SCHEMA_VERSION, TABLES
from collector.span_keys import SpanKeys
from collector.views import create_views

log = logging.getLogger(__name__)

PARENT_WINDOW = timedelta(hours=1)  # a nested span's parent started at most an hour before it
DEFAULT_MEMORY_LIMIT = "96MB"  # DuckDB's buffer pool; ingest and scrapes need little, big queries spill
# DuckDB checkpoints inside the COMMIT that grows the WAL past this, stalling that write (its default is 16 MB).
# Rows committed since the last checkpoint stay in the buffer pool, so the threshold is a share of memory_limit;
# the writer checkpoints when its queue runs empty instead (LedgerWriter.checkpoint), between bursts.
CHECKPOINT_SHARE_OF_MEMORY = 0.5
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B)\s*$", re.IGNORECASE)
_UNIT = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

# Rows written by other tools carry no key yet; ledgers of schema 1 folded the trace id into it.
_BACKFILL_KEYS = """
UPDATE {table} SET span_key = ('0x' || span_id)::UBIGINT
WHERE (span_key IS NULL OR $rekey) AND length(span_id) = 16;
"""


_ATTRIBUTION_COLUMNS = ("team", "project", "user_id")

# Internal: spans that were received but not stored, so `costline_ingest_spans_total` survives restarts.
_INGEST_COUNTS = """
CREATE TABLE IF NOT EXISTS ingest_counts (result VARCHAR NOT NULL, spans UBIGINT NOT NULL);
INSERT INTO ingest_counts SELECT r, 0 FROM (VALUES ('duplicate'), ('rejected')) v(r)
WHERE r NOT IN (SELECT result FROM ingest_counts);
"""


class LedgerError(RuntimeError):
    """The ledger cannot be opened; the message says why and what to do."""


@dataclass
class WriteResult:
    attempts: pa.Table  # the rows stored by this write (without batch-only columns)
    tasks: pa.Table
    duplicates: int  # spans already in the ledger or repeated within the batch
    nested: int  # GenAI spans not counted because another span of the same call was


def open_ledger(path: str | os.PathLike[str], *, memory_limit: str = DEFAULT_MEMORY_LIMIT) -> duckdb.DuckDBPyConnection:
    """Open (or create) the ledger file for writing, with the schema and views in place."""
    file = Path(path).expanduser()
    existed = file.exists()
    if existed and file.is_dir():
        raise LedgerError(f"ledger path {file} is a directory; set collector.ledger to a file name")
    if not file.parent.is_dir():
        raise LedgerError(f"ledger directory {file.parent} does not exist; create it or change collector.ledger")
    try:
        con = duckdb.connect(
            str(file),
            config={
                "memory_limit": memory_limit,
                "checkpoint_threshold": checkpoint_threshold(memory_limit),
                "preserve_insertion_order": False,
                # Queries served to clients run on this database: no reading or writing of other files.
                "enable_external_access": False,
            },
        )
    except duckdb.IOException as exc:
        message = str(exc)
        if "lock" in message.lower():
            raise LedgerError(
                f"ledger {file} is in use by another process (is another `costline serve` running?): {message}"
            ) from None
        if existed:
            raise LedgerError(
                f"ledger {file} exists but cannot be opened as a DuckDB database ({message}); it was left untouched "
                "— move it aside or point collector.ledger at another file"
            ) from None
        raise LedgerError(f"cannot create ledger {file}: {message}") from None
    except duckdb.Error as exc:
        raise LedgerError(f"cannot open ledger {file}: {exc}") from None
    try:
        _migrate(con, file)
    except BaseException:
        con.close()
        raise
    if not existed:
        log.info("created a new ledger at %s", file)
    return con


def checkpoint_threshold(memory_limit: str) -> str:
    """DuckDB's ``checkpoint_threshold`` for a ``memory_limit`` such as ``96MB``: half of it, at least 16 MB."""
    match = _SIZE.match(memory_limit)
    if match is None:
        return "16MB"
    limit = float(match.group(1)) * _UNIT[match.group(2)[0].lower()]
    return f"{max(16, int(limit * CHECKPOINT_SHARE_OF_MEMORY) >> 20)}MB"


def _migrate(con: duckdb.DuckDBPyConnection, file: Path) -> None:
    try:
        con.execute("BEGIN")
        con.execute(TABLES)
        for table, column, kind in (
            ("attempts", "span_key", "UBIGINT"),
            ("attempts", "parent_key", "UBIGINT"),
            ("attempts", "cost_disagrees", "BOOLEAN"),
            ("attempts", "emitter", "VARCHAR"),
            ("attempts", "superseded_by", "VARCHAR"),
            ("tasks", "span_key", "UBIGINT"),
            # Attribution came after schema 2; ledgers written before it keep their rows, attributed to nobody.
            *((table, column, "VARCHAR") for table in ("attempts", "tasks") for column in _ATTRIBUTION_COLUMNS),
        ):
            con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
        con.execute(_INGEST_COUNTS)
        versions = [row[0] for row in con.execute("SELECT version FROM schema_version").fetchall()]
        if versions and max(versions) > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {file} has schema version {max(versions)}, newer than this costline understands "
                f"({SCHEMA_VERSION}); upgrade costline"
            )
        rekey = bool(versions) and SCHEMA_VERSION not in versions
        if SCHEMA_VERSION not in versions:
            con.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION])
        for table in ("attempts", "tasks"):
            con.execute(_BACKFILL_KEYS.format(table=table), {"rekey": rekey})
        con.execute(
            "UPDATE attempts SET parent_key = ('0x' || parent_span_id)::UBIGINT "
            "WHERE (parent_key IS NULL OR $rekey) AND length(parent_span_id) = 16",
            {"rekey": rekey},
        )
        create_views(con)
        con.execute("COMMIT")
    except LedgerError:
        con.execute("ROLLBACK")
        raise
    except duckdb.Error as exc:
        con.execute("ROLLBACK")
        raise LedgerError(f"ledger {file} does not have the expected tables and cannot be upgraded: {exc}") from None


class LedgerWriter:
    """Inserts batches; used by one thread at a time (the writer thread)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con
        self._unchecked = False  # committed since the last checkpoint
        # This process is the ledger's only writer, so the keys seen here and the ones it adds are all there are.
        self._keys = {table: _seed_keys(con, table) for table in ("attempts", "tasks")}

    def checkpoint(self) -> bool:
        """Fold the WAL into the database file if anything was committed since the last time; call when idle.

        Returns whether it ran. Skipped (and retried next time) while another connection has a transaction
        open — a long ``/api/v1/query`` must not fail for it. Committed rows are durable in the WAL either way.
        """
        if not self._unchecked:
            return False
        try:
            self._con.execute("CHECKPOINT")
        except duckdb.Error as exc:
            log.debug("checkpoint postponed: %s", exc)
            return False
        self._unchecked = False
        return True

    def write(self, attempts: list[pa.Table], tasks: list[pa.Table], rejected: int = 0) -> WriteResult:
        attempt_batch = _concat(attempts, EMPTY_ATTEMPTS)
        task_batch = _concat(tasks, EMPTY_TASKS)
        con = self._con
        con.execute("BEGIN")
        try:
            stored_attempts, dup_a, nested = self._insert_attempts(attempt_batch)
            stored_tasks, dup_t = self._insert_tasks(task_batch)
            not_stored = {"duplicate": dup_a + dup_t + nested, "rejected": rejected}
            for result, spans in not_stored.items():
                if spans:
                    con.execute("UPDATE ingest_counts SET spans = spans + ? WHERE result = ?", [spans, result])
            con.execute("COMMIT")
            self._unchecked = True
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            for name in ("attempt_batch", "task_batch"):
                with contextlib.suppress(duckdb.Error):
                    con.unregister(name)
        for table, rows in (("attempts", stored_attempts), ("tasks", stored_tasks)):  # committed: now they are stored
            self._keys[table].add(rows.column("span_key").to_numpy())
        return WriteResult(stored_attempts, stored_tasks, dup_a + dup_t, nested)

    def _insert_attempts(self, batch: pa.Table) -> tuple[pa.Table, int, int]:
        if batch.num_rows == 0:
            return batch.drop_columns(["check_parent"]), 0, 0
        batch, in_batch_dups = _unique(batch)
        lo = pc.min(batch.column("start_time")).as_py()
        hi = pc.max(batch.column("end_time")).as_py()
        need_parents = pc.any(batch.column("check_parent")).as_py()
        self._con.register("attempt_batch", batch)
        # Identity: the same ids at any start time. Nesting: a parent started at most PARENT_WINDOW before its
        # child, so that part of the probe skips row groups by start time.
        stored = self._stored_ids("attempts", batch)
        related = self._con.execute(
            f"""
            WITH b AS MATERIALIZED (SELECT span_key, parent_key, check_parent FROM attempt_batch)
            SELECT a.trace_id, a.span_id, a.parent_span_id, {_HAS_USAGE.format(t="a.")}, a.start_time
            FROM attempts a
            WHERE a.start_time BETWEEN $lo AND $hi
              AND (a.parent_key IN (SELECT span_key FROM b)
                   OR ($need_parents AND a.span_key IN (SELECT parent_key FROM b WHERE check_parent)))
            """,
            {"lo": lo - PARENT_WINDOW if need_parents else lo, "hi": hi, "need_parents": need_parents},
        ).fetchall()
        duplicates = nested = 0
        if stored or related or need_parents:
            keep, duplicates, nested, superseded = _resolve(batch, stored, related)
            for trace_id, span_id, start_time, by in superseded:
                params = {"by": by, "start": start_time, "trace": trace_id, "span": span_id}
                marked = self._con.execute(
                    "UPDATE attempts SET superseded_by = $by "
                    "WHERE start_time = $start AND trace_id = $trace AND span_id = $span AND superseded_by IS NULL",
                    params,
                ).fetchone()
                if marked and marked[0]:
                    self._con.execute("INSERT INTO supersede_log VALUES ($trace, $span, $start, $by)", params)
            batch = batch.filter(pa.array(keep, pa.bool_()))
            self._con.unregister("attempt_batch")
            self._con.register("attempt_batch", batch)
        stored_rows = batch.drop_columns(["check_parent"])
        if stored_rows.num_rows:
            columns = ", ".join(ATTEMPT_COLUMNS)
            self._con.execute(
                f"INSERT INTO attempts ({columns}, ingested_at) SELECT {columns}, now() FROM attempt_batch"
            )
        return stored_rows, duplicates + in_batch_dups, nested

    def _stored_ids(self, table: str, batch: pa.Table) -> list[tuple[str, str]]:
        """(trace_id, span_id) of the ledger rows whose span key one of the batch's has; only candidate keys (held
        in memory) are looked up, so a batch of new spans costs no query."""
        keys = batch.column("span_key").to_numpy()
        candidates = keys[self._keys[table].candidates(keys)]
        if not len(candidates):
            return []
        return self._con.execute(
            f"SELECT trace_id, span_id FROM {table} WHERE span_key IN (SELECT unnest($keys::UBIGINT[]))",
            {"keys": candidates.tolist()},
        ).fetchall()

    def _insert_tasks(self, batch: pa.Table) -> tuple[pa.Table, int]:
        if batch.num_rows == 0:
            return batch, 0
        batch, in_batch_dups = _unique(batch)
        self._con.register("task_batch", batch)
        hits = self._stored_ids("tasks", batch)
        duplicates = 0
        if hits:
            stored_ids = set(hits)
            keep = [
                (t, s) not in stored_ids
                for t, s in zip(batch.column("trace_id").to_pylist(), batch.column("span_id").to_pylist(), strict=True)
            ]
            duplicates = keep.count(False)
            batch = batch.filter(pa.array(keep, pa.bool_()))
            self._con.unregister("task_batch")
            self._con.register("task_batch", batch)
        if batch.num_rows:
            columns = ", ".join(TASK_COLUMNS)
            self._con.execute(f"INSERT INTO tasks ({columns}, ingested_at) SELECT {columns}, now() FROM task_batch")
        return batch, duplicates + in_batch_dups


_HAS_USAGE = (
    "({t}input_tokens IS NOT NULL OR {t}output_tokens IS NOT NULL OR {t}cache_read_tokens IS NOT NULL "
    "OR {t}cache_write_tokens IS NOT NULL) AS has_usage"
)


Superseded = tuple[str, str, Any, str]  # trace_id, span_id and start_time of a ledger row; the span_id replacing it


def _resolve(
    batch: pa.Table, stored: list[tuple[str, str]], related: list[tuple[str, str, str | None, bool, Any]]
) -> tuple[list[bool], int, int, list[Superseded]]:
    """Which batch rows to keep, how many were duplicates and nested repeats of another span's call, and which
    ledger rows a kept batch row supersedes.

    ``stored``: ledger rows with a batch row's ids. ``related``: ledger rows that are a batch row's GenAI parent or
    child. Of a GenAI parent and child, one is kept: the one with usage; if both or neither have it, the outer one,
    or whichever the ledger already holds. All matching is on exact ids.
    """
    stored_ids = set(stored)
    traces = batch.column("trace_id").to_pylist()
    spans = batch.column("span_id").to_pylist()
    parents = batch.column("parent_span_id").to_pylist()
    checks = batch.column("check_parent").to_pylist()
    usage = [
        any(values)
        for values in zip(
            *(pc.is_valid(batch.column(c)).to_pylist() for c in _TOKEN_COLUMNS),
            strict=True,
        )
    ]
    in_batch = {(t, s): i for i, (t, s) in enumerate(zip(traces, spans, strict=True))}
    ledger_span = {(t, s): (u, start) for t, s, _, u, start in related}
    ledger_child = {(t, p): (s, u, start) for t, s, p, u, start in related if p}
    superseded: list[Superseded] = []
    keep = [(t, s) not in stored_ids for t, s in zip(traces, spans, strict=True)]
    duplicates = keep.count(False)
    nested = 0
    for i, (trace, span, parent, check) in enumerate(zip(traces, spans, parents, checks, strict=True)):
        if not keep[i]:
            continue
        j = in_batch.get((trace, parent)) if check else None
        if j is not None and keep[j]:  # a nested pair within the batch
            loser = j if usage[i] and not usage[j] else i
            keep[loser] = False
            nested += 1
        elif check and (trace, parent) in ledger_span:  # its outer span is stored
            parent_usage, parent_start = ledger_span[(trace, parent)]
            if usage[i] and not parent_usage:
                superseded.append((trace, parent, parent_start, span))
            else:
                keep[i] = False
                nested += 1
        elif (trace, span) in ledger_child:  # its inner span is stored
            child, child_usage, child_start = ledger_child[(trace, span)]
            if usage[i] and not child_usage:
                superseded.append((trace, child, child_start, span))
            else:
                keep[i] = False
                nested += 1
    return keep, duplicates, nested, superseded


_TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def _seed_keys(con: duckdb.DuckDBPyConnection, table: str) -> SpanKeys:
    # Chunks of a full run each: the seed then sorts each chunk into its run and never merges.
    query = f"SELECT span_key FROM {table} WHERE span_key IS NOT NULL"
    reader = con.sql(query).to_arrow_reader(span_keys.MAX_RUN_KEYS)
    return SpanKeys.from_batches(reader)


def _concat(tables: list[pa.Table], empty: pa.Table) -> pa.Table:
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return empty
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _unique(batch: pa.Table) -> tuple[pa.Table, int]:
    """Drop rows repeated within the batch (same trace and span id), keeping the first."""
    keys = batch.column("span_key").to_pylist()
    if len(set(keys)) == len(keys):
        return batch, 0
    seen: set[tuple[str, str]] = set()
    keep: list[bool] = []
    for ids in zip(batch.column("trace_id").to_pylist(), batch.column("span_id").to_pylist(), strict=True):
        keep.append(ids not in seen)
        seen.add(ids)
    return batch.filter(pa.array(keep, pa.bool_())), keep.count(False)
