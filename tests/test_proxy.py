"""`costline proxy`: the real `openai` SDK and the real `ollama` client, unchanged, route through the chain — backed by
the simulated Ollama and Claude — and every request is accounted like `costline route`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import ollama
import openai
import pytest
import uvicorn
from typer.testing import CliRunner

from costline import spans as attr
from costline.cli import app
from costline.config import load_config
from costline.demo.fake_anthropic import ClaudeReply
from costline.demo.fake_ollama import OllamaError, OllamaReply
from proxy import build_app
from router import Router

PRIMARY, FALLBACK, LAST = "qwen2.5-coder:14b", "qwen3:30b-a3b", "llama3.1:70b"
SONNET = "claude-sonnet-4-6"
TOKEN = "proxy-test-token-0123456789"


class ServedProxy:
    def __init__(self, router: Router, token: str | None) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(build_app(router, token=token), host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServedProxy:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the proxy did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def served(fake_ollama, fake_anthropic, make_config, tracer_provider) -> Iterator[ServedProxy]:
    with Router(make_config(), tracer_provider=tracer_provider) as router, ServedProxy(router, TOKEN) as proxy:
        yield proxy


def openai_client(proxy: ServedProxy, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=TOKEN, max_retries=0, default_headers=headers)


def ollama_client(proxy: ServedProxy, **headers: str) -> ollama.Client:
    return ollama.Client(host=proxy.url, headers={"Authorization": f"Bearer {TOKEN}", **headers})


def test_openai_sdk_completion_through_the_chain_escalates_to_claude(served, fake_ollama, fake_anthropic, spans):
    proxy = served
    fake_ollama.script(PRIMARY, OllamaError(500))
    fake_ollama.script(FALLBACK, OllamaError(503))
    fake_anthropic.script(SONNET, ClaudeReply(text="from claude", input_tokens=900, output_tokens=120))
    client = openai_client(proxy, **{"X-Costline-Team": "search", "X-Costline-Project": "ranker"})
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "rank these"}], user="ada@example.com"
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "from claude"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == SONNET  # the model that actually answered
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (900, 120)
    assert raw.headers["x-costline-escalated"] == "true"
    task_id = raw.headers["x-costline-task-id"]
    assert Decimal(raw.headers["x-costline-cost-usd"]) == Decimal("0.0045")  # 900 x $3 + 120 x $15, per million
    task = spans.task(task_id)
    assert task.attributes[attr.TEAM] == "search" and task.attributes[attr.PROJECT] == "ranker"
    assert task.attributes[attr.USER_ID] == "ada@example.com"
    assert all(a.attributes[attr.TEAM] == "search" for a in spans.attempts(task_id))
    assert [a.attributes[attr.REQUEST_MODEL] for a in spans.attempts(task_id)] == [PRIMARY, FALLBACK, SONNET]


def test_openai_sdk_streams_with_usage_in_the_last_chunk(served, fake_ollama):
    proxy = served
    fake_ollama.script(PRIMARY, OllamaReply(content="streamed answer", prompt_eval_count=30, eval_count=7))
    stream = openai_client(proxy).chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "streamed answer"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (30, 7)
    assert {c.model for c in chunks} == {PRIMARY}


def test_a_model_name_starts_the_chain_there_and_claude_asks_claude(served, fake_ollama, fake_anthropic, spans):
    proxy = served
    client = openai_client(proxy)
    from_fallback = client.chat.completions.with_raw_response.create(
        model=FALLBACK, messages=[{"role": "user", "content": "x"}]
    )
    assert from_fallback.parse().model == FALLBACK and fake_ollama.chat_requests(PRIMARY) == []
    (attempt,) = spans.attempts(from_fallback.headers["x-costline-task-id"])
    assert attempt.attributes[attr.ATTEMPT_TIER] == "fallback"
    asked = client.chat.completions.with_raw_response.create(
        model="claude", messages=[{"role": "user", "content": "x"}]
    )
    assert asked.parse().model == SONNET
    (attempt,) = spans.attempts(asked.headers["x-costline-task-id"])
    assert attempt.attributes[attr.ESCALATION_REASON] == "requested"
    listed = [m.id for m in client.models.list()]
    assert listed == ["auto", "claude", PRIMARY, FALLBACK, LAST]


def test_openai_errors_come_in_openais_shape(served, make_config):
    proxy = served
    client = openai_client(proxy)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found" and "use one of: auto, claude" in missing.value.message
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="auto", messages=[])


def test_the_quota_answers_429_with_retry_after(fake_ollama, fake_anthropic, make_config, tracer_provider):
    config = make_config(escalation={"max_calls_per_hour": 1})
    with Router(config, tracer_provider=tracer_provider) as router, ServedProxy(router, TOKEN) as proxy:
        client = openai_client(proxy)
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}])
    response = refused.value.response
    assert response.status_code == 429 and 3500 <= int(response.headers["retry-after"]) <= 3600
    assert refused.value.code == "quota_exhausted"
    assert "escalation quota reached (1/h)" in refused.value.message


def test_every_model_failing_is_a_502_naming_each_attempt(fake_ollama, make_config, tracer_provider):
    for model in (PRIMARY, FALLBACK, LAST):
        fake_ollama.script(model, OllamaError(500))
    config = make_config(escalation={"enabled": False})
    with (
        Router(config, tracer_provider=tracer_provider) as router,
        ServedProxy(router, TOKEN) as proxy,
        pytest.raises(openai.InternalServerError) as failed,
    ):
        openai_client(proxy).chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}])
    assert failed.value.status_code == 502
    assert f"{PRIMARY}: server_error" in failed.value.message and f"{LAST}: server_error" in failed.value.message


def test_ollama_client_chat_and_generate_stream_and_not(served, fake_ollama, spans):
    proxy = served
    fake_ollama.set_default(PRIMARY, OllamaReply(content="local answer", prompt_eval_count=12, eval_count=3))
    client = ollama_client(proxy, **{"X-Costline-Team": "docs", "X-Costline-Task-Type": "summarize"})
    reply = client.chat(model="auto", messages=[{"role": "user", "content": "hi"}], stream=False)
    assert reply.message.content == "local answer" and reply.model == PRIMARY and reply.done
    assert (reply.prompt_eval_count, reply.eval_count, reply.done_reason) == (12, 3, "stop")
    chunks = list(client.chat(model="auto", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(c.message.content for c in chunks) == "local answer" and chunks[-1].done
    generated = client.generate(model="auto", prompt="complete me", system="be brief")
    assert generated.response == "local answer" and generated.done_reason == "stop"
    streamed = list(client.generate(model="auto", prompt="complete me", stream=True))
    assert "".join(c.response for c in streamed) == "local answer" and streamed[-1].eval_count == 3
    assert [m.model for m in client.list().models] == ["auto", "claude", PRIMARY, FALLBACK, LAST]
    assert client.ps is not None  # the client itself is unchanged
    sent = fake_ollama.chat_requests(PRIMARY)[2]["messages"]
    assert sent == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "complete me"}]
    tasks = [s for s in spans.exporter.get_finished_spans() if s.name == "task summarize"]
    assert len(tasks) == 4 and all(t.attributes[attr.TEAM] == "docs" for t in tasks)


def test_ollama_client_errors(served):
    proxy = served
    client = ollama_client(proxy)
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="llama2", messages=[{"role": "user", "content": "x"}])
    assert missing.value.status_code == 404 and "use one of: auto, claude" in missing.value.error
    version = httpx.get(f"{proxy.url}/api/version", headers={"Authorization": f"Bearer {TOKEN}"})
    assert version.status_code == 200 and version.json()["version"]
    assert httpx.get(f"{proxy.url}/api/version").status_code == 401


def test_a_truncated_answer_is_reported_as_length(served, fake_anthropic):
    proxy = served
    fake_anthropic.script(SONNET, ClaudeReply(text="half", output_tokens=99_999))
    completion = openai_client(proxy).chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "x"}]
    )
    assert completion.choices[0].finish_reason == "length" and completion.choices[0].message.content == "half"


def test_a_client_that_disconnects_cancels_the_task_and_its_call_is_booked(served, fake_ollama, spans):
    proxy = served
    fake_ollama.script(PRIMARY, OllamaReply(delay_s=30))

    async def give_up() -> None:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            request = asyncio.create_task(
                client.post(
                    f"{proxy.url}/api/chat", json={"model": "auto", "messages": [{"role": "user", "content": "x"}]}
                )
            )
            while not fake_ollama.chat_requests(PRIMARY):
                await asyncio.sleep(0.01)
            request.cancel()  # closes the connection
            with pytest.raises(asyncio.CancelledError):
                await request

    asyncio.run(give_up())
    deadline = time.monotonic() + 30
    while not [s for s in spans.exporter.get_finished_spans() if s.name == "task general"]:
        assert time.monotonic() < deadline, "the cancelled task's span never ended"
        time.sleep(0.01)
    (task,) = [s for s in spans.exporter.get_finished_spans() if s.name == "task general"]
    assert task.attributes[attr.TASK_OUTCOME] == "cancelled"
    (attempt,) = spans.attempts(task.attributes[attr.TASK_ID])
    assert attempt.attributes[attr.ERROR_TYPE] == "cancelled"


def test_costline_proxy_refuses_to_serve_beyond_loopback_without_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv("COSTLINE_PROXY_TOKEN", raising=False)
    config = tmp_path / "costline.toml"
    config.write_text(f'[router]\nusage_db = "{tmp_path / "usage.sqlite"}"\n[proxy]\nhost = "0.0.0.0"\n')
    result = CliRunner().invoke(app, ["proxy", "-c", str(config)])
    assert result.exit_code == 2
    assert "refusing to serve on 0.0.0.0 without a token: set COSTLINE_PROXY_TOKEN" in " ".join(result.output.split())


def test_a_team_over_its_budget_gets_429_and_other_teams_go_on(fake_ollama, fake_anthropic, tmp_path, tracer_provider):
    fake_anthropic.set_default(SONNET, ClaudeReply(text="done", input_tokens=100, output_tokens=100))
    path = tmp_path / "costline.toml"
    path.write_text(
        f'[router]\nusage_db = "{tmp_path / "usage.sqlite"}"\nollama_host = "{fake_ollama.url}"\n'
        f'[escalation]\nbase_url = "{fake_anthropic.url}"\nmax_tokens = 400\n'
        '[budgets.teams."search"]\ndaily_usd = 0.007\n'
    )
    hi = [{"role": "user", "content": "x"}]
    with (
        Router(load_config(path, env={}), tracer_provider=tracer_provider) as router,
        ServedProxy(router, TOKEN) as proxy,
    ):
        search = openai_client(proxy, **{"X-Costline-Team": "search"})
        search.chat.completions.create(model="claude", messages=hi)  # $0.0018; its bound of $0.0063 fitted
        with pytest.raises(openai.RateLimitError) as refused:
            search.chat.completions.create(model="claude", messages=hi)
        assert openai_client(proxy, **{"X-Costline-Team": "ads"}).chat.completions.create(model="claude", messages=hi)
    assert refused.value.code == "budget_exhausted"
    assert "team search's daily budget of $0.0070 reached: $0.0018 spent" in refused.value.message
    assert int(refused.value.response.headers["retry-after"]) <= 86400


def test_costline_proxy_stopped_by_sigterm_delivers_the_spans_of_its_last_requests(
    tmp_path, fake_ollama, otlp_receiver, unused_port
):
    config = tmp_path / "costline.toml"
    config.write_text(
        f'[router]\nusage_db = "{tmp_path / "usage.sqlite"}"\nollama_host = "{fake_ollama.url}"\n'
        f'models = ["{PRIMARY}"]\n[telemetry]\notlp_endpoint = "{otlp_receiver.url}"\n'
        f'spool_dir = "{tmp_path / "spool"}"\n[proxy]\nport = {unused_port}\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "COSTLINE_PROXY_TOKEN"))}
    costline = str(Path(sys.executable).parent / "costline")
    process = subprocess.Popen([costline, "proxy", "--config", str(config)], env=env, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{unused_port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/api/version").raise_for_status()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None, "the proxy did not start"
                time.sleep(0.05)
        reply = httpx.post(
            f"{url}/api/chat", json={"model": "auto", "stream": False, "messages": [{"role": "user", "content": "x"}]}
        )
        assert reply.status_code == 200
        # at once: the spans are still in the batch processor, not yet in the spool
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr
    names = sorted(span.name for _, _, span in otlp_receiver.spans())
    assert names == [f"chat {PRIMARY}", "task general"]


def test_concurrent_requests_are_each_one_task_with_its_own_answer_and_spans(served, fake_ollama, spans):
    """More requests at once than one Ollama client pool takes (router/providers/ollama.py spreads them)."""
    proxy = served
    fake_ollama.set_default(PRIMARY, lambda body: OllamaReply(content=body["messages"][-1]["content"], delay_s=0.2))
    requests = 20

    async def ask_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{proxy.url}/v1/chat/completions",
                        json={
                            "model": "auto",
                            "stream": n % 2 == 0,
                            "messages": [{"role": "user", "content": f"q{n}"}],
                        },
                    )
                    for n in range(requests)
                )
            )

    replies = asyncio.run(ask_all())
    assert all(r.status_code == 200 for r in replies)
    assert [f"q{n}" in r.text for n, r in enumerate(replies)] == [True] * requests
    task_ids = {r.headers["x-costline-task-id"] for r in replies}
    assert len(task_ids) == requests
    for task_id in task_ids:
        assert spans.task(task_id).attributes[attr.TASK_OUTCOME] == "completed"
        assert [a.attributes[attr.REQUEST_MODEL] for a in spans.attempts(task_id)] == [PRIMARY]
    # the calls overlapped (several connections at once)
    assert len({r.client_port for r in fake_ollama.requests if r.path == "/api/chat"}) > 1
