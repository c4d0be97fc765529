"""Prices: genai-prices for Claude, config overrides, local compute, and no silent $0."""

from __future__ import annotations

from decimal import Decimal

import pytest

from costline.config import ConfigError, ModelPrice, load_config, with_overrides
from costline.pricing import SOURCE_UNPRICED, Pricer, TokenUsage


@pytest.fixture
def pricer() -> Pricer:
    return Pricer(load_config(env={}))


def test_claude_sonnet_4_5_with_cache_is_priced_to_the_cent(pricer: Pricer) -> None:
    usage = TokenUsage(input_tokens=1000, output_tokens=500, cache_read_tokens=200, cache_write_tokens=100)
    price = pricer.price("anthropic", "claude-sonnet-4-5", usage)
    assert price.usd == Decimal("0.010035")
    assert price.source == "genai-prices"


def test_unknown_model_is_unpriced_not_zero(pricer: Pricer) -> None:
    price = pricer.price("anthropic", "claude-does-not-exist", TokenUsage(100, 100))
    assert price.usd is None and price.source == SOURCE_UNPRICED


def test_local_models_are_free_by_default_and_priced_by_compute_rate() -> None:
    free = Pricer(load_config(env={}))
    assert free.price("ollama", "qwen3:8b", TokenUsage(10_000, 1000), compute_seconds=36).usd == 0
    config = with_overrides(load_config(env={}), local_compute={"usd_per_hour": 1.0})
    rated = Pricer(config).price("ollama", "qwen3:8b", TokenUsage(10, 10), compute_seconds=36)
    assert rated.usd == Decimal("0.01") and rated.source == "local-compute"


def test_override_table_wins_over_the_catalogue() -> None:
    config = load_config(env={})
    config = with_overrides(config, prices=lambda _: {"claude-sonnet-4-5": ModelPrice(1.0, 2.0, 0.1, 1.25)})
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000, cache_read_tokens=0, cache_write_tokens=0)
    assert Pricer(config).price("anthropic", "claude-sonnet-4-5", usage).usd == Decimal(3)


def test_counterfactual_uses_the_escalation_model(pricer: Pricer) -> None:
    usage = TokenUsage(input_tokens=1000, output_tokens=500)
    assert pricer.counterfactual(usage) == pricer.price("anthropic", "claude-sonnet-4-6", usage)


def test_unpriceable_escalation_model_is_a_config_error(pricer: Pricer) -> None:
    with pytest.raises(ConfigError, match=r"escalation\.model"):
        pricer.ensure_priceable("anthropic", "claude-imaginary-9", "escalation.model")
