"""Accounting invariants of the router: budgets hold under concurrency, no billed call vanishes whatever ends it,
one call is one count however spans nest, and truncated answers are visible.

Concurrency runs against the simulated Claude with slow answers, so that reservations really race: eight threads,
eight asyncio tasks, and two processes, each against a daily budget worth less than two calls.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.trace import SpanKind
from router_processes import escalate_in_processes
from typer.testing import CliRunner

from costline import spans as attr
from costline.cli import app
from costline.config import BUILTIN_VALIDATORS, Config, load_config
from costline.demo.fake_anthropic import ClaudeHang, ClaudeReply
from costline.demo.fake_ollama import OllamaError, OllamaReply
from costline.pricing import TokenUsage
from router import Router, Task
from router.providers import CallProgress
from router.usage_store import Limits, Reservation, Settlement, UsageStore
from router.validators import BUILTIN

PRIMARY, FALLBACK, LAST = "qwen2.5-coder:14b", "qwen3:30b-a3b", "llama3.1:70b"
SONNET = "claude-sonnet-4-6"  # $3 input, $3.75 cache write, $15 output per million tokens

# A 2,000-byte prompt with max_tokens 400 bounds a call at (2,072 x $3.75 + 400 x $15) / 1M = $0.01377; the simulated
# answer costs (1,500 x $3 + 300 x $15) / 1M = $0.009. A $0.025 daily budget holds less than two bounds.
PROMPT = "p" * 2000
BOUND = Decimal("0.01377")
ACTUAL = Decimal("0.009")
BUDGET = Decimal("0.025")
SLOW_ANSWER = ClaudeReply(text="done", input_tokens=1500, output_tokens=300, delay_s=0.3)


def budget_config(make_config: Any) -> Config:
    return make_config(
        escalation={"max_tokens": 400, "max_calls_per_hour": 100},
        budgets={"daily_usd": float(BUDGET), "monthly_usd": 0},
    )


def calls(usage_db: Path) -> list[tuple[str, Decimal, bool]]:
    """(status, cost counted against the budgets, estimated) of every escalation call in the usage store."""
    with sqlite3.connect(usage_db) as db:
        rows = db.execute("SELECT status, cost_usd, estimated FROM escalation_calls ORDER BY id").fetchall()
    return [(status, Decimal(cost), bool(estimated)) for status, cost, estimated in rows]


def assert_budget_held(usage_db: Path, results: list[Any]) -> None:
    rows = calls(usage_db)
    made = [r for r in rows if r[0] != "refused"]
    assert all(status == "succeeded" for status, _, _ in made)  # nothing left reserved, nothing estimated
    assert sum(cost for _, cost, _ in rows) <= BUDGET
    assert sum(r.cost_usd for r in results) <= BUDGET
    refused = [r for r in results if r.outcome == "budget_exhausted"]
    assert len(made) + len(refused) == len(results)
    assert made and refused  # the race happened: some calls went ahead, the rest were refused
    for result in refused:
        assert result.error.startswith("daily budget of $0.0250 reached: $")
        assert "reserved by calls in flight, and this call may cost up to $0.0138; resets at 00:00 UTC" in result.error


def test_upper_bound_covers_the_request_and_max_tokens(fake_anthropic, make_config, tracer_provider):
    with Router(budget_config(make_config), tracer_provider=tracer_provider) as router:
        bound = router._claude.usage_bound(None, [{"role": "user", "content": PROMPT}])
        assert router.pricer.upper_bound(attr.PROVIDER_ANTHROPIC, SONNET, bound) == BOUND


def test_eight_threads_never_spend_more_than_the_budget(fake_anthropic, make_config, tracer_provider):
    fake_anthropic.set_default(SONNET, SLOW_ANSWER)
    config = budget_config(make_config)
    with Router(config, tracer_provider=tracer_provider) as router, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(router.run, [Task(PROMPT, prefer_escalation=True) for _ in range(8)]))
    assert_budget_held(config.usage_db_path, results)


def test_eight_asyncio_tasks_never_spend_more_than_the_budget(fake_anthropic, make_config, tracer_provider):
    fake_anthropic.set_default(SONNET, SLOW_ANSWER)
    config = budget_config(make_config)

    async def main() -> list[Any]:
        with Router(config, tracer_provider=tracer_provider) as router:
            return await asyncio.gather(*(router.arun(Task(PROMPT, prefer_escalation=True)) for _ in range(8)))

    assert_budget_held(config.usage_db_path, asyncio.run(main()))


def test_two_processes_never_spend_more_than_the_budget_together(fake_anthropic, make_config):
    fake_anthropic.set_default(SONNET, SLOW_ANSWER)
    config = budget_config(make_config)
    outcomes = escalate_in_processes([config, config], PROMPT, 4)
    assert sum(Decimal(cost) for _, cost in outcomes) <= BUDGET
    assert sum(cost for _, cost, _ in calls(config.usage_db_path)) <= BUDGET
    assert {outcome for outcome, _ in outcomes} == {"completed", "budget_exhausted"}


def test_budgets_never_block_local_models(fake_ollama, fake_anthropic, make_config, tracer_provider):
    config = make_config(budgets={"daily_usd": 0.000001})  # no escalation fits
    fake_ollama.script(PRIMARY, OllamaError(500))
    with Router(config, tracer_provider=tracer_provider) as router:
        result = router.run(Task("x"))
    assert result.ok and result.attempts[-1].model == FALLBACK
    assert [a.error_type for a in result.attempts] == ["server_error", None]


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["reserve", "settle", "settle_unknown", "unbilled"]),
            st.integers(min_value=1, max_value=400),  # bound, in cents of a hundredth
            st.floats(min_value=0, max_value=1),  # actual cost as a share of the bound
        ),
        max_size=40,
    )
)
def test_spent_plus_reserved_never_exceeds_the_budget_whatever_the_interleaving(tmp_path_factory, steps):
    """Reservations and settlements in any order: what counts against the budget never passes it."""
    clock = Clock()
    budget = Decimal("10")
    store = UsageStore(tmp_path_factory.mktemp("u") / "usage.sqlite", Limits(1000, budget, Decimal(0)), clock=clock)
    open_reservations: list[Reservation] = []
    for action, bound_units, share in steps:
        clock.now += timedelta(seconds=1)
        if action == "reserve" or not open_reservations:
            bound = Decimal(bound_units) / 100
            admission = store.reserve("t", "threshold", SONNET, bound_usd=bound)
            if isinstance(admission, Reservation):
                open_reservations.append(admission)
            else:
                assert admission.error_type == "budget_exhausted"
        else:
            reservation = open_reservations.pop(0)
            if action == "settle":
                actual = (reservation.bound_usd * Decimal(str(share))).quantize(Decimal("0.000001"))
                store.settle(reservation, Settlement("succeeded", TokenUsage(1, 1), actual))
            elif action == "settle_unknown":  # usage never arrived: the reservation stands, estimated
                assert store.settle(reservation, Settlement("failed", TokenUsage(), None)) == reservation.bound_usd
            else:
                assert store.settle(reservation, Settlement("unbilled", TokenUsage(), Decimal(0))) == 0
        headroom = store.headroom()
        assert headroom.spent_today_usd <= budget


# -- no billed call vanishes ------------------------------------------------------------------------------------


class Answering:
    """Signals when a call's model begins answering: the moment a test cancels it mid-answer."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.event = threading.Event()
        event = self.event

        class SignallingProgress(CallProgress):
            def __setattr__(self, name: str, value: Any) -> None:
                super().__setattr__(name, value)
                if name == "answering" and value:
                    event.set()

        monkeypatch.setattr("router.attempt.CallProgress", SignallingProgress)


def cancel_when(ready: Callable[[], bool], router: Router, task: Task) -> None:
    """Run ``task`` as an asyncio task and cancel it once ``ready()``; the cancellation must reach the caller."""

    async def main() -> None:
        with router:
            running = asyncio.create_task(router.arun(task))
            while not ready():
                await asyncio.sleep(0.01)
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running

    asyncio.run(main())


def test_a_raising_validator_still_books_the_billed_call(fake_anthropic, make_config, tracer_provider, spans):
    fake_anthropic.script(SONNET, ClaudeReply(text="{not json", input_tokens=1500, output_tokens=300))

    def validator(text: str) -> str | None:
        raise ValueError("parser crashed")

    config = budget_config(make_config)
    task = Task(PROMPT, prefer_escalation=True, validator=validator)
    with Router(config, tracer_provider=tracer_provider) as router, pytest.raises(ValueError, match="parser crashed"):
        router.run(task)

    (span,) = spans.attempts(task.id)
    assert span.attributes[attr.ERROR_TYPE] == "validator_error"
    assert span.attributes[attr.USAGE_INPUT_TOKENS] == 1500 and span.attributes[attr.USAGE_OUTPUT_TOKENS] == 300
    assert span.status.description == "the task's validator raised ValueError: parser crashed"
    assert spans.task(task.id).attributes[attr.TASK_OUTCOME] == "failed"
    assert calls(config.usage_db_path) == [("failed", ACTUAL, False)]  # billed, at its actual price


def test_cancelled_while_waiting_for_claude_is_unbilled_and_gives_the_slot_back(
    fake_anthropic, make_config, tracer_provider, spans
):
    fake_anthropic.set_default(SONNET, ClaudeHang(seconds=30))
    config = budget_config(make_config)
    task = Task(PROMPT, prefer_escalation=True)

    cancel_when(lambda: bool(fake_anthropic.message_requests()), Router(config, tracer_provider=tracer_provider), task)
    (span,) = spans.attempts(task.id)
    assert span.attributes[attr.ERROR_TYPE] == "cancelled" and attr.USAGE_INPUT_TOKENS not in span.attributes
    task_span = spans.task(task.id)
    assert task_span.attributes[attr.TASK_OUTCOME] == "cancelled"
    assert task_span.attributes[attr.TASK_ESCALATED] is True
    assert calls(config.usage_db_path) == [("unbilled", Decimal(0), False)]


def test_cancelled_mid_answer_settles_at_the_reservation_marked_estimated(
    fake_anthropic, make_config, tracer_provider, spans, monkeypatch
):
    answering = Answering(monkeypatch)
    fake_anthropic.set_default(SONNET, ClaudeReply(input_tokens=1500, output_tokens=300, stall_s=30))
    config = budget_config(make_config)
    task = Task(PROMPT, prefer_escalation=True)

    cancel_when(answering.event.is_set, Router(config, tracer_provider=tracer_provider), task)
    (span,) = spans.attempts(task.id)
    assert span.attributes[attr.ERROR_TYPE] == "cancelled"
    assert span.attributes[attr.USAGE_INPUT_TOKENS] == 1500  # message_start told the input usage
    assert span.attributes[attr.RESPONSE_ID].startswith("msg_")
    assert spans.task(task.id).attributes[attr.TASK_OUTCOME] == "cancelled"
    assert calls(config.usage_db_path) == [("failed", BOUND, True)]


def test_keyboard_interrupt_in_a_thread_run_books_the_call(fake_anthropic, make_config, tracer_provider, spans):
    """Ctrl-C lands as KeyboardInterrupt wherever the main thread is; here the validator is where it lands."""
    fake_anthropic.script(SONNET, ClaudeReply(input_tokens=1500, output_tokens=300))

    def interrupted(text: str) -> str | None:
        raise KeyboardInterrupt

    config = budget_config(make_config)
    task = Task(PROMPT, prefer_escalation=True, validator=interrupted)
    with Router(config, tracer_provider=tracer_provider) as router, pytest.raises(KeyboardInterrupt):
        router.run(task)
    (span,) = spans.attempts(task.id)
    assert span.attributes[attr.ERROR_TYPE] == "cancelled" and span.attributes[attr.USAGE_OUTPUT_TOKENS] == 300
    assert spans.task(task.id).attributes[attr.TASK_OUTCOME] == "cancelled"
    assert calls(config.usage_db_path) == [("failed", ACTUAL, False)]  # the answer had arrived: its actual price


def test_a_cancelled_local_call_is_booked_with_the_compute_it_may_have_used(
    fake_ollama, make_config, tracer_provider, spans
):
    fake_ollama.script(PRIMARY, OllamaReply(delay_s=30))
    config = make_config(local_compute={"usd_per_hour": 3.6})
    task = Task("x")

    cancel_when(lambda: bool(fake_ollama.chat_requests(PRIMARY)), Router(config, tracer_provider=tracer_provider), task)
    (span,) = spans.attempts(task.id)
    assert span.attributes[attr.ERROR_TYPE] == "cancelled"
    assert span.attributes[attr.LOCAL_COMPUTE_SECONDS] > 0  # the wall time: an upper bound of the model's time


# -- one call, one count ----------------------------------------------------------------------------------------


def test_other_instrumentations_spans_nest_under_the_attempt_and_the_app_span_is_the_parent(
    fake_ollama, make_config, tracer_provider, spans
):
    """opentelemetry-instrumentation-httpx on the same provider: its HTTP span for the Ollama call is a child of the
    attempt span, and the application's span around ``router.run`` is the task span's parent."""
    fake_ollama.script(PRIMARY, OllamaError(503))
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    try:
        with Router(make_config(), tracer_provider=tracer_provider) as router:
            app_tracer = tracer_provider.get_tracer("my-app")
            with app_tracer.start_as_current_span("handle request") as app_span:
                result = router.run(Task("x"))
    finally:
        instrumentor.uninstrument()
    assert result.ok

    finished = spans.exporter.get_finished_spans()
    (task,) = [s for s in finished if s.name == "task general"]
    assert task.parent.span_id == app_span.get_span_context().span_id
    attempts = sorted((s for s in finished if attr.ATTEMPT_INDEX in s.attributes), key=lambda s: s.start_time)
    assert [a.attributes[attr.REQUEST_MODEL] for a in attempts] == [PRIMARY, FALLBACK]
    http = [s for s in finished if s.kind == SpanKind.CLIENT and attr.TASK_ID not in s.attributes]
    assert len(http) == 2  # one POST /api/chat per attempt
    for attempt, request in zip(attempts, sorted(http, key=lambda s: s.start_time), strict=True):
        assert request.parent.span_id == attempt.context.span_id
        assert request.context.trace_id == app_span.get_span_context().trace_id
        assert attempt.parent.span_id == task.context.span_id


# -- truncation -------------------------------------------------------------------------------------------------


def test_a_local_answer_cut_off_by_its_length_limit_moves_the_chain_on(
    fake_ollama, make_config, tracer_provider, spans
):
    fake_ollama.script(PRIMARY, OllamaReply(content="half an ans", done_reason="length", eval_count=512))
    with Router(make_config(), tracer_provider=tracer_provider) as router:
        result = router.run(Task("x"))
    assert result.ok and [(a.model, a.error_type) for a in result.attempts] == [
        (PRIMARY, "truncated"),
        (FALLBACK, None),
    ]
    first = spans.attempts(result.task_id)[0]
    assert first.attributes[attr.ERROR_TYPE] == "truncated" and first.attributes[attr.USAGE_OUTPUT_TOKENS] == 512
    assert first.attributes[attr.RESPONSE_FINISH_REASONS] == ("length",)


def test_a_claude_answer_cut_off_at_max_tokens_ends_the_task_truncated(
    fake_anthropic, make_config, tracer_provider, spans
):
    fake_anthropic.script(SONNET, ClaudeReply(text="the first half", input_tokens=100, output_tokens=900))
    config = make_config(escalation={"max_tokens": 256})
    with Router(config, tracer_provider=tracer_provider) as router:
        result = router.run(Task("x", prefer_escalation=True))
    assert result.outcome == "truncated" and not result.ok and result.text == "the first half"
    assert len(result.attempts) == 1  # never retried: a second call would be cut off the same way, and billed again
    assert result.error.startswith("escalation to claude-sonnet-4-6 failed: claude-sonnet-4-6 stopped at ")
    assert "escalation.max_tokens (256 output tokens)" in result.error
    assert result.cost_usd == Decimal("0.004140")  # 100 x $3 + 256 x $15, per million: billed as answered
    (span,) = spans.attempts(result.task_id)
    assert span.attributes[attr.ERROR_TYPE] == "truncated"
    assert span.attributes[attr.RESPONSE_FINISH_REASONS] == ("max_tokens",)
    assert spans.task(result.task_id).attributes[attr.TASK_OUTCOME] == "truncated"


def test_refusals_name_their_cause(fake_anthropic, make_config, tracer_provider):
    config = make_config(budgets={"daily_usd": 0.01, "monthly_usd": 0})
    with Router(config, tracer_provider=tracer_provider) as router:
        result = router.run(Task("x", prefer_escalation=True))
    assert result.outcome == "budget_exhausted"
    assert result.error == (
        "daily budget of $0.0100 reached: $0.0000 spent + $0.0000 reserved by calls in flight, and this call may "
        "cost up to $0.0617; resets at 00:00 UTC"
    )


def test_costline_usage_counts_calls_in_flight_at_their_reservation(tmp_path):
    usage_db = tmp_path / "usage.sqlite"
    config = tmp_path / "costline.toml"
    config.write_text(f'[router]\nusage_db = "{usage_db}"\n[budgets]\ndaily_usd = 1.0\nmonthly_usd = 0\n')
    store = UsageStore(usage_db, Limits(50, Decimal("1"), Decimal(0)))
    settled = store.reserve("a", "threshold", SONNET, bound_usd=Decimal("0.05"))
    store.settle(settled, Settlement("succeeded", TokenUsage(1000, 100), Decimal("0.0045")))
    store.reserve("b", "critical", SONNET, bound_usd=Decimal("0.0617"))  # still in flight

    result = CliRunner().invoke(app, ["usage", "--format", "json", "-c", str(config)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["reserved_in_flight_usd"] == pytest.approx(0.0617)
    assert report["budgets"]["daily"]["spent_usd"] == pytest.approx(0.0045 + 0.0617)
    assert report["quota"]["used"] == 2


def test_a_team_budget_holds_within_the_global_one(fake_anthropic, tmp_path, tracer_provider):
    """[budgets.teams."search"]: that team's escalations stop at its own budget; other teams go on."""
    fake_anthropic.set_default(SONNET, ClaudeReply(text="done", input_tokens=1500, output_tokens=300))
    path = tmp_path / "costline.toml"
    path.write_text(
        f'[router]\nusage_db = "{tmp_path / "usage.sqlite"}"\n'
        f'[escalation]\nbase_url = "{fake_anthropic.url}"\nmax_tokens = 400\n'
        '[budgets]\ndaily_usd = 1.0\nmonthly_usd = 0\n[budgets.teams."search"]\ndaily_usd = 0.02\n'
    )
    with Router(load_config(path, env={}), tracer_provider=tracer_provider) as router:
        search = [router.run(Task(PROMPT, prefer_escalation=True, team="search")) for _ in range(3)]
        other = [router.run(Task(PROMPT, prefer_escalation=True, team="ads")) for _ in range(3)]
    assert [r.outcome for r in search] == ["completed", "budget_exhausted", "budget_exhausted"]
    assert search[1].error.startswith("team search's daily budget of $0.0200 reached: $0.0090 spent + $0.0000")
    assert 0 < search[1].retry_after_s <= 86400
    assert [r.outcome for r in other] == ["completed"] * 3


def test_a_task_type_can_name_the_json_validator_in_config(fake_ollama, tmp_path, tracer_provider):
    fake_ollama.script(PRIMARY, OllamaReply(content="```json\n{}\n```"))
    fake_ollama.script(FALLBACK, OllamaReply(content='{"label": "bug"}'))
    path = tmp_path / "costline.toml"
    path.write_text(
        f'[router]\nusage_db = "{tmp_path / "usage.sqlite"}"\nollama_host = "{fake_ollama.url}"\n'
        '[validators]\nextract = "json"\n'
    )
    with Router(load_config(path, env={}), tracer_provider=tracer_provider) as router:
        result = router.run(Task("label this", type="extract"))
        other = router.run(Task("anything", type="general"))
    assert result.ok and result.text == '{"label": "bug"}'
    assert result.attempts[0].error_type == "invalid_output"
    assert result.attempts[0].error_message.startswith("output rejected by the validator: not JSON: Expecting value")
    assert other.ok and len(other.attempts) == 1  # other types are not validated


def test_every_validator_the_config_accepts_exists():
    assert set(BUILTIN) == set(BUILTIN_VALIDATORS)


GLOBAL_PROVIDER_SCRIPT = """
import json, os, sys
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from costline.config import load_config
from router import Router, Task

app_spans, router_spans = InMemorySpanExporter(), InMemorySpanExporter()
app = TracerProvider()
app.add_span_processor(SimpleSpanProcessor(app_spans))
trace.set_tracer_provider(app)  # the application's global provider, as its own instrumentation uses it
HTTPXClientInstrumentor().instrument()  # no provider given: the global one
own = TracerProvider()
own.add_span_processor(SimpleSpanProcessor(router_spans))
with Router(load_config(sys.argv[1], env={}), tracer_provider=own) as router:
    with trace.get_tracer("my-app").start_as_current_span("handle request"):
        assert router.run(Task("x")).ok
def ids(exporter):
    return [[s.name, s.context.span_id, s.parent.span_id if s.parent else None] for s in exporter.get_finished_spans()]
print(json.dumps({"app": ids(app_spans), "router": ids(router_spans)}))
"""


def test_spans_of_instrumentation_on_the_global_provider_nest_under_the_router_spans(fake_ollama, tmp_path):
    """The usual setup: the application's global provider, httpx instrumented on it, and the router's own provider
    for costline's collector. The HTTP span of the Ollama call is the attempt span's child; the app's span is the task
    span's parent."""
    config = tmp_path / "costline.toml"
    config.write_text(f'[router]\nollama_host = "{fake_ollama.url}"\nusage_db = "{tmp_path / "usage.sqlite"}"\n')
    done = subprocess.run(
        [sys.executable, "-c", GLOBAL_PROVIDER_SCRIPT, str(config)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    spans = json.loads(done.stdout)
    app = {name: (span_id, parent) for name, span_id, parent in spans["app"]}
    router = {name: (span_id, parent) for name, span_id, parent in spans["router"]}
    (http,) = [name for name in app if name != "handle request"]  # POST, as the httpx instrumentation names it
    assert app[http][1] == router[f"chat {PRIMARY}"][0]
    assert router["task general"][1] == app["handle request"][0]
