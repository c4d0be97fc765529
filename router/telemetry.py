"""Spans: one task span per task and one attempt span per model call, exactly as DESIGN §2."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.re import parse_env_headers

from costline import spans as attr
from costline.config import Config
from router.delivery import DEFAULT_EXPORT_TIMEOUT_S, SpoolingExporter
from router.fanout import FanOutExporter
from router.providers import CallProgress, Endpoint, Reply
from router.spool_layout import open_spools
from router.task import AttemptRecord, Task

TRACES_PATH = "/v1/traces"
SPOOL_DELAY_MS = 500
INSTRUMENTATION_NAME = "costline.router"


def otlp_traces_endpoints(config: Config) -> tuple[str, ...]:
    """Where spans go: the standard ``OTEL_EXPORTER_OTLP_*`` variables (one collector) win over
    ``telemetry.otlp_endpoint`` (one collector or several)."""
    if endpoint := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return (endpoint,)
    if base := os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return (base.rstrip("/") + TRACES_PATH,)
    return tuple(base.rstrip("/") + TRACES_PATH for base in config.telemetry.otlp_endpoints)


def otlp_headers(config: Config) -> dict[str, str]:
    """``OTEL_EXPORTER_OTLP_*HEADERS`` when set; otherwise the collector's ingest token (COSTLINE_INGEST_TOKEN)."""
    env_headers = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or os.environ.get("OTEL_EXPORTER_OTLP_HEADERS")
    if env_headers:
        return parse_env_headers(env_headers, liberal=True)
    token = config.ingest_token
    return {"Authorization": f"Bearer {token}"} if token else {}


def build_tracer_provider(
    config: Config, *, export_timeout_s: float | None = None
) -> tuple[TracerProvider, FanOutExporter]:
    """A provider whose spans wait in the on-disk spool until their collector acknowledges them."""
    endpoints = otlp_traces_endpoints(config)
    headers = otlp_headers(config)
    spools = open_spools(config.spool_dir, endpoints, config.telemetry.spool_max_mb * 1024 * 1024)
    timeout_s = export_timeout_s or DEFAULT_EXPORT_TIMEOUT_S
    senders = zip(endpoints, spools, strict=True)
    exporter = FanOutExporter([SpoolingExporter(url, headers, spool, timeout_s=timeout_s) for url, spool in senders])
    resource_attributes = (
        {} if os.environ.get("OTEL_SERVICE_NAME") else {attr.SERVICE_NAME: config.telemetry.service_name}
    )
    provider = TracerProvider(resource=Resource.create(resource_attributes))
    # Spans reach the disk within SPOOL_DELAY_MS of ending: a crash loses at most that much.
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=SPOOL_DELAY_MS))
    return provider, exporter


class Telemetry:
    """Starts and ends the task and attempt spans. Each is current from start to end, so spans made meanwhile by any
    other instrumentation nest under it: one model call is never counted twice by a collector."""

    def __init__(self, tracer_provider: trace.TracerProvider, capture_content: bool) -> None:
        self.tracer = tracer_provider.get_tracer(INSTRUMENTATION_NAME)
        self.capture_content = capture_content

    def start_task(self, task: Task, critical: bool) -> tuple[trace.Span, object]:
        """The task span, a child of whatever span the caller has current (e.g. a request around ``router.run``)."""
        span = self.tracer.start_span(
            attr.task_span_name(task.type),
            kind=SpanKind.INTERNAL,
            attributes={
                attr.TASK_ID: task.id,
                attr.TASK_TYPE: task.type,
                attr.TASK_CRITICAL: critical,
                **task.attribution(),
            },
        )
        return span, context.attach(trace.set_span_in_context(span))

    def end_task(
        self, span: trace.Span, token: object, *, outcome: str, escalated: bool, attempts: int, error: str | None
    ) -> None:
        span.set_attribute(attr.TASK_OUTCOME, outcome)
        span.set_attribute(attr.TASK_ESCALATED, escalated)
        span.set_attribute(attr.TASK_ATTEMPTS, attempts)
        if outcome == attr.OUTCOME_COMPLETED:
            span.set_status(Status(StatusCode.OK))
        else:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()
        context.detach(token)

    def start_attempt(
        self,
        task: Task,
        *,
        index: int,
        tier: str,
        provider: str,
        model: str,
        reason: str | None,
        endpoint: Endpoint | None,
    ) -> tuple[trace.Span, object]:
        """The attempt span, started before the call; what the call returns is added by :meth:`end_attempt`."""
        attributes: dict[str, Any] = {
            attr.OPERATION_NAME: attr.OPERATION_CHAT,
            attr.PROVIDER_NAME: provider,
            attr.REQUEST_MODEL: model,
            attr.TASK_ID: task.id,
            attr.TASK_TYPE: task.type,
            attr.ATTEMPT_INDEX: index,
            attr.ATTEMPT_TIER: tier,
            **task.attribution(),
        }
        if endpoint is not None:
            attributes[attr.SERVER_ADDRESS] = endpoint.address
            attributes[attr.SERVER_PORT] = endpoint.port
        if reason:
            attributes[attr.ESCALATION_REASON] = reason
        span = self.tracer.start_span(attr.attempt_span_name(model), kind=SpanKind.CLIENT, attributes=attributes)
        return span, context.attach(trace.set_span_in_context(span))

    def end_attempt(
        self,
        span: trace.Span,
        token: object,
        record: AttemptRecord,
        *,
        reply: Reply | None,
        progress: CallProgress,
        content: Callable[[], tuple[str | None, Sequence[Mapping[str, Any]]]],
    ) -> None:
        """Record what the call returned — or, for a call that ended early, the usage it had reported so far.
        ``content`` gives the system prompt and messages sent, read only when content capture is on."""
        attributes: dict[str, Any] = {}
        response_model = reply.response_model if reply is not None else progress.response_model
        response_id = reply.response_id if reply is not None else progress.response_id
        if response_model:
            attributes[attr.RESPONSE_MODEL] = response_model
        if response_id:
            attributes[attr.RESPONSE_ID] = response_id
        if reply is not None and reply.finish_reasons:
            attributes[attr.RESPONSE_FINISH_REASONS] = list(reply.finish_reasons)
        if reply is not None or progress.usage is not None:
            attributes[attr.USAGE_INPUT_TOKENS] = record.input_tokens
            attributes[attr.USAGE_OUTPUT_TOKENS] = record.output_tokens
            if record.provider == attr.PROVIDER_ANTHROPIC:
                attributes[attr.USAGE_CACHE_READ_INPUT_TOKENS] = record.cache_read_tokens
                attributes[attr.USAGE_CACHE_CREATION_INPUT_TOKENS] = record.cache_write_tokens
        if record.compute_seconds is not None:
            attributes[attr.LOCAL_COMPUTE_SECONDS] = record.compute_seconds
        if record.error_type:
            attributes[attr.ERROR_TYPE] = record.error_type
        if self.capture_content:
            attributes.update(_content(*content(), reply))
        span.set_attributes(attributes)
        if record.ok:
            span.set_status(Status(StatusCode.OK))
        else:
            span.set_status(Status(StatusCode.ERROR, record.error_message))
        span.end()
        context.detach(token)


def _content(system: str | None, messages: Sequence[Mapping[str, Any]], reply: Reply | None) -> dict[str, str]:
    """The spec's opt-in content attributes, as JSON strings."""
    content: dict[str, str] = {
        attr.INPUT_MESSAGES: json.dumps(
            [{"role": m["role"], "parts": [{"type": "text", "content": m["content"]}]} for m in messages]
        )
    }
    if system:
        content[attr.SYSTEM_INSTRUCTIONS] = json.dumps([{"type": "text", "content": system}])
    if reply is not None:
        finish = reply.finish_reasons[0] if reply.finish_reasons else "stop"
        content[attr.OUTPUT_MESSAGES] = json.dumps(
            [{"role": "assistant", "parts": [{"type": "text", "content": reply.text}], "finish_reason": finish}]
        )
    return content
