"""Pricing at ingest speed, in integer nano-dollars.

:class:`costline.pricing.Pricer` resolves a model in the genai-prices catalogue on every uncached call (~80 µs),
far too slow for tens of thousands of spans a second. Per (provider, model, hour) this module derives the
per-token rates by asking the Pricer itself (so the catalogue's semantics are kept exactly), checks that the price
is linear in each token count for calls up to :data:`LINEAR_UP_TO` input tokens, and then prices such calls with
integer arithmetic in pico-dollars, rounded half-even to the ledger's nano-dollars (what ``Decimal.quantize``
would give). Larger calls (tiered prices), prices that are not linear or not whole pico-dollars per token, config
overrides and local models go to the Pricer directly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from costline.pricing import SOURCE_GENAI_PRICES, SOURCE_LOCAL_FREE, SOURCE_UNPRICED, Pricer, TokenUsage

LINEAR_UP_TO = 100_000  # input tokens; catalogue tiers start above this (e.g. Claude's long context at 200k)
NANO = Decimal("0.000000001")
_PICO_PER_USD = 10**12
_HOUR_NS = 3600 * 1_000_000_000
_MAX_NANOS = 10**18 - 1  # DECIMAL(18, 9) holds less than $1e9
_MAX_USD = Decimal(10**9)


@dataclass(frozen=True, slots=True)
class _Rates:
    """Pico-dollars per token."""

    uncached_input: int
    cache_read: int
    cache_write: int
    output: int

    def pico(self, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int) -> int:
        uncached = input_tokens - cache_read - cache_write
        return (
            (uncached if uncached > 0 else 0) * self.uncached_input
            + cache_read * self.cache_read
            + cache_write * self.cache_write
            + output_tokens * self.output
        )


_DIRECT = object()  # ask the Pricer every time (cheap paths, or prices that are not linear)
_FREE = object()  # a local model without a compute rate


def usd_to_nanos(usd: Decimal | None) -> int | None:
    """Dollars → whole nano-dollars, rounded half-even; None when missing or out of the ledger's range."""
    if usd is None or not usd.is_finite() or abs(usd) >= _MAX_USD:  # quantize would overflow the context
        return None
    nanos = int(usd.quantize(NANO).scaleb(9))
    return nanos if -_MAX_NANOS <= nanos <= _MAX_NANOS else None


def pico_to_nanos(pico: int) -> int:
    nanos, rest = divmod(pico, 1000)
    if rest > 500 or (rest == 500 and nanos % 2):
        nanos += 1
    return nanos


class FastPricer:
    def __init__(self, pricer: Pricer) -> None:
        self._pricer = pricer
        self._rates: dict[tuple[str, str, int], object] = {}
        self._lock = threading.Lock()

    @property
    def escalation_model(self) -> str:
        return self._pricer.escalation_model

    def price_nanos(
        self,
        provider: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cache_read: int,
        cache_write: int,
        *,
        at_ns: int,
        compute_seconds: float | None = None,
    ) -> tuple[int | None, str]:
        """Cost in nano-dollars (None: unpriced) and the price source, for a call that started at ``at_ns``."""
        key = (provider, model, at_ns - at_ns % _HOUR_NS)
        rates = self._rates.get(key)
        if rates is None:
            rates = self._derive(provider, model, utc_from_ns(key[2]))
            with self._lock:
                if len(self._rates) > 50_000:  # bounded: old hours and odd model names do not pile up
                    self._rates.clear()
                self._rates[key] = rates
        if rates is _FREE:
            return 0, SOURCE_LOCAL_FREE
        if rates.__class__ is _Rates and input_tokens <= LINEAR_UP_TO:
            pico = rates.pico(input_tokens, output_tokens, cache_read, cache_write)  # type: ignore[attr-defined]
            return pico_to_nanos(pico), SOURCE_GENAI_PRICES
        usage = TokenUsage(input_tokens, output_tokens, cache_read, cache_write)
        price = self._pricer.price(provider, model, usage, at=utc_from_ns(at_ns), compute_seconds=compute_seconds)
        nanos = usd_to_nanos(price.usd)
        return nanos, price.source if nanos is not None else SOURCE_UNPRICED

    def counterfactual_nanos(
        self, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int, *, at_ns: int
    ) -> int | None:
        """What the same tokens would have cost on the escalation model."""
        model = self._pricer.escalation_model
        return self.price_nanos("anthropic", model, input_tokens, output_tokens, cache_read, cache_write, at_ns=at_ns)[
            0
        ]

    def _derive(self, provider: str, model: str, hour: datetime) -> object:
        probes = [
            self._pricer.price(provider, model, TokenUsage(*counts), at=hour, compute_seconds=seconds)
            for counts, seconds in (((1000, 1000, 0, 0), 1.0), ((5, 7, 1, 1), 3600.0), ((0, 0, 0, 0), None))
        ]
        if all(p.source == SOURCE_LOCAL_FREE and p.usd == 0 for p in probes):
            return _FREE  # a local model at no compute rate: always $0, whatever the tokens or seconds

        def p(**counts: int) -> Decimal | None:
            price = self._pricer.price(provider, model, TokenUsage(**counts), at=hour, compute_seconds=1.0)
            return price.usd if price.source == SOURCE_GENAI_PRICES else None

        # Rates come from calls of LINEAR_UP_TO input tokens; tiered prices (e.g. above 200k input tokens) change
        # at larger calls, which the Pricer prices itself.
        size = LINEAR_UP_TO
        base = p(input_tokens=size)
        read = p(input_tokens=size, cache_read_tokens=size)
        write = p(input_tokens=size, cache_write_tokens=size)
        out = p(input_tokens=size, output_tokens=size)
        if base is None or read is None or write is None or out is None:
            return _DIRECT
        per_token = [d * _PICO_PER_USD / size for d in (base, read, write, out - base)]
        if any(r != r.to_integral_value() or r < 0 for r in per_token):
            return _DIRECT
        rates = _Rates(*(int(r) for r in per_token))
        for counts in (
            (1000, 700, 100, 50),
            (1, 1, 0, 0),
            (size, size // 3, size // 2, 7),
            (size // 7, size * 3, 0, 0),
        ):
            usage = TokenUsage(*counts)
            expected = p(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
            )
            if expected is None or expected * _PICO_PER_USD != rates.pico(*counts):
                return _DIRECT
        return rates


def utc_from_ns(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
