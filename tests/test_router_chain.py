"""The local-first chain: primary, fallbacks, escalation to Claude (scenarios 1-4 and 8 of issue 2)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from costline import spans as attr
from costline.demo.fake_anthropic import ClaudeReply
from costline.demo.fake_ollama import OllamaDisconnect, OllamaError, OllamaHang, OllamaReply, OllamaStreamError
from router import Router, Task

PRIMARY, FALLBACK, LAST = "qwen2.5-coder:14b", "qwen3:30b-a3b", "llama3.1:70b"
SONNET_45 = "claude-sonnet-4-5"


def test_primary_success_is_one_attempt_span_and_no_escalation(
    fake_ollama, fake_anthropic, make_config, tracer_provider, spans
):
    fake_ollama.script(
        PRIMARY,
        OllamaReply(
            content="def add(a, b): return a + b",
            prompt_eval_count=120,
            eval_count=40,
            prompt_eval_duration_s=0.25,
            eval_duration_s=1.5,
        ),
    )
    with Router(make_config(), tracer_provider=tracer_provider) as router:
        result = router.run(Task("write add()", type="code_review", system="be terse"))

    assert result.ok and result.outcome == "completed" and not result.escalated
    assert result.text == "def add(a, b): return a + b"
    assert result.cost_usd == Decimal(0)
    assert fake_anthropic.message_requests() == []
    (sent,) = fake_ollama.chat_requests(PRIMARY)
    assert sent["messages"] == [
        {"role": "system", "content": "be terse"},
        {"role": "user", "content": "write add()"},
    ]
    (span,) = spans.attempts(result.task_id)
    assert span.name == "chat qwen2.5-coder:14b"
    assert span.kind == SpanKind.CLIENT and span.status.status_code == StatusCode.OK
    a = span.attributes
    assert a[attr.OPERATION_NAME] == "chat" and a[attr.PROVIDER_NAME] == "ollama"
    assert a[attr.REQUEST_MODEL] == PRIMARY and a[attr.RESPONSE_MODEL] == PRIMARY
    assert a[attr.USAGE_INPUT_TOKENS] == 120 and a[attr.USAGE_OUTPUT_TOKENS] == 40
    assert a[attr.LOCAL_COMPUTE_SECONDS] == pytest.approx(1.75)
    assert a[attr.ATTEMPT_TIER] == "primary" and a[attr.ATTEMPT_INDEX] == 0
    assert a[attr.TASK_TYPE] == "code_review"
    assert a[attr.SERVER_ADDRESS] == "127.0.0.1" and a[attr.SERVER_PORT] == int(fake_ollama.url.rsplit(":", 1)[1])
    assert attr.ERROR_TYPE not in a and attr.ESCALATION_REASON not in a
    assert attr.INPUT_MESSAGES not in a and attr.OUTPUT_MESSAGES not in a  # content is opt-in
    task = spans.task(result.task_id)
    assert task.name == "task code_review" and task.kind == SpanKind.INTERNAL
    assert span.parent.span_id == task.context.span_id
    assert dict(task.attributes) == {
        attr.TASK_ID: result.task_id,
        attr.TASK_TYPE: "code_review",
        attr.TASK_CRITICAL: False,
        attr.TASK_OUTCOME: "completed",
        attr.TASK_ESCALATED: False,
        attr.TASK_ATTEMPTS: 1,
    }


def test_primary_404_then_fallback_succeeds(fake_ollama, make_config, tracer_provider, spans):
    fake_ollama.script(PRIMARY, OllamaError(404))
    fake_ollama.script(FALLBACK, OllamaReply(content="fine"))
    with Router(make_config(), tracer_provider=tracer_provider) as router:
        result = router.run(Task("hello"))

    assert result.ok and result.text == "fine" and not result.escalated
    assert [(a.model, a.tier, a.ok, a.error_type) for a in result.attempts] == [
        (PRIMARY, "primary", False, "model_not_found"),
        (FALLBACK, "fallback", True, None),
    ]
    assert 'model "qwen2.5-coder:14b" not found' in result.attempts[0].error_message
    first, second = spans.attempts(result.task_id)
    assert first.attributes[attr.ERROR_TYPE] == "model_not_found"
    assert first.attributes[attr.ATTEMPT_TIER] == "primary"
    assert first.status.status_code == StatusCode.ERROR and "not found" in first.status.description
    assert second.attributes[attr.ATTEMPT_TIER] == "fallback" and second.attributes[attr.ATTEMPT_INDEX] == 1
    assert attr.ERROR_TYPE not in second.attributes


def test_two_local_failures_escalate_on_threshold_priced_exactly(
    fake_ollama, fake_anthropic, make_config, tracer_provider, spans
):
    fake_ollama.script(PRIMARY, OllamaError(503))
    fake_ollama.script(FALLBACK, OllamaStreamError(message="unexpected EOF"))
    # 1000 input tokens in all: 700 uncached + 200 cache reads + 100 cache writes.
    fake_anthropic.script(
        SONNET_45,
        ClaudeReply(
            text="from claude",
            input_tokens=700,
            cache_read_input_tokens=200,
            cache_creation_input_tokens=100,
            output_tokens=500,
        ),
    )
    config = make_config(escalation={"model": SONNET_45})
    with Router(config, tracer_provider=tracer_provider) as router:
        result = router.run(Task("fix the bug", system="you are a careful engineer"))

    assert result.ok and result.text == "from claude" and result.escalated
    assert result.cost_usd == Decimal("0.010035")
    assert [(a.tier, a.error_type) for a in result.attempts] == [
        ("primary", "overloaded"),
        ("fallback", "stream_error"),
        ("escalation", None),
    ]
    claude = result.attempts[2]
    assert (claude.input_tokens, claude.cache_read_tokens, claude.cache_write_tokens, claude.output_tokens) == (
        1000,
        200,
        100,
        500,
    )
    assert claude.cost_usd == Decimal("0.010035") and claude.escalation_reason == "threshold"
    assert fake_ollama.chat_requests(LAST) == []  # the third local model is never tried

    # Claude sees the task, the system prompt and each earlier attempt with its own model, error type and message.
    (request,) = fake_anthropic.message_requests()
    assert request["messages"] == [{"role": "user", "content": "fix the bug"}]
    assert request["system"].startswith("you are a careful engineer")
    assert f"model {PRIMARY} (primary) failed with overloaded: Ollama answered 503" in request["system"]
    assert (
        f"model {FALLBACK} (fallback) failed with stream_error: Ollama stopped mid-stream: unexpected EOF"
        in (request["system"])
    )

    span = spans.attempts(result.task_id)[2]
    a = span.attributes
    assert span.name == "chat claude-sonnet-4-5" and span.status.status_code == StatusCode.OK
    assert a[attr.PROVIDER_NAME] == "anthropic" and a[attr.ATTEMPT_TIER] == "escalation"
    assert a[attr.ESCALATION_REASON] == "threshold"
    assert a[attr.USAGE_INPUT_TOKENS] == 1000 and a[attr.USAGE_OUTPUT_TOKENS] == 500
    assert a[attr.USAGE_CACHE_READ_INPUT_TOKENS] == 200 and a[attr.USAGE_CACHE_CREATION_INPUT_TOKENS] == 100
    assert a[attr.RESPONSE_ID].startswith("msg_") and list(a[attr.RESPONSE_FINISH_REASONS]) == ["end_turn"]
    assert a[attr.SERVER_PORT] == int(fake_anthropic.url.rsplit(":", 1)[1])
    task = spans.task(result.task_id)
    assert task.attributes[attr.TASK_ESCALATED] is True and task.attributes[attr.TASK_ATTEMPTS] == 3
    # The spend is in the usage store, where the quota and budgets read it.
    (row,) = router.usage.usage_today()
    assert (row.reason, row.calls, row.cost_usd, row.input_tokens) == ("threshold", 1, Decimal("0.010035"), 1000)


def test_critical_task_type_escalates_after_one_failure(
    fake_ollama, fake_anthropic, make_config, tracer_provider, spans
):
    fake_ollama.script(PRIMARY, OllamaError(500))
    config = make_config(escalation={"critical_task_types": ["code_generation"]})
    with Router(config, tracer_provider=tracer_provider) as router:
        result = router.run(Task("write it", type="code_generation"))
        near_miss = router.run(Task("write it", type="code_generation_v2"))  # matched exactly, not by prefix

    assert result.ok and result.escalated
    assert [(a.tier, a.escalation_reason) for a in result.attempts] == [("primary", None), ("escalation", "critical")]
    assert spans.attempts(result.task_id)[1].attributes[attr.ESCALATION_REASON] == "critical"
    assert spans.task(result.task_id).attributes[attr.TASK_CRITICAL] is True
    assert near_miss.ok and not near_miss.escalated


def test_critical_flag_on_the_task_overrides_its_type(fake_ollama, fake_anthropic, make_config, tracer_provider):
    fake_ollama.script(PRIMARY, OllamaError(500))
    with Router(make_config(), tracer_provider=tracer_provider) as router:
        result = router.run(Task("x", type="chat", critical=True))
    assert [a.escalation_reason for a in result.attempts] == [None, "critical"]


def test_explicit_request_skips_local_models(fake_ollama, fake_anthropic, make_config, tracer_provider, spans):
    with Router(make_config(), tracer_provider=tracer_provider) as router:
        result = router.run(Task("hard one", prefer_escalation=True))

    assert result.ok and result.escalated
    assert fake_ollama.chat_requests() == []
    (only,) = spans.attempts(result.task_id)
    assert only.attributes[attr.ESCALATION_REASON] == "requested"
    assert only.attributes[attr.ATTEMPT_INDEX] == 0 and only.attributes[attr.REQUEST_MODEL] == "claude-sonnet-4-6"


def test_validator_rejection_counts_as_a_failure(fake_ollama, make_config, tracer_provider, spans):
    fake_ollama.script(PRIMARY, OllamaReply(content="not json"))
    fake_ollama.script(FALLBACK, OllamaReply(content='{"ok": true}'))

    def must_be_json(text: str) -> str | None:
        return None if text.startswith("{") else "expected a JSON object"

    with Router(make_config(), tracer_provider=tracer_provider) as router:
        result = router.run(Task("answer in JSON", validator=must_be_json))

    assert result.ok and result.text == '{"ok": true}'
    rejected = result.attempts[0]
    assert (rejected.ok, rejected.error_type) == (False, "invalid_output")
    assert rejected.error_message == "output rejected by the validator: expected a JSON object"
    assert rejected.input_tokens == 120  # the rejected answer still used tokens
    span = spans.attempts(result.task_id)[0]
    assert span.attributes[attr.ERROR_TYPE] == "invalid_output" and span.attributes[attr.USAGE_OUTPUT_TOKENS] == 40


def test_validator_rejections_reach_the_threshold_and_claude_is_validated_too(
    fake_ollama, fake_anthropic, make_config, tracer_provider
):
    fake_anthropic.script("claude-sonnet-4-6", ClaudeReply(text="still wrong"))
    with Router(make_config(), tracer_provider=tracer_provider) as router:
        result = router.run(Task("x", validator=lambda text: "wrong" if "wrong" in text or text == "ok" else None))
    # primary, fallback rejected -> Claude rejected -> the last local model also answers "ok" and is rejected.
    assert [a.error_type for a in result.attempts] == ["invalid_output"] * 4
    assert not result.ok and result.outcome == "failed"
    assert result.error.startswith("escalation to claude-sonnet-4-6 failed: output rejected by the validator: wrong")


@pytest.mark.parametrize(
    ("behaviour", "error_type"),
    [
        (OllamaReply(content=""), "empty_output"),
        (OllamaReply(content="   \n"), "empty_output"),
        (OllamaStreamError(after_chunks=1), "stream_error"),
        (OllamaDisconnect(after_chunks=0), "connection"),
        (OllamaDisconnect(after_chunks=2), "connection"),
        (OllamaHang(seconds=5), "timeout"),
        (OllamaError(400, "invalid options"), "bad_request"),
    ],
)
def test_each_kind_of_local_failure_moves_on_to_the_fallback(
    fake_ollama, make_config, tracer_provider, behaviour, error_type
):
    fake_ollama.script(PRIMARY, behaviour)
    config = make_config(router={"timeout_s": 0.5}, escalation={"enabled": False})
    with Router(config, tracer_provider=tracer_provider) as router:
        result = router.run(Task("x"))
    assert result.ok and [a.error_type for a in result.attempts] == [error_type, None]


def test_connection_refused_is_a_clear_local_failure(make_config, tracer_provider, unused_port):
    config = make_config(
        router={"ollama_host": f"http://127.0.0.1:{unused_port}", "models": ["m1"]}, escalation={"enabled": False}
    )
    with Router(config, tracer_provider=tracer_provider) as router:
        result = router.run(Task("x"))
    assert not result.ok and result.outcome == "failed"
    assert result.attempts[0].error_type == "connection"
    assert result.error == (
        "all local models failed and escalation is disabled (escalation.enabled = false) — attempts: m1: connection: "
        f"cannot connect to Ollama at http://127.0.0.1:{unused_port}; is it running? (set router.ollama_host or "
        "OLLAMA_HOST)"
    )


def test_disabled_escalation_tries_the_whole_local_chain_then_fails(fake_ollama, make_config, tracer_provider):
    for model in (PRIMARY, FALLBACK, LAST):
        fake_ollama.script(model, OllamaError(500))
    with Router(make_config(escalation={"enabled": False}), tracer_provider=tracer_provider) as router:
        result = router.run(Task("x"))
        asked = router.run(Task("x", prefer_escalation=True))
    assert not result.ok and not result.escalated and len(result.attempts) == 3
    assert result.error.startswith("all local models failed and escalation is disabled")
    assert not asked.ok and asked.attempts == []
    assert asked.error == "the task asked for Claude, but escalation is disabled (escalation.enabled = false)"


def test_chain_running_out_before_the_threshold_escalates(fake_ollama, fake_anthropic, make_config, tracer_provider):
    fake_ollama.script(PRIMARY, OllamaError(500))
    config = make_config(router={"models": [PRIMARY]}, escalation={"threshold": 3})
    with Router(config, tracer_provider=tracer_provider) as router:
        result = router.run(Task("x"))
    assert result.ok and [a.escalation_reason for a in result.attempts] == [None, "exhausted"]


def test_arun_walks_the_same_chain(fake_ollama, fake_anthropic, make_config, tracer_provider, spans):
    fake_ollama.script(PRIMARY, OllamaError(404))
    fake_ollama.script(FALLBACK, OllamaError(404))

    async def main() -> list:
        with Router(make_config(), tracer_provider=tracer_provider) as router:
            return await asyncio.gather(router.arun(Task("a")), router.arun(Task("b", prefer_escalation=True)))

    first, second = asyncio.run(main())
    assert first.ok and [a.tier for a in first.attempts] == ["primary", "fallback", "escalation"]
    assert second.ok and [a.escalation_reason for a in second.attempts] == ["requested"]
    assert len(spans.attempts()) == 4


def test_content_is_recorded_only_when_opted_in(fake_ollama, make_config, tracer_provider, spans):
    fake_ollama.script(PRIMARY, OllamaReply(content="the answer"))
    config = make_config(telemetry={"capture_content": True})
    with Router(config, tracer_provider=tracer_provider) as router:
        result = router.run(Task("the question", system="sys"))
    (span,) = spans.attempts(result.task_id)
    assert '"content": "the question"' in span.attributes[attr.INPUT_MESSAGES]
    assert '"content": "the answer"' in span.attributes[attr.OUTPUT_MESSAGES]
    assert '"content": "sys"' in span.attributes[attr.SYSTEM_INSTRUCTIONS]


def test_run_from_several_threads_at_once(fake_ollama, fake_anthropic, make_config, tracer_provider, spans):
    from concurrent.futures import ThreadPoolExecutor

    fake_ollama.set_default(
        PRIMARY, lambda body: OllamaError(500) if "fail" in str(body["messages"]) else OllamaReply()
    )
    fake_ollama.set_default(FALLBACK, OllamaError(500))
    with Router(make_config(), tracer_provider=tracer_provider) as router, ThreadPoolExecutor(8) as pool:
        tasks = [Task("fail" if i % 2 else "pass") for i in range(16)]
        results = list(pool.map(router.run, tasks))
    assert all(r.ok for r in results)
    assert [r.escalated for r in results] == [bool(i % 2) for i in range(16)]
    assert len(spans.attempts()) == 8 * 1 + 8 * 3
    assert {r.task_id for r in results} == {t.id for t in tasks}


def test_failed_local_attempts_are_priced_by_the_compute_they_used(
    fake_ollama, fake_anthropic, make_config, tracer_provider, spans
):
    # At $3.60/h a second of local compute costs $0.001. A refused request used none; a model that died
    # mid-stream was busy until it died, so its wall time is charged.
    fake_ollama.script(PRIMARY, OllamaError(503))
    fake_ollama.script(FALLBACK, OllamaStreamError(after_chunks=2))
    fake_ollama.script(LAST, OllamaReply(content="fine", prompt_eval_duration_s=0.5, eval_duration_s=0.5))
    config = make_config(local_compute={"usd_per_hour": 3.6}, escalation={"threshold": 3})
    with Router(config, tracer_provider=tracer_provider) as router:
        result = router.run(Task("hello"))

    assert result.ok and [a.model for a in result.attempts] == [PRIMARY, FALLBACK, LAST]
    refused, died, answered = result.attempts
    assert refused.compute_seconds == 0.0 and refused.cost_usd == Decimal(0)
    assert 0 < died.compute_seconds <= died.duration_s
    assert died.cost_usd == Decimal("3.6") * Decimal(str(died.compute_seconds)) / 3600
    assert answered.compute_seconds == pytest.approx(1.0) and answered.cost_usd == Decimal("0.001")
    recorded = [s.attributes[attr.LOCAL_COMPUTE_SECONDS] for s in spans.attempts(result.task_id)]
    assert recorded == [0.0, died.compute_seconds, answered.compute_seconds]


def test_one_router_serves_several_event_loops_one_after_another_and_at_once(fake_ollama, make_config, tracer_provider):
    """Async clients belong to one event loop: each loop gets its own, made on its first task and kept."""
    with Router(make_config(), tracer_provider=tracer_provider) as router:

        async def two_tasks() -> list[bool]:
            return [r.ok for r in await asyncio.gather(router.arun(Task("a")), router.arun(Task("b")))]

        assert asyncio.run(two_tasks()) == [True, True]
        assert asyncio.run(two_tasks()) == [True, True]  # a new loop after the first one closed
        with ThreadPoolExecutor(2) as pool:  # two loops running at the same time, in two threads
            assert list(pool.map(lambda _: asyncio.run(two_tasks()), range(2))) == [[True, True]] * 2
    assert len(fake_ollama.chat_requests(PRIMARY)) == 8
