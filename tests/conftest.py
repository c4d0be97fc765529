"""Shared fixtures: the simulated Ollama and Anthropic servers, an in-memory span exporter, and configs in tmp."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis_profiles
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from costline import spans as attr
from costline.config import Config, load_config, with_overrides
from costline.demo.fake_anthropic import FakeAnthropic
from costline.demo.fake_ollama import FakeOllama

hypothesis_profiles.load()  # before any test module builds its hypothesis settings

TEST_API_KEY = "sk-ant-test-0123456789-SECRET-abcdef"


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


@pytest.fixture
def fake_anthropic(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    """The simulated Messages API, with ``ANTHROPIC_API_KEY`` set to the key it accepts (``TEST_API_KEY``)."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_API_KEY)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    with FakeAnthropic(api_key=TEST_API_KEY) as server:
        yield server


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(span_exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A provider whose spans land in ``span_exporter`` as soon as they end."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def make_config(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Config]:
    """``make_config(router={...}, escalation={...}, ...)``: defaults with the usage store in tmp_path, pointed
    at the fake servers when the test uses them, then the given per-section overrides (validated again)."""

    def make(**overrides: Any) -> Config:
        base: dict[str, dict[str, Any]] = {"router": {"usage_db": str(tmp_path / "usage.sqlite")}}
        if "fake_ollama" in request.fixturenames:
            base["router"]["ollama_host"] = request.getfixturevalue("fake_ollama").url
            base["router"]["timeout_s"] = 5.0
        if "fake_anthropic" in request.fixturenames:
            base["escalation"] = {"base_url": request.getfixturevalue("fake_anthropic").url}
        for section, values in overrides.items():
            if isinstance(values, dict) and section != "prices":
                base.setdefault(section, {}).update(values)
            else:
                base[section] = values
        sections = {k: (v if k != "prices" else (lambda _, v=v: v)) for k, v in base.items()}
        return with_overrides(load_config(env={}), **sections)

    return make


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SpanReader:
    """Attempt (CLIENT) and task (INTERNAL) spans from an in-memory exporter."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter

    def attempts(self, task_id: str | None = None) -> list[ReadableSpan]:
        found = [s for s in self.exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
        if task_id is not None:
            found = [s for s in found if s.attributes[attr.TASK_ID] == task_id]
        return sorted(found, key=lambda s: (s.start_time, s.attributes[attr.ATTEMPT_INDEX]))

    def task(self, task_id: str) -> ReadableSpan:
        (span,) = [
            s
            for s in self.exporter.get_finished_spans()
            if s.kind == SpanKind.INTERNAL and s.attributes[attr.TASK_ID] == task_id
        ]
        return span


@pytest.fixture
def spans(span_exporter: InMemorySpanExporter) -> SpanReader:
    return SpanReader(span_exporter)


class OtlpReceiver:
    """A loopback OTLP/HTTP endpoint: decodes each ``POST /v1/traces`` protobuf body and keeps the spans."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        receiver = self
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                message = trace_service_pb2.ExportTraceServiceRequest()
                message.ParseFromString(body)
                receiver.requests.append(message)
                receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def spans(self) -> list[tuple[dict[str, Any], Any, Any]]:
        """(resource attributes, span attributes as a dict, the protobuf span) for every span received."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {kv.key: _any_value(kv.value) for kv in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        found.append((resource, {kv.key: _any_value(kv.value) for kv in span.attributes}, span))
        return found

    def __enter__(self) -> OtlpReceiver:
        import threading

        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver
