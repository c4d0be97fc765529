"""The read-only query endpoint's guard: one SELECT that provably writes nothing.

DuckDB reports a data-modifying CTE (``WITH x AS (DELETE … RETURNING *) SELECT …``) as a SELECT statement, so
the statement type alone is not enough: the parsed statement (``json_serialize_sql``) must contain only select,
set-operation and CTE query nodes, and no table function that changes the database. As a second line, the query
runs in a transaction that is always rolled back. The ledger connection itself has external file access disabled,
so a query cannot read or write files either. Functions that would build values outside DuckDB's memory limit are
bounded by :mod:`collector.query_bounds`.

Every query runs on its own cursor and can be interrupted (``interrupt()`` on that cursor): at its timeout
(``collector.query_timeout_s``), as soon as its client closes the connection, and when the collector stops. Its
answer is built batch by batch and refused once it passes ``collector.max_query_result_mb``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import duckdb
import pyarrow as pa

from collector.query_bounds import check_function
from costline.ledger_reader import is_write_in_cte

log = logging.getLogger(__name__)

ROWS_PER_BATCH = 2048

READ_ONLY_MESSAGE = "only read-only queries are allowed"
_READ_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
_WRITING_FUNCTIONS = frozenset({"checkpoint", "force_checkpoint"})


class ReadOnlyViolation(Exception):
    def __init__(self, detail: str = "") -> None:
        super().__init__(READ_ONLY_MESSAGE + (f": {detail}" if detail else ""))


class QueryCancelled(Exception):
    """The query was interrupted: ``http_status`` says how to answer, ``client_gone`` that no one is left to."""

    def __init__(self, message: str, http_status: int, *, client_gone: bool = False) -> None:
        super().__init__(message)
        self.http_status, self.client_gone = http_status, client_gone


class ResultTooLarge(Exception):
    pass


TIMED_OUT, CLIENT_GONE, STOPPING = "timeout", "client gone", "stopping"


class _Watch:
    """Interrupts one query when its deadline passes, its client's connection closes, or :meth:`stop` is called.

    A thread waits (``select``) on the client's socket and on a pipe that :meth:`done` and :meth:`stop` write to, so
    it wakes on an event, never on a polling tick. DuckDB ignores an interrupt that lands before the query starts
    executing, so once cancelled the watch repeats the interrupt until the query is done.
    """

    REPEAT_S = 0.05

    def __init__(self, con: duckdb.DuckDBPyConnection, client: socket.socket | None, timeout_s: float) -> None:
        self._con, self._client = con, client
        self._deadline = time.monotonic() + timeout_s
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Lock()
        self._closed = False
        self.reason: str | None = None
        self._thread = threading.Thread(target=self._run, name="costline-query-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._poke(b"s")

    def done(self) -> None:
        self._poke(b"d")
        self._thread.join()
        with self._lock:
            self._closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _poke(self, what: bytes) -> None:
        with self._lock:
            if not self._closed:
                os.write(self._wake_w, what)

    def _run(self) -> None:
        watched: list[Any] = [self._wake_r] + ([self._client] if self._client is not None else [])
        while self.reason is None:
            ready, _, _ = select.select(watched, [], [], max(0.0, self._deadline - time.monotonic()))
            if not ready:
                self.reason = TIMED_OUT
            elif self._wake_r in ready:
                if b"d" in os.read(self._wake_r, 64):
                    return
                self.reason = STOPPING
            elif self._client_closed():
                self.reason = CLIENT_GONE
            else:
                watched.remove(self._client)  # it sent more (a pipelined request): only the deadline is left
        while True:
            self._con.interrupt()
            ready, _, _ = select.select([self._wake_r], [], [], self.REPEAT_S)
            if ready and b"d" in os.read(self._wake_r, 64):
                return

    def _client_closed(self) -> bool:
        assert self._client is not None
        try:
            return self._client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True


class Queries:
    """Runs the query endpoint's queries and keeps track of them, so that :meth:`close` can interrupt them all."""

    def __init__(
        self, reader: Callable[[], duckdb.DuckDBPyConnection], *, timeout_s: float, max_result_bytes: int
    ) -> None:
        self._reader = reader
        self.timeout_s = timeout_s
        self.max_result_bytes = max_result_bytes
        self._running: set[_Watch] = set()
        self._cond = threading.Condition()
        self._closing = False

    def run(self, sql: str, params: list[Any], client: socket.socket | None = None) -> bytes:
        """One read-only SELECT as an Arrow IPC stream; refuses anything else. Raises :class:`QueryCancelled`
        when interrupted, :class:`ResultTooLarge` past the result bound, ``duckdb.Error`` for DuckDB's refusals."""
        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.ParserException as exc:
            if is_write_in_cte(exc):
                raise ReadOnlyViolation from None
            raise
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise ReadOnlyViolation
        with self._cond:
            if self._closing:
                raise QueryCancelled("the collector is stopping; retry once it is back", 503)
            con = self._reader()
            watch = _Watch(con, client, self.timeout_s)
            self._running.add(watch)
            self._cond.notify_all()
        log.debug("query started: %.200s", sql)
        try:
            _check_tree(con, statements[0].query)
            con.execute("BEGIN TRANSACTION")
            return self._stream(con, statements[0].query, params)
        except duckdb.InterruptException:
            raise self._cancelled(watch.reason) from None
        finally:
            watch.done()
            with contextlib.suppress(duckdb.Error):  # nothing was written; closing the cursor discards it anyway
                con.execute("ROLLBACK")
            con.close()
            with self._cond:
                self._running.discard(watch)
                self._cond.notify_all()

    def _stream(self, con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> bytes:
        reader = con.sql(sql, params=params or None).to_arrow_reader(ROWS_PER_BATCH)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, reader.schema) as stream:
            for batch in reader:
                stream.write_batch(batch)
                if sink.tell() > self.max_result_bytes:
                    raise ResultTooLarge(
                        f"the result is larger than {self.max_result_bytes >> 20} MB "
                        "(collector.max_query_result_mb); aggregate or LIMIT it"
                    )
        return sink.getvalue().to_pybytes()

    def _cancelled(self, reason: str | None) -> QueryCancelled:
        if reason == TIMED_OUT:
            return QueryCancelled(
                f"the query ran longer than {self.timeout_s:g} s (collector.query_timeout_s) and was cancelled", 504
            )
        if reason == CLIENT_GONE:
            return QueryCancelled("the client closed the connection", 499, client_gone=True)
        return QueryCancelled("the collector is stopping; the query was cancelled, retry once it is back", 503)

    def wait_running(self, count: int, timeout_s: float) -> bool:
        """Wait until exactly ``count`` queries run; False if that did not happen within ``timeout_s``."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._running) == count, timeout_s)

    def close(self, timeout_s: float = 30.0) -> bool:
        """Refuse new queries, interrupt the running ones and wait for them to end; True if they all did."""
        with self._cond:
            self._closing = True
            for watch in self._running:
                watch.stop()
            return self._cond.wait_for(lambda: not self._running, timeout_s)


def _check_tree(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    row = con.execute("SELECT json_serialize_sql($1)", [sql]).fetchone()
    tree = json.loads(row[0]) if row else {"error": True}
    if tree.get("error"):
        raise ReadOnlyViolation("this statement form cannot be checked; write it as a plain SELECT")
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            kind = node.get("type")
            if isinstance(kind, str) and kind.endswith("_NODE") and kind not in _READ_NODES:
                raise ReadOnlyViolation
            function = node.get("function_name")
            if isinstance(function, str) and function.lower() in _WRITING_FUNCTIONS:
                raise ReadOnlyViolation
            if kind == "TABLE_FUNCTION" and isinstance(node.get("function"), dict):
                # FROM range(…) streams its rows: the call is checked as a table function, its arguments as values
                called = node["function"]
                if str(called.get("function_name", "")).lower() in _WRITING_FUNCTIONS:
                    raise ReadOnlyViolation
                stack.extend(called.get("arguments", []))
                stack.extend(v for k, v in node.items() if k != "function")
                continue
            if node.get("class") == "FUNCTION":
                check_function(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
