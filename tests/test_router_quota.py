"""Escalation quota and budgets (scenarios 5 and 6 of issue 2): shared by processes, kept across restarts."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.trace import StatusCode
from router_processes import escalate_in_processes

from costline import spans as attr
from costline.demo.fake_anthropic import ClaudeReply
from costline.demo.fake_ollama import OllamaError, OllamaReply
from costline.pricing import TokenUsage
from router import Router, Task
from router.usage_store import Limits, Refusal, Reservation, Settlement, UsageStore

PRIMARY = "qwen2.5-coder:14b"


def test_third_escalation_in_the_hour_is_refused(fake_ollama, fake_anthropic, make_config, tracer_provider, spans):
    config = make_config(escalation={"max_calls_per_hour": 2})
    with Router(config, tracer_provider=tracer_provider) as router:
        results = [router.run(Task(f"t{i}", prefer_escalation=True)) for i in range(3)]

    assert [r.outcome for r in results] == ["completed", "completed", "quota_exhausted"]
    refused = results[2]
    assert not refused.ok and not refused.escalated and refused.cost_usd == 0
    assert refused.error == "escalation quota reached (2/h); next slot in 60 min"
    assert len(fake_anthropic.message_requests()) == 2  # the refused one never reached Claude
    (span,) = spans.attempts(refused.task_id)
    assert span.attributes[attr.ERROR_TYPE] == "quota_exhausted"
    assert span.attributes[attr.ATTEMPT_TIER] == "escalation" and span.attributes[attr.ESCALATION_REASON] == "requested"
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "escalation quota reached (2/h); next slot in 60 min"
    task = spans.task(refused.task_id)
    assert task.attributes[attr.TASK_OUTCOME] == "quota_exhausted" and task.attributes[attr.TASK_ESCALATED] is False


def test_refused_escalation_still_lets_the_remaining_local_model_answer(
    fake_ollama, fake_anthropic, make_config, tracer_provider
):
    fake_ollama.script(PRIMARY, OllamaError(500))
    fake_ollama.script("qwen3:30b-a3b", OllamaError(500))
    config = make_config(escalation={"max_calls_per_hour": 0})
    with Router(config, tracer_provider=tracer_provider) as router:
        result = router.run(Task("x"))
    assert result.ok and result.text == "ok" and not result.escalated
    assert [(a.model, a.error_type) for a in result.attempts] == [
        (PRIMARY, "server_error"),
        ("qwen3:30b-a3b", "server_error"),
        ("claude-sonnet-4-6", "quota_exhausted"),
        ("llama3.1:70b", None),
    ]


def test_a_restart_forgets_nothing(fake_anthropic, make_config, tracer_provider):
    config = make_config(escalation={"max_calls_per_hour": 2})
    for _ in range(2):
        with Router(config, tracer_provider=tracer_provider) as router:
            assert router.run(Task("x", prefer_escalation=True)).ok
    with Router(config, tracer_provider=tracer_provider) as router:
        result = router.run(Task("x", prefer_escalation=True))
    assert result.outcome == "quota_exhausted"
    assert result.error.startswith("escalation quota reached (2/h)")


def test_two_processes_share_one_quota(fake_anthropic, make_config):
    # Slow answers keep both processes' calls in flight together, so the slot reservations really race.
    fake_anthropic.set_default("claude-sonnet-4-6", ClaudeReply(delay_s=0.05))
    config = make_config(escalation={"max_calls_per_hour": 5})
    outcomes = escalate_in_processes([config, config], "child", 4)
    assert sorted(outcome for outcome, _ in outcomes) == ["completed"] * 5 + ["quota_exhausted"] * 3
    assert len(fake_anthropic.message_requests()) == 5


def test_exhausted_daily_budget_blocks_escalation_but_not_local_models(
    fake_ollama, fake_anthropic, make_config, tracer_provider, spans
):
    fake_anthropic.script(
        "claude-sonnet-4-5",
        ClaudeReply(input_tokens=700, cache_read_input_tokens=200, cache_creation_input_tokens=100, output_tokens=500),
    )
    # A 1,000-byte prompt and max_tokens 600 bound the call at $0.01302 on Sonnet 4.5 ($3.75 cache write / $15 out).
    prompt = "x" * 1000
    config = make_config(
        escalation={"model": "claude-sonnet-4-5", "max_tokens": 600}, budgets={"daily_usd": 0.015, "monthly_usd": 0}
    )
    with Router(config, tracer_provider=tracer_provider) as router:
        spent = router.run(Task(prompt, prefer_escalation=True))  # $0.010035: no room left for another bound
        blocked = router.run(Task(prompt, prefer_escalation=True))
        fake_ollama.script(PRIMARY, OllamaReply(content="local answer"))
        local = router.run(Task("y"))
        fake_ollama.script(PRIMARY, OllamaError(500))
        fake_ollama.script("qwen3:30b-a3b", OllamaError(500))
        fake_ollama.script("llama3.1:70b", OllamaError(500))
        exhausted = router.run(Task(prompt))

    assert spent.ok and spent.cost_usd == Decimal("0.010035")
    assert blocked.outcome == "budget_exhausted"
    refusal = (
        "daily budget of $0.0150 reached: $0.0100 spent + $0.0000 reserved by calls in flight, and this call may "
        "cost up to $0.0130; resets at 00:00 UTC"
    )
    assert blocked.error == refusal
    (span,) = spans.attempts(blocked.task_id)
    assert span.attributes[attr.ERROR_TYPE] == "budget_exhausted"
    assert spans.task(blocked.task_id).attributes[attr.TASK_OUTCOME] == "budget_exhausted"
    assert local.ok and local.text == "local answer"
    assert exhausted.outcome == "budget_exhausted" and len(exhausted.attempts) == 4
    # Its bound is higher: Claude would also read what the three local models did wrong.
    assert exhausted.error.startswith("daily budget of $0.0150 reached: $0.0100 spent + $0.0000 reserved by calls")
    assert " — attempts: qwen2.5-coder:14b: server_error" in exhausted.error
    assert len(fake_anthropic.message_requests()) == 1


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def _store(tmp_path, clock: Clock, calls: int = 2, daily: str = "0", monthly: str = "0") -> UsageStore:
    return UsageStore(tmp_path / "usage.sqlite", Limits(calls, Decimal(daily), Decimal(monthly)), clock=clock)


def test_rolling_window_says_when_the_oldest_call_ages_out(tmp_path):
    clock = Clock(datetime(2026, 3, 10, 10, 0, tzinfo=UTC))
    store = _store(tmp_path, clock)
    assert isinstance(store.reserve("a", "threshold", "m"), Reservation)
    clock.now += timedelta(minutes=12)
    assert isinstance(store.reserve("b", "threshold", "m"), Reservation)
    clock.now += timedelta(minutes=36)
    refusal = store.reserve("c", "threshold", "m")
    assert refusal == Refusal("quota_exhausted", "escalation quota reached (2/h); next slot in 12 min")
    clock.now += timedelta(minutes=12, seconds=1)  # 11:00:01: the 10:00 call has left the window
    assert isinstance(store.reserve("d", "threshold", "m"), Reservation)
    assert store.headroom().calls_last_hour == 2


def test_daily_budget_resets_at_utc_midnight_and_monthly_on_the_first(tmp_path):
    clock = Clock(datetime(2026, 3, 31, 23, 0, tzinfo=UTC))
    store = _store(tmp_path, clock, calls=100, daily="1", monthly="1.5")
    bound = Decimal("0.25")

    def spend(cost: str) -> None:
        reservation = store.reserve("t", "threshold", "m", bound_usd=bound)
        store.settle(reservation, Settlement("succeeded", TokenUsage(10, 10), Decimal(cost)))

    spend("0.80")
    assert store.reserve("b", "threshold", "m", bound_usd=bound) == Refusal(
        "budget_exhausted",
        "daily budget of $1.00 reached: $0.8000 spent + $0.0000 reserved by calls in flight, and this call may cost "
        "up to $0.2500; resets at 00:00 UTC",
    )
    clock.now = datetime(2026, 4, 1, 0, 0, 1, tzinfo=UTC)
    spend("0.60")
    clock.now = datetime(2026, 4, 2, 9, 0, tzinfo=UTC)
    spend("0.70")
    assert store.reserve("e", "threshold", "m", bound_usd=bound) == Refusal(
        "budget_exhausted",
        "monthly budget of $1.50 reached: $1.30 spent + $0.0000 reserved by calls in flight, and this call may cost "
        "up to $0.2500; resets on 2026-05-01 at 00:00 UTC",
    )
    headroom = store.headroom()
    assert (headroom.spent_today_usd, headroom.spent_month_usd) == (Decimal("0.70"), Decimal("1.30"))


def test_usage_today_groups_calls_by_reason(tmp_path):
    clock = Clock(datetime(2026, 3, 10, 12, 0, tzinfo=UTC))
    store = _store(tmp_path, clock, calls=2)
    ok = store.reserve("a", "threshold", "m")
    store.settle(ok, Settlement("succeeded", TokenUsage(1000, 500, 200, 100), Decimal("0.010035")))
    failed = store.reserve("b", "critical", "m")
    store.settle(failed, Settlement("failed", TokenUsage(), Decimal(0), "stream_error"))
    store.reserve("c", "critical", "m")  # refused: the quota is 2
    by_reason = {row.reason: row for row in store.usage_today()}
    assert (by_reason["threshold"].calls, by_reason["threshold"].succeeded) == (1, 1)
    assert by_reason["threshold"].cost_usd == Decimal("0.010035")
    assert by_reason["threshold"].cache_read_tokens == 200
    assert (by_reason["critical"].calls, by_reason["critical"].failed, by_reason["critical"].refused) == (2 - 1, 1, 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.integers(min_value=0, max_value=4),
    gaps=st.lists(st.integers(min_value=0, max_value=40 * 60), min_size=1, max_size=25),
)
def test_no_rolling_hour_ever_holds_more_calls_than_the_quota(tmp_path_factory, limit, gaps):
    clock = Clock(datetime(2026, 3, 10, 0, 0, tzinfo=UTC))
    store = _store(tmp_path_factory.mktemp("q"), clock, calls=limit)
    admitted: list[datetime] = []
    for gap in gaps:
        clock.now += timedelta(seconds=gap)
        in_window = [t for t in admitted if t > clock.now - timedelta(hours=1)]
        outcome = store.reserve("t", "threshold", "m")
        # Admitted exactly when the window has room: never more, and never a needless refusal.
        assert isinstance(outcome, Reservation) == (len(in_window) < limit)
        if isinstance(outcome, Reservation):
            admitted.append(clock.now)
        else:
            assert outcome.error_type == "quota_exhausted"


def _open_store_in_child(path: str, barrier, results) -> None:
    barrier.wait()
    try:
        UsageStore(Path(path), Limits(max_calls_per_hour=1, daily_usd=Decimal(0), monthly_usd=Decimal(0)))
        results.put("opened")
    except Exception as exc:  # reported to the parent, which shows it
        results.put(f"{type(exc).__name__}: {exc}")


def test_router_processes_starting_together_all_open_a_fresh_usage_store(tmp_path):
    # Switching a new file to WAL and creating its tables take write locks; SQLite answers "database is locked" at
    # once (without waiting out the busy timeout) when two connections race for them. Each round is a fresh file.
    # Forked children start in milliseconds with the modules already imported, so they really start together.
    ctx = multiprocessing.get_context("fork")
    for round_ in range(3):
        barrier, results = ctx.Barrier(6), ctx.Queue()
        path = str(tmp_path / f"usage-{round_}.sqlite")
        children = [ctx.Process(target=_open_store_in_child, args=(path, barrier, results)) for _ in range(6)]
        for child in children:
            child.start()
        outcomes = [results.get(timeout=60) for _ in children]
        for child in children:
            child.join(timeout=30)
        assert outcomes == ["opened"] * 6
