"""The hot path's protobuf decoder (``map_protobuf``) against the record decoder (``decode_protobuf`` + ``map_spans``).

Both feed the one mapping; these tests hold the two decoders to the same rows, the same rejections with the same
messages, the same ignored count and the same DecodeError, on router-shaped batches and on arbitrary, absurd and
damaged payloads.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest
from faults.payloads import NOW_NS, protobuf_payload, spans_list, to_protobuf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples

from collector.mapping import ATTRIBUTES_READ, MAX_TEXT_CHARS, MappedRequest, map_spans
from collector.otlp_decode import DecodeError, decode_protobuf
from collector.price_cache import FastPricer
from collector.protobuf_rows import map_protobuf
from costline import spans as S
from costline.config import Config
from costline.pricing import Pricer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import otlp_batches

PRICER = FastPricer(Pricer(Config()))


def _reference(body: bytes, now_ns: int = NOW_NS) -> MappedRequest:
    return map_spans(decode_protobuf(body, ATTRIBUTES_READ), PRICER, now_ns=now_ns)


def _assert_same(fast: MappedRequest, reference: MappedRequest) -> None:
    assert fast.attempts.schema == reference.attempts.schema
    assert fast.attempts.to_pylist() == reference.attempts.to_pylist()
    assert fast.tasks.to_pylist() == reference.tasks.to_pylist()
    assert fast.rejected == reference.rejected
    assert fast.ignored == reference.ignored


def _both(body: bytes, now_ns: int = NOW_NS) -> tuple[Any, Any]:
    outcomes = []
    for mapper in (lambda: map_protobuf(body, PRICER, now_ns=now_ns), lambda: _reference(body, now_ns)):
        try:
            outcomes.append(mapper())
        except DecodeError as exc:
            outcomes.append(str(exc))
    return outcomes[0], outcomes[1]


@settings(max_examples=examples(200), deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(body=protobuf_payload)
def test_any_payload_maps_exactly_as_the_reference_does(body: bytes) -> None:
    fast, reference = _both(body)
    if isinstance(reference, str):
        assert fast == reference  # the same DecodeError message (→ 400)
    else:
        _assert_same(fast, reference)


@settings(max_examples=examples(150), deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(spans=spans_list)
def test_well_formed_requests_map_exactly_as_the_reference_does(spans: list[dict[str, Any]]) -> None:
    fast, reference = _both(to_protobuf(spans))
    _assert_same(fast, reference)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` seven times in eight: a span of many fields then often reaches the fast path, or leaves by one exit."""
    return st.integers(0, 7).flatmap(lambda i: bad if i == 0 else good)


count = mostly(st.integers(0, 3_000), st.sampled_from([None, -1, 100_000_001, True, 2.0, "5"]))
provider = mostly(st.sampled_from(["ollama", "anthropic"]), st.sampled_from([None, "", "x" * 257, 7]))
model = mostly(st.sampled_from(["qwen3:8b", "claude-sonnet-4-5", "no-such-model"]), st.sampled_from(["", "x" * 257, 7]))
absent = st.none()


@st.composite
def model_calls(draw: st.DrawFn) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for key, values in (
        (S.OPERATION_NAME, mostly(st.just("chat"), st.sampled_from(["execute_tool", "", 1, None]))),
        (S.PROVIDER_NAME, provider),
        (S.ALIAS_SYSTEM, mostly(absent, provider)),
        (S.REQUEST_MODEL, mostly(model, absent)),
        (S.RESPONSE_MODEL, mostly(absent, model)),
        (S.USAGE_INPUT_TOKENS, count),
        (S.ALIAS_PROMPT_TOKENS, mostly(absent, count)),
        (S.USAGE_OUTPUT_TOKENS, count),
        (S.USAGE_CACHE_READ_INPUT_TOKENS, st.one_of(absent, count)),
        (S.USAGE_CACHE_CREATION_INPUT_TOKENS, st.one_of(absent, count)),
        (S.ALIAS_CACHE_WRITE_INPUT_TOKENS, mostly(absent, count)),
        (S.ERROR_TYPE, st.one_of(absent, st.sampled_from(["timeout", "", 500]))),
        (S.LOCAL_COMPUTE_SECONDS, mostly(st.floats(0, 100), st.sampled_from([math.nan, math.inf, -1.0, -0.0, 3]))),
        (S.ATTEMPT_TIER, st.sampled_from(["primary", "fallback", "escalation", "", None])),
        (S.ATTEMPT_INDEX, mostly(st.integers(0, 3), st.sampled_from([-1, 2**40, "2"]))),
        (S.TASK_ID, mostly(st.just("t1"), st.sampled_from(["", "x" * 2000]))),
        (S.SERVER_PORT, mostly(st.integers(0, 65_535), st.sampled_from([-1, 70_000, "11434"]))),
        (S.ALIAS_COST_OPENLIT, mostly(absent, st.floats(0, 1))),
        (S.ALIAS_COST_LOGFIRE, mostly(absent, st.floats(0, 1))),
        (S.TEAM, mostly(st.sampled_from(["search", "billing", None]), st.sampled_from(["", "x" * 2000, 7, True]))),
        (S.PROJECT, st.one_of(absent, st.sampled_from(["atlas", "", "x" * 2000]))),
        (S.USER_ID, st.one_of(absent, st.sampled_from(["u-17", "", 42]))),
    ):
        value = draw(values)
        if value is not None:
            attributes[key] = value
    start = draw(mostly(st.integers(NOW_NS - 10**12, NOW_NS), st.sampled_from([1, NOW_NS + 2 * 86_400 * 10**9])))
    duration = draw(mostly(st.integers(0, 10**11), st.sampled_from([8 * 86_400 * 10**9])))
    return {
        "trace_id": draw(mostly(st.just(bytes(range(1, 17))), st.sampled_from([bytes(16), b"\x01" * 15]))),
        "span_id": draw(mostly(st.binary(min_size=8, max_size=8).filter(any), st.just(bytes(8)))),
        "parent_span_id": draw(st.sampled_from([b"", bytes(range(9, 17)), bytes(8), b"\x01" * 7])),
        "name": "chat",
        "kind": 3,
        "start": start,
        "end": draw(mostly(st.just(start + duration), st.just(start - 1))),
        "status": draw(st.integers(0, 2)),
        "attributes": attributes,
    }


@settings(max_examples=examples(300), deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(spans=st.lists(model_calls(), min_size=1, max_size=4))
def test_model_calls_map_exactly_as_the_reference_does(spans: list[dict[str, Any]]) -> None:
    fast, reference = _both(to_protobuf(spans))
    _assert_same(fast, reference)


ROUTER_SPAN: dict[str, Any] = {
    "trace_id": bytes(range(1, 17)),
    "span_id": bytes(range(1, 9)),
    "parent_span_id": bytes(range(9, 17)),
    "name": "chat qwen3:8b",
    "kind": 3,
    "start": NOW_NS - 10**10,
    "end": NOW_NS - 10**9,
    "status": 0,
    "attributes": {
        S.OPERATION_NAME: "chat",
        S.PROVIDER_NAME: "anthropic",
        S.REQUEST_MODEL: "claude-sonnet-4-5",
        S.RESPONSE_MODEL: "claude-sonnet-4-5-20250929",
        S.TASK_ID: "t1",
        S.TASK_TYPE: "general",
        S.ATTEMPT_INDEX: 2,
        S.ATTEMPT_TIER: "escalation",
        S.ESCALATION_REASON: "local_failures",
        S.SERVER_ADDRESS: "127.0.0.1",
        S.SERVER_PORT: 8080,
        S.USAGE_INPUT_TOKENS: 1200,
        S.USAGE_OUTPUT_TOKENS: 300,
        S.USAGE_CACHE_READ_INPUT_TOKENS: 500,
        S.USAGE_CACHE_CREATION_INPUT_TOKENS: 100,
        S.TEAM: "search",
        S.PROJECT: "atlas",
        S.USER_ID: "u-17",
    },
}
LOCAL = {S.PROVIDER_NAME: "ollama", S.REQUEST_MODEL: "qwen3:8b", S.LOCAL_COMPUTE_SECONDS: 2.5}
EXITS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    # (what, span fields, attributes); a None attribute is removed
    ("router span", {}, {}),
    ("local attempt", {}, LOCAL),
    ("failed local attempt", {"status": 2}, {**LOCAL, S.ERROR_TYPE: "timeout"}),
    ("error type without error status", {}, {**LOCAL, S.ERROR_TYPE: "timeout"}),
    ("empty error type", {}, {**LOCAL, S.ERROR_TYPE: ""}),
    ("numeric error type", {}, {**LOCAL, S.ERROR_TYPE: 500}),
    ("compute seconds NaN", {}, {**LOCAL, S.LOCAL_COMPUTE_SECONDS: math.nan}),
    ("compute seconds infinite", {}, {**LOCAL, S.LOCAL_COMPUTE_SECONDS: math.inf}),
    ("compute seconds negative", {}, {**LOCAL, S.LOCAL_COMPUTE_SECONDS: -1.0}),
    ("compute seconds an int", {}, {**LOCAL, S.LOCAL_COMPUTE_SECONDS: 3}),
    ("gen_ai.system instead of provider", {}, {S.PROVIDER_NAME: None, S.ALIAS_SYSTEM: "anthropic"}),
    ("empty provider, gen_ai.system", {}, {S.PROVIDER_NAME: "", S.ALIAS_SYSTEM: "anthropic"}),
    ("no provider", {}, {S.PROVIDER_NAME: None}),
    ("provider too long", {}, {S.PROVIDER_NAME: "x" * 257}),
    ("provider a number", {}, {S.PROVIDER_NAME: 7}),
    ("response model only", {}, {S.REQUEST_MODEL: None}),
    ("empty request model", {}, {S.REQUEST_MODEL: ""}),
    ("no model", {}, {S.REQUEST_MODEL: None, S.RESPONSE_MODEL: None}),
    ("model a number", {}, {S.REQUEST_MODEL: 7}),
    ("agent span", {}, {S.OPERATION_NAME: "invoke_agent"}),
    ("tool span", {}, {S.OPERATION_NAME: "execute_tool"}),
    ("no operation", {}, {S.OPERATION_NAME: None}),
    ("operation a number", {}, {S.OPERATION_NAME: 1}),
    ("prompt_tokens alias", {}, {S.USAGE_INPUT_TOKENS: None, S.ALIAS_PROMPT_TOKENS: 1200}),
    ("completion_tokens alias", {}, {S.USAGE_OUTPUT_TOKENS: None, S.ALIAS_COMPLETION_TOKENS: 30}),
    ("cache_write alias", {}, {S.USAGE_CACHE_CREATION_INPUT_TOKENS: None, S.ALIAS_CACHE_WRITE_INPUT_TOKENS: 9}),
    ("tokens a float", {}, {S.USAGE_OUTPUT_TOKENS: 30.0}),
    ("tokens a string", {}, {S.USAGE_OUTPUT_TOKENS: "30"}),
    ("tokens a bool", {}, {S.USAGE_OUTPUT_TOKENS: True}),
    ("negative tokens", {}, {S.USAGE_OUTPUT_TOKENS: -1}),
    ("absurd tokens", {}, {S.USAGE_OUTPUT_TOKENS: 100_000_001}),
    ("zero tokens", {}, {S.USAGE_INPUT_TOKENS: 0, S.USAGE_CACHE_READ_INPUT_TOKENS: 0}),
    ("no token counts", {}, {S.USAGE_INPUT_TOKENS: None, S.USAGE_OUTPUT_TOKENS: None}),
    ("cache write above input", {}, {S.USAGE_CACHE_READ_INPUT_TOKENS: None, S.USAGE_CACHE_CREATION_INPUT_TOKENS: 1300}),
    ("cache read + write above input", {}, {S.USAGE_CACHE_READ_INPUT_TOKENS: 1101}),
    ("carried cost (OpenLIT)", {}, {S.ALIAS_COST_OPENLIT: 0.0123}),
    ("carried cost (Logfire)", {}, {S.ALIAS_COST_LOGFIRE: 0.0123}),
    ("no tier, with a parent", {}, {S.ATTEMPT_TIER: None}),
    ("no tier, no parent", {"parent_span_id": b""}, {S.ATTEMPT_TIER: None}),
    ("zero parent id", {"parent_span_id": bytes(8)}, {}),
    ("short parent id", {"parent_span_id": b"\x01" * 7}, {}),
    ("zero trace id", {"trace_id": bytes(16)}, {}),
    ("short trace id", {"trace_id": b"\x01" * 15}, {}),
    ("zero span id", {"span_id": bytes(8)}, {}),
    ("start before 2000", {"start": 1, "end": 2}, {}),
    ("start two days ahead", {"start": NOW_NS + 2 * 86_400 * 10**9, "end": NOW_NS + 2 * 86_400 * 10**9}, {}),
    ("end before start", {"end": NOW_NS - 10**11}, {}),
    ("eight days long", {"end": NOW_NS - 10**10 + 8 * 86_400 * 10**9}, {}),
    ("long task id", {}, {S.TASK_ID: "x" * 2000}),
    ("empty task type", {}, {S.TASK_TYPE: ""}),
    ("attempt index a string", {}, {S.ATTEMPT_INDEX: "2"}),
    ("attempt index beyond int32", {}, {S.ATTEMPT_INDEX: 2**40}),
    ("port out of range", {}, {S.SERVER_PORT: 70_000}),
    ("port a string", {}, {S.SERVER_PORT: "8080"}),
    ("no attribution", {}, {S.TEAM: None, S.PROJECT: None, S.USER_ID: None}),
    ("empty team", {}, {S.TEAM: ""}),
    ("long team", {}, {S.TEAM: "x" * 2000}),
    ("project a number", {}, {S.PROJECT: 7}),
    ("user id a bool", {}, {S.USER_ID: True}),
]


@pytest.mark.parametrize(("fields", "changes"), [e[1:] for e in EXITS], ids=[e[0] for e in EXITS])
def test_each_exit_of_the_fast_path_maps_as_the_reference_does(fields: dict[str, Any], changes: dict[str, Any]) -> None:
    attributes = {**ROUTER_SPAN["attributes"], **changes}
    span = {**ROUTER_SPAN, **fields, "attributes": {k: v for k, v in attributes.items() if v is not None}}
    fast, reference = _both(to_protobuf([span]))
    _assert_same(fast, reference)
    assert fast.span_count + len(fast.rejected) + fast.ignored == 1


def test_router_batches_map_as_their_decoded_records_do() -> None:
    factory = otlp_batches.BatchFactory(seed=5, base_ns=1_790_000_000 * 10**9, templates=4)
    now_ns = factory.last_end_ns(4)
    bodies = [factory.batch(b) for b in range(4)]
    references = [_reference(body, now_ns) for body in bodies]
    for body, reference in zip(bodies, references, strict=True):
        _assert_same(map_protobuf(body, PRICER, now_ns=now_ns), reference)
    assert sum(r.attempts.num_rows for r in references) == 4 * 512
    assert {e for r in references for e in r.attempts.column("emitter").to_pylist()} == {"costline"}


TASK_SPAN: dict[str, Any] = {
    **ROUTER_SPAN,
    "span_id": bytes(range(9, 17)),
    "parent_span_id": b"",
    "name": "task general",
    "kind": 1,
    "attributes": {
        S.TASK_ID: "t1",
        S.TASK_TYPE: "general",
        S.TASK_OUTCOME: "completed",
        S.TASK_ATTEMPTS: 3,
        S.TEAM: "search",
        S.PROJECT: "x" * 2000,
        S.USER_ID: "u-17",
    },
}


def test_attribution_reaches_attempt_and_task_rows_on_both_paths() -> None:
    fast, reference = _both(to_protobuf([ROUTER_SPAN, TASK_SPAN]))
    _assert_same(fast, reference)
    capped = "x" * MAX_TEXT_CHARS  # as any other text: one caller's string must not fill every row
    attempt = fast.attempts.select(["team", "project", "user_id"]).to_pylist()
    task = fast.tasks.select(["team", "project", "user_id"]).to_pylist()
    assert attempt == [{"team": "search", "project": "atlas", "user_id": "u-17"}]
    assert task == [{"team": "search", "project": capped, "user_id": "u-17"}]
