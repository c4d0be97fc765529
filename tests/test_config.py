"""The config contract: defaults, file, environment, and errors that name key, value and fix."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from costline.config import SECTIONS, BudgetConfig, ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "costline.toml"
    path.write_text(text)
    return path


def test_defaults_match_the_design() -> None:
    config = load_config(env={})
    assert config.router.models[0] == "qwen2.5-coder:14b"
    assert config.escalation.threshold == 2
    assert config.escalation.max_calls_per_hour == 50
    assert config.collector.otlp_port == 4318
    assert config.collector.metrics_port == 9464
    assert config.is_critical("code_generation") and not config.is_critical("code")


def test_file_values_and_price_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[router]
models = ["a:1b", "b:2b"]
[escalation]
threshold = 3
[prices."my-model"]
input = 1.0
output = 2
""",
    )
    config = load_config(path, env={})
    assert config.router.models == ("a:1b", "b:2b")
    assert config.escalation.threshold == 3
    assert config.prices["my-model"].output == 2.0
    assert config.source == str(path)


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[router]\nollama_host = "http://10.0.0.1:11434"\n')
    env = {
        "OLLAMA_HOST": "http://127.0.0.1:9999",
        "COSTLINE_ESCALATION_MAX_CALLS_PER_HOUR": "7",
        "COSTLINE_ROUTER_MODELS": "x:1b, y:2b",
    }
    config = load_config(path, env=env)
    assert config.router.ollama_host == "http://127.0.0.1:9999"
    assert config.escalation.max_calls_per_hour == 7
    assert config.router.models == ("x:1b", "y:2b")


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[budgets]\ndaily_usd = 1.5\n")
    assert load_config(env={"COSTLINE_CONFIG": str(path)}).budgets.daily_usd == 1.5


@pytest.mark.parametrize(
    ("text", "key", "fix_words"),
    [
        ("[router]\nmodles = []\n", "router.modles", "unknown key"),
        ("[escalation]\nthreshold = -1\n", "escalation.threshold", "must be >= 1"),
        ("[router]\nmodels = []\n", "router.models", "at least one"),
        ('[budgets]\ndaily_usd = "five"\n', "budgets.daily_usd", "must be a number"),
        ("[routr]\n", "routr", "unknown section"),
        ('[prices."m"]\ninput = 1\n', 'prices."m".output', "missing"),
        ("[router]\ntimeout_s = 0\n", "router.timeout_s", "> 0"),
    ],
)
def test_bad_config_names_key_value_and_fix(tmp_path: Path, text: str, key: str, fix_words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    message = str(info.value)
    assert info.value.key == key
    assert key in message and fix_words in message


def test_api_key_in_the_config_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    secret = "sk-ant-api03-SHOULD-NEVER-BE-PRINTED"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f'[escalation]\napi_key = "{secret}"\n'), env={})
    assert "ANTHROPIC_API_KEY" in str(info.value)
    assert secret not in str(info.value)


def test_missing_config_file_is_an_error_naming_where_the_path_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as given:
        load_config(tmp_path / "nope.toml", env={})
    assert str(given.value).startswith("config error: --config = ") and "(from command line)" in str(given.value)
    with pytest.raises(ConfigError) as from_env:
        load_config(env={"COSTLINE_CONFIG": str(tmp_path / "nope.toml")})
    assert "COSTLINE_CONFIG" in str(from_env.value) and "(from environment)" in str(from_env.value)


def test_a_mistyped_setting_in_the_environment_is_refused_like_one_in_the_file() -> None:
    with pytest.raises(ConfigError) as typo:
        load_config(env={"COSTLINE_ROUTER_MODLES": "qwen3:8b"})
    assert "COSTLINE_ROUTER_MODLES" in str(typo.value) and "COSTLINE_ROUTER_MODELS" in str(typo.value)
    with pytest.raises(ConfigError) as secret:
        load_config(env={"COSTLINE_ESCALATION_API_TOKEN": "sk-ant-SECRET"})
    assert "sk-ant-SECRET" not in str(secret.value)
    # The tokens, the config path and variables of other tools' are not config keys, and are left alone.
    others = {"COSTLINE_INGEST_TOKEN": "t", "COSTLINE_PROXY_TOKEN": "t", "COSTLINE_PULL_MODELS": "qwen3:8b"}
    assert load_config(env={**others, "COSTLINE_ROUTER_MODELS": "qwen3:8b"}).router.models == ("qwen3:8b",)


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[router\n"), env={})


def test_the_example_config_names_every_key_at_its_default() -> None:
    example = Path(__file__).resolve().parents[1] / "costline" / "config.example.toml"
    loaded, defaults = load_config(example, env={}), load_config(env={})
    for name in SECTIONS:
        assert getattr(loaded, name) == getattr(defaults, name), name
    assert set(loaded.origins) == {f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in fields(cls)}


def test_a_team_table_may_be_empty_declaring_the_team_without_budgets(tmp_path: Path) -> None:
    text = '[budgets.teams."support"]\n[budgets.teams."search"]\ndaily_usd = 1.5\n'
    teams = load_config(write(tmp_path, text), env={}).team_budgets
    assert teams == {
        "support": BudgetConfig(daily_usd=0.0, monthly_usd=0.0),
        "search": BudgetConfig(daily_usd=1.5, monthly_usd=0.0),
    }
    # "" labels the global budget and "other" the undeclared teams: neither can be a team's name.
    for name in ("", "other"):
        with pytest.raises(ConfigError, match='must be non-empty and not "other"'):
            load_config(write(tmp_path, f'[budgets.teams."{name}"]\ndaily_usd = 1\n'), env={})


def test_init_writes_a_starter_that_config_check_accepts_and_reports_origins(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json

    from typer.testing import CliRunner

    from costline.cli import app

    runner = CliRunner()
    starter = tmp_path / "costline.toml"
    assert runner.invoke(app, ["init", str(starter)]).exit_code == 0
    assert runner.invoke(app, ["init", str(starter)]).exit_code == 1  # never overwritten unasked

    monkeypatch.setenv("COSTLINE_ROUTER_TIMEOUT_S", "7")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-NEVER-SHOWN")
    checked = runner.invoke(app, ["config", "check", "--json", "-c", str(starter)])
    assert checked.exit_code == 0, checked.output
    document = json.loads(checked.stdout)
    assert document["keys"]["router.timeout_s"] == {"value": 7.0, "from": "COSTLINE_ROUTER_TIMEOUT_S"}
    assert document["keys"]["escalation.threshold"]["from"] == str(starter)
    assert document["ANTHROPIC_API_KEY"] == "set" and "sk-ant-NEVER-SHOWN" not in checked.stdout

    starter.write_text(starter.read_text(encoding="utf-8").replace("threshold = 2", "threshold = -1"), encoding="utf-8")
    broken = runner.invoke(app, ["config", "check", "-c", str(starter)])
    assert broken.exit_code == 2 and "escalation.threshold" in broken.output
