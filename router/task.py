"""What the caller hands the router, and what it gets back."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from costline.spans import PROJECT, TEAM, USER_ID

Validator = Callable[[str], str | None]


@dataclass
class Task:
    """One unit of work. Give ``prompt`` or ``messages`` (chat messages with ``role`` and ``content``)."""

    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    type: str = "general"
    system: str | None = None
    critical: bool | None = None  # None: decided by escalation.critical_task_types
    prefer_escalation: bool = False  # go straight to Claude
    validator: Validator | None = None  # returns None when the output is acceptable, else why not
    start_model: str | None = None  # start the local chain at this model of router.models (None: the primary)
    team: str | None = None  # attribution: costline.team, costline.project and user.id on the task's spans
    project: str | None = None
    user: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a Task needs exactly one of prompt or messages")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("a Task's prompt must not be empty")
        if self.messages is not None:
            if not self.messages:
                raise ValueError("a Task's messages must not be empty")
            for message in self.messages:
                if not isinstance(message, dict) or "role" not in message or "content" not in message:
                    raise ValueError("each message needs a role and a content, e.g. {'role': 'user', 'content': 'hi'}")
        if not self.type:
            raise ValueError("a Task's type must not be empty")

    def attribution(self) -> dict[str, str]:
        """The span attributes that say whom the task's cost belongs to."""
        given = {TEAM: self.team, PROJECT: self.project, USER_ID: self.user}
        return {key: value for key, value in given.items() if value}

    def conversation(self) -> list[dict[str, Any]]:
        """The chat messages for the model, without the system prompt."""
        if self.messages is not None:
            return [dict(m) for m in self.messages]
        return [{"role": "user", "content": self.prompt}]


@dataclass(frozen=True)
class AttemptRecord:
    """One model call (or one refused escalation), as the attempt span records it."""

    index: int
    tier: str  # primary | fallback | escalation
    provider: str
    model: str
    ok: bool
    error_type: str | None = None
    error_message: str | None = None
    input_tokens: int = 0  # all input, cache reads and writes included
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: Decimal | None = Decimal(0)  # None: unpriced
    cost_estimated: bool = False  # the call ended before its usage arrived: cost_usd is its reserved upper bound
    billed: bool = True  # False: a cloud call that ended before the model began answering (costs nothing)
    duration_s: float = 0.0
    escalation_reason: str | None = None
    compute_seconds: float | None = None  # local models: prompt eval + eval time (estimated on failures)


@dataclass
class TaskResult:
    task_id: str
    ok: bool
    text: str | None
    outcome: str  # one of costline.spans.TASK_OUTCOMES
    escalated: bool
    attempts: list[AttemptRecord]
    cost_usd: Decimal
    error: str | None = None
    retry_after_s: float | None = None  # refused by the quota or a budget: seconds until there is room again

    @property
    def models(self) -> list[str]:
        return [a.model for a in self.attempts]

    @property
    def input_tokens(self) -> int:
        return sum(a.input_tokens for a in self.attempts)

    @property
    def output_tokens(self) -> int:
        return sum(a.output_tokens for a in self.attempts)
