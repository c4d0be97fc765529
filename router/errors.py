"""Turn what a model backend raised into a stable ``error.type`` and a message a person can act on.

Messages are built from status codes and the servers' own error texts, never from request headers, so the API key
cannot leak through them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anthropic
import httpx
import ollama

if TYPE_CHECKING:
    from router.providers import Reply

# Statuses worth another try: rate limits, overload and server-side failures.
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


class ProviderFailure(Exception):
    """A failed model call. ``retryable`` tells the router whether another attempt may succeed; ``reply`` is
    set when the model did answer (empty or rejected output), so its tokens are still counted."""

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        retryable: bool = False,
        retry_after_s: float | None = None,
        status: int | None = None,
        reply: Reply | None = None,
        compute_seconds: float | None = None,
    ) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.status = status
        self.reply = reply
        self.compute_seconds = compute_seconds  # local models: how long the model ran before it failed


def _status_type(status: int) -> str:
    if status == 400:
        return "bad_request"
    if status == 401:
        return "authentication"
    if status == 403:
        return "permission_denied"
    if status == 404:
        return "model_not_found"
    if status == 429:
        return "rate_limited"
    if status in (503, 529):
        return "overloaded"
    if status in (408, 504):
        return "timeout"
    return "server_error"


def classify_ollama(exc: BaseException, host: str) -> ProviderFailure:
    """Classify an exception raised by the ``ollama`` client (or its httpx transport)."""
    if isinstance(exc, ProviderFailure):
        return exc
    if isinstance(exc, ollama.ResponseError):
        text = _one_line(exc.error)
        if exc.status_code == -1:  # an {"error": ...} line in the middle of a stream
            return ProviderFailure("stream_error", f"Ollama stopped mid-stream: {text}")
        return ProviderFailure(
            _status_type(exc.status_code), f"Ollama answered {exc.status_code}: {text}", status=exc.status_code
        )
    if isinstance(exc, httpx.TimeoutException):
        return ProviderFailure(
            "timeout", f"Ollama at {host} did not answer in time ({type(exc).__name__})", retryable=True
        )
    if isinstance(exc, httpx.ConnectError | ConnectionError):
        return ProviderFailure(
            "connection",
            f"cannot connect to Ollama at {host}; is it running? (set router.ollama_host or OLLAMA_HOST)",
            retryable=True,
        )
    if isinstance(exc, httpx.TransportError):
        return ProviderFailure(
            "connection", f"connection to Ollama at {host} broke: {type(exc).__name__}", retryable=True
        )
    if isinstance(exc, json.JSONDecodeError | ValueError):
        return ProviderFailure("stream_error", f"Ollama sent a malformed response: {_one_line(str(exc))}")
    return ProviderFailure("other", f"{type(exc).__name__}: {_one_line(str(exc))}")


def classify_anthropic(exc: BaseException) -> ProviderFailure:
    """Classify an exception raised by the ``anthropic`` client."""
    if isinstance(exc, ProviderFailure):
        return exc
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        kind = exc.type or "error"
        detail = _one_line(exc.api_message or str(exc))
        request_id = f" (request-id {exc.request_id})" if exc.request_id else ""
        error_type = _status_type(status)
        if status == 401:
            message = f"Claude rejected the credentials (401 {kind}: {detail}); check ANTHROPIC_API_KEY"
        elif status == 404:
            message = f"Claude answered 404 {kind}: {detail}; check escalation.model{request_id}"
        else:
            message = f"Claude answered {status} {kind}: {detail}{request_id}"
        return ProviderFailure(
            error_type,
            message,
            retryable=status in RETRYABLE_STATUSES or status >= 500,
            retry_after_s=_retry_after(exc.response.headers.get("retry-after")),
            status=status,
        )
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderFailure("timeout", "Claude did not answer in time", retryable=True)
    if isinstance(exc, anthropic.APIConnectionError):
        cause = exc.__cause__
        detail = f": {type(cause).__name__}" if cause is not None else ""
        return ProviderFailure("connection", f"cannot reach the Claude API{detail}", retryable=True)
    return ProviderFailure("other", f"{type(exc).__name__}: {_one_line(str(exc))}")


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: rare from Anthropic; fall back to our own backoff
    return max(seconds, 0.0)


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
