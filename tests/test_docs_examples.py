"""The Python example in docs/router.md runs as written, against the simulated Ollama and Claude."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from costline import spans as attr

ROUTER_PAGE = Path(__file__).resolve().parent.parent / "docs" / "router.md"


def test_the_router_python_example_runs_as_written(
    fake_ollama, fake_anthropic, tmp_path: Path, unused_port: int, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    (example,) = re.findall(r"\*\*In Python:\*\*\n\n```python\n(.*?)```", ROUTER_PAGE.read_text(encoding="utf-8"), re.S)
    (tmp_path / "costline.toml").write_text(
        f'[router]\nollama_host = "{fake_ollama.url}"\nusage_db = "{tmp_path / "usage.sqlite"}"\n'
        f'[escalation]\nbase_url = "{fake_anthropic.url}"\n'
        f'[telemetry]\notlp_endpoint = "http://127.0.0.1:{unused_port}"\n',  # no collector: spans wait in the spool
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    exec(compile(example, str(ROUTER_PAGE), "exec"), {"__name__": "docs_example"})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("True completed ")  # result.ok, result.outcome, ...
    assert printed[1].startswith("0 primary qwen2.5-coder:14b None ")  # the first attempt, as its span records it


def test_the_readme_openai_example_runs_through_the_proxy(
    fake_ollama, fake_anthropic, make_config, tracer_provider, span_exporter
) -> None:
    from test_proxy import ServedProxy

    from router import Router

    readme = (ROUTER_PAGE.parent.parent / "README.md").read_text(encoding="utf-8")
    (example,) = re.findall(r"```python\n(from openai import OpenAI\n.*?)```", readme, re.S)
    assert 'base_url="http://127.0.0.1:11435/v1"' in example  # the proxy's default port, as documented
    with Router(make_config(), tracer_provider=tracer_provider) as router, ServedProxy(router, None) as proxy:
        namespace: dict = {}
        exec(compile(example.replace("http://127.0.0.1:11435", proxy.url), "README.md", "exec"), namespace)
    reply = namespace["reply"]
    assert reply.choices[0].message.content and reply.usage.total_tokens > 0
    (task,) = [s for s in span_exporter.get_finished_spans() if s.name.startswith("task ")]
    assert task.name == "task extract" and task.attributes[attr.TEAM] == "search"  # the example's headers
