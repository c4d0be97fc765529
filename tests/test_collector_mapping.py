"""Decoding and mapping without the network: validation reasons, aliases, OTLP/JSON quirks, and the fast pricer
agreeing with the shared Pricer to the nano-dollar."""

from __future__ import annotations

import base64
import json
import pickle
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from collector.mapping import map_spans
from collector.otlp_decode import STATUS_ERROR, DecodeError, SpanRecord, decode_json
from collector.price_cache import FastPricer, usd_to_nanos
from costline import spans as S
from costline.config import ModelPrice, load_config, with_overrides
from costline.pricing import Pricer, TokenUsage

# map_spans takes the collector's clock as an argument: a fixed instant keeps every example the same on any day.
NOW_NS = 1_793_000_000 * 10**9  # 2026-10-26T07:33:20Z
START = NOW_NS - 60 * 1_000_000_000


@pytest.fixture(scope="module")
def pricer() -> FastPricer:
    return FastPricer(Pricer(load_config(env={})))


def _span(span_id: str = "00f067aa0ba902b7", *, start: int = START, end: int | None = None, **attrs: Any) -> SpanRecord:
    return SpanRecord(
        "4bf92f3577b34da6a3ce929d0e0e4736",
        span_id,
        "",
        "chat",
        3,
        start,
        start + 10**9 if end is None else end,
        0,
        "",
        attrs,
        "svc",
    )


def _scoped(scope: str, span: SpanRecord) -> SpanRecord:
    span.scope_name = scope
    return span


def _claude(**overrides: Any) -> dict[str, Any]:
    attrs = {
        S.PROVIDER_NAME: "anthropic",
        S.REQUEST_MODEL: "claude-sonnet-4-5",
        S.USAGE_INPUT_TOKENS: 1000,
        S.USAGE_OUTPUT_TOKENS: 500,
    }
    attrs.update(overrides)
    return {k: v for k, v in attrs.items() if v is not None}


@pytest.mark.parametrize(
    ("span", "reason"),
    [
        (_span(**_claude(**{S.PROVIDER_NAME: None})), "no gen_ai.provider.name or gen_ai.system"),
        (_span(**_claude(**{S.USAGE_OUTPUT_TOKENS: -1})), "negative gen_ai.usage.output_tokens"),
        (_span(**_claude(**{S.USAGE_INPUT_TOKENS: 10**12})), "gen_ai.usage.input_tokens above 100,000,000 in one call"),
        (
            _span(**{S.PROVIDER_NAME: "ollama", S.REQUEST_MODEL: "qwen3:8b", S.LOCAL_COMPUTE_SECONDS: 1e308}),
            f"{S.LOCAL_COMPUTE_SECONDS} above 7 days in one call",
        ),
        (_span(**_claude(**{S.USAGE_INPUT_TOKENS: "lots"})), "gen_ai.usage.input_tokens is not a whole number"),
        (_span(**_claude(**{S.USAGE_INPUT_TOKENS: 1.5})), "gen_ai.usage.input_tokens is not a whole number"),
        (
            _scoped(
                "costline.router",
                _span(**_claude(**{S.USAGE_CACHE_READ_INPUT_TOKENS: 800, S.USAGE_CACHE_CREATION_INPUT_TOKENS: 300})),
            ),
            "cache read + cache write tokens exceed input tokens, which costline counts with the cache included",
        ),
        (_span(start=0, **_claude()), "start time missing or before 2000-01-01"),
        (_span(start=NOW_NS + 3 * 86_400 * 10**9, **_claude()), "start time more than a day in the future"),
        (_span(end=START - 1, **_claude()), "end time before start time"),
        (_span(end=START + 8 * 86_400 * 10**9, **_claude()), "duration longer than 7 days"),
        (_span(**_claude(**{S.REQUEST_MODEL: "m" * 300})), "request model longer than 256 characters"),
        (_span(**_claude(**{S.REQUEST_MODEL: ["a", "list"]})), "request model is not a string"),
        (_span(**{S.TASK_ID: "", S.TASK_OUTCOME: "completed"}), "task span without costline.task.id"),
    ],
)
def test_unaccountable_spans_are_rejected_with_a_reason(pricer: FastPricer, span: SpanRecord, reason: str) -> None:
    mapped = map_spans([span], pricer, now_ns=NOW_NS)
    assert mapped.span_count == 0
    where = "task span" if S.TASK_OUTCOME in span.attributes else "span"
    assert mapped.rejected == [f"{reason} ({where} {span.span_id})"]


def test_missing_ids_are_rejected(pricer: FastPricer) -> None:
    span = _span(span_id="", **_claude())
    assert map_spans([span], pricer, now_ns=NOW_NS).rejected == ["missing or malformed trace/span id"]


def test_non_genai_and_agent_spans_are_ignored_not_rejected(pricer: FastPricer) -> None:
    spans = [
        _span("0000000000000001", **{"http.route": "/x"}),
        _span("0000000000000002", **{S.OPERATION_NAME: "invoke_agent", S.REQUEST_MODEL: "claude-sonnet-4-5"}),
        _span("0000000000000003", **{S.OPERATION_NAME: "execute_tool"}),
        _span("0000000000000004", **{S.OPERATION_NAME: ["chat"], S.REQUEST_MODEL: "x"}),  # odd shape: rejected
    ]
    mapped = map_spans(spans, pricer, now_ns=NOW_NS)
    assert (mapped.span_count, mapped.ignored) == (0, 3)
    assert mapped.rejected == ["no gen_ai.provider.name or gen_ai.system (span 0000000000000004)"]


def test_an_error_span_without_error_type_is_an_error(pricer: FastPricer) -> None:
    span = _span(**_claude())
    span.status_code = STATUS_ERROR
    row = map_spans([span], pricer, now_ns=NOW_NS).attempts.to_pylist()[0]
    assert (row["outcome"], row["error_type"]) == ("error", None)


def test_aliases_and_carried_costs(pricer: FastPricer) -> None:
    span = _span(
        **{
            S.ALIAS_SYSTEM: "anthropic",
            S.RESPONSE_MODEL: "claude-sonnet-4-5",
            S.ALIAS_PROMPT_TOKENS: "1000",  # some emitters write numbers as strings
            S.ALIAS_COMPLETION_TOKENS: 500,
            S.USAGE_CACHE_READ_INPUT_TOKENS: 200,
            S.ALIAS_CACHE_WRITE_INPUT_TOKENS: 100,
            S.ALIAS_COST_OPENLIT: 0.0100351,
        }
    )
    row = map_spans([span], pricer, now_ns=NOW_NS).attempts.to_pylist()[0]
    assert (row["provider"], row["request_model"], row["response_model"]) == ("anthropic", None, "claude-sonnet-4-5")
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (
        1000,
        500,
        200,
        100,
    )
    assert row["cost_usd"] == Decimal("0.010035000")
    assert row["reported_cost_usd"] == Decimal("0.010035100")


# Spellings of an int64 the protobuf JSON mapping's edges are made of; the expected reading of each is whatever
# protobuf's own parser (google.protobuf.json_format, the protobuf package the OTLP classes are built on) makes of it.
INT_SPELLINGS = ["12", "-5", "+5", "1e3", "1.0e2", "1.5", "abc", " 12", "0x10", "", "NaN", "Infinity", "1_000"]
INT_SPELLINGS += [str(2**63 - 1), str(2**63), str(-(2**63)), str(-(2**63) - 1), "9.3e18"]


@given(
    st.one_of(
        st.sampled_from(INT_SPELLINGS),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.text(alphabet="0123456789+-.eE_ x", max_size=8),
    )
)
def test_json_int_values_are_read_as_protobufs_json_parser_reads_them(raw: Any) -> None:
    span = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "chat"}
    span["attributes"] = [{"key": "gen_ai.usage.input_tokens", "value": {"intValue": raw}}]
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()
    try:
        expected: int | None = json_format.Parse(json.dumps({"intValue": raw}), AnyValue()).int_value
    except json_format.ParseError:
        expected = None
    if expected is None:  # refused with 400, naming the attribute: never stored as a NULL token count
        with pytest.raises(DecodeError, match=r"attribute 'gen_ai\.usage\.input_tokens': intValue .* is not an int64"):
            decode_json(body)
    else:
        (record,) = decode_json(body)
        assert record.attributes["gen_ai.usage.input_tokens"] == expected


def test_otlp_json_hex_ids_string_int64_and_enum_names() -> None:
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "5B8EFFF798038103D269B633813FC60C",
                                "spanId": "eee19b7ec3c1b174",
                                "parentSpanId": "",
                                "name": "chat",
                                "kind": "SPAN_KIND_CLIENT",
                                "startTimeUnixNano": "1700000000123456789",
                                "endTimeUnixNano": 1700000001123456789,
                                "status": {"code": "STATUS_CODE_ERROR", "message": "boom"},
                                "attributes": [
                                    {"key": "n", "value": {"intValue": "9007199254740993"}},
                                    {"key": "d", "value": {"doubleValue": "NaN"}},
                                    {"key": "lone", "value": {"stringValue": "a\ud800b"}},
                                    {"key": "arr", "value": {"arrayValue": {"values": [{"stringValue": "x"}]}}},
                                    {"key": "kv", "value": {"kvlistValue": {"values": [{"key": "k", "value": {}}]}}},
                                    {"key": "raw", "value": {"bytesValue": "AAE="}},
                                ],
                            },
                            {"traceId": "not-hex", "spanId": "0000000000000000", "name": "x"},
                        ]
                    }
                ],
            }
        ]
    }
    first, second = decode_json(json.dumps(body).encode())
    assert (first.trace_id, first.span_id, first.parent_span_id) == (
        "5b8efff798038103d269b633813fc60c",
        "eee19b7ec3c1b174",
        "",
    )
    assert (first.kind, first.start_ns, first.end_ns) == (3, 1700000000123456789, 1700000001123456789)
    assert (first.status_code, first.status_message, first.service_name) == (2, "boom", "svc")
    assert first.attributes["n"] == 9007199254740993
    assert first.attributes["lone"] == "a?b"
    assert first.attributes["arr"] == ["x"] and first.attributes["kv"] == {"k": None}
    assert first.attributes["raw"] == "0001"
    assert (second.trace_id, second.span_id) == ("", "")


@pytest.mark.parametrize("body", [b"[]", b'{"resourceSpans": [{"scopeSpans": [{"spans": [1]}]}]}', b"\xff\xfe"])
def test_json_envelopes_that_are_not_otlp_fail_to_decode(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_json(body)


def _models() -> list[tuple[str, str]]:
    return [
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-sonnet-4-6"),
        ("anthropic", "claude-haiku-4-5"),
        ("anthropic", "claude-opus-4-1"),
        ("openai", "gpt-4o"),
        ("google", "gemini-2.5-pro"),  # tiered above 200k input tokens
        ("ollama", "qwen3:8b"),
        ("anthropic", "claude-imaginary-9"),
    ]


@pytest.mark.parametrize(("provider", "model"), _models())
def test_the_fast_pricer_agrees_with_the_pricer_to_the_nano_dollar(provider: str, model: str) -> None:
    config = with_overrides(
        load_config(env={}),
        local_compute={"usd_per_hour": 0.9},
        prices=lambda _: {"gpt-4o": ModelPrice(2.0, 7.0, 0.2)},  # an override beats the catalogue
    )
    slow, fast = Pricer(config), FastPricer(Pricer(config))
    rng = random.Random(7)
    at = datetime(2026, 9, 1, 10, 30, tzinfo=UTC)
    at_ns = int(at.timestamp()) * 1_000_000_000
    for _ in range(200):
        inp = rng.choice([0, 1, rng.randint(0, 5000), rng.randint(0, 400_000)])
        cache_read, cache_write = rng.randint(0, inp // 2), rng.randint(0, inp // 4)
        out, seconds = rng.randint(0, 20_000), rng.uniform(0, 30)
        usage = TokenUsage(inp, out, cache_read, cache_write)
        expected = slow.price(provider, model, usage, at=at, compute_seconds=seconds)
        nanos, source = fast.price_nanos(
            provider, model, inp, out, cache_read, cache_write, at_ns=at_ns, compute_seconds=seconds
        )
        assert (nanos, source) == (usd_to_nanos(expected.usd), expected.source), usage


def test_a_mapped_request_survives_the_trip_from_a_decode_worker(pricer: FastPricer) -> None:
    task = SpanRecord(
        "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b9", "", "task general", 1, START, START + 10**9, 0, "",
        {S.TASK_ID: "t1", S.TASK_OUTCOME: "success", S.TASK_ATTEMPTS: 1},
    )  # fmt: skip
    rejected = _span("00f067aa0ba902b8", **{S.REQUEST_MODEL: "qwen3:8b"})  # no provider
    spans = [_span(**{S.PROVIDER_NAME: "ollama", S.REQUEST_MODEL: "qwen3:8b"}), task, rejected]
    full = map_spans(spans, pricer, now_ns=NOW_NS)
    assert (full.attempts.num_rows, full.tasks.num_rows, len(full.rejected)) == (1, 1, 1)
    for request in (full, map_spans([], pricer, now_ns=NOW_NS)):
        copy = pickle.loads(pickle.dumps(request))
        assert copy.attempts.schema == request.attempts.schema and copy.tasks.schema == request.tasks.schema
        assert copy.attempts.to_pylist() == request.attempts.to_pylist()
        assert copy.tasks.to_pylist() == request.tasks.to_pylist()
        assert (copy.rejected, copy.ignored) == (request.rejected, request.ignored)


def test_a_huge_service_name_is_stored_capped_in_every_row_by_both_decoders(pricer: FastPricer) -> None:
    """A 2 MiB service.name shared by many spans: rows keep its first MAX_TEXT_CHARS characters, not a copy each."""
    from google.protobuf import json_format as proto_json
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from collector.mapping import MAX_TEXT_CHARS
    from collector.protobuf_rows import map_protobuf

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "s" * 2**21}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    for i in range(20):
        with provider.get_tracer("t").start_as_current_span("chat claude-sonnet-4-5") as span:
            span.set_attributes({**_claude(), "costline.task.id": f"t{i}"})
    spans = memory.get_finished_spans()
    request, now = encode_spans(spans), max(span.end_time for span in spans)
    from_protobuf = map_protobuf(request.SerializeToString(), pricer, now_ns=now)
    as_json = proto_json.MessageToDict(request)
    for span_json in as_json["resourceSpans"][0]["scopeSpans"][0]["spans"]:  # OTLP/JSON spells ids in hex
        for key in ("traceId", "spanId"):
            span_json[key] = base64.b64decode(span_json[key]).hex()
    from_json = map_spans(decode_json(json.dumps(as_json).encode()), pricer, now_ns=now)
    for mapped in (from_protobuf, from_json):
        assert mapped.rejected == [] and mapped.attempts.num_rows == 20
        assert set(mapped.attempts.column("service_name").to_pylist()) == {"s" * MAX_TEXT_CHARS}
