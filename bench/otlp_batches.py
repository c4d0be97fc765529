"""Router-shaped OTLP/HTTP protobuf batches for the ingest benchmark, every span with its own ids.

Templates are built once with the opentelemetry-proto messages: 512 attempt spans per request, laid out as the
router writes them (``router/telemetry.py``): tasks of one to three attempts sharing a trace and a parent task
span, a primary Ollama attempt, sometimes a failed primary and a fallback, sometimes an escalation to Claude with
cache tokens. Producing a batch must cost the load generator almost nothing, so the ids, task ids and timestamps
are not re-encoded per batch: each template is serialised once with unique sentinel values, the byte offsets of
those values are found, and each batch is the template with new values written at those offsets. Every patched
field has a fixed width on the wire (16- and 8-byte ids, fixed64 times, 32-character hex task ids), so the result
is the same valid message a fresh encode would give; :func:`check_batch` decodes one to prove it.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from costline import spans as S

SPANS_PER_BATCH = 512
LOCAL_MODELS = ("qwen2.5-coder:14b", "qwen3:30b-a3b", "llama3.1:70b")
CLAUDE = "claude-sonnet-4-6"
TASK_TYPES = ("general", "summarise", "code_generation", "classify", "extract")
SPAN_SPACING_NS = 1_000_000  # consecutive spans start 1 ms apart: a batch covers half a second


@dataclass(frozen=True)
class Template:
    data: bytes
    trace_offsets: list[int]  # per span: offset of its 16-byte trace id
    span_offsets: list[int]  # per span: offset of its 8-byte span id
    parent_offsets: list[int]  # per span: offset of its 8-byte parent (task span) id
    start_offsets: list[int]  # per span: offset of its fixed64 start time
    end_offsets: list[int]
    durations_ns: list[int]  # per span: end - start
    task_of_span: list[int]  # per span: index of its task within the batch
    task_id_offsets: list[int]  # offsets of the 32-char task id strings
    task_id_tasks: list[int]  # task index of each task id occurrence
    tasks: int


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    if isinstance(value, list | tuple):
        return KeyValue(
            key=key, value=AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=v) for v in value]))
        )
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def _attempts_for(rng: random.Random) -> list[tuple[str, str, str, str | None]]:
    """(tier, provider, model, error_type) of each attempt of one task."""
    roll = rng.random()
    if roll < 0.75:
        return [("primary", S.PROVIDER_OLLAMA, LOCAL_MODELS[0], None)]
    if roll < 0.90:
        return [
            ("primary", S.PROVIDER_OLLAMA, LOCAL_MODELS[0], rng.choice(("invalid_output", "timeout"))),
            ("fallback", S.PROVIDER_OLLAMA, LOCAL_MODELS[1], None),
        ]
    return [
        ("primary", S.PROVIDER_OLLAMA, LOCAL_MODELS[0], "invalid_output"),
        ("fallback", S.PROVIDER_OLLAMA, LOCAL_MODELS[1], "empty_output"),
        ("escalation", S.PROVIDER_ANTHROPIC, CLAUDE, None),
    ]


def _sentinel_id(kind: int, n: int, size: int) -> bytes:
    # kind byte + counter + filler: unique within the template and never all zero.
    body = bytes([0xA0 + kind]) + n.to_bytes(4, "big") + b"\x5c" * (size - 5)
    return body[:size]


def build_template(seed: int) -> Template:
    rng = random.Random(seed)
    spans: list[Span] = []
    task_of_span: list[int] = []
    task_ids: list[str] = []
    durations: list[int] = []
    task = 0
    while len(spans) < SPANS_PER_BATCH:
        attempts = _attempts_for(rng)[: SPANS_PER_BATCH - len(spans)]
        task_id = f"{task:08x}" + "7a5c" * 6  # sentinel, 32 hex chars like uuid4().hex
        task_ids.append(task_id)
        task_type = rng.choice(TASK_TYPES)
        for index, (tier, provider, model, error_type) in enumerate(attempts):
            n = len(spans)
            local = provider == S.PROVIDER_OLLAMA
            input_tokens = rng.randint(200, 4000)
            output_tokens = rng.randint(20, 900)
            attrs: list[KeyValue] = [
                _kv(S.OPERATION_NAME, S.OPERATION_CHAT),
                _kv(S.PROVIDER_NAME, provider),
                _kv(S.REQUEST_MODEL, model),
                _kv(S.TASK_ID, task_id),
                _kv(S.TASK_TYPE, task_type),
                _kv(S.ATTEMPT_INDEX, index),
                _kv(S.ATTEMPT_TIER, tier),
                _kv(S.SERVER_ADDRESS, "127.0.0.1" if local else "api.anthropic.com"),
                _kv(S.SERVER_PORT, 11434 if local else 443),
            ]
            if tier == "escalation":
                attrs.append(_kv(S.ESCALATION_REASON, "threshold"))
            attrs += [
                _kv(S.RESPONSE_MODEL, model),
                _kv(S.RESPONSE_FINISH_REASONS, ["stop" if local else "end_turn"]),
            ]
            if not local:
                cache_read = rng.randint(0, input_tokens // 2)
                attrs += [
                    _kv(S.RESPONSE_ID, f"msg_{rng.getrandbits(96):024x}"),
                    _kv(S.USAGE_INPUT_TOKENS, input_tokens),
                    _kv(S.USAGE_OUTPUT_TOKENS, output_tokens),
                    _kv(S.USAGE_CACHE_READ_INPUT_TOKENS, cache_read),
                    _kv(S.USAGE_CACHE_CREATION_INPUT_TOKENS, rng.randint(0, input_tokens - cache_read)),
                ]
            else:
                attrs += [
                    _kv(S.USAGE_INPUT_TOKENS, input_tokens),
                    _kv(S.USAGE_OUTPUT_TOKENS, output_tokens),
                    _kv(S.LOCAL_COMPUTE_SECONDS, round(rng.uniform(0.3, 9.0), 6)),
                ]
            if error_type:
                attrs.append(_kv(S.ERROR_TYPE, error_type))
            duration = rng.randint(300_000_000, 9_000_000_000)
            status = (
                Status(code=Status.STATUS_CODE_ERROR, message=f"{model} failed: {error_type}")
                if error_type
                else Status(code=Status.STATUS_CODE_OK)
            )
            start = 1_700_000_000_000_000_000 + n * 7919 + 0x5C5C
            spans.append(
                Span(
                    trace_id=_sentinel_id(0, task, 16),
                    span_id=_sentinel_id(1, n, 8),
                    parent_span_id=_sentinel_id(2, task, 8),
                    name=S.attempt_span_name(model),
                    kind=Span.SPAN_KIND_CLIENT,
                    start_time_unix_nano=start,
                    end_time_unix_nano=start + duration,
                    attributes=attrs,
                    status=status,
                )
            )
            task_of_span.append(task)
            durations.append(duration)
        task += 1

    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(
                    attributes=[
                        _kv(S.SERVICE_NAME, "costline-router"),
                        _kv("telemetry.sdk.language", "python"),
                        _kv("telemetry.sdk.name", "opentelemetry"),
                        _kv("telemetry.sdk.version", "1.45.0"),
                    ]
                ),
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name="costline.router"), spans=spans)],
            )
        ]
    )
    data = request.SerializeToString()

    def find_once(needle: bytes) -> int:
        at = data.find(needle)
        if at < 0 or data.find(needle, at + 1) >= 0:
            raise AssertionError("template sentinel not unique")
        return at

    span_offsets = [find_once(s.span_id) for s in spans]
    # Trace and parent ids repeat across the attempts of a task: a span's own trace id is the last one before
    # its span id (field 1 precedes field 2), its parent id the first one after it (field 4).
    trace_offsets = [data.rfind(s.trace_id, 0, at) for s, at in zip(spans, span_offsets, strict=True)]
    parent_offsets = [data.find(s.parent_span_id, at) for s, at in zip(spans, span_offsets, strict=True)]
    start_offsets = [find_once(struct.pack("<Q", s.start_time_unix_nano)) for s in spans]
    end_offsets = [find_once(struct.pack("<Q", s.end_time_unix_nano)) for s in spans]
    task_id_offsets: list[int] = []
    task_id_tasks: list[int] = []
    for t, task_id in enumerate(task_ids):
        at = data.find(task_id.encode())
        while at >= 0:
            task_id_offsets.append(at)
            task_id_tasks.append(t)
            at = data.find(task_id.encode(), at + 1)
    return Template(
        data=data,
        trace_offsets=trace_offsets,
        span_offsets=span_offsets,
        parent_offsets=parent_offsets,
        start_offsets=start_offsets,
        end_offsets=end_offsets,
        durations_ns=durations,
        task_of_span=task_of_span,
        task_id_offsets=task_id_offsets,
        task_id_tasks=task_id_tasks,
        tasks=task,
    )


class BatchFactory:
    """Batch ``b`` of a run: template ``b % len(templates)`` with fresh random ids and times after ``base_ns``.

    The same ``seed`` gives the same bytes for the same ``b``, so two processes (the load generator and the limit
    measurement) can produce the very same spans without shipping them between each other.
    """

    def __init__(self, seed: int, base_ns: int, templates: int = 4) -> None:
        self.seed = seed
        self.base_ns = base_ns
        self.templates = [build_template(seed * 1000 + i) for i in range(templates)]

    def batch(self, b: int) -> bytes:
        t = self.templates[b % len(self.templates)]
        rng = random.Random(self.seed * 1_000_003 + b)
        buf = bytearray(t.data)
        traces = rng.randbytes(16 * t.tasks)
        parents = rng.randbytes(8 * t.tasks)
        span_ids = rng.randbytes(8 * SPANS_PER_BATCH)
        task_ids = rng.randbytes(16 * t.tasks).hex().encode()
        first = self.base_ns + b * SPANS_PER_BATCH * SPAN_SPACING_NS
        pack = _U64.pack_into
        for n in range(SPANS_PER_BATCH):
            task = t.task_of_span[n]
            at = t.trace_offsets[n]
            buf[at : at + 16] = traces[16 * task : 16 * task + 16]
            at = t.parent_offsets[n]
            buf[at : at + 8] = parents[8 * task : 8 * task + 8]
            at = t.span_offsets[n]
            buf[at : at + 8] = span_ids[8 * n : 8 * n + 8]
            start = first + n * SPAN_SPACING_NS
            pack(buf, t.start_offsets[n], start)
            pack(buf, t.end_offsets[n], start + t.durations_ns[n])
        for at, task in zip(t.task_id_offsets, t.task_id_tasks, strict=True):
            buf[at : at + 32] = task_ids[32 * task : 32 * task + 32]
        return bytes(buf)

    def last_end_ns(self, batches: int) -> int:
        return self.base_ns + batches * SPANS_PER_BATCH * SPAN_SPACING_NS + 10 * 1_000_000_000


_U64 = struct.Struct("<Q")


def check_batch(data: bytes) -> ExportTraceServiceRequest:
    """Decode a patched batch and check it is what the router would send: 512 spans, unique ids, sane times."""
    request = ExportTraceServiceRequest.FromString(data)
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    if len(spans) != SPANS_PER_BATCH:
        raise AssertionError(f"batch has {len(spans)} spans")
    if len({s.span_id for s in spans}) != len(spans):
        raise AssertionError("span ids repeat within a batch")
    for s in spans:
        if len(s.trace_id) != 16 or len(s.span_id) != 8 or len(s.parent_span_id) != 8:
            raise AssertionError("malformed ids")
        if not s.start_time_unix_nano < s.end_time_unix_nano:
            raise AssertionError("end before start")
        task_id = next(kv.value.string_value for kv in s.attributes if kv.key == S.TASK_ID)
        if len(task_id) != 32 or "7a5c7a5c" in task_id:
            raise AssertionError(f"task id not patched: {task_id}")
    return request
