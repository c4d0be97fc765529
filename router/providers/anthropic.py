"""Claude through the real ``anthropic`` client, streamed.

Streaming lets a long answer finish within ``escalation.timeout_s`` (each read waits at most that long, and so does
the whole answer), and tells the router what a call used even when it ends early: ``message_start`` carries the
input usage, ``message_delta`` the output, ``message_stop`` says the usage is final.

The router owns retries (``max_retries=0``: every HTTP call is one attempt span) and the spans (the SDK's own
OpenTelemetry spans are off, so one call is never counted twice). The API key comes from ``ANTHROPIC_API_KEY`` only.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anthropic

from costline.pricing import TokenUsage
from router.errors import ProviderFailure, classify_anthropic
from router.providers import CallProgress, Endpoint, LazyClients, Reply

DEFAULT_BASE_URL = "https://api.anthropic.com"
MISSING_KEY = "ANTHROPIC_API_KEY is not set; export it to let the router escalate to Claude"
STOP_MAX_TOKENS = "max_tokens"
# Tokens the Messages API may add around the request's own text (role turns, system framing). A generous bound: the
# request's UTF-8 bytes already exceed its token count, since every token covers at least one byte.
_FRAMING_TOKENS = 64
_TOKENS_PER_MESSAGE = 8


class AnthropicProvider(LazyClients):
    name = "anthropic"

    def __init__(self, base_url: str, timeout_s: float, max_tokens: int) -> None:
        self.base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.endpoint = Endpoint.from_url(self.base_url)
        self._client: anthropic.Anthropic | None = None
        self._lock = threading.Lock()  # run() may be called from several threads
        self._async_client: anthropic.AsyncAnthropic | None = None

    def credentials_problem(self) -> str | None:
        """Checked before an escalation takes a quota slot: without a key no call can succeed."""
        return None if os.environ.get("ANTHROPIC_API_KEY") else MISSING_KEY

    def usage_bound(self, system: str | None, messages: Sequence[Mapping[str, Any]]) -> TokenUsage:
        """The most a request can use: input bounded by its size, output by ``max_tokens``."""
        size = len(system.encode()) if system else 0
        for message in messages:
            content = message["content"]
            size += len(content.encode()) if isinstance(content, str) else len(json.dumps(content).encode())
        input_tokens = size + _FRAMING_TOKENS + _TOKENS_PER_MESSAGE * len(messages)
        return TokenUsage(input_tokens=input_tokens, output_tokens=self.max_tokens)

    def _options(self) -> dict[str, Any]:
        key = os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise ProviderFailure("missing_credentials", MISSING_KEY)
        return {
            "api_key": key,
            "base_url": self.base_url,
            "timeout": self.timeout_s,
            "max_retries": 0,
            "open_telemetry": False,
        }

    def chat(
        self, model: str, system: str | None, messages: Sequence[Mapping[str, Any]], progress: CallProgress
    ) -> Reply:
        answer = _Answer(model, time.monotonic() + self.timeout_s, progress)
        try:
            options = self._options()
            with self._lock:
                if self._client is None or self._client.api_key != options["api_key"]:
                    self.close()  # first call, or the key in the environment changed
                    self._client = anthropic.Anthropic(**options)
                client = self._client
            with client.messages.create(**self._request(model, system, messages), stream=True) as stream:
                for event in stream:
                    answer.add(event)
        except Exception as exc:
            raise classify_anthropic(exc) from exc
        return answer.reply()

    async def achat(
        self, model: str, system: str | None, messages: Sequence[Mapping[str, Any]], progress: CallProgress
    ) -> Reply:
        answer = _Answer(model, time.monotonic() + self.timeout_s, progress)
        try:
            options = self._options()
            if self._async_client is None or self._async_client.api_key != options["api_key"]:
                await self.aclose()
                self._async_client = anthropic.AsyncAnthropic(**options)
            stream = await self._async_client.messages.create(**self._request(model, system, messages), stream=True)
            async with stream:
                async for event in stream:
                    answer.add(event)
        except Exception as exc:
            raise classify_anthropic(exc) from exc
        return answer.reply()

    def _request(self, model: str, system: str | None, messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": model,
            "max_tokens": self.max_tokens,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        }
        if system:
            request["system"] = system
        return request


class _Answer:
    """Joins the Messages stream's events into one reply, keeping ``progress`` current as they arrive."""

    def __init__(self, model: str, deadline: float, progress: CallProgress) -> None:
        self.model, self.deadline, self.progress = model, deadline, progress
        self.parts: list[str] = []
        self.stop_reason: str | None = None
        self._uncached = self._cache_read = self._cache_write = self._output = 0

    def add(self, event: Any) -> None:
        if time.monotonic() > self.deadline:
            raise ProviderFailure("timeout", "Claude was still answering after escalation.timeout_s")
        kind = event.type
        if kind == "message_start":
            message = event.message
            self.progress.answering = True
            self.progress.response_id, self.progress.response_model = message.id, message.model
            self._usage(message.usage)
        elif kind == "content_block_delta" and getattr(event.delta, "type", None) == "text_delta":
            self.parts.append(event.delta.text)
        elif kind == "message_delta":
            self.stop_reason = event.delta.stop_reason or self.stop_reason
            self._usage(event.usage)
        elif kind == "message_stop":
            self.progress.complete = True

    def _usage(self, usage: Any) -> None:
        # message_delta's counts are cumulative; its input fields are absent on older API versions.
        if getattr(usage, "input_tokens", None) is not None:
            self._uncached = usage.input_tokens
        if getattr(usage, "cache_read_input_tokens", None) is not None:
            self._cache_read = usage.cache_read_input_tokens
        if getattr(usage, "cache_creation_input_tokens", None) is not None:
            self._cache_write = usage.cache_creation_input_tokens
        self._output = usage.output_tokens or self._output
        self.progress.usage = TokenUsage(
            # The API reports only the uncached part as input_tokens; the spec counts all input.
            input_tokens=self._uncached + self._cache_read + self._cache_write,
            output_tokens=self._output,
            cache_read_tokens=self._cache_read,
            cache_write_tokens=self._cache_write,
        )

    def reply(self) -> Reply:
        progress = self.progress
        if not progress.complete or progress.usage is None:
            raise ProviderFailure("stream_error", f"Claude ended the stream for {self.model} before message_stop")
        text = "".join(self.parts)
        reply = Reply(
            text=text,
            response_model=progress.response_model,
            response_id=progress.response_id,
            finish_reasons=(self.stop_reason,) if self.stop_reason else (),
            usage=progress.usage,
        )
        if self.stop_reason == STOP_MAX_TOKENS:
            raise ProviderFailure(
                "truncated",
                f"{reply.response_model or self.model} stopped at escalation.max_tokens "
                f"({progress.usage.output_tokens} output tokens); raise it to let long answers finish",
                reply=reply,
            )
        if not text.strip():
            raise ProviderFailure("empty_output", f"{reply.response_model} returned an empty answer", reply=reply)
        return reply
