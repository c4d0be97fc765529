"""The router: primary Ollama model, then the fallbacks, then Claude within quota and budgets."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from anthropic.resources.messages import DEPRECATED_MODELS
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from costline import spans as attr
from costline.config import Config
from costline.pricing import Pricer, TokenUsage, is_deprecated
from router import policy
from router.errors import ProviderFailure
from router.providers import Endpoint, Reply
from router.providers.anthropic import AnthropicProvider
from router.providers.ollama import OllamaProvider
from router.task import AttemptRecord, Task, TaskResult
from router.telemetry import ReportingExporter, Telemetry, build_tracer_provider
from router.usage_store import Limits, Refusal, Reservation, UsageStore

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5  # first wait before retrying Claude when it gives no retry-after


class Router:
    """Routes tasks local-first. Thread-safe for ``run``; ``arun`` may be awaited concurrently."""

    def __init__(self, config: Config, *, tracer_provider: trace.TracerProvider | None = None) -> None:
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
        self.exporter: ReportingExporter | None = None  # set when the router made its own provider
        if tracer_provider is None:
            tracer_provider, self.exporter = build_tracer_provider(config)
        self._tracer_provider = tracer_provider
        self.telemetry = Telemetry(self._tracer_provider, config.telemetry.capture_content)
        self.usage = UsageStore(config.usage_db_path, Limits.from_config(config))
        self._ollama = self._new_ollama()
        self._claude = self._new_claude()

    def _new_ollama(self) -> OllamaProvider:
        return OllamaProvider(self.config.router.ollama_host, self.config.router.timeout_s)

    def _new_claude(self) -> AnthropicProvider:
        esc = self.config.escalation
        return AnthropicProvider(esc.base_url, self.config.router.timeout_s, esc.max_tokens)

    # -- sync ---------------------------------------------------------------------------------------------------

    def run(self, task: Task) -> TaskResult:
        state = _TaskRun(self, task)
        try:
            while (step := state.next_step()) is not None:
                if isinstance(step, _Wait):
                    time.sleep(step.seconds)
                elif isinstance(step, _Local):
                    start = time.time_ns()
                    try:
                        reply, failure = state.checked(self._ollama.chat(step.model, state.local_messages())), None
                    except ProviderFailure as exc:
                        reply, failure = exc.reply, exc
                    state.on_local(step, reply, failure, start, time.time_ns())
                elif problem := self._claude.credentials_problem():
                    state.on_escalation(step, None, problem, time.time_ns(), time.time_ns())
                else:
                    admission = self.usage.reserve(task.id, step.reason, step.model)
                    if isinstance(admission, Refusal):
                        state.on_refused(step, admission, time.time_ns())
                        continue
                    start = time.time_ns()
                    try:
                        reply = self._claude.chat(step.model, state.claude_system(), state.claude_messages())
                        reply, failure = state.checked(reply), None
                    except ProviderFailure as exc:
                        reply, failure = exc.reply, exc
                    record = state.on_escalation(step, reply, failure, start, time.time_ns())
                    self._record_spend(admission, record, reply)
        finally:
            result = state.finish()
        return result

    # -- async --------------------------------------------------------------------------------------------------

    async def arun(self, task: Task) -> TaskResult:
        # Async clients are bound to one event loop: give each task its own, closed when it ends.
        local, claude = self._new_ollama(), self._new_claude()
        state = _TaskRun(self, task)
        try:
            while (step := state.next_step()) is not None:
                if isinstance(step, _Wait):
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, _Local):
                    start = time.time_ns()
                    try:
                        reply = await local.achat(step.model, state.local_messages())
                        reply, failure = state.checked(reply), None
                    except ProviderFailure as exc:
                        reply, failure = exc.reply, exc
                    state.on_local(step, reply, failure, start, time.time_ns())
                elif problem := claude.credentials_problem():
                    state.on_escalation(step, None, problem, time.time_ns(), time.time_ns())
                else:
                    admission = await asyncio.to_thread(self.usage.reserve, task.id, step.reason, step.model)
                    if isinstance(admission, Refusal):
                        state.on_refused(step, admission, time.time_ns())
                        continue
                    start = time.time_ns()
                    try:
                        reply = await claude.achat(step.model, state.claude_system(), state.claude_messages())
                        reply, failure = state.checked(reply), None
                    except ProviderFailure as exc:
                        reply, failure = exc.reply, exc
                    record = state.on_escalation(step, reply, failure, start, time.time_ns())
                    await asyncio.to_thread(self._record_spend, admission, record, reply)
        finally:
            result = state.finish()
            await local.aclose()
            await claude.aclose()
        return result

    def _record_spend(self, reservation: Reservation, record: AttemptRecord, reply: Reply | None) -> None:
        self.usage.record(
            reservation,
            ok=record.ok,
            usage=reply.usage if reply is not None else TokenUsage(),
            cost_usd=record.cost_usd,
            error_type=record.error_type,
        )

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP clients and flush the spans (and shut the exporter down if the router made it)."""
        self._ollama.close()
        self._claude.close()
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
    """One task's walk down the chain. It decides the next step and books each attempt; the router does the I/O."""

    def __init__(self, router: Router, task: Task) -> None:
        self.router, self.config, self.task = router, router.config, task
        self.critical = policy.is_critical(self.config, task)
        self.span = router.telemetry.start_task(task, self.critical)
        self.attempts: list[AttemptRecord] = []
        self.local_models = list(self.config.router.models)
        self.next_local = 0
        self.local_failures = 0
        self.reason = policy.escalation_before_local(self.config, task)
        self.escalation_over = False
        self.calls = 0  # escalation HTTP calls made (retries included)
        self.wait: float | None = None
        self.refusal: Refusal | None = None
        self.headline: str | None = None  # why escalation did not help, when it did not
        self.headline_attempt: int | None = None  # the attempt the headline already describes
        self.text: str | None = None
        if self.reason and not self.config.escalation.enabled:
            self.headline = "the task asked for Claude, but escalation is disabled (escalation.enabled = false)"
            self.escalation_over = True

    # -- what to do next ----------------------------------------------------------------------------------------

    def next_step(self) -> _Local | _Escalate | _Wait | None:
        if self.text is not None:
            return None
        if self.wait is not None:
            seconds, self.wait = self.wait, None
            return _Wait(seconds)
        if self.reason is not None and not self.escalation_over:
            return _Escalate(self.config.escalation.model, self.reason)
        if self.task.prefer_escalation:
            return None  # an explicit request for Claude never falls back to local models
        if self.next_local < len(self.local_models):
            index = self.next_local
            return _Local(self.local_models[index], "primary" if index == 0 else "fallback")
        return None

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
        failed = [a for a in self.attempts if a.tier != "escalation" and not a.ok]
        if failed:
            lines = [
                f"- attempt {a.index}: model {a.model} ({a.tier}) failed with {a.error_type}: {a.error_message}"
                for a in failed
            ]
            parts.append("Local models tried this task first and failed:\n" + "\n".join(lines))
        return "\n\n".join(str(p) for p in parts) or None

    def checked(self, reply: Reply) -> Reply:
        """Apply the task's validator: a rejection is a failure that still used (and is charged) tokens."""
        if self.task.validator is not None:
            rejection = self.task.validator(reply.text)
            if rejection is not None:
                raise ProviderFailure("invalid_output", f"output rejected by the validator: {rejection}", reply=reply)
        return reply

    # -- bookkeeping --------------------------------------------------------------------------------------------

    def on_local(
        self, step: _Local, reply: Reply | None, failure: ProviderFailure | None, start: int, end: int
    ) -> None:
        self.next_local += 1
        compute = reply.compute_seconds if reply is not None else failure.compute_seconds if failure else None
        usage = reply.usage if reply is not None else TokenUsage()
        cost = self.router.pricer.price(attr.PROVIDER_OLLAMA, step.model, usage, compute_seconds=compute).usd
        self._book(
            step.tier,
            attr.PROVIDER_OLLAMA,
            step.model,
            reply,
            failure,
            cost,
            start,
            end,
            None,
            endpoint=self.router._ollama.endpoint,
            compute_seconds=compute,
        )
        if failure is None:
            self.text = reply.text if reply else None
            return
        self.local_failures += 1
        log.info("task %s: %s failed (%s): %s", self.task.id, step.model, failure.error_type, failure.message)
        if self.reason is None and not self.escalation_over:
            left = len(self.local_models) - self.next_local
            self.reason = policy.escalation_after_failure(self.config, self.task, self.local_failures, left)

    def on_refused(self, step: _Escalate, refusal: Refusal, at: int) -> None:
        failure = ProviderFailure(refusal.error_type, refusal.message)
        record = self._book(
            "escalation",
            attr.PROVIDER_ANTHROPIC,
            step.model,
            None,
            failure,
            Decimal(0),
            at,
            at,
            step.reason,
            endpoint=None,
        )
        log.warning("task %s: escalation refused: %s", self.task.id, refusal.message)
        self.refusal, self.headline, self.escalation_over = refusal, refusal.message, True
        self.headline_attempt = record.index

    def on_escalation(
        self, step: _Escalate, reply: Reply | None, failure: ProviderFailure | None, start: int, end: int
    ) -> AttemptRecord:
        self.calls += 1
        cost = Decimal(0)
        if reply is not None:
            cost = self.router.pricer.price(attr.PROVIDER_ANTHROPIC, step.model, reply.usage).usd
        record = self._book(
            "escalation",
            attr.PROVIDER_ANTHROPIC,
            step.model,
            reply,
            failure,
            cost,
            start,
            end,
            step.reason,
            endpoint=self.router._claude.endpoint,
        )
        if failure is None:
            self.text = reply.text if reply else None
            return record
        log.info("task %s: %s failed (%s): %s", self.task.id, step.model, failure.error_type, failure.message)
        self.headline = f"escalation to {step.model} failed: {failure.message}"
        self.headline_attempt = record.index
        self._plan_retry(failure)
        return record

    def _plan_retry(self, failure: ProviderFailure) -> None:
        limits = self.config.router
        if not failure.retryable or self.calls > limits.max_retries:
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

    def _book(
        self,
        tier: str,
        provider: str,
        model: str,
        reply: Reply | None,
        failure: ProviderFailure | None,
        cost: Decimal | None,
        start: int,
        end: int,
        reason: str | None,
        *,
        endpoint: Endpoint | None,
        compute_seconds: float | None = None,
    ) -> AttemptRecord:
        """Record one attempt: on the task's list, and as its span."""
        usage = reply.usage if reply is not None else TokenUsage()
        record = AttemptRecord(
            index=len(self.attempts),
            tier=tier,
            provider=provider,
            model=model,
            ok=failure is None,
            error_type=failure.error_type if failure else None,
            error_message=failure.message if failure else None,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cost_usd=cost,
            duration_s=(end - start) / 1e9,
            escalation_reason=reason,
            compute_seconds=compute_seconds,
        )
        self.attempts.append(record)
        local = provider == attr.PROVIDER_OLLAMA
        self.router.telemetry.record_attempt(
            self.span,
            self.task,
            record,
            start_ns=start,
            end_ns=end,
            endpoint=endpoint,
            reply=reply,
            system=self.task.system if local else self.claude_system(),
            messages=self.task.conversation() if local else self.claude_messages(),
        )
        return record

    # -- the end ------------------------------------------------------------------------------------------------

    def finish(self) -> TaskResult:
        ok = self.text is not None
        escalated = any(a.tier == "escalation" and a.error_type not in _REFUSALS for a in self.attempts)
        if ok:
            outcome, error = "completed", None
        else:
            outcome = "quota_exhausted" if self.refusal is not None else "failed"
            error = self._error()
        self.router.telemetry.end_task(
            self.span, outcome=outcome, escalated=escalated, attempts=len(self.attempts), error=error
        )
        cost = sum((a.cost_usd or Decimal(0) for a in self.attempts), Decimal(0))
        return TaskResult(
            task_id=self.task.id,
            ok=ok,
            text=self.text,
            outcome=outcome,
            escalated=escalated,
            attempts=list(self.attempts),
            cost_usd=cost,
            error=error,
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


_REFUSALS = ("quota_exhausted", "budget_exhausted")
