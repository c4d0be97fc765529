"""Span records → ledger rows (DESIGN §2, §4).

* A GenAI model-call span (it names a provider, a model or a model operation) becomes an ``attempts`` row; agent
  and tool spans (``invoke_agent``, ``execute_tool`` …) and non-GenAI spans are ignored, not errors.
* A costline task span becomes a ``tasks`` row.
* A GenAI span that cannot be accounted (no model, no provider, negative or absurd token counts, more cached than
  input tokens, impossible timestamps, missing ids) is rejected with a reason; the receiver reports those in
  ``partial_success``. Nothing half-valid reaches the ledger.

Other emitters' aliases map onto the same columns: ``gen_ai.system`` for the provider, ``prompt_tokens`` /
``completion_tokens``, ``cache_write.input_tokens``, and carried costs (``gen_ai.usage.cost``, ``operation.cost``)
kept as ``reported_cost_usd`` beside the cost computed here.

Whether a nested GenAI span repeats its parent's model call needs the parent, which may sit in another request:
the row carries ``check_parent`` and the ledger writer resolves it against the batch and the ledger.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import pyarrow as pa

from collector.otlp_decode import STATUS_ERROR, SpanRecord
from collector.price_cache import FastPricer, usd_to_nanos
from costline import spans as S
from costline.pricing import LOCAL_PROVIDERS

log = logging.getLogger(__name__)

MAX_TOKENS: Final = 100_000_000  # more than this in one call is a broken emitter, not a bill
MAX_NAME_CHARS: Final = 256  # provider and model names become metric labels
MAX_TEXT_CHARS: Final = 1024
MIN_START_NS: Final = 946_684_800 * 1_000_000_000  # 2000-01-01T00:00:00Z
MAX_FUTURE_NS: Final = 86_400 * 1_000_000_000  # spans may start at most a day ahead of this clock
MAX_DURATION_NS: Final = 7 * 86_400 * 1_000_000_000
NON_CALL_OPERATIONS: Final = frozenset({"invoke_agent", "create_agent", "execute_tool"})

TS = pa.timestamp("us", tz="UTC")
COST = pa.decimal128(18, 9)  # rows carry whole nano-dollars (int); the Arrow column is the exact decimal

# Batch columns, in order. The ledger inserts them by name; ``check_parent`` is batch-only.
ATTEMPT_SCHEMA: Final = pa.schema(
    [
        ("trace_id", pa.string()),
        ("span_id", pa.string()),
        ("parent_span_id", pa.string()),
        ("task_id", pa.string()),
        ("task_type", pa.string()),
        ("tier", pa.string()),
        ("attempt_index", pa.int32()),
        ("provider", pa.string()),
        ("operation", pa.string()),
        ("request_model", pa.string()),
        ("response_model", pa.string()),
        ("outcome", pa.string()),
        ("error_type", pa.string()),
        ("escalation_reason", pa.string()),
        ("start_time", TS),
        ("end_time", TS),
        ("duration_s", pa.float64()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("cache_read_tokens", pa.int64()),
        ("cache_write_tokens", pa.int64()),
        ("local_compute_s", pa.float64()),
        ("cost_usd", COST),
        ("counterfactual_usd", COST),
        ("reported_cost_usd", COST),
        ("price_source", pa.string()),
        ("server_address", pa.string()),
        ("server_port", pa.int32()),
        ("service_name", pa.string()),
        ("span_key", pa.uint64()),
        ("parent_key", pa.uint64()),
        ("check_parent", pa.bool_()),
    ]
)
TASK_SCHEMA: Final = pa.schema(
    [
        ("trace_id", pa.string()),
        ("span_id", pa.string()),
        ("task_id", pa.string()),
        ("task_type", pa.string()),
        ("critical", pa.bool_()),
        ("outcome", pa.string()),
        ("escalated", pa.bool_()),
        ("attempts", pa.int32()),
        ("start_time", TS),
        ("end_time", TS),
        ("duration_s", pa.float64()),
        ("service_name", pa.string()),
        ("span_key", pa.uint64()),
    ]
)
# Made once: building an empty table converts through Python (~45-90 µs), and most requests carry no task spans.
EMPTY_ATTEMPTS: Final = ATTEMPT_SCHEMA.empty_table()
EMPTY_TASKS: Final = TASK_SCHEMA.empty_table()
ATTEMPT_COLUMNS: Final = tuple(n for n in ATTEMPT_SCHEMA.names if n != "check_parent")
TASK_COLUMNS: Final = tuple(TASK_SCHEMA.names)


# Every attribute the mapping reads; decoders may skip the others.
ATTRIBUTES_READ: Final = frozenset(
    {
        S.OPERATION_NAME,
        S.PROVIDER_NAME,
        S.ALIAS_SYSTEM,
        S.REQUEST_MODEL,
        S.RESPONSE_MODEL,
        S.USAGE_INPUT_TOKENS,
        S.ALIAS_PROMPT_TOKENS,
        S.USAGE_OUTPUT_TOKENS,
        S.ALIAS_COMPLETION_TOKENS,
        S.USAGE_CACHE_READ_INPUT_TOKENS,
        S.USAGE_CACHE_CREATION_INPUT_TOKENS,
        S.ALIAS_CACHE_WRITE_INPUT_TOKENS,
        S.ALIAS_COST_OPENLIT,
        S.ALIAS_COST_LOGFIRE,
        S.ERROR_TYPE,
        S.SERVER_ADDRESS,
        S.SERVER_PORT,
        S.TASK_ID,
        S.TASK_TYPE,
        S.TASK_CRITICAL,
        S.TASK_OUTCOME,
        S.TASK_ESCALATED,
        S.TASK_ATTEMPTS,
        S.ATTEMPT_INDEX,
        S.ATTEMPT_TIER,
        S.ESCALATION_REASON,
        S.LOCAL_COMPUTE_SECONDS,
    }
)


class Rejected(ValueError):
    """A GenAI span that cannot be accounted; the message says why."""


@dataclass
class MappedRequest:
    attempts: pa.Table
    tasks: pa.Table
    rejected: list[str] = field(default_factory=list)  # one reason per rejected span
    ignored: int = 0  # spans that are not GenAI model calls or costline tasks

    @property
    def span_count(self) -> int:
        return self.attempts.num_rows + self.tasks.num_rows

    def rejection_message(self, limit: int = 3) -> str:
        if not self.rejected:
            return ""
        counts: dict[str, int] = {}
        for reason in self.rejected:
            counts[reason] = counts.get(reason, 0) + 1
        parts = [f"{n} × {reason}" if n > 1 else reason for reason, n in list(counts.items())[:limit]]
        more = len(counts) - limit
        suffix = f"; and {more} other reasons" if more > 0 else ""
        return f"{len(self.rejected)} GenAI span(s) rejected: " + "; ".join(parts) + suffix

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (decode workers → collector) as Arrow IPC streams: ~10x cheaper than pickling the tables."""
        return (_unpickle_request, (_to_ipc(self.attempts), _to_ipc(self.tasks), self.rejected, self.ignored))


def _to_ipc(table: pa.Table) -> pa.Buffer | None:
    if table.num_rows == 0:
        return None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as stream:
        stream.write_table(table)
    return sink.getvalue()


def _from_ipc(data: pa.Buffer | None, empty: pa.Table) -> pa.Table:
    return empty if data is None else pa.ipc.open_stream(data).read_all()


def _unpickle_request(
    attempts: pa.Buffer | None, tasks: pa.Buffer | None, rejected: list[str], ignored: int
) -> MappedRequest:
    return MappedRequest(_from_ipc(attempts, EMPTY_ATTEMPTS), _from_ipc(tasks, EMPTY_TASKS), rejected, ignored)


def span_key(trace_id: str, span_id: str) -> int:
    """A 64-bit dedupe key: the span id mixed with the low half of the trace id (exact ids are checked on a hit)."""
    return int(span_id, 16) ^ int(trace_id[16:], 16)


def map_spans(spans: list[SpanRecord], pricer: FastPricer, now_ns: int | None = None) -> MappedRequest:
    rows = RowCollector(pricer, now_ns)
    for span in spans:
        rows.add(span)
    return rows.result()


class RowCollector:
    """Rows, rejections and ignored spans of one request, span by span, in the order the spans came."""

    def __init__(self, pricer: FastPricer, now_ns: int | None = None) -> None:
        self.pricer = pricer
        self.now_ns = time.time_ns() if now_ns is None else now_ns
        self.attempt_rows: list[tuple[Any, ...]] = []
        self.task_rows: list[tuple[Any, ...]] = []
        self.rejected: list[str] = []
        self.ignored = 0

    def add(self, span: SpanRecord) -> None:
        attrs = span.attributes
        try:
            if _is_model_call(attrs):
                self.attempt_rows.append(_attempt_row(span, attrs, self.pricer, self.now_ns))
            elif S.TASK_OUTCOME in attrs or (S.TASK_ID in attrs and span.name.startswith("task ")):
                self.task_rows.append(_task_row(span, attrs, self.now_ns))
            else:
                self.ignored += 1
        except Rejected as exc:
            self.rejected.append(str(exc))
        except Exception as exc:  # a shape nobody foresaw: refuse this span, keep the others
            log.warning("span %s could not be mapped: %r", span.span_id or "(no id)", exc)
            self.rejected.append(f"span could not be read ({type(exc).__name__}) (span {span.span_id or 'without id'})")

    def result(self) -> MappedRequest:
        return MappedRequest(
            _table(self.attempt_rows, EMPTY_ATTEMPTS), _table(self.task_rows, EMPTY_TASKS), self.rejected, self.ignored
        )


def _table(rows: list[tuple[Any, ...]], empty: pa.Table) -> pa.Table:
    if not rows:
        return empty
    schema = empty.schema
    columns = list(zip(*rows, strict=True))
    arrays = []
    for col, f in zip(columns, schema, strict=True):
        if f.type == COST:  # whole nano-dollars → DECIMAL(18, 9) without a Decimal object per value
            arrays.append(pa.array(col, pa.int64()).cast(pa.decimal128(19, 0)).view(COST))
        else:
            arrays.append(pa.array(col, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _is_model_call(attrs: dict[str, Any]) -> bool:
    operation = attrs.get(S.OPERATION_NAME)
    if isinstance(operation, str) and operation in NON_CALL_OPERATIONS:  # an array value is unhashable
        return False
    return (
        operation is not None
        or S.PROVIDER_NAME in attrs
        or S.ALIAS_SYSTEM in attrs
        or S.REQUEST_MODEL in attrs
        or S.RESPONSE_MODEL in attrs
    )


def _attempt_row(span: SpanRecord, a: dict[str, Any], pricer: FastPricer, now_ns: int) -> tuple[Any, ...]:
    trace_id, span_id = span.trace_id, span.span_id
    if not trace_id or not span_id:
        raise Rejected("missing or malformed trace/span id")
    where = f" (span {span_id})"
    start_ns, end_ns = span.start_ns, span.end_ns
    _check_times(start_ns, end_ns, now_ns, where)

    provider = _name(a.get(S.PROVIDER_NAME) or a.get(S.ALIAS_SYSTEM), "provider", where)
    request_model = _name(a.get(S.REQUEST_MODEL), "request model", where)
    response_model = _name(a.get(S.RESPONSE_MODEL), "response model", where)
    model = request_model or response_model
    if not model:
        raise Rejected(f"no gen_ai.request.model or gen_ai.response.model{where}")
    if not provider:
        raise Rejected(f"no gen_ai.provider.name or gen_ai.system{where}")

    input_tokens = _tokens(a, S.USAGE_INPUT_TOKENS, S.ALIAS_PROMPT_TOKENS, where=where)
    output_tokens = _tokens(a, S.USAGE_OUTPUT_TOKENS, S.ALIAS_COMPLETION_TOKENS, where=where)
    cache_read = _tokens(a, S.USAGE_CACHE_READ_INPUT_TOKENS, where=where)
    cache_write = _tokens(a, S.USAGE_CACHE_CREATION_INPUT_TOKENS, S.ALIAS_CACHE_WRITE_INPUT_TOKENS, where=where)
    if (cache_read or 0) + (cache_write or 0) > (input_tokens or 0):
        raise Rejected(f"cache read + cache write tokens exceed input tokens{where}")

    error_type = as_text(a.get(S.ERROR_TYPE))
    failed = span.status_code == STATUS_ERROR or error_type is not None
    compute_s = as_non_negative_float(a.get(S.LOCAL_COMPUTE_SECONDS))

    counts = (input_tokens or 0, output_tokens or 0, cache_read or 0, cache_write or 0)
    cost, price_source = pricer.price_nanos(provider, model, *counts, at_ns=start_ns, compute_seconds=compute_s)
    counterfactual = None
    if provider in LOCAL_PROVIDERS and not failed:
        counterfactual = pricer.counterfactual_nanos(*counts, at_ns=start_ns)
    parent_span_id = span.parent_span_id or None
    return (
        trace_id,
        span_id,
        parent_span_id,
        as_text(a.get(S.TASK_ID)),
        as_text(a.get(S.TASK_TYPE)),
        as_text(a.get(S.ATTEMPT_TIER)),
        as_int32(a.get(S.ATTEMPT_INDEX)),
        provider,
        as_text(a.get(S.OPERATION_NAME)),
        request_model,
        response_model,
        "error" if failed else "success",
        error_type,
        as_text(a.get(S.ESCALATION_REASON)),
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
        _reported_cost(a),
        price_source,
        as_text(a.get(S.SERVER_ADDRESS)),
        as_port(a.get(S.SERVER_PORT)),
        span.service_name,
        span_key(trace_id, span_id),
        span_key(trace_id, parent_span_id) if parent_span_id else None,
        parent_span_id is not None and S.ATTEMPT_TIER not in a,
    )


def _task_row(span: SpanRecord, a: dict[str, Any], now_ns: int) -> tuple[Any, ...]:
    trace_id, span_id = span.trace_id, span.span_id
    if not trace_id or not span_id:
        raise Rejected("missing or malformed trace/span id")
    where = f" (task span {span_id})"
    task_id = as_text(a.get(S.TASK_ID))
    if not task_id:
        raise Rejected(f"task span without costline.task.id{where}")
    _check_times(span.start_ns, span.end_ns, now_ns, where)
    return (
        trace_id,
        span_id,
        task_id,
        as_text(a.get(S.TASK_TYPE)),
        _bool(a.get(S.TASK_CRITICAL)),
        as_text(a.get(S.TASK_OUTCOME)),
        _bool(a.get(S.TASK_ESCALATED)),
        as_int32(a.get(S.TASK_ATTEMPTS)),
        span.start_ns // 1000,
        span.end_ns // 1000,
        (span.end_ns - span.start_ns) / 1e9,
        span.service_name,
        span_key(trace_id, span_id),
    )


def _check_times(start_ns: int, end_ns: int, now_ns: int, where: str) -> None:
    if start_ns < MIN_START_NS:
        raise Rejected(f"start time missing or before 2000-01-01{where}")
    if start_ns > now_ns + MAX_FUTURE_NS:
        raise Rejected(f"start time more than a day in the future{where}")
    if end_ns < start_ns:
        raise Rejected(f"end time before start time{where}")
    if end_ns - start_ns > MAX_DURATION_NS:
        raise Rejected(f"duration longer than 7 days{where}")


def _name(value: Any, what: str, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Rejected(f"{what} is not a string{where}")
    if len(value) > MAX_NAME_CHARS:
        raise Rejected(f"{what} longer than {MAX_NAME_CHARS} characters{where}")
    return value


def _tokens(a: dict[str, Any], *keys: str, where: str) -> int | None:
    for key in keys:
        value = a.get(key)
        if value is None:
            continue
        if type(value) is int:
            count = value
        elif (isinstance(value, float) and value.is_integer()) or (
            isinstance(value, str) and value.strip().lstrip("-").isdigit()
        ):
            count = int(value)
        else:
            raise Rejected(f"{key} is not a whole number{where}")
        if count < 0:
            raise Rejected(f"negative {key}{where}")
        if count > MAX_TOKENS:
            raise Rejected(f"{key} above {MAX_TOKENS:,} in one call{where}")
        return count
    return None


def as_text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_TEXT_CHARS] if text else None


def as_int32(value: Any) -> int | None:
    if type(value) is int and -(2**31) <= value < 2**31:
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 10:
        return int(value)
    return None


def as_port(value: Any) -> int | None:
    port = as_int32(value)
    return port if port is not None and 0 <= port <= 65535 else None


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def as_non_negative_float(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def _reported_cost(a: dict[str, Any]) -> int | None:
    """A carried cost in nano-dollars; anything that is not a finite, non-negative amount is ignored."""
    value = a.get(S.ALIAS_COST_OPENLIT)
    if value is None:
        value = a.get(S.ALIAS_COST_LOGFIRE)
    if value is None or isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        cost = Decimal(str(value))
    except InvalidOperation:
        return None
    if not cost.is_finite() or cost < 0:
        return None
    return usd_to_nanos(cost)
