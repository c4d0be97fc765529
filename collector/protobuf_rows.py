"""OTLP protobuf → ledger rows in one pass: the collector's hot path.

This module only decodes. The attributes the mapping reads (:data:`collector.mapping.KEYS`) go straight into the
slot list :class:`collector.mapping.RowCollector` takes, each read first as the type it normally has (a non-empty
string proves the attribute *is* a string, so the oneof need not be asked); the emitter is found once per
instrumentation scope. Every rule about what a span means lives in :mod:`collector.mapping` and
:mod:`collector.emitters`, which the JSON path uses too.
"""

from __future__ import annotations

from typing import Any, Final

from collector import mapping as M
from collector.emitters import emitter_for
from collector.otlp_decode import ABSENT, parse_protobuf, pb_attribute, pb_resource_names
from collector.price_cache import FastPricer

_SLOTS: Final = M.EXPECTED_TYPE
_SIZE: Final = len(M.KEYS)
_ZERO_TRACE, _ZERO_SPAN = bytes(16), bytes(8)


def map_protobuf(body: bytes, pricer: FastPricer, now_ns: int | None = None) -> M.MappedRequest:
    """The rows of an ExportTraceServiceRequest.

    Raises :class:`collector.otlp_decode.DecodeError` for a payload that is not an ExportTraceServiceRequest.
    """
    request = parse_protobuf(body)
    rows = M.RowCollector(pricer, now_ns)
    add = rows.add
    for resource_spans in request.resource_spans:
        service, sdk_name = pb_resource_names(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            emitter = emitter_for(scope_spans.scope.name, sdk_name)
            for span in scope_spans.spans:
                trace, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
                add(
                    trace.hex() if len(trace) == 16 and trace != _ZERO_TRACE else "",
                    span_id.hex() if len(span_id) == 8 and span_id != _ZERO_SPAN else "",
                    parent.hex() if len(parent) == 8 and parent != _ZERO_SPAN else "",
                    span.name,
                    span.start_time_unix_nano,
                    span.end_time_unix_nano,
                    span.status.code,
                    service,
                    emitter,
                    read_attributes(span.attributes),
                )
    return rows.result()


def read_attributes(attributes: Any) -> list[Any]:
    """The attributes the mapping reads, by slot; None where absent. The last of repeated keys wins."""
    values: list[Any] = [None] * _SIZE
    slots = _SLOTS
    for kv in attributes:
        found = slots.get(kv.key)
        if found is None:
            continue
        slot, expected = found
        value = kv.value
        if expected == M.STRING:
            guess: Any = value.string_value
        elif expected == M.INT:
            guess = value.int_value
        elif expected == M.DOUBLE:
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
