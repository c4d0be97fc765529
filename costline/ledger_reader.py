"""Read the ledger without ever writing to it (DESIGN §4).

A DuckDB file has one writer process. When the file is free it is opened read-only; when the running collector
holds it, the query is POSTed to the collector's ``/api/v1/query`` endpoint on loopback and the result comes back
as an Arrow IPC stream. Either way the caller gets a ``pyarrow.Table``. A missing ledger is an error that names the
path: no empty ledger is ever created behind the user's back.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from costline.config import Config

QUERY_PATH = "/api/v1/query"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
READ_ONLY_TYPES = frozenset({duckdb.StatementType.SELECT})
TOKEN_ENV = "COSTLINE_INGEST_TOKEN"
READ_ONLY_MESSAGE = "only read-only queries are allowed"  # the collector's endpoint says the same
_COLLECTOR_TIMEOUT_S = 300.0


class LedgerError(Exception):
    """A problem the user can act on; the message is complete and safe to print."""


class LedgerNotFoundError(LedgerError):
    pass


class NotReadOnlyError(LedgerError):
    pass


class QueryError(LedgerError):
    """DuckDB refused the query; the message is DuckDB's."""


class QueryInterrupted(LedgerError):
    """The user pressed Ctrl-C while the query ran; the query was stopped."""


@dataclass(frozen=True)
class LedgerSource:
    path: Path
    collector_url: str  # base URL of the collector's metrics/query server
    remote: bool = False  # the collector was named (collector.url): ask it, whatever is on this disk


def source_from_config(config: Config) -> LedgerSource:
    host = config.collector.host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"  # a wildcard listener is reachable on loopback
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    ledger = Path(config.collector.ledger).expanduser()
    if config.collector.url:
        return LedgerSource(ledger, config.collector.url.rstrip("/"), remote=True)
    return LedgerSource(ledger, f"http://{host}:{config.collector.metrics_port}")


def is_write_in_cte(exc: BaseException) -> bool:
    """DuckDB 1.5's parser refuses a data-modifying CTE (``WITH x AS (DELETE ... RETURNING *) SELECT ...``) outright:
    that is a write, refused as one."""
    return "A CTE needs a SELECT" in str(exc)


def check_read_only(sql: str) -> None:
    """Refuse anything but one read-only statement, before any connection is opened."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        if is_write_in_cte(exc):
            raise NotReadOnlyError(f"{READ_ONLY_MESSAGE}: a WITH clause that writes is not a read-only query") from None
        raise QueryError(str(exc)) from None
    if not statements:
        raise QueryError("the query is empty; give one SELECT statement")
    if len(statements) > 1:
        raise NotReadOnlyError(f"one statement at a time, please: got {len(statements)}")
    kind = statements[0].type
    if kind not in READ_ONLY_TYPES:
        raise NotReadOnlyError(
            f"{READ_ONLY_MESSAGE}: {kind.name} is not a read-only statement; "
            "costline sql runs SELECT (and FROM, WITH, DESCRIBE, SHOW, SUMMARIZE)"
        )


class LedgerReader:
    """Runs read-only queries on the ledger, directly or through the running collector.

    Used as a context manager, it keeps the file's read-only connection for all the queries inside (a report runs
    several, and opening the file costs more than most of them); otherwise each query opens and closes its own."""

    def __init__(self, source: LedgerSource) -> None:
        self.source = source
        self.via: str | None = None  # "file" or "collector", once a query ran
        self._keep_open = False
        self._con: duckdb.DuckDBPyConnection | None = None

    def __enter__(self) -> LedgerReader:
        self._keep_open = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._keep_open = False
        if self._con is not None:
            self._con.close()
            self._con = None

    @classmethod
    def from_config(cls, config: Config) -> LedgerReader:
        return cls(source_from_config(config))

    def query(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        """Run one read-only SELECT with positional ``?`` parameters; the result as an Arrow table."""
        check_read_only(sql)
        if self.source.remote:
            self.via = "collector"
            return self._query_collector(sql, params)
        path = self.source.path
        if not path.is_file():
            raise LedgerNotFoundError(
                f"no ledger at {path.absolute()}: run `costline serve` to create one, or point collector.ledger "
                "(or COSTLINE_LEDGER) at an existing file"
            )
        con = self._con or self._connect_read_only()
        if con is None:
            self.via = "collector"
            return self._query_collector(sql, params)
        self.via = "file"
        return self._run(con, sql, params)

    def _run(self, con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any]) -> pa.Table:
        """Run on ``con``, then keep it for the next query (inside ``with``) or close it."""
        try:
            return run_read_only(con, sql, params)
        finally:
            if self._keep_open:
                self._con = con
            else:
                con.close()

    def _connect_read_only(self) -> duckdb.DuckDBPyConnection | None:
        """A read-only connection, or None when the collector (another connection) holds the file."""
        try:
            # No file access beyond the ledger: `costline sql` must not become a way to read other files.
            con = duckdb.connect(str(self.source.path), read_only=True, config={"enable_external_access": False})
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                return None
            raise LedgerError(f"cannot open the ledger {self.source.path}: {exc}") from None
        except duckdb.ConnectionException as exc:
            # The collector runs in this very process with a read-write connection to the same file.
            if "different configuration" in str(exc):
                return None
            raise LedgerError(f"cannot open the ledger {self.source.path}: {exc}") from None
        except duckdb.Error as exc:
            raise LedgerError(f"cannot open the ledger {self.source.path}: {exc}") from None
        con.execute("SET TimeZone = 'UTC'")
        return con

    def _query_collector(self, sql: str, params: Sequence[Any]) -> pa.Table:
        url = self.source.collector_url + QUERY_PATH
        body = json.dumps({"sql": sql, "params": [_jsonable(p) for p in params]}).encode()
        headers = {"Content-Type": "application/json", "Accept": ARROW_STREAM}
        token = os.environ.get(TOKEN_ENV)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=_COLLECTOR_TIMEOUT_S) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise self._collector_refusal(exc) from None
        except urllib.error.URLError as exc:
            if self.source.remote:
                raise LedgerError(
                    f"no collector answers at {url} ({exc.reason}); check --collector-url (or collector.url, "
                    "COSTLINE_COLLECTOR_URL): it is the collector's metrics port, e.g. http://collector:9464"
                ) from None
            raise LedgerError(
                f"the ledger {self.source.path} is locked by another process, and no collector answers "
                f"at {url} ({exc.reason}); stop the process holding the file, or set collector.host and "
                "collector.metrics_port to the running collector's"
            ) from None
        except OSError as exc:  # connected, then the answer broke off
            raise LedgerError(
                f"the ledger {self.source.path} is held by a collector that did not answer the query at {url}: "
                f"{exc or type(exc).__name__}"
            ) from None
        try:
            return pa.ipc.open_stream(payload).read_all()
        except pa.ArrowInvalid as exc:
            raise LedgerError(f"the collector at {url} answered with something that is not Arrow: {exc}") from None

    def _collector_refusal(self, exc: urllib.error.HTTPError) -> LedgerError:
        text = exc.read().decode("utf-8", "replace")
        try:
            message = json.loads(text)["error"]
        except (ValueError, KeyError, TypeError):
            message = text.strip() or exc.reason
        if exc.code == 400:
            if str(message).startswith(READ_ONLY_MESSAGE):
                return NotReadOnlyError(str(message))
            return QueryError(str(message))
        if exc.code in (401, 403):
            return LedgerError(
                f"the collector refused the query ({exc.code}: {message}); set {TOKEN_ENV} to the collector's token"
            )
        return LedgerError(f"the collector answered {exc.code}: {message}")


def run_read_only(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any]) -> pa.Table:
    """``sql`` on a read-only connection (the ledger file or the lake), its refusals as this module's errors."""
    try:
        return _interruptible(con, sql, list(params))
    except duckdb.Error as exc:
        # A SELECT can hide a write (a data-modifying CTE); the read-only connection is what stops it.
        if "read-only" in str(exc) or "read only" in str(exc):
            raise NotReadOnlyError(f"{READ_ONLY_MESSAGE}: {exc}") from None
        raise QueryError(str(exc)) from None


def _interruptible(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> pa.Table:
    """Run the query on a thread, so that Ctrl-C interrupts DuckDB instead of waiting for the query to end."""
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["table"] = con.sql(sql, params=params).to_arrow_table()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=run, name="costline-sql", daemon=True)
    with _ctrl_c_flag() as interrupted:
        worker.start()
        while not done.wait(0.05):
            if interrupted.is_set():
                con.interrupt()  # repeated: an interrupt that lands before DuckDB starts the query is lost
    if interrupted.is_set():
        raise QueryInterrupted("interrupted; the query was stopped")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["table"]


@contextmanager
def _ctrl_c_flag() -> Iterator[threading.Event]:
    """An event that Ctrl-C sets while the block runs (in the main thread; elsewhere nothing can deliver it).

    The handler raises nothing: a KeyboardInterrupt lands wherever the main thread is, and inside a garbage-collector
    callback Python prints it as ignored and drops it, so an endless query would run on."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
