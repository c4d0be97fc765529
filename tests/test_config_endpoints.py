"""`[telemetry] otlp_endpoint`: one collector's URL or a list of them, from the file or the environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from costline.cli import app
from costline.config import ConfigError, load_config
from router.telemetry import otlp_traces_endpoints

ONE, TWO = "http://collector-1:4318", "http://collector-2:4318"


def write(tmp_path: Path, value: str) -> Path:
    path = tmp_path / "costline.toml"
    path.write_text(f"[telemetry]\notlp_endpoint = {value}\n", encoding="utf-8")
    return path


def test_a_single_url_stays_one_collector(tmp_path: Path) -> None:
    telemetry = load_config(write(tmp_path, f'"{ONE}"'), env={}).telemetry
    assert telemetry.otlp_endpoint == ONE and telemetry.otlp_endpoints == (ONE,)


def test_a_list_in_the_file_and_a_comma_separated_one_in_the_environment(tmp_path: Path) -> None:
    from_file = load_config(write(tmp_path, f'["{ONE}", "{TWO}"]'), env={})
    assert from_file.telemetry.otlp_endpoints == (ONE, TWO)
    for variable in ("COSTLINE_OTLP_ENDPOINT", "COSTLINE_TELEMETRY_OTLP_ENDPOINT"):
        from_env = load_config(write(tmp_path, f'"{ONE}"'), env={variable: f"{TWO} , {ONE}"})
        assert from_env.telemetry.otlp_endpoints == (TWO, ONE)
        assert from_env.origins["telemetry.otlp_endpoint"] == variable


@pytest.mark.parametrize(
    ("value", "fix_words"),
    [
        ("[]", "list at least one collector"),
        (f'["{ONE}", "collector-2:4318"]', "'collector-2:4318' is not a URL"),
        (f'["{ONE}", ""]', "'' is not a URL"),
        (f'["{ONE}", "{ONE}"]', "list each collector once"),
        (f'["{ONE}", "{ONE}/"]', "list each collector once"),
        (f'["{ONE}", 4318]', "must be a string or a list of strings"),
        ('"collector:4318"', "use a URL like"),
    ],
)
def test_a_bad_list_is_refused_naming_the_key_and_the_entry(tmp_path: Path, value: str, fix_words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, value), env={})
    assert info.value.key == "telemetry.otlp_endpoint" and fix_words in str(info.value)


def test_an_empty_entry_in_the_environment_is_refused_not_skipped() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"COSTLINE_OTLP_ENDPOINT": f"{ONE},,{TWO}"})
    assert "'' is not a URL" in str(info.value) and "(from COSTLINE_OTLP_ENDPOINT)" in str(info.value)


def test_the_standard_otel_variables_still_name_one_collector(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config = load_config(write(tmp_path, f'["{ONE}", "{TWO}/"]'), env={})
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert otlp_traces_endpoints(config) == (f"{ONE}/v1/traces", f"{TWO}/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:4318")
    assert otlp_traces_endpoints(config) == ("http://elsewhere:4318/v1/traces",)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/v1/traces")
    assert otlp_traces_endpoints(config) == ("http://traces:4318/v1/traces",)


def test_config_check_shows_the_list_and_where_it_came_from(tmp_path: Path) -> None:
    path = write(tmp_path, f'["{ONE}", "{TWO}"]')
    checked = CliRunner().invoke(app, ["config", "check", "--json", "-c", str(path)])
    assert checked.exit_code == 0, checked.output
    shown = json.loads(checked.stdout)["keys"]["telemetry.otlp_endpoint"]
    assert shown == {"value": [ONE, TWO], "from": str(path)}
