"""Appending this collector's committed ledger rows to the shared ledger (DuckLake), exactly once.

The local ledger stays the place of exactly-once ingest; the lake receives copies. Which local rows are already in
the lake is a position per (collector, table): the local ``rowid`` of the last row copied. The ledger only ever
appends (rows are never deleted, so DuckDB never renumbers them) and has one writer thread, so rows committed after a
flush read always have higher rowids. The position is stored in the lake, in the same lake transaction as the rows:
a collector killed at any point either committed both or neither, and starts again from the committed position.

Several collectors write one lake, and a span may have reached two of them (a sender's retry after a failover). A
row whose (trace_id, span_id) the lake already holds is not copied again. Two flushes running at once could each
miss the other's rows, so every flush also rewrites the one row of ``costline_flush_lock``: DuckLake refuses to
commit the second of two transactions that changed the same row, that flush rolls back and runs again, and then
sees the first one's rows. Flushes of different collectors therefore serialise; each is one short transaction.

Columns are copied by name from the local table, so a column a newer costline adds to the ledger is added to the
lake table (``ALTER TABLE ... ADD COLUMN``) before its first flush.

The one change to a stored row, an attempt marked ``superseded_by`` when the span with the same call's usage arrives
later, reaches the lake through the ledger's ``supersede_log``: each flush marks the lake's copies (whichever
collector stored them) in one lake transaction, then drops the log entries it replayed. Marking is idempotent, so a
crash between the two replays them; a row not yet copied carries its mark with it.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from collector.lake_connect import LAKE, LakeError

log = logging.getLogger(__name__)
T = TypeVar("T")

TABLES = ("attempts", "tasks")
FLUSH_ROWS = 100_000  # rows copied per lake transaction; a backlog is flushed in several
CONFLICT_RETRIES = 20  # flushes that lost a race to another collector's and are run again at once
SUPERSEDES_PER_TRANSACTION = 10_000

_IDENTITY = "CREATE TABLE IF NOT EXISTS lake_identity (collector_id VARCHAR NOT NULL)"
_LAKE_TABLES = f"""
CREATE TABLE IF NOT EXISTS {LAKE}.costline_positions (collector_id VARCHAR, table_name VARCHAR, position BIGINT);
CREATE TABLE IF NOT EXISTS {LAKE}.costline_flush_lock (flushes BIGINT);
"""


def collector_id(local: duckdb.DuckDBPyConnection) -> str:
    """This ledger's identity in the lake, created once and kept in the ledger itself: positions are rowids of
    this very file, so a new ledger file (even at the same path) starts a new position."""
    local.execute(_IDENTITY)
    row = local.execute("SELECT collector_id FROM lake_identity").fetchone()
    if row is not None:
        return str(row[0])
    new_id = str(uuid.uuid4())
    local.execute("INSERT INTO lake_identity VALUES (?)", [new_id])
    return new_id


@dataclass
class FlushResult:
    rows: dict[str, int]  # rows copied into each lake table
    duplicates: dict[str, int]  # rows the lake already held (the same span stored by another collector)
    superseded: int  # lake attempts marked superseded_by after their local rows were
    caught_up: bool  # every row committed locally before this flush started is now in the lake


class LakeFlusher:
    """Copies new local rows to the lake; used by one thread at a time."""

    def __init__(
        self,
        local: duckdb.DuckDBPyConnection,
        lake: duckdb.DuckDBPyConnection,
        *,
        batch_rows: int = FLUSH_ROWS,
        before_commit: Callable[[str], None] | None = None,
    ) -> None:
        self._local = local
        self._lake = lake
        self._batch_rows = batch_rows
        self._before_commit = before_commit  # tests: what a crash between writing and committing leaves
        self.collector_id = collector_id(local)
        self._in_transaction(lambda: self._lake.execute(_LAKE_TABLES))
        self._in_transaction(self._create_lock_row)

    def flush(self) -> FlushResult:
        """Copy every row committed locally so far, in transactions of at most ``batch_rows`` rows each."""
        result = FlushResult({t: 0 for t in TABLES}, {t: 0 for t in TABLES}, superseded=0, caught_up=False)
        for table in TABLES:
            self.migrate(table)
            # Rows committed from here on have higher rowids; they are the next flush's.
            (end,) = self._local.execute(f"SELECT coalesce(max(rowid), -1) FROM {table}").fetchone() or (-1,)
            while True:
                copied, duplicates, position = self._in_transaction(lambda t=table, e=end: self._flush_batch(t, e))
                result.rows[table] += copied
                result.duplicates[table] += duplicates
                if position >= end:
                    break
        result.superseded = self._replay_supersedes()
        result.caught_up = True
        return result

    def _replay_supersedes(self) -> int:
        """Mark the lake's copies of the rows the local ledger marked superseded since the last flush."""
        marked = 0
        while True:
            log_rows = self._local.execute(
                f"SELECT trace_id, span_id, start_time, superseded_by FROM supersede_log "
                f"LIMIT {SUPERSEDES_PER_TRANSACTION}"
            ).to_arrow_table()
            if log_rows.num_rows == 0:
                return marked
            marked += self._in_transaction(lambda rows=log_rows: self._mark_superseded(rows))
            self._local.register("replayed", log_rows)
            try:
                self._local.execute(
                    "DELETE FROM supersede_log l USING replayed r "
                    "WHERE l.trace_id = r.trace_id AND l.span_id = r.span_id AND l.start_time = r.start_time"
                )
            finally:
                self._local.unregister("replayed")

    def _mark_superseded(self, log_rows: pa.Table) -> int:
        lake = self._lake
        lake.register("superseded", log_rows)
        try:
            changed = lake.execute(
                f"""
                UPDATE {LAKE}.attempts l SET superseded_by = s.superseded_by
                FROM superseded s
                WHERE l.start_time BETWEEN $lo AND $hi
                  AND l.start_time = s.start_time AND l.trace_id = s.trace_id AND l.span_id = s.span_id
                  AND l.superseded_by IS NULL
                """,
                {
                    "lo": pc.min(log_rows.column("start_time")).as_py(),
                    "hi": pc.max(log_rows.column("start_time")).as_py(),
                },
            ).fetchone()
        finally:
            lake.unregister("superseded")
        lake.execute(f"UPDATE {LAKE}.costline_flush_lock SET flushes = flushes + 1")
        return int(changed[0]) if changed else 0

    def delete_orphans(self, older_than_s: float) -> list[str]:
        """Delete the data files no lake snapshot references and last written more than ``older_than_s`` ago: what a
        flush killed before its commit left (a rolled-back one removes its own). The age keeps the files of
        another collector's flush that is still running."""
        rows = self._lake.execute(
            f"CALL ducklake_delete_orphaned_files('{LAKE}', older_than => now() - to_seconds(CAST($age AS DOUBLE)))",
            {"age": older_than_s},
        ).fetchall()
        return [str(row[0]) for row in rows]

    # --- one lake transaction ---------------------------------------------------------------------------------

    def _flush_batch(self, table: str, end: int) -> tuple[int, int, int]:
        """Copy the rows of the next rowid range; returns rows copied, rows the lake held, the new position."""
        lake = self._lake
        position = self._position(table)
        if position >= end:
            return 0, 0, position
        last = min(position + self._batch_rows, end)
        columns = self._local_columns(table)
        # A rowid range, not ORDER BY ... LIMIT: sorting a backlog of wide rows would need more than the ledger's
        # memory limit, while a range is a plain scan (rowids are dense: the ledger never deletes).
        batch = self._local.execute(
            f"SELECT {', '.join(columns)} FROM {table} WHERE rowid > $position AND rowid <= $last",
            {"position": position, "last": last},
        ).to_arrow_table()
        if batch.num_rows == 0:
            self._store_position(table, last)
            return 0, 0, last
        names = ", ".join(columns)
        lake.register("flush_batch", batch)
        try:
            # The same span has the same start time wherever it was stored: the probe reads only the lake files
            # whose start_time range overlaps the batch's.
            copied = lake.execute(
                f"""
                INSERT INTO {LAKE}.{table} ({names})
                SELECT {names} FROM flush_batch b
                WHERE NOT EXISTS (
                    SELECT 1 FROM {LAKE}.{table} l
                    WHERE l.start_time BETWEEN $lo AND $hi
                      AND l.span_key = b.span_key AND l.trace_id = b.trace_id AND l.span_id = b.span_id)
                """,
                {"lo": pc.min(batch.column("start_time")).as_py(), "hi": pc.max(batch.column("start_time")).as_py()},
            ).fetchone()
        finally:
            lake.unregister("flush_batch")
        stored = int(copied[0]) if copied else 0
        self._store_position(table, last)
        if self._before_commit is not None:
            self._before_commit(table)
        return stored, batch.num_rows - stored, last

    def _store_position(self, table: str, last: int) -> None:
        lake = self._lake
        lake.execute(
            f"DELETE FROM {LAKE}.costline_positions WHERE collector_id = $id AND table_name = $table",
            {"id": self.collector_id, "table": table},
        )
        lake.execute(
            f"INSERT INTO {LAKE}.costline_positions VALUES ($id, $table, $position)",
            {"id": self.collector_id, "table": table, "position": last},
        )
        lake.execute(f"UPDATE {LAKE}.costline_flush_lock SET flushes = flushes + 1")

    def _position(self, table: str) -> int:
        row = self._lake.execute(
            f"SELECT position FROM {LAKE}.costline_positions WHERE collector_id = $id AND table_name = $table",
            {"id": self.collector_id, "table": table},
        ).fetchone()
        return -1 if row is None else int(row[0])

    def _create_lock_row(self) -> None:
        (count,) = self._lake.execute(f"SELECT count(*) FROM {LAKE}.costline_flush_lock").fetchone() or (0,)
        if count == 0:
            self._lake.execute(f"INSERT INTO {LAKE}.costline_flush_lock VALUES (0)")

    def _in_transaction(self, work: Callable[[], T]) -> T:
        """Run ``work`` in one lake transaction; one that lost a race to another collector's commit is run again."""
        for attempt in range(CONFLICT_RETRIES + 1):
            self._lake.execute("BEGIN")
            try:
                value = work()
                self._lake.execute("COMMIT")
                return value
            except duckdb.Error as exc:
                self._rollback()
                if not _is_conflict(exc) or attempt == CONFLICT_RETRIES:
                    raise LakeError(f"writing the shared ledger failed: {_first_line(exc)}") from exc
                log.debug("lake transaction conflicted with another collector's; running it again: %s", exc)
                time.sleep(0.01 * (attempt + 1))
            except BaseException:
                self._rollback()
                raise
        raise AssertionError("unreachable")

    def _rollback(self) -> None:
        with contextlib.suppress(duckdb.Error):  # a failed COMMIT already ended the transaction
            self._lake.execute("ROLLBACK")

    # --- schema -----------------------------------------------------------------------------------------------

    def _local_columns(self, table: str) -> list[str]:
        return [row[0] for row in self._local.execute(f"DESCRIBE {table}").fetchall()]

    def migrate(self, table: str) -> None:
        """Create the lake table from the local one, or add the columns the local one has and the lake lacks."""
        local = {name: kind for name, kind, *_ in self._local.execute(f"DESCRIBE {table}").fetchall()}

        def migrate() -> None:
            exists = self._lake.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE database_name = $db AND table_name = $table",
                {"db": LAKE, "table": table},
            ).fetchone()
            if not exists or exists[0] == 0:
                columns = ", ".join(f"{name} {kind}" for name, kind in local.items())
                self._lake.execute(f"CREATE TABLE IF NOT EXISTS {LAKE}.{table} ({columns})")
                return
            have = {row[0] for row in self._lake.execute(f"DESCRIBE {LAKE}.{table}").fetchall()}
            for name, kind in local.items():
                if name not in have:
                    self._lake.execute(f"ALTER TABLE {LAKE}.{table} ADD COLUMN IF NOT EXISTS {name} {kind}")

        self._in_transaction(migrate)


def _is_conflict(exc: BaseException) -> bool:
    """Another collector committed first (DuckLake's own retries ran out), or holds a SQLite catalog's lock."""
    text = str(exc).lower()
    return any(word in text for word in _CONFLICTS)


_CONFLICTS = ("conflict", "retry", "duplicate key", "database is locked", "failed to commit")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
