"""What both APIs share: a request's model and headers turned into a router task, the task run until it ends or the
client goes away, and the router's outcome turned into an HTTP status."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from costline import spans as attr
from router import Router, Task, TaskResult

MODEL_AUTO = "auto"  # the whole chain
MODEL_CLAUDE = "claude"  # straight to the escalation model (reason: requested)

HEADER_TASK_TYPE = "x-costline-task-type"
HEADER_CRITICAL = "x-costline-critical"
HEADER_TEAM = "x-costline-team"
HEADER_PROJECT = "x-costline-project"
HEADER_USER = "x-costline-user"
TRUE_VALUES = ("1", "true", "yes")
MAX_HEADER_VALUE = 200  # attribution values become span attributes: bounded


class ProxyError(Exception):
    """A request the proxy answers with an error status, in the calling API's own error shape."""

    def __init__(self, status: int, message: str, *, kind: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.headers = dict(headers or {})


class ClientGone(Exception):
    """The client closed the connection before the answer: the task was cancelled (and its attempts booked)."""


@dataclass(frozen=True)
class Answer:
    """A finished task as both APIs report it."""

    result: TaskResult
    model: str  # the model that answered (the request's name when nothing answered)

    @property
    def truncated(self) -> bool:
        return self.result.outcome == attr.OUTCOME_TRUNCATED

    @property
    def input_tokens(self) -> int:
        return self.result.attempts[-1].input_tokens if self.result.attempts else 0

    @property
    def output_tokens(self) -> int:
        return self.result.attempts[-1].output_tokens if self.result.attempts else 0


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, or a 400 in the calling API's shape."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ProxyError(400, "the request body is not JSON", kind="invalid_request") from None
    if not isinstance(body, dict):
        raise ProxyError(400, "the request body must be a JSON object", kind="invalid_request")
    return body


def model_names(router: Router) -> list[str]:
    """What a client may ask for: the whole chain, Claude, or the chain from one of the local models."""
    return [MODEL_AUTO, MODEL_CLAUDE, *router.config.router.models]


def build_task(
    router: Router,
    request: Request,
    *,
    model: Any,
    messages: list[dict[str, Any]],
    user: str | None = None,
) -> Task:
    if not isinstance(model, str) or not model:
        raise ProxyError(400, "model is required: auto, claude or one of the local models", kind="invalid_request")
    if model not in model_names(router):
        raise ProxyError(
            404,
            f"model {model!r} not found; use one of: {', '.join(model_names(router))}",
            kind="model_not_found",
        )
    headers = request.headers
    try:
        return Task(
            messages=messages,
            type=_header(headers, HEADER_TASK_TYPE) or "general",
            critical=True if (headers.get(HEADER_CRITICAL, "").lower() in TRUE_VALUES) else None,
            prefer_escalation=model == MODEL_CLAUDE,
            start_model=model if model in router.config.router.models else None,
            team=_header(headers, HEADER_TEAM),
            project=_header(headers, HEADER_PROJECT),
            user=_header(headers, HEADER_USER) or (user[:MAX_HEADER_VALUE] if isinstance(user, str) else None),
        )
    except ValueError as exc:
        raise ProxyError(400, str(exc), kind="invalid_request") from None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name, "").strip()
    return value[:MAX_HEADER_VALUE] or None


async def run_task(router: Router, request: Request, task: Task) -> Answer:
    """Route the task; cancel it if the client disconnects first (its attempts are booked either way)."""
    running = asyncio.create_task(router.arun(task))
    watching = asyncio.create_task(_disconnected(request))
    try:
        await asyncio.wait({running, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
    if not running.done():
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        raise ClientGone(task.id)
    result = running.result()
    answer = Answer(result, result.attempts[-1].model if result.attempts else "")
    _raise_for_outcome(answer)
    return answer


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _raise_for_outcome(answer: Answer) -> None:
    result = answer.result
    if result.ok or answer.truncated:  # a truncated answer is an answer: the APIs say so with a finish reason
        return
    if result.outcome in (attr.OUTCOME_QUOTA_EXHAUSTED, attr.OUTCOME_BUDGET_EXHAUSTED):
        retry = math.ceil(result.retry_after_s) if result.retry_after_s is not None else 60
        raise ProxyError(429, result.error or result.outcome, kind=result.outcome, headers={"Retry-After": str(retry)})
    raise ProxyError(502, result.error or "every model failed", kind="all_models_failed")


def whole_stream(parts: list[bytes], *, media_type: str, headers: dict[str, str]) -> Response:
    """A stream whose parts are all known, sent as one body in one write.

    The chain answers whole (a local model may fail mid-answer and the next one start over), so sending the parts
    apart gains the client nothing, while each part costs a socket write that wakes the client, and a streaming
    response a task watching for a disconnect. The client reads the same lines or events either way."""
    return Response(b"".join(parts), media_type=media_type, headers=headers)


def cost_headers(answer: Answer) -> dict[str, str]:
    result = answer.result
    return {
        "X-Costline-Task-Id": result.task_id,
        "X-Costline-Cost-USD": f"{result.cost_usd:f}",
        "X-Costline-Escalated": "true" if result.escalated else "false",
    }
