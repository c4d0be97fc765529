"""OTLP protobuf → ledger rows in one pass: the collector's hot path.

``map_spans(decode_protobuf(body))`` does the same in two steps, through a :class:`SpanRecord` and an attribute dict
per span; it stays the reference, and the tests hold this module to it on arbitrary and hostile input. Here, the
attributes the mapping reads are decoded straight into slots, each read first as the type it normally has (a
non-empty string proves the attribute *is* a string, so the oneof need not be asked), and a well-formed model call
becomes its row without an intermediate record. Any span this path is not sure of, for any reason, goes through the
reference mapping whole, so rows and rejection messages are the same either way.
"""

from __future__ import annotations

import math
from typing import Any, Final

from collector import mapping as M
from collector.otlp_decode import ABSENT, STATUS_ERROR, parse_protobuf, pb_attribute, pb_service_name, pb_span_record
from collector.price_cache import FastPricer
from costline import spans as S
from costline.pricing import LOCAL_PROVIDERS

_STRING, _INT, _DOUBLE, _BOOL = 0, 1, 2, 3
_EXPECTED: Final = {
    S.OPERATION_NAME: _STRING,
    S.PROVIDER_NAME: _STRING,
    S.ALIAS_SYSTEM: _STRING,
    S.REQUEST_MODEL: _STRING,
    S.RESPONSE_MODEL: _STRING,
    S.USAGE_INPUT_TOKENS: _INT,
    S.ALIAS_PROMPT_TOKENS: _INT,
    S.USAGE_OUTPUT_TOKENS: _INT,
    S.ALIAS_COMPLETION_TOKENS: _INT,
    S.USAGE_CACHE_READ_INPUT_TOKENS: _INT,
    S.USAGE_CACHE_CREATION_INPUT_TOKENS: _INT,
    S.ALIAS_CACHE_WRITE_INPUT_TOKENS: _INT,
    S.ALIAS_COST_OPENLIT: _DOUBLE,
    S.ALIAS_COST_LOGFIRE: _DOUBLE,
    S.ERROR_TYPE: _STRING,
    S.SERVER_ADDRESS: _STRING,
    S.SERVER_PORT: _INT,
    S.TASK_ID: _STRING,
    S.TASK_TYPE: _STRING,
    S.TASK_CRITICAL: _BOOL,
    S.TASK_OUTCOME: _STRING,
    S.TASK_ESCALATED: _BOOL,
    S.TASK_ATTEMPTS: _INT,
    S.ATTEMPT_INDEX: _INT,
    S.ATTEMPT_TIER: _STRING,
    S.ESCALATION_REASON: _STRING,
    S.LOCAL_COMPUTE_SECONDS: _DOUBLE,
}
if set(_EXPECTED) != M.ATTRIBUTES_READ:  # a key added to the mapping must be read here too
    raise ImportError("collector.protobuf_rows does not read the same attributes as collector.mapping")

KEYS: Final = tuple(_EXPECTED)
_SLOTS: Final = {key: (slot, _EXPECTED[key]) for slot, key in enumerate(KEYS)}
(
    OPERATION,
    PROVIDER,
    SYSTEM,
    REQUEST_MODEL,
    RESPONSE_MODEL,
    INPUT,
    PROMPT,
    OUTPUT,
    COMPLETION,
    CACHE_READ,
    CACHE_CREATION,
    CACHE_WRITE,
    COST_OPENLIT,
    COST_LOGFIRE,
    ERROR_TYPE,
    SERVER_ADDRESS,
    SERVER_PORT,
    TASK_ID,
    TASK_TYPE,
    _TASK_CRITICAL,
    TASK_OUTCOME,
    _TASK_ESCALATED,
    _TASK_ATTEMPTS,
    ATTEMPT_INDEX,
    TIER,
    ESCALATION_REASON,
    COMPUTE_SECONDS,
) = range(len(KEYS))

_ZERO_TRACE, _ZERO_SPAN = bytes(16), bytes(8)
_TEXT: Final = M.MAX_TEXT_CHARS
_NAME: Final = M.MAX_NAME_CHARS
_TOKENS: Final = M.MAX_TOKENS


def map_protobuf(body: bytes, pricer: FastPricer, now_ns: int | None = None) -> M.MappedRequest:
    """What ``map_spans(decode_protobuf(body, ATTRIBUTES_READ), pricer, now_ns)`` returns, at a fraction of the CPU.

    Raises :class:`collector.otlp_decode.DecodeError` for a payload that is not an ExportTraceServiceRequest.
    """
    request = parse_protobuf(body)
    rows = M.RowCollector(pricer, now_ns)
    attempt_rows = rows.attempt_rows
    for resource_spans in request.resource_spans:
        service = pb_service_name(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                values = _read_attributes(span.attributes)
                try:
                    row = _attempt_row(span, values, service, pricer, rows.now_ns)
                except Exception:  # the reference mapping meets it again and says why the span is refused
                    row = None
                if row is not None:
                    attempt_rows.append(row)
                else:
                    attributes = {key: value for key, value in zip(KEYS, values, strict=True) if value is not None}
                    rows.add(pb_span_record(span, attributes, service))
    return rows.result()


def _read_attributes(attributes: Any) -> list[Any]:
    """The attributes the mapping reads, by slot; None where absent. The last of repeated keys wins."""
    values: list[Any] = [None] * len(KEYS)
    slots = _SLOTS
    for kv in attributes:
        found = slots.get(kv.key)
        if found is None:
            continue
        slot, expected = found
        value = kv.value
        if expected == _STRING:
            guess: Any = value.string_value
        elif expected == _INT:
            guess = value.int_value
        elif expected == _DOUBLE:
            guess = value.double_value
        else:
            guess = value.bool_value
        if guess:  # a non-default value is only read from the field that is set
            values[slot] = guess
            continue
        read = pb_attribute(value)
        if read is not ABSENT:
            values[slot] = read
    return values


def _attempt_row(
    span: Any, v: list[Any], service: str | None, pricer: FastPricer, now_ns: int
) -> tuple[Any, ...] | None:
    """The attempts row of a well-formed model-call span; None for anything else (the reference decides those).

    Every check below is one the reference mapping makes; a span that would fail any of them, or whose values are
    not of the usual types, returns None here rather than being judged twice.
    """
    operation = v[OPERATION]
    if operation.__class__ is not str or operation in M.NON_CALL_OPERATIONS:
        return None
    trace, span_bytes = span.trace_id, span.span_id
    if len(trace) != 16 or len(span_bytes) != 8 or trace == _ZERO_TRACE or span_bytes == _ZERO_SPAN:
        return None
    start_ns, end_ns = span.start_time_unix_nano, span.end_time_unix_nano
    if (
        start_ns < M.MIN_START_NS
        or start_ns > now_ns + M.MAX_FUTURE_NS
        or end_ns < start_ns
        or end_ns - start_ns > M.MAX_DURATION_NS
    ):
        return None

    provider = v[PROVIDER] or v[SYSTEM]
    request_model, response_model = v[REQUEST_MODEL], v[RESPONSE_MODEL]
    if provider.__class__ is not str or not 0 < len(provider) <= _NAME:
        return None
    if request_model is not None and (request_model.__class__ is not str or not 0 < len(request_model) <= _NAME):
        return None
    if response_model is not None and (response_model.__class__ is not str or not 0 < len(response_model) <= _NAME):
        return None
    model = request_model or response_model
    if not model:
        return None

    input_tokens = v[INPUT] if v[INPUT] is not None else v[PROMPT]
    output_tokens = v[OUTPUT] if v[OUTPUT] is not None else v[COMPLETION]
    cache_read = v[CACHE_READ]
    cache_write = v[CACHE_CREATION] if v[CACHE_CREATION] is not None else v[CACHE_WRITE]
    for count in (input_tokens, output_tokens, cache_read, cache_write):
        if count is not None and (count.__class__ is not int or not 0 <= count <= _TOKENS):
            return None
    counts = (input_tokens or 0, output_tokens or 0, cache_read or 0, cache_write or 0)
    if counts[2] + counts[3] > counts[0]:
        return None
    if v[COST_OPENLIT] is not None or v[COST_LOGFIRE] is not None:
        return None  # carried costs are rare; the reference parses them

    error_type = _text(v[ERROR_TYPE])
    failed = span.status.code == STATUS_ERROR or error_type is not None
    compute = v[COMPUTE_SECONDS]
    if compute.__class__ is float and 0.0 <= compute < math.inf:
        compute_s = compute
    else:
        compute_s = M.as_non_negative_float(compute)

    cost, price_source = pricer.price_nanos(provider, model, *counts, at_ns=start_ns, compute_seconds=compute_s)
    counterfactual = None
    if provider in LOCAL_PROVIDERS and not failed:
        counterfactual = pricer.counterfactual_nanos(*counts, at_ns=start_ns)
    trace_id, span_id = trace.hex(), span_bytes.hex()
    parent = span.parent_span_id
    parent_span_id = parent.hex() if len(parent) == 8 and parent != _ZERO_SPAN else None
    key = M.span_key(trace_id, span_id)
    return (
        trace_id,
        span_id,
        parent_span_id,
        _text(v[TASK_ID]),
        _text(v[TASK_TYPE]),
        _text(v[TIER]),
        M.as_int32(v[ATTEMPT_INDEX]),
        provider,
        operation[:_TEXT] or None,
        request_model,
        response_model,
        "error" if failed else "success",
        error_type,
        _text(v[ESCALATION_REASON]),
        start_ns // 1000,
        end_ns // 1000,
        (end_ns - start_ns) / 1e9,
        input_tokens,
        output_tokens,
        cache_read,
        cache_write,
        compute_s,
        cost,
        counterfactual,
        None,
        price_source,
        _text(v[SERVER_ADDRESS]),
        M.as_port(v[SERVER_PORT]),
        service,
        key,
        M.span_key(trace_id, parent_span_id) if parent_span_id else None,
        parent_span_id is not None and v[TIER] is None,
    )


def _text(value: Any) -> str | None:
    if value.__class__ is str:
        return value[:_TEXT] or None
    return M.as_text(value)
