"""Hypothesis strategies for hostile OTLP/HTTP payloads: protobuf and JSON, well-formed but absurd, and broken."""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from typing import Any

from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from costline import spans as S

NOW_NS = 1_764_000_000 * 1_000_000_000  # late 2025: tests pass a fixed clock to the mapping
TOKEN_KEYS = (
    S.USAGE_INPUT_TOKENS,
    S.USAGE_OUTPUT_TOKENS,
    S.USAGE_CACHE_READ_INPUT_TOKENS,
    S.USAGE_CACHE_CREATION_INPUT_TOKENS,
    S.ALIAS_PROMPT_TOKENS,
    S.ALIAS_COMPLETION_TOKENS,
    S.ALIAS_CACHE_WRITE_INPUT_TOKENS,
)
KEYS = (
    *TOKEN_KEYS,
    S.OPERATION_NAME,
    S.PROVIDER_NAME,
    S.ALIAS_SYSTEM,
    S.REQUEST_MODEL,
    S.RESPONSE_MODEL,
    S.ERROR_TYPE,
    S.TASK_ID,
    S.TASK_TYPE,
    S.TASK_OUTCOME,
    S.TASK_ATTEMPTS,
    S.TASK_CRITICAL,
    S.ATTEMPT_INDEX,
    S.ATTEMPT_TIER,
    S.SERVER_PORT,
    S.LOCAL_COMPUTE_SECONDS,
    S.ALIAS_COST_OPENLIT,
    S.ALIAS_COST_LOGFIRE,
    S.TEAM,
    S.PROJECT,
    S.USER_ID,
)

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
huge_text = st.integers(10_000, 300_000).map(lambda n: "x" * n)
int64 = st.integers(-(2**63), 2**63 - 1)
token_count = st.one_of(
    st.integers(-5, 5), st.integers(0, 200_000_000), st.sampled_from([-(2**63), 2**63 - 1, 100_000_000, 100_000_001])
)
scalar = st.one_of(
    token_count,
    int64,
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    text,
    st.sampled_from(["12", "-5", " 7", "1e3", "NaN", "", "ollama", "anthropic", "chat", "claude-sonnet-4-5"]),
    st.binary(max_size=12),
)
value = st.one_of(scalar, st.lists(scalar, max_size=4), huge_text)
time_ns = st.one_of(
    st.integers(0, 2**64 - 1),
    st.integers(NOW_NS - 10**15, NOW_NS + 10**15),
    st.sampled_from([0, 1, NOW_NS, NOW_NS + 2 * 86_400 * 10**9, 2**63, 2**64 - 1]),
)
trace_id = st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=20), st.just(bytes(16)))
span_id = st.one_of(st.binary(min_size=8, max_size=8), st.binary(max_size=10), st.just(bytes(8)))
valid_trace_id = st.binary(min_size=16, max_size=16).filter(any)
valid_span_id = st.binary(min_size=8, max_size=8).filter(any)


@st.composite
def span_fields(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(st.one_of(st.sampled_from(KEYS), text), max_size=12))
    attributes = {key: draw(value) for key in keys}
    if draw(st.booleans()):  # often enough a model call, so the mapping is exercised beyond "ignored"
        attributes.setdefault(S.PROVIDER_NAME, draw(st.sampled_from(["ollama", "anthropic", "", "x" * 300])))
        attributes.setdefault(S.REQUEST_MODEL, draw(st.sampled_from(["qwen3:8b", "claude-sonnet-4-5", "zzz"])))
    if draw(st.booleans()):  # plausible ids and times, so token counts and names decide what is stored
        for key in draw(st.lists(st.sampled_from(TOKEN_KEYS), max_size=4)):
            attributes[key] = draw(token_count)
        ids = {"trace_id": draw(valid_trace_id), "span_id": draw(valid_span_id)}
        start = draw(st.integers(NOW_NS - 3_600 * 10**9, NOW_NS))
        end = draw(st.integers(start, start + 60 * 10**9))
    else:
        ids = {"trace_id": draw(trace_id), "span_id": draw(span_id)}
        start = draw(time_ns)
        end = draw(st.one_of(time_ns, st.integers(0, 10**12).map(lambda d: min(start + d, 2**64 - 1))))
    return {
        **ids,
        "parent_span_id": draw(st.one_of(st.just(b""), span_id)),
        "name": draw(st.one_of(text, st.just("task general"), st.just("chat qwen3:8b"))),
        "kind": draw(st.integers(0, 5)),
        "start": start,
        "end": end,
        "status": draw(st.integers(0, 2)),
        "attributes": attributes,
    }


def _any_value(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=max(-(2**63), min(v, 2**63 - 1)))
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[_any_value(x) for x in v]))
    return AnyValue(string_value=v)


def to_protobuf(spans: list[dict[str, Any]]) -> bytes:
    pb = [
        Span(
            trace_id=f["trace_id"],
            span_id=f["span_id"],
            parent_span_id=f["parent_span_id"],
            name=f["name"],
            kind=f["kind"],
            start_time_unix_nano=f["start"],
            end_time_unix_nano=f["end"],
            status=Status(code=f["status"]),
            attributes=[KeyValue(key=k, value=_any_value(v)) for k, v in f["attributes"].items()],
        )
        for f in spans
    ]
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=pb)])])
    return request.SerializeToString()


def _json_value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v if v == v and abs(v) != float("inf") else str(v)}
    if isinstance(v, bytes):
        return {"bytesValue": base64.b64encode(v).decode()}
    if isinstance(v, list):
        return {"arrayValue": {"values": [_json_value(x) for x in v]}}
    return {"stringValue": v}


def to_json(spans: list[dict[str, Any]]) -> bytes:
    document = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": f["trace_id"].hex(),
                                "spanId": f["span_id"].hex(),
                                "parentSpanId": f["parent_span_id"].hex(),
                                "name": f["name"],
                                "kind": f["kind"],
                                "startTimeUnixNano": str(f["start"]),
                                "endTimeUnixNano": f["end"],
                                "status": {"code": f["status"]},
                                "attributes": [{"key": k, "value": _json_value(v)} for k, v in f["attributes"].items()],
                            }
                            for f in spans
                        ]
                    }
                ]
            }
        ]
    }
    return json.dumps(document).encode()


spans_list = st.lists(span_fields(), max_size=6)
protobuf_body = spans_list.map(to_protobuf)
json_body = spans_list.map(to_json)


@st.composite
def damaged(draw: st.DrawFn, bodies: st.SearchStrategy[bytes]) -> bytes:
    """A valid body, then truncated, with bytes flipped, or with invalid UTF-8 spliced in."""
    body = draw(bodies)
    how = draw(st.sampled_from(["truncate", "flip", "splice"]))
    if how == "truncate" or not body:
        return body[: draw(st.integers(0, max(len(body) - 1, 0)))]
    at = draw(st.integers(0, len(body) - 1))
    if how == "flip":
        return body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1 :]
    return body[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80"])) + body[at:]


json_junk = st.one_of(
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), text),
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
        max_leaves=20,
    ).map(lambda doc: json.dumps(doc).encode()),
    st.sampled_from(
        [
            b'{"resourceSpans": {}}',
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [1, 2]}]}]}',
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 5, "attributes": "x"}]}]}]}',
            b'{"resourceSpans": [{"resource": [], "scopeSpans": null}]}',
            b"[" * 100_000 + b"]" * 100_000,
            b'"\\ud800"',
            b"",
        ]
    ),
)

protobuf_payload = st.one_of(protobuf_body, damaged(protobuf_body), st.binary(max_size=512))
json_payload = st.one_of(json_body, damaged(json_body), json_junk, st.binary(max_size=256))


def gzip_bomb(decompressed_bytes: int) -> bytes:
    """A small gzip body that inflates to ``decompressed_bytes`` zeros."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    out = [compressor.compress(chunk) for _ in range(decompressed_bytes >> 20)]
    out.append(compressor.flush())
    return b"".join(out)


def gzipped(body: bytes) -> bytes:
    return gzip.compress(body, compresslevel=1)
