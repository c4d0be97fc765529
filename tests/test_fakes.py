"""The simulated backends, driven by the real `ollama` and `anthropic` client libraries over HTTP."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx
import httpx2
import ollama
import pytest

from costline.demo.fake_anthropic import ClaudeError, ClaudeHang, ClaudeReply, FakeAnthropic
from costline.demo.fake_ollama import (
    FakeOllama,
    OllamaDisconnect,
    OllamaError,
    OllamaHang,
    OllamaReply,
    OllamaStreamError,
)

QWEN = "qwen3:30b-a3b"
SONNET = "claude-sonnet-4-6"
KEY = "sk-ant-test-key"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def fake_ollama():
    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def ollama_client(fake_ollama):
    return ollama.Client(host=fake_ollama.url, timeout=5)


@pytest.fixture
def fake_claude():
    with FakeAnthropic(api_key=KEY) as fake:
        yield fake


def claude_client(fake: FakeAnthropic, **kwargs) -> anthropic.Anthropic:
    kwargs.setdefault("api_key", KEY)
    return anthropic.Anthropic(base_url=fake.url, max_retries=0, open_telemetry=False, **kwargs)


def ask_claude(client: anthropic.Anthropic, model: str = SONNET):
    return client.messages.create(model=model, max_tokens=512, messages=HELLO)


# --- Ollama ---------------------------------------------------------------------------------------------------


def test_ollama_chat_reports_usage_and_durations_in_nanoseconds(fake_ollama, ollama_client):
    fake_ollama.script(
        QWEN, OllamaReply(content="def f(): pass", prompt_eval_count=321, eval_count=77, eval_duration_s=1.25)
    )
    reply = ollama_client.chat(model=QWEN, messages=HELLO)
    assert reply.message.role == "assistant"
    assert reply.message.content == "def f(): pass"
    assert (reply.model, reply.done, reply.done_reason) == (QWEN, True, "stop")
    assert (reply.prompt_eval_count, reply.eval_count) == (321, 77)
    assert (reply.prompt_eval_duration, reply.eval_duration) == (150_000_000, 1_250_000_000)
    assert reply.total_duration >= reply.load_duration + reply.prompt_eval_duration + reply.eval_duration
    assert fake_ollama.chat_requests(QWEN) == [{"model": QWEN, "messages": HELLO, "tools": [], "stream": False}]


def test_ollama_streams_ndjson_chunks_then_a_done_chunk(fake_ollama, ollama_client):
    fake_ollama.script(QWEN, OllamaReply(content="one two three four", chunks=4, eval_count=9))
    parts = list(ollama_client.chat(model=QWEN, messages=HELLO, stream=True))
    assert len(parts) == 5
    assert "".join(p.message.content for p in parts) == "one two three four"
    assert [p.done for p in parts] == [False, False, False, False, True]
    assert (parts[-1].done_reason, parts[-1].eval_count, parts[-1].prompt_eval_count) == ("stop", 9, 120)
    assert parts[0].eval_count is None


def test_ollama_unknown_model_is_404_with_ollamas_message(ollama_client):
    with pytest.raises(ollama.ResponseError) as info:
        ollama_client.chat(model="mistral:7b", messages=HELLO)
    assert info.value.status_code == 404
    assert info.value.error == 'model "mistral:7b" not found, try pulling it first'


def test_ollama_scripted_404_and_503(fake_ollama, ollama_client):
    fake_ollama.script(QWEN, OllamaError(404), OllamaError(503), OllamaError(500, "CUDA error: out of memory"))
    expected = [
        (404, f'model "{QWEN}" not found, try pulling it first'),
        (503, "server busy, please try again.  maximum pending requests exceeded"),
        (500, "CUDA error: out of memory"),
    ]
    for status, message in expected:
        with pytest.raises(ollama.ResponseError) as info:
            ollama_client.chat(model=QWEN, messages=HELLO)
        assert (info.value.status_code, info.value.error) == (status, message)
    assert ollama_client.chat(model=QWEN, messages=HELLO).message.content == "ok"  # script used up: default


def test_ollama_error_line_mid_stream_raises(fake_ollama, ollama_client):
    fake_ollama.script(QWEN, OllamaStreamError(after_chunks=2))
    received = []
    with pytest.raises(ollama.ResponseError) as info:
        for part in ollama_client.chat(model=QWEN, messages=HELLO, stream=True):
            received.append(part.message.content)
    assert len(received) == 2
    assert info.value.error == "an error was encountered while running the model: unexpected EOF"


def test_ollama_hang_trips_the_client_timeout(fake_ollama):
    fake_ollama.script(QWEN, OllamaHang(seconds=30))
    client = ollama.Client(host=fake_ollama.url, timeout=0.3)
    with pytest.raises(httpx.ReadTimeout):
        client.chat(model=QWEN, messages=HELLO)


def test_ollama_disconnects_before_and_during_a_stream(fake_ollama, ollama_client):
    fake_ollama.script(QWEN, OllamaDisconnect(), OllamaDisconnect(after_chunks=1))
    with pytest.raises(httpx.RemoteProtocolError):
        ollama_client.chat(model=QWEN, messages=HELLO)
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        for part in ollama_client.chat(model=QWEN, messages=HELLO, stream=True):
            received.append(part)
    assert len(received) == 1


def test_ollama_default_behaviour_can_depend_on_the_request(fake_ollama, ollama_client):
    fake_ollama.set_default(
        QWEN, lambda body: OllamaError(503) if "busy" in body["messages"][0]["content"] else OllamaReply("fine")
    )
    assert ollama_client.chat(model=QWEN, messages=HELLO).message.content == "fine"
    with pytest.raises(ollama.ResponseError) as info:
        ollama_client.chat(model=QWEN, messages=[{"role": "user", "content": "be busy"}])
    assert info.value.status_code == 503


def test_ollama_tags_version_and_root(fake_ollama, ollama_client):
    listed = ollama_client.list()
    assert [m.model for m in listed.models] == ["qwen2.5-coder:14b", QWEN, "llama3.1:70b"]
    assert listed.models[2].details.family == "llama"
    assert httpx.get(f"{fake_ollama.url}/api/version").json() == {"version": "0.12.6"}
    root = httpx.get(fake_ollama.url)
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert httpx.head(fake_ollama.url).status_code == 200


def test_ollama_keeps_the_connection_alive(fake_ollama, ollama_client):
    for _ in range(3):
        ollama_client.chat(model=QWEN, messages=HELLO)
    ports = {r.client_port for r in fake_ollama.requests}
    assert len(fake_ollama.requests) == 3
    assert len(ports) == 1


def test_ollama_answers_requests_concurrently(fake_ollama):
    # Five requests must be inside the server at once for the barrier to open; a serial server would break it.
    barrier = threading.Barrier(5)

    def together(body: dict) -> OllamaReply | OllamaError:
        try:
            barrier.wait(timeout=10)
        except threading.BrokenBarrierError:
            return OllamaError(500, "requests were not served concurrently")
        return OllamaReply(content="together")

    fake_ollama.set_default(QWEN, together)

    def ask(_: int) -> str:
        return ollama.Client(host=fake_ollama.url, timeout=20).chat(model=QWEN, messages=HELLO).message.content

    with ThreadPoolExecutor(5) as pool:
        assert list(pool.map(ask, range(5))) == ["together"] * 5


def test_ollama_malformed_requests_get_400(fake_ollama):
    bad_json = httpx.post(f"{fake_ollama.url}/api/chat", content=b"{not json")
    assert bad_json.status_code == 400
    assert "error" in bad_json.json()
    no_model = httpx.post(f"{fake_ollama.url}/api/chat", json={"messages": HELLO})
    assert (no_model.status_code, no_model.json()) == (400, {"error": "model is required"})


# --- Anthropic ------------------------------------------------------------------------------------------------


def test_claude_message_shape_usage_and_request_id(fake_claude):
    fake_claude.script(SONNET, ClaudeReply(text="Paris.", input_tokens=1234, output_tokens=56))
    raw = claude_client(fake_claude).messages.with_raw_response.create(model=SONNET, max_tokens=64, messages=HELLO)
    message = raw.parse()
    assert raw.headers["request-id"].startswith("req_")
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", SONNET)
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    assert message.content[0].text == "Paris."
    assert (message.usage.input_tokens, message.usage.output_tokens) == (1234, 56)
    assert (message.usage.cache_read_input_tokens, message.usage.cache_creation_input_tokens) == (0, 0)
    assert fake_claude.message_requests() == [{"model": SONNET, "max_tokens": 64, "messages": HELLO}]
    sent = fake_claude.requests[0].headers
    assert KEY in (sent.get("x-api-key"), sent.get("authorization", "").removeprefix("Bearer "))
    assert "anthropic-version" in sent


def test_claude_cache_usage_fields(fake_claude):
    fake_claude.script(
        SONNET, ClaudeReply(input_tokens=20, cache_read_input_tokens=5000, cache_creation_input_tokens=700)
    )
    usage = ask_claude(claude_client(fake_claude)).usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (20, 5000, 700)


def test_claude_response_model_can_differ_from_the_request(fake_claude):
    fake_claude.script(SONNET, ClaudeReply(model="claude-sonnet-4-6-20260101"))
    assert ask_claude(claude_client(fake_claude)).model == "claude-sonnet-4-6-20260101"


def test_claude_429_carries_retry_after_on_the_exception_response(fake_claude):
    fake_claude.script(SONNET, ClaudeError(429, retry_after=7))
    with pytest.raises(anthropic.RateLimitError) as info:
        ask_claude(claude_client(fake_claude))
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.request_id.startswith("req_")
    assert info.value.body["error"]["type"] == "rate_limit_error"


def test_claude_529_overloaded_and_500(fake_claude):
    fake_claude.script(SONNET, ClaudeError(529), ClaudeError(500))
    client = claude_client(fake_claude)
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        ask_claude(client)
    assert overloaded.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": overloaded.value.request_id,
    }
    with pytest.raises(anthropic.InternalServerError) as internal:
        ask_claude(client)
    assert internal.value.status_code == 500
    assert internal.value.body["error"]["type"] == "api_error"


def test_claude_404_names_the_model(fake_claude):
    fake_claude.script("claude-2.0", ClaudeError(404))
    with pytest.raises(anthropic.NotFoundError) as info:
        ask_claude(claude_client(fake_claude), model="claude-2.0")
    assert info.value.body["error"] == {"type": "not_found_error", "message": "model: claude-2.0"}


def test_claude_bad_api_key_is_401(fake_claude):
    with pytest.raises(anthropic.AuthenticationError) as info:
        ask_claude(claude_client(fake_claude, api_key="sk-ant-wrong"))
    assert info.value.body["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
    sent = fake_claude.requests[0].headers
    assert "sk-ant-wrong" in (sent.get("x-api-key"), sent.get("authorization", "").removeprefix("Bearer "))


def test_claude_x_api_key_header_is_checked(fake_claude):
    url = f"{fake_claude.url}/v1/messages"
    body = {"model": SONNET, "max_tokens": 5, "messages": HELLO}
    ok = httpx.post(url, json=body, headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"})
    assert (ok.status_code, ok.json()["content"]) == (200, [{"type": "text", "text": "ok"}])
    bad = httpx.post(url, json=body, headers={"x-api-key": "sk-ant-other", "anthropic-version": "2023-06-01"})
    assert (bad.status_code, bad.json()["error"]["type"]) == (401, "authentication_error")


def test_claude_bearer_token_is_checked_too(fake_claude):
    ok = anthropic.Anthropic(base_url=fake_claude.url, auth_token=KEY, max_retries=0, open_telemetry=False)
    assert ask_claude(ok).content[0].text == "ok"
    assert fake_claude.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    bad = anthropic.Anthropic(base_url=fake_claude.url, auth_token="nope", max_retries=0, open_telemetry=False)
    with pytest.raises(anthropic.AuthenticationError):
        ask_claude(bad)


def test_claude_missing_key_and_version_and_bad_bodies(fake_claude):
    url = f"{fake_claude.url}/v1/messages"
    no_key = httpx.post(url, json={}, headers={"anthropic-version": "2023-06-01"})
    assert (no_key.status_code, no_key.json()["error"]["message"]) == (401, "x-api-key header is required")
    no_version = httpx.post(url, json={}, headers={"x-api-key": KEY})
    assert (no_version.status_code, no_version.json()["error"]["message"]) == (
        400,
        "anthropic-version: header is required",
    )
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    no_tokens = httpx.post(url, json={"model": SONNET, "messages": HELLO}, headers=headers)
    assert no_tokens.status_code == 400
    assert no_tokens.json()["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}
    assert no_tokens.headers["request-id"] == no_tokens.json()["request_id"]
    with pytest.raises(anthropic.BadRequestError) as info:
        claude_client(fake_claude).messages.create(model=SONNET, max_tokens=10, messages=[])
    assert info.value.body["error"]["message"] == "messages: at least one message is required"


def test_claude_streaming_events_and_final_usage(fake_claude):
    fake_claude.script(SONNET, ClaudeReply(text="streamed answer here", input_tokens=90, output_tokens=33))
    client = claude_client(fake_claude)
    with client.messages.stream(model=SONNET, max_tokens=100, messages=HELLO) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == "streamed answer here"
    assert final.content[0].text == "streamed answer here"
    assert (final.usage.input_tokens, final.usage.output_tokens, final.stop_reason) == (90, 33, "end_turn")

    fake_claude.script(SONNET, ClaudeReply(text="x"))
    events = [e.type for e in client.messages.create(model=SONNET, max_tokens=5, messages=HELLO, stream=True)]
    assert events == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_claude_hang_trips_the_client_timeout(fake_claude):
    fake_claude.script(SONNET, ClaudeHang(seconds=30))
    with pytest.raises(anthropic.APITimeoutError):
        ask_claude(claude_client(fake_claude, timeout=0.3))


def test_claude_scripts_are_per_model_and_fifo(fake_claude):
    fake_claude.script(SONNET, ClaudeReply(text="first"), ClaudeReply(text="second"))
    fake_claude.set_default("claude-haiku-4-5", ClaudeReply(text="haiku"))
    client = claude_client(fake_claude)
    assert ask_claude(client, "claude-haiku-4-5").content[0].text == "haiku"
    assert [ask_claude(client).content[0].text for _ in range(3)] == ["first", "second", "ok"]


def test_stop_releases_a_hanging_request_and_closes_the_port():
    fake = FakeAnthropic(api_key=KEY).start()
    fake.script(SONNET, ClaudeHang(seconds=60))
    url = fake.url
    outcome: list[BaseException] = []

    def hang() -> None:
        try:
            ask_claude(claude_client(fake, timeout=30))
        except anthropic.APIConnectionError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=hang)
    caller.start()
    while not fake.requests:
        threading.Event().wait(0.01)
    fake.stop()
    caller.join(timeout=10)
    assert not caller.is_alive()
    assert len(outcome) == 1
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(url)
