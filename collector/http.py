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
import json
import logging
import re
import threading
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import duckdb
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from collector.decode_pool import DecoderUnavailable
from collector.mapping import MappedRequest
from collector.otlp_decode import DecodeError
from collector.query import Queries, QueryCancelled, ReadOnlyViolation, ResultTooLarge
from collector.query_bounds import UnboundedValue
from collector.writer import BatchWriter, Pending, QueueFull, WriteFailed
from costline.net import is_loopback

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
MAX_QUERY_BODY = 1024 * 1024
COMMIT_TIMEOUT_S = 60.0
MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024
READ_CHUNK = 64 * 1024
GZIP_MAGIC = b"\x1f\x8b"
_DIGITS = re.compile(r"[0-9]+")


class InFlightBytes:
    """Bounds the request bodies held at once (received, decompressed, being decoded): beyond the bound the receiver
    answers 503 with Retry-After at once, so memory stays bounded however many senders connect. Only bytes that
    have arrived are counted, never a Content-Length that was merely announced, so idle senders hold nothing. A
    request is always admitted when nothing else is in flight."""

    def __init__(self, limit: int) -> None:
        self._limit, self._held = limit, 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def hold(self) -> Hold:
        return Hold(self)

    def try_acquire(self, n: int, own: int = 0) -> bool:
        """Take ``n`` more bytes for a request that already holds ``own``."""
        with self._lock:
            if self._held > own and self._held + n > self._limit:
                return False
            self._held += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self._held -= n


class Hold:
    """What one request holds of the in-flight budget; grows as its body arrives, released at once at the end."""

    def __init__(self, gate: InFlightBytes) -> None:
        self._gate, self.bytes = gate, 0

    def grow_to(self, n: int) -> bool:
        if n <= self.bytes:
            return True
        if not self._gate.try_acquire(n - self.bytes, self.bytes):
            return False
        self.bytes = n
        return True

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc: object) -> None:
        self._gate.release(self.bytes)
        self.bytes = 0


class ClientGone(Exception):
    """The client closed its connection before its request was whole; there is no one to answer."""


class Refused(Exception):
    """A request body that is answered with an error status instead of being ingested."""

    def __init__(
        self, http_status: int, code: int, message: str, *, close: bool = False, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.http_status, self.code, self.close, self.headers = http_status, code, close, headers


def gunzip(raw: bytes, max_bytes: int) -> bytes:
    """Every member of a gzip body (RFC 1952 allows several, read as one), at most ``max_bytes`` once inflated.

    Bytes after a member that do not start another member are refused rather than ignored, as is a member cut
    short; the bound holds for the members together, so a bomb split in parts is refused too.
    """
    parts: list[bytes] = []
    size = 0
    rest = raw
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = inflater.decompress(rest, max_bytes + 1 - size)
        except zlib.error as exc:
            raise Refused(400, code_pb2.INVALID_ARGUMENT, f"malformed gzip body: {exc}") from None
        size += len(part)
        if size > max_bytes:
            raise Refused(413, code_pb2.RESOURCE_EXHAUSTED, f"request larger than {max_bytes} bytes after gzip")
        if not inflater.eof:
            raise Refused(400, code_pb2.INVALID_ARGUMENT, "truncated gzip body")
        parts.append(part)
        rest = inflater.unused_data
        if not rest:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if not rest.startswith(GZIP_MAGIC):
            raise Refused(
                400,
                code_pb2.INVALID_ARGUMENT,
                f"malformed gzip body: {len(rest)} byte(s) after the last gzip member are not another member",
            )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def make_server(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    return _Server((host, port), handler)


def token_ok(header: str | None, token: str | None) -> bool:
    """The auth scheme is case-insensitive (RFC 7235 §2.1), the token is compared in constant time."""
    if token is None:
        return True
    scheme, _, credentials = (header or "").strip().partition(" ")
    given = f"Bearer {credentials.strip()}" if scheme.lower() == "bearer" else header or ""
    return hmac.compare_digest(given.encode("utf-8", "replace"), f"Bearer {token}".encode())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "costline-collector"
    sys_version = ""

    def setup(self) -> None:
        # Every read of headers and body waits at most this long for the next bytes: a sender that stalls loses
        # its connection instead of holding a thread and its share of the in-flight budget.
        self.timeout = getattr(self.server, "read_timeout_s", None)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def handle_expect_100(self) -> bool:
        """``100 Continue`` is sent by :meth:`_continue`, once the request has passed the checks that need no body."""
        return True

    def _continue(self) -> None:
        if self._expects_continue() and self.request_version >= "HTTP/1.1":
            self.send_response_only(100)
            self.end_headers()

    def _expects_continue(self) -> bool:
        return (self.headers.get("Expect") or "").strip().lower() == "100-continue"

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _discard_body(self) -> None:
        """Read what the client sent (up to a bound) so the connection can be reused, or close it. A client that
        waits for ``100 Continue`` sends no body: its connection is closed, as it would not know what to send."""
        length = self._content_length()
        if length is None or length > 1024 * 1024 or self._expects_continue():
            self.close_connection = True
            return
        if length:
            self.rfile.read(length)

    def _content_length(self) -> int | None:
        """The one Content-Length, digits only (RFC 9110 §8.6); None when absent, repeated or malformed."""
        values = self.headers.get_all("Content-Length") or []
        if len(values) != 1 or not _DIGITS.fullmatch(values[0].strip()):
            return None
        return int(values[0])

    def _framing_error(self) -> tuple[int, str] | None:
        """Why the body cannot be delimited safely (status, message), if it cannot; the connection is then closed,
        since where this request ends and the next begins is unknown (RFC 9112 §6.3)."""
        if len(self.headers.get_all("Content-Length") or []) > 1:
            return 400, "duplicate Content-Length headers; send exactly one"
        if (self.headers.get("Transfer-Encoding") or "").lower() not in ("", "identity"):
            return 411, "send the body with a Content-Length"
        if self._content_length() is None:
            return 411, "a valid Content-Length is required"
        return None

    def _probe(self) -> bool:
        if self.path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
            return True
        if self.path == "/readyz":
            not_ready: Callable[[], str | None] = self.server.not_ready  # type: ignore[attr-defined]
            reason = not_ready()
            if reason is None:
                self._send(200, b"ready\n", "text/plain; charset=utf-8")
            else:
                self._send(503, f"not ready: {reason}\n".encode(), "text/plain; charset=utf-8", {"Retry-After": "1"})
            return True
        return False


class OtlpHandler(_Handler):
    """Bound to a server that has ``decoder``, ``writer``, ``in_flight``, ``max_bytes``, ``read_timeout_s``,
    ``token`` and ``not_ready``."""

    def do_GET(self) -> None:
        if not self._probe():
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        media = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        try:
            self._export(media, media == JSON)
        except ClientGone:
            self.close_connection = True
        except Refused as exc:
            self.close_connection = self.close_connection or exc.close
            self._status(exc.http_status, exc.code, str(exc), media == JSON, exc.headers)
        except Exception:  # never drop a connection without an answer; the sender may retry a 500
            log.exception("unexpected error while ingesting a request")
            self.close_connection = True
            self._status(500, code_pb2.INTERNAL, "internal error; see the collector log", media == JSON)

    def _export(self, media: str, answer_json: bool) -> None:
        if self.path.split("?", 1)[0] != "/v1/traces":
            self._discard_body()
            self._send(404, b"not found; OTLP traces go to POST /v1/traces\n", "text/plain; charset=utf-8")
            return
        server: Any = self.server
        if not token_ok(self.headers.get("Authorization"), server.token):
            self._discard_body()
            raise Refused(401, code_pb2.UNAUTHENTICATED, "missing or wrong bearer token")
        if media not in (PROTOBUF, JSON):
            self._discard_body()
            self._send(
                415,
                f"unsupported Content-Type {media or '(none)'!r}; use {PROTOBUF} or {JSON}\n".encode(),
                "text/plain; charset=utf-8",
            )
            return
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            self._discard_body()
            self._send(
                415,
                f"unsupported Content-Encoding {encoding!r}; use gzip or none\n".encode(),
                "text/plain; charset=utf-8",
            )
            return
        problem = self._framing_error()
        if problem is not None:
            raise Refused(problem[0], code_pb2.INVALID_ARGUMENT, problem[1], close=True)
        length = self._content_length() or 0
        if length > server.max_bytes:  # the body is not read; the connection cannot be reused
            raise Refused(413, code_pb2.RESOURCE_EXHAUSTED, f"request larger than {server.max_bytes} bytes", close=True)
        self._continue()
        with server.in_flight.hold() as held:
            raw = self._receive(length, held)
            body = raw if encoding == "identity" else gunzip(raw, server.max_bytes)
            if not held.grow_to(len(body)):  # gzip: hold the inflated size too
                raise self._busy()
            self._ingest(server, body, answer_json)

    def _receive(self, length: int, held: Hold) -> bytes:
        """The body as it arrives, each chunk counted against the in-flight budget once received."""
        body = bytearray()
        try:
            while len(body) < length:
                chunk = self.rfile.read1(min(READ_CHUNK, length - len(body)))
                if not chunk:
                    raise ClientGone
                body += chunk
                if not held.grow_to(len(body)):
                    raise self._busy()
        except TimeoutError:
            log.info("%s: request body stalled for %s s; connection closed", self.address_string(), self.timeout)
            raise Refused(
                408,
                code_pb2.DEADLINE_EXCEEDED,
                f"no body bytes for {self.timeout} s; send the body at once",
                close=True,
            ) from None
        return bytes(body)

    def _busy(self) -> Refused:
        message = "the collector is busy decoding other requests; retry shortly"
        return Refused(503, code_pb2.UNAVAILABLE, message, close=True, headers={"Retry-After": "1"})

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
    """Bound to a server that has ``registry``, ``queries``, ``read_timeout_s``, ``token`` and ``not_ready``."""

    def do_GET(self) -> None:
        if self._probe():
            return
        if self.path.split("?", 1)[0] != "/metrics":
            self._send(404, b"not found; try /metrics\n", "text/plain; charset=utf-8")
            return
        registry: CollectorRegistry = self.server.registry  # type: ignore[attr-defined]
        try:
            page = generate_latest(registry)
        except duckdb.Error as exc:  # the gauges read the ledger: say why instead of dropping the connection
            log.error("/metrics could not read the ledger: %s", exc)
            self._send(503, f"the ledger cannot be read: {exc}\n".encode(), "text/plain; charset=utf-8")
            return
        self._send(200, page, CONTENT_TYPE_LATEST)

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
        problem = self._framing_error()
        length = self._content_length()
        if problem is not None or length is None or length > MAX_QUERY_BODY:
            self.close_connection = True
            status, message = problem or (413, f"send a JSON body of at most {MAX_QUERY_BODY} bytes")
            self._error(status, message)
            return
        self._continue()
        try:
            raw = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            self._error(408, f"no body bytes for {self.timeout} s; send the body at once")
            return
        if len(raw) != length:
            self.close_connection = True
            return
        try:
            request = json.loads(raw)
            sql, params = request["sql"], request.get("params") or []
            if not isinstance(sql, str) or not isinstance(params, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self._error(400, 'the body must be JSON {"sql": "SELECT …", "params": [...]}')
            return
        queries: Queries = server.queries
        try:
            answer = queries.run(sql, params, self.connection)
        except (ReadOnlyViolation, UnboundedValue) as exc:
            self._error(400, str(exc))
            return
        except ResultTooLarge as exc:
            self._error(413, str(exc))
            return
        except QueryCancelled as exc:
            if exc.client_gone:
                log.info("%s left before its query finished; the query was interrupted", self.address_string())
                self.close_connection = True
                return
            self._error(exc.http_status, str(exc))
            return
        except duckdb.Error as exc:
            self._error(400, str(exc))
            return
        self._send(200, answer, ARROW_STREAM)

    def _error(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode(), JSON)
