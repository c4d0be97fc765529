"""Model backends. Each turns one chat request into a :class:`Reply` or raises ``ProviderFailure``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from costline.pricing import TokenUsage


@dataclass(frozen=True)
class Reply:
    text: str
    response_model: str | None
    response_id: str | None
    finish_reasons: tuple[str, ...]
    usage: TokenUsage  # input_tokens counts ALL input, cache reads and writes included
    compute_seconds: float | None = None  # local models only


@dataclass
class CallProgress:
    """What a call has learned so far, updated as its answer streams in.

    The router reads it when a call ends early (cancelled, interrupted, broken off) to account for what it knows:
    the usage seen so far, and whether the model began answering, which is when a cloud call may be billed.
    """

    usage: TokenUsage | None = None  # the usage reported so far; final once ``complete``
    complete: bool = False  # the final usage arrived
    answering: bool = False  # the backend accepted the request and began its answer
    response_model: str | None = None
    response_id: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """The backend a provider talks to, for ``server.address`` / ``server.port``."""

    address: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        default = 443 if parts.scheme == "https" else 80
        return cls(parts.hostname or "", parts.port or default)


class LazyClients:
    """A provider's SDK clients, sync and async, made on first use; closing releases their connections."""

    _client: Any = None
    _async_client: Any = None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        if self._async_client is not None:
            await self._async_client.close()
            self._async_client = None
