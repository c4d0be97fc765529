"""Model backends. Each turns one chat request into a :class:`Reply` or raises ``ProviderFailure``."""

from __future__ import annotations

from dataclasses import dataclass
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
