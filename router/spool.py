"""A bounded on-disk queue of OTLP export requests that the collector has not acknowledged yet.

Each batch of spans is one file holding a serialized ``ExportTraceServiceRequest``, named so that a directory listing
is the send order. A file is written under a temporary name and renamed, so a reader never sees half of one. Several
router processes may share a directory: a sender holds an exclusive ``flock`` on a file while sending it, so two
processes never send the same file at once (and the collector's exactly-once ingest makes a resend after a crash
harmless). A file leaves the spool when the collector acknowledged it, or when the collector rejected it as
malformed, which no resend can mend (it is then kept in ``rejected/`` for a person to look at).
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".otlp"
REJECTED = "rejected"


class Spool:
    def __init__(self, directory: Path, max_bytes: int, *, used: Callable[[], int] | None = None) -> None:
        """``used`` measures what counts against ``max_bytes``: this directory by default; every collector's spool
        when spans fan out over several, so one collector's outage may take the whole allowance."""
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._used = used or self.size
        self.directory.mkdir(parents=True, exist_ok=True)
        self.dropped_batches = 0
        self.dropped_spans = 0
        self._sequence = itertools.count()
        self._lock = threading.Lock()

    def add(self, payload: bytes, spans: int) -> Path | None:
        """Keep one export request; None (counted and logged) when the spool is full."""
        with self._lock:
            if self._used() + len(payload) > self.max_bytes:
                self.dropped_batches += 1
                self.dropped_spans += spans
                log.error(
                    "span spool %s is full (telemetry.spool_max_mb); dropped %d spans (%d so far): is the collector "
                    "reachable?",
                    self.directory,
                    spans,
                    self.dropped_spans,
                )
                return None
            name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._sequence):06d}"
            temporary = self.directory / f".{name}.tmp"
            temporary.write_bytes(payload)
            final = self.directory / f"{name}{SUFFIX}"
            temporary.rename(final)
            return final

    def pending(self) -> list[Path]:
        """Files waiting to be sent, oldest first."""
        return sorted(self.directory.glob(f"*{SUFFIX}"))

    def size(self) -> int:
        total = 0
        for path in self.pending():
            try:
                total += path.stat().st_size
            except FileNotFoundError:  # sent by another process meanwhile
                continue
        return total

    @contextmanager
    def claim(self, path: Path) -> Iterator[bytes | None]:
        """The file's bytes while this process holds it; None when another process is sending it or it is gone."""
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            yield None
            return
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            if not path.exists():  # sent and removed between our open and our lock
                yield None
                return
            yield handle.read()

    def done(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def reject(self, path: Path) -> None:
        rejected = self.directory / REJECTED
        rejected.mkdir(exist_ok=True)
        path.rename(rejected / path.name)
