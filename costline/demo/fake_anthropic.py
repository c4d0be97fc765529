"""A SIMULATED Anthropic Messages API server, for the demo and the tests.

``POST /v1/messages`` checks the key (``x-api-key`` or ``Authorization: Bearer``) and the ``anthropic-version``
header, validates ``model``, ``max_tokens`` and ``messages``, and answers the real Messages shape — or, with
``"stream": true``, the real server-sent events (``message_start``, ``content_block_start``, ``ping``,
``content_block_delta``…, ``content_block_stop``, ``message_delta`` with the output usage, ``message_stop``).
Every response carries a ``request-id`` header; errors use the API's body
``{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}``. Scripted per requested model::

    with FakeAnthropic(api_key="sk-ant-test") as claude:
        claude.script("claude-sonnet-4-6", ClaudeError(429, retry_after=2), ClaudeReply(text="done"))
        client = anthropic.Anthropic(base_url=claude.url, api_key="sk-ant-test", max_retries=0)

``ClaudeHang`` sends nothing for ``seconds`` and then closes the connection.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from costline.demo._fake_http import BehaviourScripts, Exchange, FakeHTTPServer, RecordedRequest

__all__ = ["ClaudeBehaviour", "ClaudeError", "ClaudeHang", "ClaudeReply", "FakeAnthropic", "RecordedRequest"]


@dataclass(frozen=True)
class ClaudeReply:
    text: str = "ok"
    input_tokens: int = 800  # UNCACHED input, as the Messages API reports it
    output_tokens: int = 300
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    stop_reason: str = "end_turn"
    delay_s: float = 0.0
    model: str | None = None  # default: echo the request's model
    stall_s: float = 0.0  # streaming: after message_start, send nothing for this long (an answer that stalls)


@dataclass(frozen=True)
class ClaudeError:
    status: int  # 400, 401, 403, 404, 413, 429, 500, 529
    message: str | None = None
    retry_after: float | None = None  # sets the `retry-after` header (seconds)


@dataclass(frozen=True)
class ClaudeHang:
    """Accept the request, then send nothing for ``seconds`` and close the connection."""

    seconds: float = 30.0


ClaudeBehaviour = ClaudeReply | ClaudeError | ClaudeHang

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_DEFAULT_MESSAGES = {
    400: "invalid request",
    401: "invalid x-api-key",
    403: "Your API key does not have permission to use the specified resource.",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: "This request would exceed your organization's rate limit. See the response headers for current usage.",
    500: "Internal server error",
    529: "Overloaded",
}
_ALPHABET = string.ascii_letters + string.digits
_STREAM_PIECES = 4


def _token(prefix: str, length: int) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _within_max_tokens(reply: ClaudeReply, max_tokens: int) -> ClaudeReply:
    """The API stops generating at the request's max_tokens and says so with stop_reason "max_tokens"."""
    if reply.output_tokens <= max_tokens:
        return reply
    return replace(reply, output_tokens=max_tokens, stop_reason="max_tokens")


def _split(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class FakeAnthropic(FakeHTTPServer):
    def __init__(self, api_key: str = "sk-ant-test-key", host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.api_key = api_key
        self._scripts: BehaviourScripts[ClaudeBehaviour] = BehaviourScripts(ClaudeReply)

    def script(self, model: str, *behaviours: ClaudeBehaviour) -> None:
        """Queue behaviours for the next /v1/messages requests naming ``model`` (one each, first in first out)."""
        self._scripts.script(model, behaviours)

    def set_default(self, model: str, behaviour: ClaudeBehaviour | Callable[[dict], ClaudeBehaviour]) -> None:
        """What ``model`` answers once its script is used up; a callable receives the request body."""
        self._scripts.set_default(model, behaviour)

    def message_requests(self) -> list[dict]:
        return [r.body for r in list(self.requests) if r.path == "/v1/messages" and r.body is not None]

    # --- HTTP ------------------------------------------------------------------------------------------------

    def handle(
        self, exchange: Exchange, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None
    ) -> None:
        request_id = _token("req_011C", 20)
        if path != "/v1/messages":
            self._error(exchange, request_id, 404, "Not found")
            return
        if method != "POST":
            self._error(exchange, request_id, 405, f"Method {method} not allowed", "invalid_request_error")
            return
        problem = self._auth_problem(headers)
        if problem:
            self._error(exchange, request_id, 401, problem)
            return
        if "anthropic-version" not in headers:
            self._error(exchange, request_id, 400, "anthropic-version: header is required")
            return
        problem = self._body_problem(exchange.body_error, body)
        if problem or body is None:
            self._error(exchange, request_id, 400, problem or "missing request body")
            return
        model = body["model"]
        behaviour = self._scripts.next_for(model, body)
        match behaviour:
            case ClaudeError(status=status, message=message, retry_after=retry_after):
                default = f"model: {model}" if status == 404 else None
                extra = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
                self._error(exchange, request_id, status, message or default, headers=extra)
            case ClaudeHang(seconds=seconds):
                exchange.pause(seconds)
                exchange.drop_connection()
            case ClaudeReply() if body.get("stream") is True:
                self._stream(exchange, request_id, model, _within_max_tokens(behaviour, body["max_tokens"]))
            case ClaudeReply():
                reply = _within_max_tokens(behaviour, body["max_tokens"])
                if exchange.pause(reply.delay_s):
                    exchange.send_json(200, self._message(model, reply), {"request-id": request_id})
                else:
                    exchange.drop_connection()
            case _:
                raise TypeError(f"not a Claude behaviour: {behaviour!r}")

    def _auth_problem(self, headers: dict[str, str]) -> str | None:
        key = headers.get("x-api-key")
        bearer = headers.get("authorization", "")
        if key is None and not bearer.lower().startswith("bearer "):
            return "x-api-key header is required"
        offered = key if key is not None else bearer[len("bearer ") :].strip()
        return None if secrets.compare_digest(offered.encode(), self.api_key.encode()) else "invalid x-api-key"

    @staticmethod
    def _body_problem(body_error: str | None, body: dict[str, Any] | None) -> str | None:
        if body_error is not None:
            return f"Invalid JSON body: {body_error}"
        if body is None:
            return "missing request body"
        for required in ("model", "max_tokens", "messages"):
            if required not in body:
                return f"{required}: Field required"
        if not isinstance(body["model"], str) or not body["model"]:
            return "model: Input should be a valid string"
        max_tokens = body["max_tokens"]
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return "max_tokens: Input should be greater than or equal to 1"
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            return "messages: at least one message is required"
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
                return f"messages.{i}.role: Input should be 'user' or 'assistant'"
            if "content" not in message:
                return f"messages.{i}.content: Field required"
        return None

    def _error(
        self,
        exchange: Exchange,
        request_id: str,
        status: int,
        message: str | None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        body = {
            "type": "error",
            "error": {
                "type": error_type or ERROR_TYPES.get(status, "api_error"),
                "message": message or _DEFAULT_MESSAGES.get(status, "error"),
            },
            "request_id": request_id,
        }
        exchange.send_json(status, body, {"request-id": request_id, **(headers or {})})

    @staticmethod
    def _usage(reply: ClaudeReply) -> dict[str, Any]:
        return {
            "input_tokens": reply.input_tokens,
            "cache_creation_input_tokens": reply.cache_creation_input_tokens,
            "cache_read_input_tokens": reply.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": reply.cache_creation_input_tokens,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": reply.output_tokens,
            "service_tier": "standard",
        }

    def _message(self, model: str, reply: ClaudeReply, *, content: bool = True) -> dict[str, Any]:
        return {
            "id": _token("msg_01", 22),
            "type": "message",
            "role": "assistant",
            "model": reply.model or model,
            "content": [{"type": "text", "text": reply.text}] if content else [],
            "stop_reason": reply.stop_reason if content else None,
            "stop_sequence": None,
            "usage": self._usage(reply),
        }

    def _stream(self, exchange: Exchange, request_id: str, model: str, reply: ClaudeReply) -> None:
        pieces = _split(reply.text, _STREAM_PIECES)
        pause = reply.delay_s / (len(pieces) + 1)
        if not exchange.pause(pause):
            exchange.drop_connection()
            return
        exchange.start_chunked(
            200, "text/event-stream; charset=utf-8", {"request-id": request_id, "cache-control": "no-cache"}
        )

        def event(name: str, data: dict[str, Any]) -> None:
            exchange.write_chunk(f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())

        start = self._message(model, reply, content=False)
        start["usage"] = {**start["usage"], "output_tokens": 1}
        event("message_start", {"type": "message_start", "message": start})
        block = {"type": "text", "text": ""}
        event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
        event("ping", {"type": "ping"})
        if not exchange.pause(reply.stall_s):
            exchange.drop_connection()
            return
        for piece in pieces:
            if not exchange.pause(pause):
                exchange.drop_connection()
                return
            delta = {"type": "text_delta", "text": piece}
            event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        event("content_block_stop", {"type": "content_block_stop", "index": 0})
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": reply.output_tokens},
            },
        )
        event("message_stop", {"type": "message_stop"})
        exchange.end_chunks()
