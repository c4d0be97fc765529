"""The write queue: requests wait here until their rows are durable, many requests per DuckDB commit.

Request threads map their spans to Arrow tables and :meth:`BatchWriter.submit` them; one writer thread takes
everything queued (up to ``max_batch_spans``), writes it in one transaction, updates the metrics, and only then
acknowledges each request. The queue is bounded in spans: when it is full, ``submit`` raises :class:`QueueFull`
at once and the receiver answers 503 with ``Retry-After``, so overload costs memory only up to the bound.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import duckdb

from collector.ledger import LedgerWriter, WriteResult
from collector.mapping import MappedRequest

log = logging.getLogger(__name__)


class QueueFull(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"ingest queue is full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class WriteFailed(Exception):
    """The batch holding this request could not be committed; nothing of it was stored."""


REOPEN_INTERVAL_S = 1.0


def real_error(exc: BaseException) -> BaseException:
    """The error that made a write fail, not the failed ROLLBACK that followed it ("cannot rollback - no
    transaction is active" when the COMMIT itself failed), which Python chains in front of it."""
    while isinstance(exc, duckdb.Error) and "cannot rollback" in str(exc) and exc.__context__ is not None:
        exc = exc.__context__
    return exc


def is_fatal(exc: BaseException) -> bool:
    """DuckDB has invalidated the database (e.g. a checkpoint failed on a full disk): every later statement fails
    until the database is opened again."""
    return isinstance(real_error(exc), duckdb.FatalException) or isinstance(exc, duckdb.FatalException)


@dataclass
class Pending:
    request: MappedRequest
    spans: int
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def wait(self, timeout: float | None = None) -> None:
        if not self.done.wait(timeout):
            raise WriteFailed("timed out waiting for the ledger commit")
        if self.error is not None:
            raise WriteFailed(str(self.error)) from self.error


OnCommit = Callable[[WriteResult, int], None]  # (stored rows, rejected spans) after each commit


class BatchWriter:
    def __init__(
        self,
        ledger: LedgerWriter,
        on_commit: OnCommit,
        *,
        max_queued_spans: int,
        max_batch_spans: int = 65_536,
        linger_s: float = 0.0,
        reopen: Callable[[], LedgerWriter] | None = None,
        probe: Callable[[], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._reopen = reopen
        self._probe = probe
        self._broken: str | None = None  # why the ledger cannot be written, until it is opened again
        self._on_commit = on_commit
        self._max_queued = max_queued_spans
        self._max_batch = max_batch_spans
        self._queue: deque[Pending] = deque()
        self._queued_spans = 0
        self._incoming = 0  # requests being decoded, which will be submitted shortly
        self._linger_s = linger_s
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="costline-ledger-writer", daemon=True)
        self._rate = 20_000.0  # spans/s, a running estimate for Retry-After

    @property
    def queued_spans(self) -> int:
        return self._queued_spans

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def trouble(self) -> str | None:
        """Why the writer cannot store requests now, or None when it can."""
        if not self._thread.is_alive():
            return "the ledger writer is not running"
        if self._stopping:
            return "stopping"
        if self._broken is not None:
            return f"the ledger is unavailable ({self._broken}); reopening it"
        return None

    def start(self) -> None:
        self._thread.start()

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Around a request's decoding and its submit: a commit may wait a moment for it to be queued."""
        with self._cond:
            self._incoming += 1
        try:
            yield
        finally:
            with self._cond:
                self._incoming -= 1
                self._cond.notify()

    def submit(self, request: MappedRequest) -> Pending:
        spans = max(request.span_count, 1)
        pending = Pending(request, spans)
        with self._cond:
            if self._stopping:
                raise QueueFull(1)
            if self._broken is not None:
                raise WriteFailed(f"the ledger is unavailable ({self._broken}); the collector is reopening it")
            # One oversized request is admitted into an empty queue, so no request size can starve forever.
            if self._queued_spans and self._queued_spans + spans > self._max_queued:
                raise QueueFull(self._retry_after())
            self._queue.append(pending)
            self._queued_spans += spans
            self._cond.notify()
        return pending

    def _retry_after(self) -> int:
        return max(1, min(30, math.ceil(self._queued_spans / max(self._rate, 1.0))))

    def stop(self, timeout: float = 30.0) -> None:
        """Commit everything queued, then end the writer thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _take(self) -> list[Pending] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                if not self._cond.wait(1.0) and not self._queue:
                    return []  # a second without work: the writer is idle
            self._linger()
            batch: list[Pending] = []
            spans = 0
            while self._queue and (not batch or spans + self._queue[0].spans <= self._max_batch):
                item = self._queue.popleft()
                batch.append(item)
                spans += item.spans
            return batch

    def _linger(self) -> None:
        """Group commit: while requests are still being decoded, wait up to ``linger_s`` for them to be queued.

        A commit costs ~4 ms of CPU whatever its size (probe, insert setup, WAL sync), so one commit for several
        requests is cheaper than one each; the wait is paid only while more requests are on their way.
        """
        deadline = time.monotonic() + self._linger_s
        while self._incoming and self._queued_spans < self._max_batch and not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            if self._broken is not None:
                self._recover()
            if not batch:
                self._ledger.checkpoint()  # between bursts, not inside a commit that requests wait on
                self._check()
                continue
            started = time.perf_counter()
            try:
                self._commit(batch)
            except BaseException as exc:  # one bad request must not take the others down with it
                if len(batch) == 1:
                    self._fail(batch, exc)
                else:
                    for item in batch:
                        try:
                            self._commit([item])
                        except BaseException as single_exc:
                            self._fail([item], single_exc)
            finally:
                with self._cond:
                    self._queued_spans -= sum(item.spans for item in batch)
            elapsed = time.perf_counter() - started
            if elapsed > 0:
                self._rate = 0.8 * self._rate + 0.2 * (sum(item.spans for item in batch) / elapsed)
        self._ledger.checkpoint()

    def _check(self) -> None:
        """Between bursts: is the ledger still usable? A failed checkpoint can invalidate it without a write."""
        if self._probe is None:
            return
        try:
            self._probe()
        except duckdb.Error as exc:
            if is_fatal(exc):
                self._mark_broken(exc)

    def _mark_broken(self, exc: BaseException) -> None:
        if self._broken is None:
            log.error("the ledger failed and must be opened again: %s", real_error(exc))
        self._broken = str(real_error(exc)).splitlines()[0]

    def _recover(self) -> None:
        """Open the ledger again (DuckDB replays its WAL, so every committed row is kept); while that fails (the
        disk is still full), requests are refused with 503 and /readyz says why, and it is tried again."""
        if self._reopen is None:
            return
        try:
            self._ledger = self._reopen()
        except Exception as exc:
            message = str(real_error(exc)).splitlines()[0]
            if message != self._broken:
                log.error("the ledger cannot be opened again yet (retrying every %g s): %s", REOPEN_INTERVAL_S, message)
            self._broken = message
            with self._cond:
                self._cond.wait(REOPEN_INTERVAL_S)  # stop() wakes it
            return
        log.info("the ledger was opened again; ingest resumes")
        self._broken = None

    def _commit(self, batch: list[Pending]) -> None:
        rejected = sum(len(item.request.rejected) for item in batch)
        result = self._ledger.write(
            [item.request.attempts for item in batch], [item.request.tasks for item in batch], rejected
        )
        try:
            self._on_commit(result, rejected)
        except Exception:
            log.exception("updating metrics after a commit failed; the rows are stored")
        for item in batch:
            item.done.set()

    def _fail(self, batch: list[Pending], exc: BaseException) -> None:
        cause = real_error(exc)
        log.error("ledger write failed, %d request(s) not stored (senders will retry): %s", len(batch), cause)
        if is_fatal(exc):
            self._mark_broken(exc)
        for item in batch:
            item.error = cause
            item.done.set()
