"""Spans → ledger rows (DESIGN §2, §4): the one mapping, used by every decoder.

* A GenAI model-call span (it names a provider, a model or a model operation) becomes an ``attempts`` row; agent
  and tool spans (``invoke_agent``, ``execute_tool`` …) and non-GenAI spans are ignored, not errors.
* A costline task span becomes a ``tasks`` row.
* A GenAI span that cannot be accounted (no provider, negative or absurd token counts, cache counts an emitter
  documented as inclusive cannot hold, impossible timestamps, missing ids) is rejected with a reason; the receiver
  reports those in ``partial_success``. Nothing half-valid reaches the ledger.

Decoders hand each span's attributes over as a list indexed by :data:`SLOT` (only :data:`KEYS` are read), with the
:class:`collector.emitters.Emitter` of its instrumentation scope. Which attribute carries which count, and whether
input counts include cache, comes from that emitter's row alone. A span without usage is stored with a NULL cost
(``price_source = 'no-usage'``), never $0. A cost the emitter carried is kept in ``reported_cost_usd``, and
``cost_disagrees`` says whether it is further from costline's than :data:`costline.pricing.COST_TOLERANCE_RATIO` allows.

Whether a nested GenAI span repeats its parent's model call needs the parent, which may sit in another request:
the row carries ``check_parent`` and the ledger writer resolves it against the batch and the ledger.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import pyarrow as pa

from collector import emitters as E
from collector.emitters import Emitter
from collector.otlp_decode import STATUS_ERROR, SpanRecord
from collector.price_cache import FastPricer, usd_to_nanos
from costline import spans as S
from costline.pricing import (
    COST_TOLERANCE_NANOS,
    COST_TOLERANCE_RATIO,
    LOCAL_PROVIDERS,
    SOURCE_NO_USAGE,
    SOURCE_UNPRICED,
)

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
        ("cost_disagrees", pa.bool_()),
        ("emitter", pa.string()),
        ("price_source", pa.string()),
        ("server_address", pa.string()),
        ("server_port", pa.int32()),
        ("service_name", pa.string()),
        ("team", pa.string()),
        ("project", pa.string()),
        ("user_id", pa.string()),
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
        ("team", pa.string()),
        ("project", pa.string()),
        ("user_id", pa.string()),
        ("span_key", pa.uint64()),
    ]
)
# Made once: building an empty table converts through Python (~45-90 µs), and most requests carry no task spans.
EMPTY_ATTEMPTS: Final = ATTEMPT_SCHEMA.empty_table()
EMPTY_TASKS: Final = TASK_SCHEMA.empty_table()
ATTEMPT_COLUMNS: Final = tuple(n for n in ATTEMPT_SCHEMA.names if n != "check_parent")
TASK_COLUMNS: Final = tuple(TASK_SCHEMA.names)


_STRING, _INT, _DOUBLE, _BOOL = 0, 1, 2, 3
# Every attribute the mapping reads, with the type it normally has; decoders skip the others.
_EXPECTED: Final = {
    S.OPERATION_NAME: _STRING,
    S.PROVIDER_NAME: _STRING,
    S.ALIAS_SYSTEM: _STRING,
    S.REQUEST_MODEL: _STRING,
    S.RESPONSE_MODEL: _STRING,
    E.TELEMETRY_SDK_NAME: _STRING,
    **{key: _STRING if key == E.USAGE_RAW else _DOUBLE if "cost" in key else _INT for key in E.USAGE_ATTRIBUTES},
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
    S.TEAM: _STRING,
    S.PROJECT: _STRING,
    S.USER_ID: _STRING,
}
KEYS: Final = tuple(_EXPECTED)
ATTRIBUTES_READ: Final = frozenset(KEYS)
SLOT: Final = {key: slot for slot, key in enumerate(KEYS)}
EXPECTED_TYPE: Final = {key: (SLOT[key], kind) for key, kind in _EXPECTED.items()}
STRING, INT, DOUBLE, BOOL = _STRING, _INT, _DOUBLE, _BOOL
_OPERATION, _PROVIDER, _SYSTEM = SLOT[S.OPERATION_NAME], SLOT[S.PROVIDER_NAME], SLOT[S.ALIAS_SYSTEM]
_REQUEST_MODEL, _RESPONSE_MODEL, _SDK_NAME = SLOT[S.REQUEST_MODEL], SLOT[S.RESPONSE_MODEL], SLOT[E.TELEMETRY_SDK_NAME]
_ERROR_TYPE, _SERVER_ADDRESS, _SERVER_PORT = SLOT[S.ERROR_TYPE], SLOT[S.SERVER_ADDRESS], SLOT[S.SERVER_PORT]
_TASK_ID, _TASK_TYPE, _TASK_OUTCOME = SLOT[S.TASK_ID], SLOT[S.TASK_TYPE], SLOT[S.TASK_OUTCOME]
_TASK_CRITICAL, _TASK_ESCALATED, _TASK_ATTEMPTS = SLOT[S.TASK_CRITICAL], SLOT[S.TASK_ESCALATED], SLOT[S.TASK_ATTEMPTS]
_ATTEMPT_INDEX, _TIER, _REASON = SLOT[S.ATTEMPT_INDEX], SLOT[S.ATTEMPT_TIER], SLOT[S.ESCALATION_REASON]
_COMPUTE = SLOT[S.LOCAL_COMPUTE_SECONDS]
_TEAM, _PROJECT, _USER_ID = SLOT[S.TEAM], SLOT[S.PROJECT], SLOT[S.USER_ID]


@dataclass(frozen=True, slots=True)
class _Reads:
    """An emitter's attribute names as (slot, name) pairs, in the order they are tried."""

    input: tuple[tuple[int, str], ...]
    output: tuple[tuple[int, str], ...]
    cache_read: tuple[tuple[int, str], ...]
    cache_write: tuple[tuple[int, str], ...]
    cost: tuple[int, ...]
    raw_usage: int | None


def _reads(e: Emitter) -> _Reads:
    def pairs(keys: tuple[str, ...]) -> tuple[tuple[int, str], ...]:
        return tuple((SLOT[k], k) for k in keys)

    return _Reads(
        pairs(e.input),
        pairs(e.output),
        pairs(e.cache_read),
        pairs(e.cache_write),
        tuple(SLOT[k] for k in e.cost),
        SLOT[e.raw_usage] if e.raw_usage else None,
    )


_READS: Final = {e: _reads(e) for e in E.EMITTERS}


def attributes_to_slots(attributes: dict[str, Any]) -> list[Any]:
    """A decoded attribute dict as the slot list the mapping reads."""
    get = attributes.get
    return [get(key) for key in KEYS]


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


def span_key(span_id: str) -> int:
    """The dedupe key: the span id's 64 bits. Span ids may repeat across traces, so a key hit is confirmed on the
    exact (trace_id, span_id) before anything is treated as the same span."""
    return int(span_id, 16)


def map_spans(spans: list[SpanRecord], pricer: FastPricer, now_ns: int | None = None) -> MappedRequest:
    rows = RowCollector(pricer, now_ns)
    emitters: dict[tuple[str, str | None], Emitter] = {}
    for span in spans:
        scope = (span.scope_name, span.sdk_name)
        emitter = emitters.get(scope)
        if emitter is None:
            emitter = emitters[scope] = E.emitter_for(*scope)
        rows.add(
            span.trace_id,
            span.span_id,
            span.parent_span_id,
            span.name,
            span.start_ns,
            span.end_ns,
            span.status_code,
            span.service_name,
            emitter,
            attributes_to_slots(span.attributes),
        )
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

    def add(
        self,
        trace_id: str,
        span_id: str,
        parent_span_id: str,
        name: str,
        start_ns: int,
        end_ns: int,
        status_code: int,
        service: str | None,
        emitter: Emitter,
        v: list[Any],
    ) -> None:
        """One span: ids in lowercase hex ("" when missing or malformed), attributes by :data:`SLOT`."""
        if service is not None and len(service) > MAX_TEXT_CHARS:  # one resource string must not fill every row
            service = service[:MAX_TEXT_CHARS]
        try:
            if _is_model_call(v):
                self.attempt_rows.append(
                    _attempt_row(
                        trace_id,
                        span_id,
                        parent_span_id,
                        start_ns,
                        end_ns,
                        status_code,
                        service,
                        emitter,
                        v,
                        self.pricer,
                        self.now_ns,
                    )
                )
            elif v[_TASK_OUTCOME] is not None or (v[_TASK_ID] is not None and name.startswith("task ")):
                self.task_rows.append(_task_row(trace_id, span_id, start_ns, end_ns, service, v, self.now_ns))
            else:
                self.ignored += 1
        except Rejected as exc:
            self.rejected.append(str(exc))
        except Exception as exc:  # a shape nobody foresaw: refuse this span, keep the others
            log.warning("span %s could not be mapped: %r", span_id or "(no id)", exc)
            self.rejected.append(f"span could not be read ({type(exc).__name__}) (span {span_id or 'without id'})")

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


def _is_model_call(v: list[Any]) -> bool:
    operation = v[_OPERATION]
    if operation.__class__ is str and operation in NON_CALL_OPERATIONS:  # an array value is unhashable
        return False
    return (
        operation is not None
        or v[_PROVIDER] is not None
        or v[_SYSTEM] is not None
        or v[_REQUEST_MODEL] is not None
        or v[_RESPONSE_MODEL] is not None
    )


def _attempt_row(
    trace_id: str,
    span_id: str,
    parent_span_id: str,
    start_ns: int,
    end_ns: int,
    status_code: int,
    service: str | None,
    emitter: Emitter,
    v: list[Any],
    pricer: FastPricer,
    now_ns: int,
) -> tuple[Any, ...]:
    if not trace_id or not span_id:
        raise Rejected("missing or malformed trace/span id")
    where = f" (span {span_id})"
    _check_times(start_ns, end_ns, now_ns, where)

    raw_provider = v[_PROVIDER] or v[_SYSTEM]
    provider = _name(raw_provider, "provider", where)
    if not provider:
        raise Rejected(f"no gen_ai.provider.name or gen_ai.system{where}")
    provider = E.normalise_provider(provider)
    request_model = _name(v[_REQUEST_MODEL], "request model", where)
    response_model = _name(v[_RESPONSE_MODEL], "response model", where)
    model = request_model or response_model

    if emitter is E.OTHER:  # OpenLIT marks every span it makes, whatever its scope
        emitter = E.emitter_by_sdk_name(v[_SDK_NAME]) or emitter
    reads = _READS[emitter]
    input_tokens = _count(v, reads.input, where)
    output_tokens = _count(v, reads.output, where)
    cache_read = _count(v, reads.cache_read, where)
    cache_write = _count(v, reads.cache_write, where)
    if cache_read is None and cache_write is None and reads.raw_usage is not None and v[reads.raw_usage] is not None:
        cache_read, cache_write = _raw_cache(v[reads.raw_usage])
    cached = (cache_read or 0) + (cache_write or 0)
    if cached:
        if provider in emitter.input_excludes_cache:
            input_tokens = (input_tokens or 0) + cached
        elif cached > (input_tokens or 0):
            if emitter.strict:
                raise Rejected(
                    f"cache read + cache write tokens exceed input tokens, which {emitter.name} counts with the "
                    f"cache included{where}"
                )
            input_tokens = (input_tokens or 0) + cached  # only the exclusive reading is possible
        if input_tokens > MAX_TOKENS:
            raise Rejected(f"input tokens above {MAX_TOKENS:,} in one call{where}")

    error_type = _text(v[_ERROR_TYPE])
    failed = status_code == STATUS_ERROR or error_type is not None
    compute = v[_COMPUTE]
    compute_s = compute if compute.__class__ is float and 0.0 <= compute < math.inf else as_non_negative_float(compute)
    if compute_s is not None and compute_s > MAX_DURATION_NS / 1e9:  # a call's compute fits in its longest span
        raise Rejected(f"{S.LOCAL_COMPUTE_SECONDS} above 7 days in one call{where}")

    cost: int | None
    counterfactual = None
    if input_tokens is None and output_tokens is None and cache_read is None and cache_write is None:
        cost, price_source = None, SOURCE_NO_USAGE
    elif not model:
        cost, price_source = None, SOURCE_UNPRICED
    else:
        counts = (input_tokens or 0, output_tokens or 0, cache_read or 0, cache_write or 0)
        cost, price_source = pricer.price_nanos(provider, model, *counts, at_ns=start_ns, compute_seconds=compute_s)
        if provider in LOCAL_PROVIDERS and not failed:
            counterfactual = pricer.counterfactual_nanos(*counts, at_ns=start_ns)
    reported = _reported_cost(v, reads.cost)
    disagrees = None if reported is None or cost is None else _disagree(reported, cost)
    parent = parent_span_id or None
    operation = v[_OPERATION]
    return (
        trace_id,
        span_id,
        parent,
        _text(v[_TASK_ID]),
        _text(v[_TASK_TYPE]),
        _text(v[_TIER]),
        as_int32(v[_ATTEMPT_INDEX]),
        provider,
        operation[:MAX_TEXT_CHARS] or None if operation.__class__ is str else as_text(operation),
        request_model,
        response_model,
        "error" if failed else "success",
        error_type,
        _text(v[_REASON]),
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
        reported,
        disagrees,
        emitter.name,
        price_source,
        _text(v[_SERVER_ADDRESS]),
        as_port(v[_SERVER_PORT]),
        service,
        _text(v[_TEAM]),
        _text(v[_PROJECT]),
        _text(v[_USER_ID]),
        int(span_id, 16),
        int(parent, 16) if parent else None,
        parent is not None and v[_TIER] is None,
    )


def _disagree(reported: int, cost: int) -> bool:
    difference = abs(reported - cost)
    return difference > COST_TOLERANCE_NANOS and difference > COST_TOLERANCE_RATIO * max(reported, cost)


def _task_row(
    trace_id: str, span_id: str, start_ns: int, end_ns: int, service: str | None, v: list[Any], now_ns: int
) -> tuple[Any, ...]:
    if not trace_id or not span_id:
        raise Rejected("missing or malformed trace/span id")
    where = f" (task span {span_id})"
    task_id = as_text(v[_TASK_ID])
    if not task_id:
        raise Rejected(f"task span without costline.task.id{where}")
    _check_times(start_ns, end_ns, now_ns, where)
    return (
        trace_id,
        span_id,
        task_id,
        as_text(v[_TASK_TYPE]),
        _bool(v[_TASK_CRITICAL]),
        as_text(v[_TASK_OUTCOME]),
        _bool(v[_TASK_ESCALATED]),
        as_int32(v[_TASK_ATTEMPTS]),
        start_ns // 1000,
        end_ns // 1000,
        (end_ns - start_ns) / 1e9,
        service,
        _text(v[_TEAM]),
        _text(v[_PROJECT]),
        _text(v[_USER_ID]),
        int(span_id, 16),
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
    if value.__class__ is not str:
        raise Rejected(f"{what} is not a string{where}")
    if len(value) > MAX_NAME_CHARS:
        raise Rejected(f"{what} longer than {MAX_NAME_CHARS} characters{where}")
    return value


def _count(v: list[Any], reads: tuple[tuple[int, str], ...], where: str) -> int | None:
    """The first of an emitter's attributes for one count that is present, checked."""
    for slot, key in reads:
        value = v[slot]
        if value is None:
            continue
        if value.__class__ is int and 0 <= value <= MAX_TOKENS:
            return value
        return _checked_count(value, key, where)
    return None


def _checked_count(value: Any, key: str, where: str) -> int:
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


# Cache counts inside a raw provider usage object (Anthropic's, then OpenAI's names).
_RAW_READ: Final = ("cache_read_input_tokens",)
_RAW_WRITE: Final = ("cache_creation_input_tokens",)
_RAW_DETAILS: Final = ("prompt_tokens_details", "input_tokens_details")


def _raw_cache(raw: Any) -> tuple[int | None, int | None]:
    """Cache reads and writes from a raw usage object (a JSON string or a map); what cannot be read is None."""
    if isinstance(raw, str):
        if len(raw) > 65_536:
            return None, None
        try:
            raw = json.loads(raw)
        except ValueError:
            return None, None
    if not isinstance(raw, dict):
        return None, None

    def whole(value: Any) -> int | None:
        return value if type(value) is int and 0 <= value <= MAX_TOKENS else None

    read = next((whole(raw[k]) for k in _RAW_READ if k in raw), None)
    write = next((whole(raw[k]) for k in _RAW_WRITE if k in raw), None)
    if read is None:
        for key in _RAW_DETAILS:
            details = raw.get(key)
            if isinstance(details, dict) and "cached_tokens" in details:
                read = whole(details["cached_tokens"])
                break
    return read, write


def _text(value: Any) -> str | None:
    if value.__class__ is str:
        return value[:MAX_TEXT_CHARS] or None
    return as_text(value)


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


def _reported_cost(v: list[Any], slots: tuple[int, ...]) -> int | None:
    """A carried cost in nano-dollars; anything that is not a finite, non-negative amount is ignored."""
    value = None
    for slot in slots:
        value = v[slot]
        if value is not None:
            break
    if value is None or isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        cost = Decimal(str(value))
    except InvalidOperation:
        return None
    if not cost.is_finite() or cost < 0:
        return None
    return usd_to_nanos(cost)
