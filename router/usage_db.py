"""Where the usage store keeps its rows: a SQLite file (one machine) or PostgreSQL (every machine).

Both run the same statements (written with ``?`` placeholders) and give the same guarantee: an ``exclusive``
transaction is serialised with every other one, across threads, processes and — on PostgreSQL — machines, so a
reservation's check and insert can never interleave with another's. SQLite takes ``BEGIN IMMEDIATE`` on the file;
PostgreSQL takes a transaction-scoped advisory lock. Money is exact: TEXT in SQLite, NUMERIC in PostgreSQL.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

Execute = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# Any fixed 64-bit number: the advisory lock that serialises reservations (and schema changes) of every router.
_ADVISORY_LOCK = 0x636F73746C696E65  # "costline"

COLUMNS = """
    at {real} NOT NULL,               -- unix seconds (UTC) when the slot was reserved
    task_id TEXT NOT NULL,
    reason TEXT NOT NULL,             -- threshold | critical | requested | exhausted
    model TEXT NOT NULL,
    status TEXT NOT NULL,             -- reserved | succeeded | failed | unbilled | refused
    error_type TEXT,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd {money} NOT NULL DEFAULT 0,      -- what counts against the budgets
    reserved_usd {money} NOT NULL DEFAULT 0,  -- the upper bound reserved before the call
    estimated INTEGER NOT NULL DEFAULT 0,     -- 1: cost_usd is the reservation, the actual usage never arrived
    trace_id TEXT,                            -- the attempt span's ids (lowercase hex), to match the ledger's row
    span_id TEXT,
    settled_at {real},
    team TEXT                                 -- the task's team, for [budgets.teams."NAME"]
"""
# Columns added to SQLite files made before reservations existed.
SQLITE_MIGRATIONS = (
    ("reserved_usd", "TEXT NOT NULL DEFAULT '0'"),
    ("estimated", "INTEGER NOT NULL DEFAULT 0"),
    ("trace_id", "TEXT"),
    ("span_id", "TEXT"),
    ("settled_at", "REAL"),
    ("team", "TEXT"),
)


class UsageStoreUnavailable(Exception):
    """The usage database could not be reached or written; the message names it and says why."""


class UsageDatabase(Protocol):
    location: str  # for messages: a path, or a URL without its password

    def exclusive(self) -> Any:  # a context manager yielding Execute
        ...

    def read(self) -> Any:  # a context manager yielding Execute
        ...


def is_postgres(location: str) -> bool:
    return location.startswith(POSTGRES_SCHEMES)


def open_database(location: str | Path, *, busy_timeout_s: float = 30.0) -> UsageDatabase:
    if isinstance(location, str) and is_postgres(location):
        return PostgresUsage(location, timeout_s=busy_timeout_s)
    return SqliteUsage(Path(location), busy_timeout_s=busy_timeout_s)


class SqliteUsage:
    """One file in WAL mode, shared by the router processes of a machine; a connection per operation."""

    def __init__(self, path: Path, *, busy_timeout_s: float) -> None:
        self.path = path
        self.location = str(path)
        self._busy_timeout_s = busy_timeout_s
        path.parent.mkdir(parents=True, exist_ok=True)
        self._initialise()

    def _initialise(self) -> None:
        """Switch the file to WAL and create (or migrate) the table, retrying while other processes do the same.

        SQLite answers "database is locked" at once, without waiting out the busy timeout, when two connections
        race to switch a new file to WAL or to upgrade a read lock to create tables: so routers started together
        retry here, with jitter, within the same timeout.
        """
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                with self._connect() as db:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.executescript(
                        "CREATE TABLE IF NOT EXISTS escalation_calls (id INTEGER PRIMARY KEY,"
                        + COLUMNS.format(real="REAL", money="TEXT")
                        + ");\nCREATE INDEX IF NOT EXISTS escalation_calls_at ON escalation_calls (at);"
                    )
                    with self._transaction(db):
                        present = {row[1] for row in db.execute("PRAGMA table_info(escalation_calls)")}
                        for column, declaration in SQLITE_MIGRATIONS:
                            if column not in present:
                                db.execute(f"ALTER TABLE escalation_calls ADD COLUMN {column} {declaration}")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(random.uniform(0.005, 0.05))

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A connection per operation: safe across threads, and each process sees the others' commits.
        db = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        finally:
            db.close()

    @staticmethod
    @contextmanager
    def _transaction(db: sqlite3.Connection) -> Iterator[None]:
        db.execute("BEGIN IMMEDIATE")  # one writer at a time across processes
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @staticmethod
    def _executor(db: sqlite3.Connection) -> Execute:
        def execute(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
            values = [str(p) if isinstance(p, Decimal) else p for p in params]
            return db.execute(sql, values).fetchall()

        return execute

    @contextmanager
    def exclusive(self) -> Iterator[Execute]:
        with self._unavailable_as_error(), self._connect() as db, self._transaction(db):
            yield self._executor(db)

    @contextmanager
    def read(self) -> Iterator[Execute]:
        with self._unavailable_as_error(), self._connect() as db:
            yield self._executor(db)

    @contextmanager
    def _unavailable_as_error(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk full, unreadable file
            raise UsageStoreUnavailable(f"the usage store {self.location} is unavailable: {exc}") from exc


class PostgresUsage:
    """A table in PostgreSQL, shared by the routers of every machine. The password comes from ``PGPASSWORD`` or a
    ``.pgpass`` file (libpq reads both), never from the URL."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        try:
            import psycopg
        except ImportError:
            raise RuntimeError(
                "router.usage_db names PostgreSQL, but psycopg is not installed: pip install 'costline[postgres]'"
            ) from None
        self._psycopg = psycopg
        self._url = url
        self.location = _without_password(url)
        self._timeout_s = timeout_s
        self._lock = threading.Lock()  # one connection, used by one thread at a time
        self._connection: Any = None
        with self.exclusive() as execute:
            execute(
                "CREATE TABLE IF NOT EXISTS escalation_calls (id BIGSERIAL PRIMARY KEY,"
                + COLUMNS.format(real="DOUBLE PRECISION", money="NUMERIC")
                + ")",
                (),
            )
            execute("CREATE INDEX IF NOT EXISTS escalation_calls_at ON escalation_calls (at)", ())

    def _connect(self) -> Any:
        if self._connection is None or self._connection.closed:
            self._connection = self._psycopg.connect(
                self._url, autocommit=True, connect_timeout=max(1, round(self._timeout_s))
            )
        return self._connection

    @contextmanager
    def _session(self, *, exclusive: bool) -> Iterator[Execute]:
        with self._lock:
            try:
                connection = self._connect()
            except self._psycopg.OperationalError as exc:
                raise UsageStoreUnavailable(f"the usage store {self.location} is unreachable: {exc}") from exc
            try:
                with connection.transaction(), connection.cursor() as cursor:
                    if exclusive:
                        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK,))

                    def execute(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
                        cursor.execute(sql.replace("?", "%s"), tuple(params))
                        return cursor.fetchall() if cursor.description is not None else []

                    yield execute
            except self._psycopg.OperationalError as exc:
                connection.close()  # the next operation reconnects
                raise UsageStoreUnavailable(f"the usage store {self.location} is unavailable: {exc}") from exc

    def exclusive(self) -> Any:
        return self._session(exclusive=True)

    def read(self) -> Any:
        return self._session(exclusive=False)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
