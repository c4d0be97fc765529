"""One model call, accounted for whatever ends it.

An :class:`Attempt` is a context manager around one call. Entering starts the attempt span and makes it current, so
spans that other instrumentation makes during the call (HTTP clients, GenAI instrumentations) are its children.
Leaving — with an answer, a failure, a refusal, or an exception such as a cancellation or a validator that raised —
books the attempt on the task, settles its reservation in the usage store, and ends the span with the tokens known.

What a cloud call costs when it ends early: Claude bills a call once it has begun answering (``message_start``).
Before that (an error status, a refused connection, no answer in time) the call is unbilled: it costs nothing and
gives its quota slot back. After that, the actual usage when it arrived; otherwise the reservation stands, marked
estimated, since the upper bound is the only figure that cannot under-count what was billed.
"""

from __future__ import annotations

import logging
import threading
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from costline import spans as attr
from costline.pricing import TokenUsage
from router.errors import ProviderFailure
from router.providers import CallProgress, Endpoint, Reply
from router.task import AttemptRecord, Validator
from router.usage_db import UsageStoreUnavailable
from router.usage_store import (
    STATUS_FAILED,
    STATUS_SUCCEEDED,
    STATUS_UNBILLED,
    Refusal,
    Reservation,
    Settlement,
)

if TYPE_CHECKING:
    from router.router import _TaskRun

log = logging.getLogger(__name__)


class Attempt:
    def __init__(
        self,
        run: _TaskRun,
        *,
        tier: str,
        provider: str,
        model: str,
        reason: str | None,
        endpoint: Endpoint,
        validator: Validator | None,
    ) -> None:
        self.run, self.tier, self.provider, self.model, self.reason = run, tier, provider, model, reason
        self.endpoint, self.validator = endpoint, validator
        self.index = len(run.attempts)
        self.progress = CallProgress()
        self.reply: Reply | None = None
        self.failure: ProviderFailure | None = None
        self.reservation: Reservation | None = None
        self._refused = False
        self._closed = False
        self._lock = threading.Lock()  # admit() may run in a worker thread while a cancellation closes the attempt
        self._started = time.monotonic()
        self._span, self._token = run.router.telemetry.start_attempt(
            run.task, index=self.index, tier=tier, provider=provider, model=model, reason=reason, endpoint=endpoint
        )

    @property
    def ids(self) -> tuple[str, str]:
        """The span's (trace_id, span_id) in lowercase hex, as the ledger stores them."""
        context = self._span.get_span_context()
        return f"{context.trace_id:032x}", f"{context.span_id:016x}"

    # -- what happened ------------------------------------------------------------------------------------------

    def admit(self, admission: Reservation | Refusal) -> bool:
        """Take the usage store's answer; True when the call may go ahead."""
        if isinstance(admission, Refusal):
            self._refused = True
            self.failure = ProviderFailure(
                admission.error_type, admission.message, retry_after_s=admission.retry_after_s
            )
            return False
        with self._lock:
            if not self._closed:
                self.reservation = admission
                return True
        # Cancelled while the reservation was being taken: nothing was called, so give it back at once.
        self.run.router.usage.settle(admission, Settlement(STATUS_UNBILLED, TokenUsage(), Decimal(0)))
        return False

    def answered(self, reply: Reply) -> None:
        """The model answered; the task's validator decides whether the answer is usable (it may also raise)."""
        self.reply = reply
        if self.validator is not None:
            rejection = self.validator(reply.text)
            if rejection is not None:
                self.failure = ProviderFailure(
                    "invalid_output", f"output rejected by the validator: {rejection}", reply=reply
                )

    def failed(self, failure: ProviderFailure) -> None:
        self.failure = failure
        self.reply = failure.reply

    # -- the end ------------------------------------------------------------------------------------------------

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        with self._lock:
            self._closed = True
        failure = self.failure if exc is None else _interruption(exc, self.reply)
        record = self._account(failure, interrupted=exc is not None)
        try:
            self.run.booked(record, failure, self.reply.text if self.reply is not None else None)
        finally:
            self.run.router.telemetry.end_attempt(
                self._span,
                self._token,
                record,
                reply=self.reply,
                progress=self.progress,
                content=lambda: self.run.content(self.provider),
            )

    def _account(self, failure: ProviderFailure | None, *, interrupted: bool) -> AttemptRecord:
        """Price the attempt, settle its reservation, and return its record."""
        usage = self.reply.usage if self.reply is not None else self.progress.usage or TokenUsage()
        pricer = self.run.router.pricer
        compute: float | None = None
        estimated = False
        if self.provider == attr.PROVIDER_OLLAMA:
            billed = True
            compute = self._compute_seconds(failure, interrupted)
            cost = pricer.price(self.provider, self.model, usage, compute_seconds=compute).usd
        elif self._refused or self.reservation is None:
            billed, cost = False, Decimal(0)
        else:
            billed = self.progress.answering
            if not billed:
                cost = Decimal(0)
            elif self.reply is not None or self.progress.complete:
                cost = pricer.price(self.provider, self.model, usage).usd
            else:
                cost = None  # began answering, usage never completed
            status = STATUS_SUCCEEDED if failure is None else STATUS_FAILED if billed else STATUS_UNBILLED
            error_type = failure.error_type if failure else None
            estimated = billed and self.reply is None and not self.progress.complete
            try:
                cost = self.run.router.usage.settle(self.reservation, Settlement(status, usage, cost, error_type))
            except UsageStoreUnavailable as exc:
                # The reservation stays counted at its upper bound; the span still records what the call used.
                log.error("could not settle escalation call %d: %s", self.reservation.call_id, exc)
        return AttemptRecord(
            index=self.index,
            tier=self.tier,
            provider=self.provider,
            model=self.model,
            ok=failure is None,
            error_type=failure.error_type if failure else None,
            error_message=failure.message if failure else None,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cost_usd=cost,
            cost_estimated=estimated,
            billed=billed,
            duration_s=time.monotonic() - self._started,
            escalation_reason=self.reason,
            compute_seconds=compute,
        )

    def _compute_seconds(self, failure: ProviderFailure | None, interrupted: bool) -> float | None:
        if self.reply is not None:
            return self.reply.compute_seconds
        if failure is not None and failure.compute_seconds is not None:
            return failure.compute_seconds
        # Interrupted mid-call: the model may have run the whole time; the wall time is the upper bound.
        return time.monotonic() - self._started if interrupted else None


def _interruption(exc: BaseException, reply: Reply | None) -> ProviderFailure:
    """What an exception that ended the attempt means for it."""
    name = type(exc).__name__
    if not isinstance(exc, Exception):  # asyncio cancellation, KeyboardInterrupt, SystemExit
        return ProviderFailure(attr.ERROR_CANCELLED, f"cancelled during the call ({name})")
    if reply is not None:
        return ProviderFailure(attr.ERROR_VALIDATOR, f"the task's validator raised {name}: {exc}", reply=reply)
    return ProviderFailure("other", f"{name}: {exc}")
