"""A flaky HTTP proxy on loopback, in front of the collector.

Each request is either passed through or hit by one fault:

* ``refuse_503`` — answer 503 with ``Retry-After: 0`` without forwarding (the collector never sees it);
* ``drop_before`` — reset the connection without forwarding;
* ``drop_after`` — forward, let the collector commit and answer, then reset the connection instead of answering;
* ``replace_503`` — forward, let the collector commit, then answer 503 (the sender thinks it failed).

The last two are the interesting ones: the sender retries a batch that the ledger already holds. Faults are drawn
from a seeded RNG, and one request body is faulted at most ``max_faults_per_body`` times, so a sender that retries
always gets through within its retry budget.
"""

from __future__ import annotations

import hashlib
import http.client
import random
import socket
import struct
import threading
import urllib.parse
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PASS = "pass"
REFUSE_503 = "refuse_503"
DROP_BEFORE = "drop_before"
DROP_AFTER = "drop_after"
REPLACE_503 = "replace_503"
FAULTS = (REFUSE_503, DROP_BEFORE, DROP_AFTER, REPLACE_503)
FORWARDED_HEADERS = ("content-type", "content-encoding", "authorization")


class FlakyProxy:
    def __init__(
        self,
        upstream: str,
        *,
        weights: Mapping[str, float] | None = None,
        seed: int = 0,
        max_faults_per_body: int = 2,
        record: bool = False,
        first: Sequence[str] = (),
    ) -> None:
        """``weights``: probability of each fault per request (the rest passes); ``first``: faults for the first
        requests, in order, before the random draw takes over (so a short run sees every kind)."""
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.weights = dict(weights or {})
        self.max_faults_per_body = max_faults_per_body
        self.record = record
        self.faults: Counter[str] = Counter()
        self.committed_then_faulted: list[bytes] = []  # bodies the collector answered 200 but the sender never saw
        self.bodies: list[bytes] = []  # every request body, when ``record``
        self.headers: list[dict[str, str]] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._faults_per_body: Counter[bytes] = Counter()
        self._scripted = deque(first)
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def faults_injected(self) -> int:
        return sum(self.faults[name] for name in FAULTS)

    def _plan(self, body: bytes) -> str:
        digest = hashlib.sha256(body).digest()
        with self._lock:
            fault = PASS
            if self._faults_per_body[digest] < self.max_faults_per_body:
                fault = self._scripted.popleft() if self._scripted else self._draw()
            if fault != PASS:
                self._faults_per_body[digest] += 1
            self.faults[fault] += 1
        return fault

    def _draw(self) -> str:
        roll = self._rng.random()
        for name in FAULTS:
            weight = self.weights.get(name, 0.0)
            if roll < weight:
                return name
            roll -= weight
        return PASS

    def __enter__(self) -> FlakyProxy:
        threading.Thread(target=self._server.serve_forever, name="flaky-proxy", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FlakyProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._relay(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self._relay(body)

    def _relay(self, body: bytes) -> None:
        owner = self.owner
        headers = {k.lower(): v for k, v in self.headers.items()}
        if owner.record:
            with owner._lock:
                owner.bodies.append(body)
                owner.headers.append(headers)
        fault = owner._plan(body) if self.command == "POST" else PASS
        if fault == REFUSE_503:
            self._answer(503, {"Content-Type": "text/plain", "Retry-After": "0"}, b"injected 503\n")
            return
        if fault == DROP_BEFORE:
            self._reset()
            return
        try:
            status, reply_headers, reply = self._forward(body, headers)
        except (OSError, http.client.HTTPException):
            self._reset()  # the collector itself is gone: the sender sees what it would see without the proxy
            return
        if status == 200 and fault in (DROP_AFTER, REPLACE_503):
            with owner._lock:
                owner.committed_then_faulted.append(body)
            if fault == DROP_AFTER:
                self._reset()
            else:
                self._answer(503, {"Content-Type": "text/plain", "Retry-After": "0"}, b"injected 503 after commit\n")
            return
        self._answer(status, reply_headers, reply)

    def _forward(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(*self.owner.upstream, timeout=120)
        try:
            sent = {name: headers[name] for name in FORWARDED_HEADERS if name in headers}
            connection.request(self.command, self.path, body=body if self.command == "POST" else None, headers=sent)
            response = connection.getresponse()
            data = response.read()
            kept = {k: v for k, v in response.getheaders() if k.lower() in ("content-type", "retry-after")}
            return response.status, kept, data
        finally:
            connection.close()

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        """Close with a TCP reset and no answer."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
