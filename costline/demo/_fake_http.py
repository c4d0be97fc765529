"""The HTTP plumbing the simulated backends share: a threaded HTTP/1.1 server on loopback, request recording,
per-model behaviour scripts, and the wire-level moves a misbehaving backend makes (chunked streams, hangs,
dropped connections)."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, Self, TypeVar

B = TypeVar("B")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    client_port: int = 0  # the client's TCP port: equal ports mean one kept-alive connection


class BehaviourScripts(Generic[B]):
    """FIFO scripts per model, then a per-model default (a behaviour, or a callable of the request body)."""

    def __init__(self, fallback: Callable[[], B]) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[B]] = {}
        self._defaults: dict[str, B | Callable[[dict[str, Any]], B]] = {}
        self._fallback = fallback

    def script(self, model: str, behaviours: Iterable[B]) -> None:
        with self._lock:
            self._queues.setdefault(model, deque()).extend(behaviours)

    def set_default(self, model: str, behaviour: B | Callable[[dict[str, Any]], B]) -> None:
        with self._lock:
            self._defaults[model] = behaviour

    def next_for(self, model: str, body: dict[str, Any]) -> B:
        with self._lock:
            queue = self._queues.get(model)
            if queue:
                return queue.popleft()
            default = self._defaults.get(model)
        if default is None:
            return self._fallback()
        if callable(default):
            return default(body)
        return default


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for a handler that is simulating a hang
    request_queue_size = 1024  # a listen backlog like real servers' (socketserver's default of 5 refuses bursts)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away (a timeout, Ctrl-C) is business as usual for a simulated backend.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class Exchange(BaseHTTPRequestHandler):
    """One request/response on a keep-alive connection; the owning fake decides what to answer."""

    protocol_version = "HTTP/1.1"
    server_version = "costline-simulated"
    sys_version = ""
    fake: FakeHTTPServer  # set on the per-server subclass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # As real Ollama (Go) and the Anthropic API do: without it each streamed chunk after the first waits for
        # the client's delayed ACK (~40 ms on Linux), whatever latency the simulation asked for.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fake._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.fake._untrack(self.connection)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        raw = self._read_body()
        body: dict[str, Any] | None = None
        self.body_error: str | None = None
        if raw:
            try:
                parsed = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                self.body_error = str(exc)
            else:
                if isinstance(parsed, dict):
                    body = parsed
                else:
                    self.body_error = "request body must be a JSON object"
        path = self.path.split("?", 1)[0]
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.fake._record(RecordedRequest(self.command, path, headers, body, self.client_address[1]))
        try:
            self.fake.handle(self, self.command, path, headers, body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # --- answers -------------------------------------------------------------------------------------------

    def send_bytes(self, status: int, payload: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    def send_json(self, status: int, obj: object, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(obj, separators=(",", ":")).encode()
        self.send_bytes(status, payload, "application/json; charset=utf-8", headers)

    def start_chunked(self, status: int, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def drop_connection(self) -> None:
        """Close the TCP connection abruptly, with no (further) response bytes."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def pause(self, seconds: float) -> bool:
        """Wait for real; False when the fake is stopping (the caller should drop the connection)."""
        return not self.fake._stopping.wait(seconds) if seconds > 0 else not self.fake._stopping.is_set()


class FakeHTTPServer:
    """A loopback HTTP/1.1 server in a daemon thread, answering concurrently, one handler thread per connection."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host, self._port = host, port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self.requests: list[RecordedRequest] = []

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        if self._server is not None:
            return self
        handler = type("BoundExchange", (Exchange,), {"fake": self})
        self._stopping.clear()
        self._server = _Server((self._host, self._port), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name=type(self).__name__, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            live = list(self._connections)
        for conn in live:  # idle keep-alive connections would otherwise keep their handler threads blocked
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def handle(
        self, exchange: Exchange, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None
    ) -> None:
        raise NotImplementedError

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)
