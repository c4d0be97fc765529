"""Durable span delivery: every batch goes to the on-disk spool first, then to the collector over OTLP/HTTP.

``export`` only writes the batch to the spool and wakes the sender, so a collector outage never blocks the router and
never loses what it acknowledged to the SDK. The sender thread sends spooled files oldest first and removes each one
the collector acknowledges; while the collector is unreachable it retries with exponential backoff. Files left by an
earlier process (a crash, a restart, a short ``costline route``) are sent by the next router that starts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

import httpx
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from router.spool import Spool

log = logging.getLogger(__name__)

DEFAULT_EXPORT_TIMEOUT_S = 10.0
RESEND_FIRST_S = 1.0
RESEND_MAX_S = 60.0
# Answers that no resend can change: the collector will never accept these bytes.
PERMANENT_REJECTIONS = frozenset({400, 413, 415})


class Sent(Enum):
    ACKNOWLEDGED = "acknowledged"
    REJECTED = "rejected"
    UNAVAILABLE = "unavailable"


class SpoolingExporter(SpanExporter):
    def __init__(self, endpoint: str, headers: dict[str, str], spool: Spool, *, timeout_s: float) -> None:
        self.endpoint = endpoint
        self.spool = spool
        self.timeout_s = timeout_s
        self.last_error: str | None = None
        self._client = httpx.Client(timeout=timeout_s, headers={**headers, "Content-Type": "application/x-protobuf"})
        self._send_lock = threading.Lock()  # one sender at a time in this process
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._wake.set()  # send what an earlier process left behind
        self._sender = threading.Thread(target=self._send_loop, name="costline-span-sender", daemon=True)
        self._sender.start()

    @property
    def spans_lost(self) -> int:
        """Spans dropped because the spool was full."""
        return self.spool.dropped_spans

    def waiting(self) -> list[Path]:
        """Spooled batches the collector has not acknowledged yet."""
        return self.spool.pending()

    # -- SpanExporter -------------------------------------------------------------------------------------------

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        payload = encode_spans(spans).SerializeToString()
        if self.spool.add(payload, len(spans)) is None:
            return SpanExportResult.FAILURE
        self._wake.set()
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Send what waits in the spool now; True when nothing is left."""
        return self._drain(time.monotonic() + timeout_millis / 1000)

    def shutdown(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._sender.join(timeout=self.timeout_s)
        self._drain(time.monotonic() + self.timeout_s)
        self._client.close()

    # -- sending ------------------------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        backoff: float | None = None  # None: the collector answered last time, wait for new spans
        while not self._stopping.is_set():
            self._wake.wait(backoff)
            self._wake.clear()
            if self._stopping.is_set():
                return
            if self._drain(None):
                backoff = None
            else:
                backoff = RESEND_FIRST_S if backoff is None else min(backoff * 2, RESEND_MAX_S)

    def _drain(self, deadline: float | None) -> bool:
        """Send spooled files oldest first until none is left (True) or the collector is unavailable (False)."""
        with self._send_lock:
            for path in self.spool.pending():
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                with self.spool.claim(path) as payload:
                    if payload is None:
                        continue  # another process is sending it, or has sent it
                    sent = self._send(payload)
                    if sent is Sent.UNAVAILABLE:
                        return False
                    if sent is Sent.REJECTED:
                        self.spool.reject(path)
                    else:
                        self.spool.done(path)
            return True

    def _send(self, payload: bytes) -> Sent:
        try:
            response = self._client.post(self.endpoint, content=payload)
        except httpx.HTTPError as exc:
            self._unavailable(f"{type(exc).__name__}")
            return Sent.UNAVAILABLE
        if response.is_success:
            self.last_error = None
            _log_partial_success(response.content)
            return Sent.ACKNOWLEDGED
        if response.status_code in PERMANENT_REJECTIONS:
            log.error(
                "the collector at %s rejected a batch of spans (%d %s); kept in %s",
                self.endpoint,
                response.status_code,
                response.text[:200],
                self.spool.directory,
            )
            return Sent.REJECTED
        self._unavailable(f"HTTP {response.status_code}")
        return Sent.UNAVAILABLE

    def _unavailable(self, why: str) -> None:
        if self.last_error is None:  # once per outage, not once per retry
            log.warning(
                "cannot deliver spans to %s (%s); they wait in %s and are resent when it answers",
                self.endpoint,
                why,
                self.spool.directory,
            )
        self.last_error = why


def _log_partial_success(body: bytes) -> None:
    if not body:
        return
    try:
        answer = ExportTraceServiceResponse.FromString(body)
    except Exception:  # a 2xx with a body that is not OTLP: acknowledged all the same
        return
    if answer.partial_success.rejected_spans:
        log.warning(
            "the collector rejected %d spans as invalid: %s",
            answer.partial_success.rejected_spans,
            answer.partial_success.error_message[:300],
        )
