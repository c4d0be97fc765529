"""A bad config fails at start with the key, the value and the fix (scenario 10 of issue 2)."""

from __future__ import annotations

import logging

import pytest

from costline.config import ConfigError, load_config
from router import Router


def _load(tmp_path, text: str):
    path = tmp_path / "costline.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, env={})


@pytest.mark.parametrize(
    ("toml", "key", "value", "fix"),
    [
        ('[router]\nmodel = ["qwen3:8b"]\n', "router.model", ["qwen3:8b"], "unknown key; known keys in [router]"),
        ("[escalation]\nthreshold = -1\n", "escalation.threshold", -1, "must be >= 1"),
        ("[router]\nmodels = []\n", "router.models", [], "list at least one Ollama model"),
        ('[escalation]\nmax_calls_per_hour = "many"\n', "escalation.max_calls_per_hour", "many", "whole number"),
    ],
)
def test_bad_config_names_key_value_and_fix(tmp_path, toml, key, value, fix):
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, toml)
    assert (caught.value.key, caught.value.value) == (key, value)
    assert fix in caught.value.fix
    assert f"{key} = {value!r}" in str(caught.value)


def test_unpriceable_escalation_model_fails_when_the_router_starts(tmp_path):
    config = _load(
        tmp_path, f'[router]\nusage_db = "{tmp_path}/u.sqlite"\n[escalation]\nmodel = "claude-imaginary-9"\n'
    )
    with pytest.raises(ConfigError) as caught:
        Router(config)
    assert (caught.value.key, caught.value.value) == ("escalation.model", "claude-imaginary-9")
    assert str(caught.value) == (
        "config error: escalation.model = 'claude-imaginary-9': no price is known for this model; use a current "
        'model name or add [prices."claude-imaginary-9"] with input and output in USD per million tokens'
    )


def test_a_price_override_makes_a_private_model_usable(tmp_path, tracer_provider):
    config = _load(
        tmp_path,
        f'[router]\nusage_db = "{tmp_path}/u.sqlite"\n[escalation]\nmodel = "claude-private"\n'
        '[prices."claude-private"]\ninput = 3.0\noutput = 15.0\n',
    )
    Router(config, tracer_provider=tracer_provider).close()


def test_unpriceable_model_is_fine_when_escalation_is_disabled(tmp_path, tracer_provider):
    config = _load(
        tmp_path,
        f'[router]\nusage_db = "{tmp_path}/u.sqlite"\n[escalation]\nenabled = false\nmodel = "claude-imaginary-9"\n',
    )
    Router(config, tracer_provider=tracer_provider).close()


def test_deprecated_escalation_model_warns_at_start(make_config, tracer_provider, monkeypatch, caplog):
    monkeypatch.setattr("router.router.is_deprecated", lambda provider, model: model == "claude-opus-4-1")
    monkeypatch.setattr("router.router.DEPRECATED_MODELS", {"claude-3-7-sonnet-latest": "February 19th, 2026"})
    with caplog.at_level(logging.WARNING, logger="router"):
        for model in ("claude-opus-4-1", "claude-3-7-sonnet-latest", "claude-sonnet-4-6"):
            Router(make_config(escalation={"model": model}), tracer_provider=tracer_provider).close()
    assert [r.getMessage() for r in caplog.records] == [
        "escalation.model 'claude-opus-4-1' is deprecated by Anthropic; switch to a current model such as "
        "claude-sonnet-4-6",
        "escalation.model 'claude-3-7-sonnet-latest' is deprecated by Anthropic (end of life: February 19th, 2026); "
        "switch to a current model such as claude-sonnet-4-6",
    ]
