"""What a model call cost (DESIGN §3).

Order of precedence: a ``[prices."model"]`` override from the config; for local (Ollama) models the configured
compute rate times the measured compute seconds; otherwise the bundled `genai-prices` data at the time of the
call. Its background updater is never started. A call nobody can price is :data:`UNPRICED`, never $0.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from costline import clock
from costline.config import Config, ConfigError, ModelPrice

log = logging.getLogger(__name__)

LOCAL_PROVIDERS = frozenset({"ollama"})
MILLION = Decimal(1_000_000)
SECONDS_PER_HOUR = Decimal(3600)

SOURCE_CONFIG = "config"
SOURCE_GENAI_PRICES = "genai-prices"
SOURCE_LOCAL_COMPUTE = "local-compute"
SOURCE_LOCAL_FREE = "local-free"
SOURCE_UNPRICED = "unpriced"
# An emitter's own cost further than both of these from costline's is a disagreement (ledger column cost_disagrees).
COST_TOLERANCE_RATIO = 0.02
COST_TOLERANCE_NANOS = 1_000  # $0.000001
SOURCE_NO_USAGE = "no-usage"  # a call that reported no token counts: its cost is unknown, and nothing to price


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts of one call. ``input_tokens`` counts ALL input, cache reads and writes included."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Price:
    usd: Decimal | None
    source: str

    @property
    def priced(self) -> bool:
        return self.usd is not None


UNPRICED = Price(None, SOURCE_UNPRICED)


class Pricer:
    """Prices calls with one configuration. Thread-safe; cheap to call in a hot path."""

    def __init__(self, config: Config) -> None:
        self._overrides = dict(config.prices)
        self._usd_per_hour = Decimal(str(config.local_compute.usd_per_hour))
        self._escalation_model = config.escalation.model

    @property
    def escalation_model(self) -> str:
        return self._escalation_model

    def price(
        self,
        provider: str,
        model: str,
        usage: TokenUsage,
        *,
        at: datetime | None = None,
        compute_seconds: float | None = None,
    ) -> Price:
        override = self._overrides.get(model)
        if override is not None:
            return Price(_override_cost(override, usage), SOURCE_CONFIG)
        if provider in LOCAL_PROVIDERS:
            return self._local(compute_seconds)
        return _catalogue_price(provider, model, usage, _hour(at))

    def upper_bound(self, provider: str, model: str, bound: TokenUsage) -> Decimal:
        """The most a call within ``bound`` can cost: its input priced at the dearer of the plain and the cache-write
        rate (a call may write its whole prompt to the cache), its output in full. Unpriceable: an error, since an
        escalation model is checked for a price when the router starts."""
        as_input = self.price(provider, model, TokenUsage(bound.input_tokens, bound.output_tokens))
        as_cache_write = self.price(
            provider, model, TokenUsage(bound.input_tokens, bound.output_tokens, cache_write_tokens=bound.input_tokens)
        )
        costs = [p.usd for p in (as_input, as_cache_write) if p.usd is not None]
        if not costs:
            raise ValueError(f"no price is known for {provider} model {model!r}")
        return max(costs)

    def counterfactual(self, usage: TokenUsage, *, at: datetime | None = None) -> Price:
        """What the same tokens would have cost on the configured escalation model."""
        return self.price("anthropic", self._escalation_model, usage, at=at)

    def _local(self, compute_seconds: float | None) -> Price:
        if self._usd_per_hour == 0:
            return Price(Decimal(0), SOURCE_LOCAL_FREE)
        if compute_seconds is None or compute_seconds < 0:
            return UNPRICED
        return Price(self._usd_per_hour * Decimal(str(compute_seconds)) / SECONDS_PER_HOUR, SOURCE_LOCAL_COMPUTE)

    def ensure_priceable(self, provider: str, model: str, key: str) -> None:
        """Raise a ConfigError when ``model`` has no price, so a misconfiguration fails at start."""
        probe = self.price(provider, model, TokenUsage(input_tokens=1000, output_tokens=1000), compute_seconds=1.0)
        if not probe.priced:
            raise ConfigError(
                key,
                model,
                f'no price is known for this model; use a current model name or add [prices."{model}"] '
                "with input and output in USD per million tokens",
            )


def is_deprecated(provider: str, model: str) -> bool:
    """True when the bundled price data marks the model as deprecated by its provider."""
    from genai_prices import data_snapshot as _gp_snapshot  # heavy (~90 ms): only pricing needs it

    try:
        _, info = _gp_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
    except LookupError:
        return False
    return bool(getattr(info, "deprecated", False))


def _override_cost(p: ModelPrice, u: TokenUsage) -> Decimal:
    cache_read_rate = p.input if p.cache_read is None else p.cache_read
    cache_write_rate = p.input if p.cache_write is None else p.cache_write
    uncached = max(u.input_tokens - u.cache_read_tokens - u.cache_write_tokens, 0)
    total = (
        Decimal(uncached) * Decimal(str(p.input))
        + Decimal(u.cache_read_tokens) * Decimal(str(cache_read_rate))
        + Decimal(u.cache_write_tokens) * Decimal(str(cache_write_rate))
        + Decimal(u.output_tokens) * Decimal(str(p.output))
    )
    return total / MILLION


def _hour(at: datetime | None) -> datetime:
    # Prices change on dates, not within an hour: rounding the time lets the cache below hit.
    moment = at or clock.now()
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


@functools.lru_cache(maxsize=65536)
def _catalogue_price(provider: str, model: str, usage: TokenUsage, hour: datetime) -> Price:
    # Imported here, not at the top: `costline report` and the views import this module for constants only.
    from genai_prices import Usage as _GPUsage
    from genai_prices import calc_price as _gp_calc_price

    gp_usage = _GPUsage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )
    for provider_id in (provider or None, None):
        try:
            calc = _gp_calc_price(gp_usage, model, provider_id=provider_id, genai_request_timestamp=hour)
        except LookupError:
            continue
        except ValueError:  # inconsistent counts, e.g. more cache reads than input tokens
            return UNPRICED
        return Price(Decimal(calc.total_price), SOURCE_GENAI_PRICES)
    return UNPRICED
