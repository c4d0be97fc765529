"""The router: primary Ollama model, then the fallbacks, then Claude within quota and budgets."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from anthropic.resources.messages import DEPRECATED_MODELS
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from costline import spans as attr
from costline.config import Config
from costline.pricing import Pricer, is_deprecated
from router import policy
from router.attempt import Attempt
from router.errors import ProviderFailure
from router.fanout import FanOutExporter
from router.providers.anthropic import AnthropicProvider
from router.providers.ollama import OllamaProvider
from router.task import AttemptRecord, Task, TaskResult
from router.telemetry import Telemetry, build_tracer_provider
from router.usage_db import UsageStoreUnavailable
from router.usage_store import Refusal, Reservation, open_usage_store
from router.validators import BUILTIN as BUILTIN_VALIDATORS

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5  # first wait before retrying Claude when it gives no retry-after


class Waits:
    """How the router waits before a retry; tests hand in one that records the waits instead of sleeping."""

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Router:
    """Routes tasks local-first. Thread-safe for ``run``; ``arun`` may be awaited concurrently."""

    def __init__(
        self,
        config: Config,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        waits: Waits | None = None,
    ) -> None:
        self.config = config
        self.pricer = Pricer(config)
        esc = config.escalation
        if esc.enabled:
            self.pricer.ensure_priceable(attr.PROVIDER_ANTHROPIC, esc.model, "escalation.model")
            end_of_life = DEPRECATED_MODELS.get(esc.model)  # the SDK's own table, with the date
            if end_of_life or is_deprecated(attr.PROVIDER_ANTHROPIC, esc.model):
                log.warning(
                    "escalation.model %r is deprecated by Anthropic%s; switch to a current model such as "
                    "claude-sonnet-4-6",
                    esc.model,
                    f" (end of life: {end_of_life})" if end_of_life else "",
                )
        self._owns_provider = tracer_provider is None
        self.exporter: FanOutExporter | None = None  # set when the router made its own provider
        if tracer_provider is None:
            tracer_provider, self.exporter = build_tracer_provider(config)
        self._tracer_provider = tracer_provider
        self.telemetry = Telemetry(self._tracer_provider, config.telemetry.capture_content)
        self.usage = open_usage_store(config)
        self.waits = waits or Waits()
        self._ollama = self._new_ollama()
        self._claude = self._new_claude()
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[OllamaProvider, AnthropicProvider]]
        self._by_loop = weakref.WeakKeyDictionary()
        self._loop_lock = threading.Lock()

    def _new_ollama(self) -> OllamaProvider:
        return OllamaProvider(self.config.router.ollama_host, self.config.router.timeout_s)

    def _new_claude(self) -> AnthropicProvider:
        esc = self.config.escalation
        return AnthropicProvider(esc.base_url, esc.timeout_s, esc.max_tokens)

    # -- sync ---------------------------------------------------------------------------------------------------

    def run(self, task: Task) -> TaskResult:
        state = _TaskRun(self, task)
        with state:
            while (step := state.next_step()) is not None:
                if isinstance(step, _Wait):
                    self.waits.sleep(step.seconds)
                    continue
                with state.attempt(step) as attempt:
                    try:
                        if isinstance(step, _Local):
                            attempt.answered(self._ollama.chat(step.model, state.local_messages(), attempt.progress))
                        elif self._admit(state, step, attempt, self._claude):
                            system, messages = state.claude_system(), state.claude_messages()
                            attempt.answered(self._claude.chat(step.model, system, messages, attempt.progress))
                    except ProviderFailure as failure:
                        attempt.failed(failure)
        return state.result

    # -- async --------------------------------------------------------------------------------------------------

    async def arun(self, task: Task) -> TaskResult:
        local, claude = self._loop_providers()
        state = _TaskRun(self, task)
        with state:
            while (step := state.next_step()) is not None:
                if isinstance(step, _Wait):
                    await self.waits.asleep(step.seconds)
                    continue
                with state.attempt(step) as attempt:
                    try:
                        if isinstance(step, _Local):
                            reply = await local.achat(step.model, state.local_messages(), attempt.progress)
                            attempt.answered(reply)
                        elif await asyncio.to_thread(self._admit, state, step, attempt, claude):
                            system, messages = state.claude_system(), state.claude_messages()
                            attempt.answered(await claude.achat(step.model, system, messages, attempt.progress))
                    except ProviderFailure as failure:
                        attempt.failed(failure)
        return state.result

    def _loop_providers(self) -> tuple[OllamaProvider, AnthropicProvider]:
        """The async clients of the running event loop, made on its first task and kept for the next ones: async
        clients are bound to one loop, and making a client (its TLS context, its connection pool) per task costs
        more than the task's own work."""
        loop = asyncio.get_running_loop()
        with self._loop_lock:
            providers = self._by_loop.get(loop)
            if providers is None:
                providers = self._by_loop[loop] = (self._new_ollama(), self._new_claude())
            return providers

    async def aclose(self) -> None:
        """Close the async clients of the running event loop (``close`` releases the rest)."""
        with self._loop_lock:
            providers = self._by_loop.pop(asyncio.get_running_loop(), None)
        for provider in providers or ():
            await provider.aclose()

    def _admit(self, state: _TaskRun, step: _Escalate, attempt: Attempt, claude: AnthropicProvider) -> bool:
        """Reserve a quota slot and the call's upper-bound cost together; False when the escalation may not run.

        The attempt takes the answer in the same (possibly worker) thread, so a task cancelled meanwhile still
        gets its reservation back."""
        admission: Reservation | Refusal
        if problem := claude.credentials_problem():
            admission = Refusal(attr.ERROR_MISSING_CREDENTIALS, problem)
        else:
            bound = claude.usage_bound(state.claude_system(), state.claude_messages())
            cost_bound = self.pricer.upper_bound(attr.PROVIDER_ANTHROPIC, step.model, bound)
            trace_id, span_id = attempt.ids
            try:
                admission = self.usage.reserve(
                    state.task.id,
                    step.reason,
                    step.model,
                    bound_usd=cost_bound,
                    trace_id=trace_id,
                    span_id=span_id,
                    team=state.task.team,
                )
            except UsageStoreUnavailable as exc:  # fail closed: no budget check, no call
                admission = Refusal(attr.ERROR_USAGE_STORE_UNAVAILABLE, str(exc))
        return attempt.admit(admission)

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP clients and flush the spans (and shut the exporter down if the router made it)."""
        self._ollama.close()
        self._claude.close()
        with self._loop_lock:
            self._by_loop.clear()  # async clients of loops that have ended: their connections go with them
        if isinstance(self._tracer_provider, TracerProvider):
            if self._owns_provider:
                self._tracer_provider.shutdown()
            else:
                self._tracer_provider.force_flush()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class _Local:
    model: str
    tier: str


@dataclass(frozen=True)
class _Escalate:
    model: str
    reason: str


@dataclass(frozen=True)
class _Wait:
    seconds: float


class _TaskRun:
    """One task's walk down the chain. It decides the next step and books each attempt; the router does the I/O.

    Used as a context manager around the walk: the task span is current inside it, so any span made during the task
    (the attempts', other instrumentation's) is its child, and whatever ends the walk — an answer, a failure, a
    cancellation — ends the task span with the outcome it had.
    """

    def __init__(self, router: Router, task: Task) -> None:
        self.router, self.config, self.task = router, router.config, task
        self.critical = policy.is_critical(self.config, task)
        # The task's own validator, else the one its type names in [validators].
        self.validator = task.validator or BUILTIN_VALIDATORS.get(self.config.validators.get(task.type, ""))
        self.attempts: list[AttemptRecord] = []
        models = list(self.config.router.models)
        if task.start_model is not None and task.start_model not in models:
            raise ValueError(f"start_model {task.start_model!r} is not one of router.models: {', '.join(models)}")
        # A task may start further down the chain; each model keeps its own tier.
        self.local_models = models[models.index(task.start_model) :] if task.start_model else models
        self.primary = models[0]
        self.next_local = 0
        self.local_failures = 0
        self.reason = policy.escalation_before_local(self.config, task)
        self.escalation_over = False
        self.calls = 0  # escalation HTTP calls made (retries included)
        self.wait: float | None = None
        self.refusal: Refusal | None = None
        self.truncated: str | None = None  # Claude's answer, cut off at max_tokens
        self.headline: str | None = None  # why escalation did not help, when it did not
        self.headline_attempt: int | None = None  # the attempt the headline already describes
        self.text: str | None = None
        self.result: TaskResult
        if self.reason and not self.config.escalation.enabled:
            self.headline = "the task asked for Claude, but escalation is disabled (escalation.enabled = false)"
            self.escalation_over = True
        self._span: trace.Span | None = None
        self._token: object | None = None

    def __enter__(self) -> _TaskRun:
        self._span, self._token = self.router.telemetry.start_task(self.task, self.critical)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self.result = self._finish(exc)

    # -- what to do next ----------------------------------------------------------------------------------------

    def next_step(self) -> _Local | _Escalate | _Wait | None:
        if self.text is not None or self.truncated is not None:
            return None
        if self.wait is not None:
            seconds, self.wait = self.wait, None
            return _Wait(seconds)
        if self.reason is not None and not self.escalation_over:
            return _Escalate(self.config.escalation.model, self.reason)
        if self.task.prefer_escalation:
            return None  # an explicit request for Claude never falls back to local models
        if self.next_local < len(self.local_models):
            model = self.local_models[self.next_local]
            return _Local(model, attr.TIER_PRIMARY if model == self.primary else attr.TIER_FALLBACK)
        return None

    def attempt(self, step: _Local | _Escalate) -> Attempt:
        """Start the attempt's span, current until the attempt ends (see :class:`Attempt`)."""
        if isinstance(step, _Local):
            return Attempt(
                self,
                tier=step.tier,
                provider=attr.PROVIDER_OLLAMA,
                model=step.model,
                reason=None,
                endpoint=self.router._ollama.endpoint,
                validator=self.validator,
            )
        return Attempt(
            self,
            tier=attr.TIER_ESCALATION,
            provider=attr.PROVIDER_ANTHROPIC,
            model=step.model,
            reason=step.reason,
            endpoint=self.router._claude.endpoint,
            validator=self.validator,
        )

    # -- messages -----------------------------------------------------------------------------------------------

    def local_messages(self) -> list[dict[str, Any]]:
        system = [{"role": "system", "content": self.task.system}] if self.task.system else []
        return system + self.task.conversation()

    def claude_messages(self) -> list[dict[str, Any]]:
        return [m for m in self.task.conversation() if m["role"] != "system"]

    def claude_system(self) -> str | None:
        """The task's system prompt, plus what each earlier local attempt did wrong, so Claude can avoid it."""
        parts = [self.task.system] if self.task.system else []
        parts += [m["content"] for m in self.task.conversation() if m["role"] == "system"]
        failed = [a for a in self.attempts if a.tier != attr.TIER_ESCALATION and not a.ok]
        if failed:
            lines = [
                f"- attempt {a.index}: model {a.model} ({a.tier}) failed with {a.error_type}: {a.error_message}"
                for a in failed
            ]
            parts.append("Local models tried this task first and failed:\n" + "\n".join(lines))
        return "\n\n".join(str(p) for p in parts) or None

    def content(self, provider: str) -> tuple[str | None, list[dict[str, Any]]]:
        """The system prompt and messages an attempt on ``provider`` sends (for opt-in content capture)."""
        if provider == attr.PROVIDER_OLLAMA:
            return self.task.system, self.task.conversation()
        return self.claude_system(), self.claude_messages()

    # -- bookkeeping, called by Attempt when an attempt ends ----------------------------------------------------

    def booked(self, record: AttemptRecord, failure: ProviderFailure | None, reply_text: str | None) -> None:
        self.attempts.append(record)
        if record.tier == attr.TIER_ESCALATION:
            self._after_escalation(record, failure, reply_text)
        else:
            self._after_local(record, failure, reply_text)

    def _after_local(self, record: AttemptRecord, failure: ProviderFailure | None, text: str | None) -> None:
        self.next_local += 1
        if failure is None:
            self.text = text
            return
        self.local_failures += 1
        log.info("task %s: %s failed (%s): %s", self.task.id, record.model, failure.error_type, failure.message)
        if self.reason is None and not self.escalation_over:
            left = len(self.local_models) - self.next_local
            self.reason = policy.escalation_after_failure(self.config, self.task, self.local_failures, left)

    def _after_escalation(self, record: AttemptRecord, failure: ProviderFailure | None, text: str | None) -> None:
        if failure is None:
            self.text = text
            return
        if failure.error_type in attr.REFUSAL_ERROR_TYPES:
            log.warning("task %s: escalation refused: %s", self.task.id, failure.message)
            if failure.error_type in (attr.ERROR_QUOTA_EXHAUSTED, attr.ERROR_BUDGET_EXHAUSTED):
                self.refusal = Refusal(failure.error_type, failure.message, failure.retry_after_s)
                self.headline = failure.message
            else:
                self.headline = f"escalation to {record.model} refused: {failure.message}"
            self.escalation_over, self.headline_attempt = True, record.index
            return
        self.calls += 1
        log.info("task %s: %s failed (%s): %s", self.task.id, record.model, failure.error_type, failure.message)
        self.headline = f"escalation to {record.model} failed: {failure.message}"
        self.headline_attempt = record.index
        if failure.error_type == attr.ERROR_TRUNCATED:
            self.truncated = text or ""
            self.escalation_over = True
            return
        self._plan_retry(failure, record.billed)

    def _plan_retry(self, failure: ProviderFailure, billed: bool) -> None:
        limits = self.config.router
        # A call Claude may have billed is never retried: a second try would pay again for the same task.
        if not failure.retryable or billed or self.calls > limits.max_retries:
            self.escalation_over = True
            return
        wait = failure.retry_after_s
        if wait is None:
            wait = min(BACKOFF_BASE_S * 2 ** (self.calls - 1), limits.max_retry_wait_s)
        if wait > limits.max_retry_wait_s:
            self.headline += (
                f" (retry-after {wait:g}s is longer than router.max_retry_wait_s = {limits.max_retry_wait_s:g}s)"
            )
            self.escalation_over = True
            return
        self.wait = wait

    # -- the end ------------------------------------------------------------------------------------------------

    def _finish(self, interrupted: BaseException | None) -> TaskResult:
        escalated = any(
            a.tier == attr.TIER_ESCALATION and a.error_type not in attr.REFUSAL_ERROR_TYPES for a in self.attempts
        )
        if interrupted is not None:
            cancelled = not isinstance(interrupted, Exception)
            outcome = attr.OUTCOME_CANCELLED if cancelled else attr.OUTCOME_FAILED
            error = f"{'cancelled' if cancelled else 'stopped'} by {type(interrupted).__name__}"
            if str(interrupted):
                error += f": {interrupted}"
        elif self.text is not None:
            outcome, error = attr.OUTCOME_COMPLETED, None
        elif self.truncated is not None:
            outcome, error = attr.OUTCOME_TRUNCATED, self._error()
        elif self.refusal is not None:
            outcome, error = self.refusal.error_type, self._error()
        else:
            outcome, error = attr.OUTCOME_FAILED, self._error()
        assert self._span is not None
        self.router.telemetry.end_task(
            self._span, self._token, outcome=outcome, escalated=escalated, attempts=len(self.attempts), error=error
        )
        cost = sum((a.cost_usd or Decimal(0) for a in self.attempts), Decimal(0))
        return TaskResult(
            task_id=self.task.id,
            ok=outcome == attr.OUTCOME_COMPLETED,
            text=self.text if self.text is not None else self.truncated,
            outcome=outcome,
            escalated=escalated,
            attempts=list(self.attempts),
            cost_usd=cost,
            error=error,
            retry_after_s=self.refusal.retry_after_s if self.refusal is not None else None,
        )

    def _error(self) -> str:
        failed = [
            f"{a.model}: {a.error_type}: {a.error_message}"
            for a in self.attempts
            if not a.ok and a.index != self.headline_attempt
        ]
        headline = self.headline
        if headline is None:
            headline = "all local models failed"
            if not self.config.escalation.enabled:
                headline += " and escalation is disabled (escalation.enabled = false)"
        if not failed:
            return headline
        return f"{headline} — attempts: " + "; ".join(failed)


__all__ = ["Router", "Waits"]
