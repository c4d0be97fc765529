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

from collector.ledger import LedgerWriter, WriteResult
from collector.mapping import MappedRequest

log = logging.getLogger(__name__)


class QueueFull(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"ingest queue is full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class WriteFailed(Exception):
    """The batch holding this request could not be committed; nothing of it was stored."""


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
    ) -> None:
        self._ledger = ledger
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
            if not batch:
                self._ledger.checkpoint()  # between bursts, not inside a commit that requests wait on
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

    @staticmethod
    def _fail(batch: list[Pending], exc: BaseException) -> None:
        log.error("ledger write failed, %d request(s) not stored (senders will retry): %s", len(batch), exc)
        for item in batch:
            item.error = exc
            item.done.set()
