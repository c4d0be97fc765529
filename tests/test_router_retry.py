"""Claude errors: the router owns retries; each HTTP call is its own attempt span (scenario 7 of issue 2).

Errors Claude answers before it begins generating are not billed: they cost nothing and give their quota slot back,
so a retried escalation holds one slot. Waits between retries are recorded, not slept (``RecordedWaits``).
"""

from __future__ import annotations

import pytest
from opentelemetry.trace import StatusCode
from recorded_waits import RecordedWaits

from costline import spans as attr
from costline.demo.fake_anthropic import ClaudeError, ClaudeHang, ClaudeReply
from router import Router, Task
from router.router import BACKOFF_BASE_S

SONNET = "claude-sonnet-4-6"


def test_429_with_retry_after_is_retried_as_a_second_attempt_span(fake_anthropic, make_config, tracer_provider, spans):
    fake_anthropic.script(SONNET, ClaudeError(429, retry_after=7), ClaudeReply(text="second time lucky"))
    waits = RecordedWaits()
    with Router(make_config(), tracer_provider=tracer_provider, waits=waits) as router:
        result = router.run(Task("x", prefer_escalation=True))
        headroom = router.usage.headroom()

    assert result.ok and result.text == "second time lucky"
    assert [(a.tier, a.ok, a.error_type) for a in result.attempts] == [
        ("escalation", False, "rate_limited"),
        ("escalation", True, None),
    ]
    first, second = spans.attempts(result.task_id)
    assert first.attributes[attr.ERROR_TYPE] == "rate_limited" and first.status.status_code == StatusCode.ERROR
    assert "Claude answered 429 rate_limit_error" in first.status.description
    assert (first.attributes[attr.ATTEMPT_INDEX], second.attributes[attr.ATTEMPT_INDEX]) == (0, 1)
    assert second.attributes[attr.ESCALATION_REASON] == "requested"
    assert waits.waits == [7.0]  # the retry-after was honoured
    assert len(fake_anthropic.message_requests()) == 2
    assert headroom.calls_last_hour == 1  # the 429 was not billed and gave its slot back
    assert [a.billed for a in result.attempts] == [False, True]
    assert result.attempts[0].cost_usd == 0


def test_401_is_one_attempt_with_a_clear_message(fake_anthropic, make_config, tracer_provider, spans, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-wrong-key-0000")
    with Router(make_config(), tracer_provider=tracer_provider) as router:
        result = router.run(Task("x", prefer_escalation=True))
    assert result.outcome == "failed" and len(result.attempts) == 1
    assert result.attempts[0].error_type == "authentication"
    assert result.error.startswith(
        "escalation to claude-sonnet-4-6 failed: Claude rejected the credentials (401 authentication_error: "
        "invalid x-api-key); check ANTHROPIC_API_KEY"
    )
    assert "sk-ant-wrong-key-0000" not in result.error
    (span,) = spans.attempts(result.task_id)
    assert span.attributes[attr.ERROR_TYPE] == "authentication"


def test_missing_api_key_refuses_the_escalation_without_a_call(
    fake_anthropic, make_config, tracer_provider, spans, monkeypatch
):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with Router(make_config(), tracer_provider=tracer_provider) as router:
        result = router.run(Task("x", prefer_escalation=True))
        headroom = router.usage.headroom()
    assert result.outcome == "failed" and not result.escalated
    assert result.error == (
        "escalation to claude-sonnet-4-6 refused: ANTHROPIC_API_KEY is not set; export it to let the router escalate "
        "to Claude"
    )
    assert fake_anthropic.message_requests() == [] and headroom.calls_last_hour == 0
    (span,) = spans.attempts(result.task_id)
    assert span.attributes[attr.ERROR_TYPE] == "missing_credentials"
    assert spans.task(result.task_id).attributes[attr.TASK_ESCALATED] is False


@pytest.mark.parametrize(
    ("status", "error_type"), [(400, "bad_request"), (403, "permission_denied"), (404, "model_not_found")]
)
def test_client_errors_are_not_retried(fake_anthropic, make_config, tracer_provider, status, error_type):
    fake_anthropic.script(SONNET, ClaudeError(status), ClaudeReply())
    with Router(make_config(), tracer_provider=tracer_provider) as router:
        result = router.run(Task("x", prefer_escalation=True))
    assert [a.error_type for a in result.attempts] == [error_type]
    assert len(fake_anthropic.message_requests()) == 1


def test_overload_is_retried_up_to_max_retries(fake_anthropic, make_config, tracer_provider, spans):
    fake_anthropic.script(SONNET, *[ClaudeError(529, retry_after=0)] * 4)
    config = make_config(router={"max_retries": 2})
    with Router(config, tracer_provider=tracer_provider, waits=RecordedWaits()) as router:
        result = router.run(Task("x", prefer_escalation=True))
        headroom = router.usage.headroom()
    assert [a.error_type for a in result.attempts] == ["overloaded"] * 3
    assert headroom.calls_last_hour == 0 and result.cost_usd == 0  # 529s are not billed
    assert len(spans.attempts(result.task_id)) == 3
    assert result.outcome == "failed" and result.error.startswith(
        "escalation to claude-sonnet-4-6 failed: Claude answered 529 overloaded_error"
    )


def test_server_errors_without_retry_after_back_off_exponentially_within_the_bound(
    fake_anthropic, make_config, tracer_provider
):
    fake_anthropic.script(SONNET, *[ClaudeError(500)] * 4, ClaudeReply(text="recovered"))
    waits = RecordedWaits()
    config = make_config(router={"max_retries": 4, "max_retry_wait_s": 1.5})
    with Router(config, tracer_provider=tracer_provider, waits=waits) as router:
        result = router.run(Task("x", prefer_escalation=True))
    assert result.ok and [a.error_type for a in result.attempts] == ["server_error"] * 4 + [None]
    # 0.5 s, doubling each time, never longer than router.max_retry_wait_s
    assert waits.waits == [BACKOFF_BASE_S, 2 * BACKOFF_BASE_S, 1.5, 1.5]


def test_retry_after_beyond_the_bound_gives_up_at_once(fake_anthropic, make_config, tracer_provider):
    fake_anthropic.script(SONNET, ClaudeError(429, retry_after=120), ClaudeReply())
    config = make_config(router={"max_retry_wait_s": 30})
    with Router(config, tracer_provider=tracer_provider) as router:
        result = router.run(Task("x", prefer_escalation=True))
    assert len(result.attempts) == 1 and result.outcome == "failed"
    assert result.error.startswith("escalation to claude-sonnet-4-6 failed: Claude answered 429 rate_limit_error")
    assert result.error.endswith("(retry-after 120s is longer than router.max_retry_wait_s = 30s)")


def test_claude_timeout_before_any_answer_is_an_unbilled_attempt_and_is_retried(
    fake_anthropic, make_config, tracer_provider
):
    fake_anthropic.script(SONNET, ClaudeHang(seconds=3), ClaudeReply(text="late but fine"))
    config = make_config(escalation={"timeout_s": 0.5})
    with Router(config, tracer_provider=tracer_provider, waits=RecordedWaits()) as router:
        result = router.run(Task("x", prefer_escalation=True))
        headroom = router.usage.headroom()
    assert result.ok and [a.error_type for a in result.attempts] == ["timeout", None]
    assert headroom.calls_last_hour == 1


def test_claude_has_its_own_timeout_so_a_long_streamed_answer_finishes(
    fake_ollama, fake_anthropic, make_config, tracer_provider
):
    # Ollama's timeout is short; Claude's answer streams for longer than it, within escalation.timeout_s.
    fake_anthropic.script(SONNET, ClaudeReply(text="a long, careful answer", delay_s=1.0))
    config = make_config(router={"timeout_s": 0.3}, escalation={"timeout_s": 30})
    with Router(config, tracer_provider=tracer_provider) as router:
        result = router.run(Task("x", prefer_escalation=True))
    assert result.ok and result.text == "a long, careful answer" and len(result.attempts) == 1
    assert fake_anthropic.message_requests()[0]["stream"] is True
