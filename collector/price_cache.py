"""Pricing at ingest speed.

:class:`costline.pricing.Pricer` resolves a model in the genai-prices catalogue on every uncached call (~80 µs),
far too slow for tens of thousands of spans a second. Per (provider, model, hour) this module derives the
per-token rates by asking the Pricer itself (so the catalogue's semantics are kept exactly), checks at three
scales that the price is linear in each token count, and then prices with four Decimal multiplications. Tiered
or otherwise non-linear prices, config overrides and local models go to the Pricer directly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from costline.pricing import SOURCE_GENAI_PRICES, Price, Pricer, TokenUsage

_MILLION = 1_000_000
_HOUR_NS = 3600 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class _Rates:
    uncached_input: Decimal
    cache_read: Decimal
    cache_write: Decimal
    output: Decimal

    def cost(self, u: TokenUsage) -> Decimal:
        uncached = max(u.input_tokens - u.cache_read_tokens - u.cache_write_tokens, 0)
        return (
            uncached * self.uncached_input
            + u.cache_read_tokens * self.cache_read
            + u.cache_write_tokens * self.cache_write
            + u.output_tokens * self.output
        )


_DIRECT = object()  # ask the Pricer every time (cheap paths, or prices that are not linear)


class FastPricer:
    def __init__(self, pricer: Pricer) -> None:
        self._pricer = pricer
        self._rates: dict[tuple[str, str, int], object] = {}
        self._lock = threading.Lock()

    @property
    def escalation_model(self) -> str:
        return self._pricer.escalation_model

    def price(
        self, provider: str, model: str, usage: TokenUsage, *, at_ns: int, compute_seconds: float | None = None
    ) -> Price:
        """The price of a call that started at ``at_ns`` (Unix nanoseconds, UTC)."""
        hour_ns = at_ns - at_ns % _HOUR_NS
        key = (provider, model, hour_ns)
        rates = self._rates.get(key)
        if rates is None:
            rates = self._derive(provider, model, utc_from_ns(hour_ns))
            with self._lock:
                if len(self._rates) > 50_000:  # bounded: old hours and odd model names do not pile up
                    self._rates.clear()
                self._rates[key] = rates
        if isinstance(rates, _Rates):
            return Price(rates.cost(usage), SOURCE_GENAI_PRICES)
        return self._pricer.price(provider, model, usage, at=utc_from_ns(at_ns), compute_seconds=compute_seconds)

    def counterfactual(self, usage: TokenUsage, *, at_ns: int) -> Price:
        return self.price("anthropic", self._pricer.escalation_model, usage, at_ns=at_ns)

    def _derive(self, provider: str, model: str, hour: datetime) -> object:
        def p(**counts: int) -> Decimal | None:
            price = self._pricer.price(provider, model, TokenUsage(**counts), at=hour, compute_seconds=1.0)
            return price.usd if price.source == SOURCE_GENAI_PRICES else None

        base = p(input_tokens=_MILLION)
        read = p(input_tokens=_MILLION, cache_read_tokens=_MILLION)
        write = p(input_tokens=_MILLION, cache_write_tokens=_MILLION)
        out = p(output_tokens=_MILLION)
        if base is None or read is None or write is None or out is None:
            return _DIRECT
        rates = _Rates(base / _MILLION, read / _MILLION, write / _MILLION, out / _MILLION)
        for usage in (
            TokenUsage(input_tokens=1000, output_tokens=700, cache_read_tokens=100, cache_write_tokens=50),
            TokenUsage(input_tokens=150_000_000, output_tokens=0),
            TokenUsage(input_tokens=0, output_tokens=150_000_000),
            TokenUsage(input_tokens=300_000, output_tokens=40_000, cache_read_tokens=200_000, cache_write_tokens=1),
        ):
            if p(**_fields(usage)) != rates.cost(usage):
                return _DIRECT
        return rates


def _fields(u: TokenUsage) -> dict[str, int]:
    return {
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_read_tokens": u.cache_read_tokens,
        "cache_write_tokens": u.cache_write_tokens,
    }


def utc_from_ns(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
