"""`costline route` and `costline usage` (issue 2: everything works through the command too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from costline import spans as attr
from costline.cli import app
from costline.demo.fake_anthropic import ClaudeReply
from costline.demo.fake_ollama import OllamaError

runner = CliRunner()


@pytest.fixture
def config_file(tmp_path, fake_ollama, fake_anthropic, otlp_receiver):
    """Write a costline.toml pointing at the fakes and the OTLP receiver, with extra lines per section."""

    def write(router: str = "", escalation: str = "", extra: str = "") -> Path:
        path = tmp_path / "costline.toml"
        path.write_text(
            f'[router]\nollama_host = "{fake_ollama.url}"\nusage_db = "{tmp_path / "usage.sqlite"}"\n{router}\n'
            f'[escalation]\nbase_url = "{fake_anthropic.url}"\n{escalation}\n'
            f'[telemetry]\notlp_endpoint = "{otlp_receiver.url}"\n{extra}',
            encoding="utf-8",
        )
        return path

    return write


def test_route_prints_the_answer_and_a_cost_summary(config_file, fake_ollama, fake_anthropic):
    fake_ollama.script("qwen2.5-coder:14b", OllamaError(404))
    fake_ollama.script("qwen3:30b-a3b", OllamaError(503))
    fake_anthropic.script(
        "claude-sonnet-4-5",
        ClaudeReply(
            text="the fix",
            input_tokens=700,
            output_tokens=500,
            cache_read_input_tokens=200,
            cache_creation_input_tokens=100,
        ),
    )
    path = config_file(escalation='model = "claude-sonnet-4-5"')
    result = runner.invoke(
        app, ["route", "fix it", "--type", "code_review", "--system", "be brief", "--config", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "the fix\n"
    assert result.stderr.splitlines()[0] == (
        "3 attempts (qwen2.5-coder:14b model_not_found, qwen3:30b-a3b overloaded, claude-sonnet-4-5 ok) · "
        "1,000 in / 500 out tokens · $0.010035 · escalated (threshold) · completed"
    )
    (request,) = fake_anthropic.message_requests()
    assert request["system"].startswith("be brief")


def test_route_flags_critical_and_claude(config_file, fake_ollama, fake_anthropic):
    fake_ollama.script("qwen2.5-coder:14b", OllamaError(500))
    critical = runner.invoke(app, ["route", "x", "--critical", "--config", str(config_file())])
    assert critical.exit_code == 0 and "escalated (critical)" in critical.stderr
    claude = runner.invoke(app, ["route", "x", "--claude", "--config", str(config_file())])
    assert claude.exit_code == 0 and claude.stderr.startswith("1 attempt (claude-sonnet-4-6 ok)")
    assert len(fake_ollama.chat_requests()) == 1


def test_route_exits_1_with_the_reason_when_the_task_fails(config_file, fake_ollama):
    for model in ("qwen2.5-coder:14b", "qwen3:30b-a3b", "llama3.1:70b"):
        fake_ollama.script(model, OllamaError(404))
    path = config_file(escalation="enabled = false")
    result = runner.invoke(app, ["route", "x", "--config", str(path)])
    assert result.exit_code == 1
    assert result.stdout == ""
    flat = " ".join(result.stderr.split())
    assert "error: all local models failed and escalation is disabled (escalation.enabled = false)" in flat
    assert 'qwen2.5-coder:14b: model_not_found: Ollama answered 404: model "qwen2.5-coder:14b" not found' in (
        " ".join(result.stderr.split())
    )


def test_route_exits_3_when_the_quota_refuses(config_file, fake_anthropic):
    path = config_file(escalation="max_calls_per_hour = 1")
    assert runner.invoke(app, ["route", "x", "--claude", "--config", str(path)]).exit_code == 0
    refused = runner.invoke(app, ["route", "x", "--claude", "--config", str(path)])
    assert refused.exit_code == 3
    assert "error: escalation quota reached (1/h); next slot in 60 min" in refused.stderr
    assert "quota_exhausted" in refused.stderr.splitlines()[0]


def test_route_shows_a_truncated_answer_and_exits_1(config_file, fake_anthropic):
    fake_anthropic.script("claude-sonnet-4-6", ClaudeReply(text="the first half", output_tokens=9000))
    path = config_file(escalation="max_tokens = 512")
    result = runner.invoke(app, ["route", "x", "--claude", "--config", str(path)])
    assert result.exit_code == 1
    assert result.stdout == "the first half\n"
    flat = " ".join(result.stderr.split())
    assert "claude-sonnet-4-6 truncated) · " in flat and "· escalated (requested) · truncated" in flat
    assert "error: escalation to claude-sonnet-4-6 failed: claude-sonnet-4-6 stopped at escalation.max_tokens" in flat


@pytest.mark.parametrize(
    ("section", "line", "expected"),
    [
        ("router", "modelz = []", "config error: router.modelz = [] ("),
        ("escalation", "threshold = -2", "escalation.threshold = -2"),
        ("router", "models = []", "router.models = []"),
        ("escalation", 'model = "claude-imaginary-9"', "escalation.model = 'claude-imaginary-9'"),
    ],
)
def test_route_exits_2_on_a_bad_config(config_file, section, line, expected):
    path = config_file(**{section: line})
    result = runner.invoke(app, ["route", "x", "--config", str(path)])
    assert result.exit_code == 2
    flat = " ".join(result.stderr.split())
    assert flat.startswith("error: ") and expected in flat
    assert any(fix in flat for fix in ("unknown key", "must be >= 1", "list at least one", "no price is known"))


def test_usage_shows_todays_escalations_and_headroom(config_file, fake_ollama, fake_anthropic):
    path = config_file(escalation="max_calls_per_hour = 4", extra="[budgets]\ndaily_usd = 1.0\nmonthly_usd = 0\n")
    fake_ollama.script("qwen2.5-coder:14b", OllamaError(404))
    fake_ollama.script("qwen3:30b-a3b", OllamaError(404))
    assert runner.invoke(app, ["route", "x", "--config", str(path)]).exit_code == 0
    assert runner.invoke(app, ["route", "x", "--claude", "--config", str(path)]).exit_code == 0

    as_json = runner.invoke(app, ["usage", "--format", "json", "--config", str(path)])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    by_reason = {row["reason"]: row for row in report["escalations"]}
    assert set(by_reason) == {"threshold", "requested"}
    assert by_reason["threshold"]["calls"] == 1 and by_reason["threshold"]["input_tokens"] == 800
    assert report["total"]["cost_usd"] == pytest.approx(0.0138)
    assert report["quota"] == {
        "quota": "escalations_per_hour",
        "used": 2,
        "limit": 4,
        "headroom_ratio": 0.5,
        "next_slot_at": None,
    }
    assert report["budgets"]["daily"]["limit_usd"] == 1.0
    assert report["budgets"]["daily"]["headroom_ratio"] == pytest.approx(1 - 0.0138)
    assert report["budgets"]["monthly"] == {
        "limit_usd": None,
        "spent_usd": pytest.approx(0.0138),
        "headroom_ratio": None,
    }

    table = runner.invoke(app, ["usage", "--config", str(path)])
    assert table.exit_code == 0
    assert "threshold" in table.stdout and "requested" in table.stdout and "$0.013800" in table.stdout
    assert "escalations per hour" in table.stdout and "50%" in table.stdout


def test_usage_without_any_escalation_does_not_create_the_store(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(f'[router]\nusage_db = "{tmp_path / "none.sqlite"}"\n', encoding="utf-8")
    result = runner.invoke(app, ["usage", "--format", "json", "--config", str(path)])
    assert result.exit_code == 0 and json.loads(result.stdout)["total"]["calls"] == 0
    assert not (tmp_path / "none.sqlite").exists()


def test_route_as_a_process_flushes_its_spans_before_exiting(config_file, otlp_receiver, fake_anthropic):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["ANTHROPIC_API_KEY"] = os.environ["ANTHROPIC_API_KEY"]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "costline"), "route", "hi", "--claude", "--config", str(config_file())],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"
    names = sorted(span.name for _, _, span in otlp_receiver.spans())
    assert names == ["chat claude-sonnet-4-6", "task general"]
    (attempt,) = [a for _, a, s in otlp_receiver.spans() if s.name.startswith("chat")]
    assert attempt[attr.ESCALATION_REASON] == "requested"
