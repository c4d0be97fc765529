"""The collector's two HTTP faces.

OTLP receiver (``POST /v1/traces``, OTLP/HTTP 1.x): protobuf or JSON, optional gzip, a size limit applied after
decompression (413), 400 with a ``google.rpc.Status`` body for malformed payloads, 415 for other media types,
``partial_success`` for GenAI spans that cannot be accounted, and 503 with ``Retry-After`` when the write queue is
full. A request is answered 200 only once its rows are committed. ``/healthz`` and ``/readyz`` on both ports.

Metrics server: ``GET /metrics`` and the read-only query endpoint ``POST /api/v1/query`` that the CLI uses while
the collector holds the ledger file (Arrow IPC stream out; one SELECT only; bearer token or loopback only).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import threading
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import duckdb
import pyarrow as pa
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from collector.decode_pool import DecoderUnavailable
from collector.mapping import MappedRequest
from collector.otlp_decode import DecodeError
from collector.query import ReadOnlyViolation, run_read_only
from collector.writer import BatchWriter, Pending, QueueFull, WriteFailed

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
MAX_QUERY_BODY = 1024 * 1024
COMMIT_TIMEOUT_S = 60.0
MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024


class InFlightBytes:
    """Bounds the request bodies held at once (read, decompressed, being decoded): beyond the bound the receiver
    answers 503 with Retry-After at once, so memory stays bounded however many senders connect. A request is
    always admitted when nothing else is in flight."""

    def __init__(self, limit: int) -> None:
        self._limit, self._held = limit, 0
        self._lock = threading.Lock()

    def try_acquire(self, n: int) -> bool:
        with self._lock:
            if self._held and self._held + n > self._limit:
                return False
            self._held += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self._held -= n


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def make_server(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    return _Server((host, port), handler)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_ok(header: str | None, token: str | None) -> bool:
    if token is None:
        return True
    expected = f"Bearer {token}".encode()
    return hmac.compare_digest((header or "").encode("utf-8", "replace"), expected)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "costline-collector"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _discard_body(self) -> None:
        """Read what the client sent (up to a bound) so the connection can be reused, or close it."""
        length = self._content_length()
        if length is None or length > 1024 * 1024:
            self.close_connection = True
            return
        if length:
            self.rfile.read(length)

    def _content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        try:
            length = int(raw)
        except ValueError:
            return None
        return length if length >= 0 else None

    def _probe(self) -> bool:
        ready: Callable[[], bool] = self.server.ready  # type: ignore[attr-defined]
        if self.path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
            return True
        if self.path == "/readyz":
            if ready():
                self._send(200, b"ready\n", "text/plain; charset=utf-8")
            else:
                self._send(503, b"not ready\n", "text/plain; charset=utf-8", {"Retry-After": "1"})
            return True
        return False


class OtlpHandler(_Handler):
    """Bound to a server that has ``decoder``, ``writer``, ``in_flight``, ``max_bytes``, ``token`` and ``ready``."""

    def do_GET(self) -> None:
        if not self._probe():
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        try:
            self._export()
        except Exception:  # never drop a connection without an answer; the sender may retry a 500
            log.exception("unexpected error while ingesting a request")
            self.close_connection = True
            media = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
            self._status(500, code_pb2.INTERNAL, "internal error; see the collector log", media == JSON)

    def _export(self) -> None:
        if self.path.split("?", 1)[0] != "/v1/traces":
            self._discard_body()
            self._send(404, b"not found; OTLP traces go to POST /v1/traces\n", "text/plain; charset=utf-8")
            return
        server: Any = self.server
        media = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        answer_json = media == JSON
        if not token_ok(self.headers.get("Authorization"), server.token):
            self._discard_body()
            self._status(401, code_pb2.UNAUTHENTICATED, "missing or wrong bearer token", answer_json)
            return
        if media not in (PROTOBUF, JSON):
            self._discard_body()
            self._send(
                415,
                f"unsupported Content-Type {media or '(none)'!r}; use {PROTOBUF} or {JSON}\n".encode(),
                "text/plain; charset=utf-8",
            )
            return
        gate: InFlightBytes = server.in_flight
        held = min(self._content_length() or 0, server.max_bytes)
        if not gate.try_acquire(held):
            self.close_connection = True  # the body is not read
            self._busy(answer_json)
            return
        try:
            body = self._read_body(server.max_bytes, answer_json)
            if body is None:
                return
            if len(body) > held:  # gzip: hold the inflated size too
                if not gate.try_acquire(len(body) - held):
                    self._busy(answer_json)
                    return
                held = len(body)
            self._ingest(server, body, answer_json)
        finally:
            gate.release(held)

    def _busy(self, answer_json: bool) -> None:
        message = "the collector is busy decoding other requests; retry shortly"
        self._status(503, code_pb2.UNAVAILABLE, message, answer_json, {"Retry-After": "1"})

    def _ingest(self, server: Any, body: bytes, answer_json: bool) -> None:
        writer: BatchWriter = server.writer
        pending: Pending | None = None
        try:
            with writer.incoming():  # queued before it stops counting as incoming, so a lingering commit takes it
                mapped: MappedRequest = server.decoder(body, answer_json)
                if mapped.span_count or mapped.rejected:
                    pending = writer.submit(mapped)
            if pending is not None:
                pending.wait(COMMIT_TIMEOUT_S)
        except DecodeError as exc:
            self._status(400, code_pb2.INVALID_ARGUMENT, str(exc), answer_json)
            return
        except DecoderUnavailable as exc:
            self._status(503, code_pb2.UNAVAILABLE, str(exc), answer_json, {"Retry-After": "1"})
            return
        except QueueFull as exc:
            self._status(503, code_pb2.UNAVAILABLE, str(exc), answer_json, {"Retry-After": str(exc.retry_after_s)})
            return
        except WriteFailed as exc:
            self._status(503, code_pb2.UNAVAILABLE, f"ledger write failed: {exc}", answer_json, {"Retry-After": "1"})
            return
        response = ExportTraceServiceResponse()
        if mapped.rejected:
            response.partial_success.rejected_spans = len(mapped.rejected)
            response.partial_success.error_message = mapped.rejection_message()
        self._message(200, response, answer_json)

    def _read_body(self, max_bytes: int, answer_json: bool) -> bytes | None:
        if (self.headers.get("Transfer-Encoding") or "").lower() not in ("", "identity"):
            self.close_connection = True
            self._status(411, code_pb2.INVALID_ARGUMENT, "send the body with a Content-Length", answer_json)
            return None
        length = self._content_length()
        if length is None:
            self.close_connection = True
            self._status(411, code_pb2.INVALID_ARGUMENT, "a valid Content-Length is required", answer_json)
            return None
        if length > max_bytes:
            self.close_connection = True  # the body is not read; the connection cannot be reused
            self._status(413, code_pb2.RESOURCE_EXHAUSTED, f"request larger than {max_bytes} bytes", answer_json)
            return None
        raw = self.rfile.read(length)
        if len(raw) != length:
            self.close_connection = True
            return None
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding == "identity":
            return raw
        if encoding != "gzip":
            self._send(
                415,
                f"unsupported Content-Encoding {encoding!r}; use gzip or none\n".encode(),
                "text/plain; charset=utf-8",
            )
            return None
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(raw, max_bytes + 1)
        except zlib.error as exc:
            self._status(400, code_pb2.INVALID_ARGUMENT, f"malformed gzip body: {exc}", answer_json)
            return None
        if len(body) > max_bytes:
            self._status(
                413, code_pb2.RESOURCE_EXHAUSTED, f"request larger than {max_bytes} bytes after gzip", answer_json
            )
            return None
        if not inflater.eof:
            self._status(400, code_pb2.INVALID_ARGUMENT, "truncated gzip body", answer_json)
            return None
        return body

    def _message(self, status: int, message: Any, as_json: bool, headers: dict[str, str] | None = None) -> None:
        if as_json:
            body = json_format.MessageToJson(message, indent=None).encode()
            self._send(status, body, JSON, headers)
        else:
            self._send(status, message.SerializeToString(), PROTOBUF, headers)

    def _status(
        self, http_status: int, code: int, message: str, as_json: bool, headers: dict[str, str] | None = None
    ) -> None:
        self._message(http_status, status_pb2.Status(code=code, message=message), as_json, headers)


class MetricsHandler(_Handler):
    """Bound to a server that has ``registry``, ``reader``, ``token`` and ``ready`` attributes."""

    def do_GET(self) -> None:
        if self._probe():
            return
        if self.path.split("?", 1)[0] != "/metrics":
            self._send(404, b"not found; try /metrics\n", "text/plain; charset=utf-8")
            return
        registry: CollectorRegistry = self.server.registry  # type: ignore[attr-defined]
        self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/api/v1/query":
            self._discard_body()
            self._send(404, b"not found\n", "text/plain; charset=utf-8")
            return
        server: Any = self.server
        if server.token is not None:
            if not token_ok(self.headers.get("Authorization"), server.token):
                self._discard_body()
                self._error(401, "missing or wrong bearer token")
                return
        elif not is_loopback(self.client_address[0]):
            self._discard_body()
            self._error(403, "the query endpoint answers loopback clients only unless COSTLINE_INGEST_TOKEN is set")
            return
        length = self._content_length()
        if length is None or length > MAX_QUERY_BODY:
            self.close_connection = True
            self._error(413 if length else 411, f"send a JSON body of at most {MAX_QUERY_BODY} bytes")
            return
        try:
            request = json.loads(self.rfile.read(length))
            sql, params = request["sql"], request.get("params") or []
            if not isinstance(sql, str) or not isinstance(params, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self._error(400, 'the body must be JSON {"sql": "SELECT …", "params": [...]}')
            return
        try:
            table = run_read_only(server.reader, sql, params)
        except ReadOnlyViolation as exc:
            self._error(400, str(exc))
            return
        except duckdb.Error as exc:
            self._error(400, str(exc))
            return
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as stream:
            stream.write_table(table)
        self._send(200, sink.getvalue().to_pybytes(), ARROW_STREAM)

    def _error(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode(), JSON)
