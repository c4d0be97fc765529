"""Claude through the real ``anthropic`` client.

The router owns retries (``max_retries=0``: every HTTP call is one attempt span) and the spans (the SDK's own
OpenTelemetry spans are off, so one call is never counted twice). The API key comes from ``ANTHROPIC_API_KEY`` only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import anthropic

from costline.pricing import TokenUsage
from router.errors import ProviderFailure, classify_anthropic
from router.providers import Endpoint, LazyClients, Reply

DEFAULT_BASE_URL = "https://api.anthropic.com"
MISSING_KEY = "ANTHROPIC_API_KEY is not set; export it to let the router escalate to Claude"


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

    def credentials_problem(self) -> ProviderFailure | None:
        """Checked before an escalation takes a quota slot: without a key no call can succeed."""
        if not os.environ.get("ANTHROPIC_API_KEY"):
            return ProviderFailure("authentication", MISSING_KEY)
        return None

    def _options(self) -> dict[str, Any]:
        key = os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise ProviderFailure("authentication", MISSING_KEY)
        return {
            "api_key": key,
            "base_url": self.base_url,
            "timeout": self.timeout_s,
            "max_retries": 0,
            "open_telemetry": False,
        }

    def chat(self, model: str, system: str | None, messages: Sequence[Mapping[str, Any]]) -> Reply:
        try:
            options = self._options()
            with self._lock:
                if self._client is None or self._client.api_key != options["api_key"]:
                    self.close()  # first call, or the key in the environment changed
                    self._client = anthropic.Anthropic(**options)
                client = self._client
            message = client.messages.create(**self._request(model, system, messages))
        except Exception as exc:
            raise classify_anthropic(exc) from exc
        return _reply(message)

    async def achat(self, model: str, system: str | None, messages: Sequence[Mapping[str, Any]]) -> Reply:
        try:
            options = self._options()
            if self._async_client is None or self._async_client.api_key != options["api_key"]:
                await self.aclose()
                self._async_client = anthropic.AsyncAnthropic(**options)
            message = await self._async_client.messages.create(**self._request(model, system, messages))
        except Exception as exc:
            raise classify_anthropic(exc) from exc
        return _reply(message)

    def _request(self, model: str, system: str | None, messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": model,
            "max_tokens": self.max_tokens,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        }
        if system:
            request["system"] = system
        return request


def _reply(message: Any) -> Reply:
    text = "".join(block.text for block in message.content if getattr(block, "type", None) == "text")
    u = message.usage
    cache_read = u.cache_read_input_tokens or 0
    cache_write = u.cache_creation_input_tokens or 0
    usage = TokenUsage(
        # The API reports only the uncached part as input_tokens; the spec counts all input.
        input_tokens=u.input_tokens + cache_read + cache_write,
        output_tokens=u.output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )
    reply = Reply(
        text=text,
        response_model=message.model,
        response_id=message.id,
        finish_reasons=(message.stop_reason,) if message.stop_reason else (),
        usage=usage,
    )
    if not text.strip():
        raise ProviderFailure("empty_output", f"{message.model} returned an empty answer", reply=reply)
    return reply
