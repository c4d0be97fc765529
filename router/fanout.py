"""Spans spread over several collectors: every span of a trace goes to the one collector its trace id picks.

The pick is rendezvous hashing over the collectors' URLs: each collector scores ``blake2b(url + trace id)`` and the
highest score wins. It depends on nothing but the trace id and the list (not its order, not the process), so a task's
spans, every resend of them and every router given the same list agree on one collector; and when a collector is
added or removed, only the traces that it wins or held move, not the rest.

Each collector has its own spool and sender (:class:`router.delivery.SpoolingExporter`). A collector that is down
keeps its share waiting in its own spool, resent to it when it answers, while the others carry on. Its share is never
sent to another collector instead: a batch it stored but could not acknowledge before failing would then sit in two
ledgers once it recovers, counted twice by anyone who adds the two up.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from router.delivery import SpoolingExporter

TRACE_ID_BYTES = 16


def pick(trace_id: bytes, endpoints: Sequence[str]) -> int:
    """The index of the collector that takes this trace (``trace_id`` as OTLP carries it: 16 bytes, big-endian)."""
    if len(endpoints) == 1:
        return 0
    scores = [hashlib.blake2b(url.encode() + trace_id, digest_size=8).digest() for url in endpoints]
    return scores.index(max(scores))


class FanOutExporter(SpanExporter):
    """Groups each batch by the collector its traces belong to and hands each group to that collector's exporter."""

    def __init__(self, routes: Sequence[SpoolingExporter]) -> None:
        if not routes:
            raise ValueError("at least one collector to send spans to")
        self.routes = tuple(routes)
        self.endpoints = tuple(route.endpoint for route in self.routes)

    def route_for(self, trace_id: int) -> SpoolingExporter:
        return self.routes[pick(trace_id.to_bytes(TRACE_ID_BYTES, "big"), self.endpoints)]

    @property
    def spans_lost(self) -> int:
        """Spans dropped because the spool was full."""
        return sum(route.spans_lost for route in self.routes)

    def waiting(self) -> list[Path]:
        """Spooled batches that their collector has not acknowledged yet."""
        return [path for route in self.routes for path in route.waiting()]

    # -- SpanExporter -------------------------------------------------------------------------------------------

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        groups: dict[int, list[ReadableSpan]] = {}
        for span in spans:
            trace_id = span.context.trace_id if span.context is not None else 0
            index = pick(trace_id.to_bytes(TRACE_ID_BYTES, "big"), self.endpoints)
            groups.setdefault(index, []).append(span)
        results = [self.routes[index].export(group) for index, group in groups.items()]
        ok = all(result is SpanExportResult.SUCCESS for result in results)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Send what waits for every collector now, within one deadline; True when nothing is left anywhere."""
        deadline = time.monotonic() + timeout_millis / 1000
        flushed = [route.force_flush(max(0, int((deadline - time.monotonic()) * 1000))) for route in self.routes]
        return all(flushed)

    def shutdown(self) -> None:
        # Side by side: a collector that does not answer must not add its wait to the others' last sends.
        threads = [threading.Thread(target=route.shutdown, name="costline-span-shutdown") for route in self.routes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
