"""OTLP/HTTP trace payloads (protobuf or JSON) → plain span records.

A payload whose envelope cannot be read raises :class:`DecodeError` (the receiver answers 400). Problems confined
to one span (a bad id, a missing timestamp) do not fail the request: the span is returned with what could be read
and the mapping rejects it with a reason, so the sender learns about it through ``partial_success``.

OTLP/JSON differs from the protobuf JSON mapping: trace and span ids are hex, not base64 (so
``json_format.Parse`` would decode them wrongly), int64 values arrive as decimal strings, and enums may be numbers.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError as _ProtobufDecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.emitters import TELEMETRY_SDK_NAME
from costline.spans import SERVICE_NAME

STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2
_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
_KIND_NAMES = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}
_MAX_NESTING = 8  # attribute values nested deeper than this are cut (a span is not a document store)


class DecodeError(ValueError):
    """The payload is not an OTLP trace export request."""


@dataclass(slots=True)
class SpanRecord:
    trace_id: str  # lowercase hex; "" when missing or malformed
    span_id: str
    parent_span_id: str  # "" for a root span
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str
    attributes: dict[str, Any] = field(default_factory=dict)
    service_name: str | None = None
    scope_name: str = ""  # the instrumentation scope that made the span
    sdk_name: str | None = None  # the resource's telemetry.sdk.name


# --- protobuf -------------------------------------------------------------------------------------------------------


def decode_protobuf(body: bytes, keys: frozenset[str] | None = None) -> list[SpanRecord]:
    """Spans of an ExportTraceServiceRequest; with ``keys``, only those attributes are read (the rest cost time)."""
    spans: list[SpanRecord] = []
    for resource_spans in parse_protobuf(body).resource_spans:
        service, sdk_name = pb_resource_names(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            for s in scope_spans.spans:
                record = pb_span_record(s, _pb_attributes(s.attributes, keys), service)
                record.scope_name, record.sdk_name = scope, sdk_name
                spans.append(record)
    return spans


def parse_protobuf(body: bytes) -> ExportTraceServiceRequest:
    try:
        return ExportTraceServiceRequest.FromString(body)
    except (_ProtobufDecodeError, RuntimeError, ValueError) as exc:
        raise DecodeError(f"not an OTLP ExportTraceServiceRequest protobuf: {exc}") from None


def pb_span_record(span: Any, attributes: dict[str, Any], service: str | None) -> SpanRecord:
    trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
    status = span.status
    return SpanRecord(
        trace_id.hex() if len(trace_id) == 16 and trace_id != _ZERO_TRACE else "",
        span_id.hex() if len(span_id) == 8 and span_id != _ZERO_SPAN else "",
        parent.hex() if len(parent) == 8 and parent != _ZERO_SPAN else "",
        span.name,
        span.kind,
        span.start_time_unix_nano,
        span.end_time_unix_nano,
        status.code,
        status.message,
        attributes,
        service,
    )


_ZERO_TRACE, _ZERO_SPAN = bytes(16), bytes(8)


def pb_resource_names(attributes: Any) -> tuple[str | None, str | None]:
    """The resource's ``service.name`` and ``telemetry.sdk.name`` (None where missing or not a string)."""
    service = sdk = None
    for kv in attributes:
        if kv.key == SERVICE_NAME:
            value = pb_value(kv.value, 0)
            service = value if isinstance(value, str) else None
        elif kv.key == TELEMETRY_SDK_NAME:
            value = pb_value(kv.value, 0)
            sdk = value if isinstance(value, str) else None
    return service, sdk


def _pb_attributes(attributes: Any, keys: frozenset[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in attributes:
        key = kv.key
        if keys is not None and key not in keys:
            continue
        value = pb_attribute(kv.value)
        if value is not ABSENT:
            out[key] = value
    return out


ABSENT: Any = object()  # an AnyValue with no field set: the attribute is left out


def pb_attribute(value: Any) -> Any:
    """A top-level attribute value as the mapping reads it (bytes as hex, arrays as lists), or :data:`ABSENT`."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "int_value":
        return value.int_value
    if which is None:
        return ABSENT
    return pb_value(value, 0)


def pb_value(value: Any, depth: int) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        if depth >= _MAX_NESTING:
            return None
        return [pb_value(v, depth + 1) for v in value.array_value.values]
    if which == "kvlist_value":
        if depth >= _MAX_NESTING:
            return None
        return {kv.key: pb_value(kv.value, depth + 1) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, which)


# --- JSON -----------------------------------------------------------------------------------------------------------


def decode_json(body: bytes) -> list[SpanRecord]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DecodeError(f"not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise DecodeError("an OTLP/JSON request must be a JSON object with resourceSpans")
    spans: list[SpanRecord] = []
    for resource_spans in _list(document, "resourceSpans", "resource_spans"):
        resource = _obj(resource_spans, "resource")
        resource_attributes = _json_attributes(_list(resource, "attributes"))
        service = resource_attributes.get(SERVICE_NAME)
        service = service if isinstance(service, str) else None
        sdk_name = resource_attributes.get(TELEMETRY_SDK_NAME)
        sdk_name = sdk_name if isinstance(sdk_name, str) else None
        for scope_spans in _list(resource_spans, "scopeSpans", "scope_spans"):
            scope_name = _str(_field(_obj(scope_spans, "scope"), "name"))
            for s in _list(scope_spans, "spans"):
                if not isinstance(s, dict):
                    raise DecodeError("each span must be a JSON object")
                status = _obj(s, "status")
                spans.append(
                    SpanRecord(
                        _json_id(_field(s, "traceId", "trace_id"), 16),
                        _json_id(_field(s, "spanId", "span_id"), 8),
                        _json_id(_field(s, "parentSpanId", "parent_span_id"), 8),
                        _str(_field(s, "name")),
                        _enum(_field(s, "kind"), _KIND_NAMES),
                        _uint(_field(s, "startTimeUnixNano", "start_time_unix_nano")),
                        _uint(_field(s, "endTimeUnixNano", "end_time_unix_nano")),
                        _enum(_field(status, "code"), _STATUS_NAMES),
                        _str(_field(status, "message")),
                        _json_attributes(_list(s, "attributes")),
                        service,
                        scope_name,
                        sdk_name,
                    )
                )
    return spans


def _field(obj: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in obj:
            return obj[name]
    return None


def _obj(parent: Any, *names: str) -> dict[str, Any]:
    value = _field(parent, *names) if isinstance(parent, dict) else None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DecodeError(f"{names[0]} must be a JSON object")
    return value


def _list(parent: Any, *names: str) -> list[Any]:
    value = _field(parent, *names) if isinstance(parent, dict) else None
    if value is None:
        return []
    if not isinstance(value, list):
        raise DecodeError(f"{names[0]} must be a JSON array")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates ("\\ud800") are valid JSON but not storable text
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def _json_id(value: Any, size: int) -> str:
    if not isinstance(value, str) or len(value) != size * 2:
        return ""
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        return ""
    return raw.hex() if any(raw) else ""


def _uint(value: Any) -> int:
    """int64/fixed64 arrive as decimal strings (or numbers); anything unreadable is 0, which the mapping rejects."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value if value >= 0 else 0
    if isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            return 0
        return number if number >= 0 else 0
    return 0


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _json_int64(raw: Any) -> int:
    """An ``intValue`` as the protobuf JSON mapping reads it: a decimal string or a number, exponent notation
    included, as long as the value is integral and fits int64. Anything else refuses the request: stored as NULL,
    a token count would vanish from the bill without a word."""
    number: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        number = raw
    elif isinstance(raw, float) and raw.is_integer():
        number = int(raw)
    elif isinstance(raw, str) and " " not in raw:
        try:
            number = int(raw)
        except ValueError:
            try:
                as_float = float(raw)
            except ValueError:
                as_float = math.nan
            number = int(as_float) if as_float.is_integer() else None
    if number is None or not _INT64_MIN <= number <= _INT64_MAX:
        raise DecodeError(f"intValue {raw!r} is not an int64 (a decimal string or an integral number)")
    return number


def _enum(value: Any, names: dict[str, int]) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return names.get(value, 0)
    return 0


def _json_attributes(items: list[Any], depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in items:
        if isinstance(kv, dict) and isinstance(kv.get("key"), str):
            key = _str(kv["key"])
            try:
                out[key] = _json_value(kv.get("value"), depth)
            except DecodeError as exc:
                raise DecodeError(f"attribute {key!r}: {exc}") from None
    return out


def _json_value(value: Any, depth: int) -> Any:
    if not isinstance(value, dict) or not value:
        return None
    if "stringValue" in value or "string_value" in value:
        return _str(_field(value, "stringValue", "string_value"))
    if "intValue" in value or "int_value" in value:
        return _json_int64(_field(value, "intValue", "int_value"))
    if "doubleValue" in value or "double_value" in value:
        raw = _field(value, "doubleValue", "double_value")
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        try:
            return float(raw) if isinstance(raw, str) else None  # "NaN", "Infinity" per the JSON mapping
        except ValueError:
            return None
    if "boolValue" in value or "bool_value" in value:
        raw = _field(value, "boolValue", "bool_value")
        return raw if isinstance(raw, bool) else None
    if depth >= _MAX_NESTING:
        return None
    if "arrayValue" in value or "array_value" in value:
        inner = _field(value, "arrayValue", "array_value")
        items = inner.get("values", []) if isinstance(inner, dict) else []
        return [_json_value(v, depth + 1) for v in items] if isinstance(items, list) else None
    if "kvlistValue" in value or "kvlist_value" in value:
        inner = _field(value, "kvlistValue", "kvlist_value")
        items = inner.get("values", []) if isinstance(inner, dict) else []
        return _json_attributes(items, depth + 1) if isinstance(items, list) else None
    if "bytesValue" in value or "bytes_value" in value:
        raw = _field(value, "bytesValue", "bytes_value")
        try:
            return base64.b64decode(raw, validate=True).hex() if isinstance(raw, str) else None
        except ValueError:
            return None
    return None
