"""The simulated backends, driven by the real `ollama` and `anthropic` client libraries over HTTP, the way the router
calls them: Ollama chats streamed, Claude messages not."""

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


def chat(client: ollama.Client, model: str = QWEN, messages: list[dict] = HELLO) -> list[ollama.ChatResponse]:
    """A chat the way the router asks for one: streamed, every chunk read."""
    return list(client.chat(model=model, messages=messages, stream=True))


def text(parts: list[ollama.ChatResponse]) -> str:
    return "".join(part.message.content for part in parts)


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
    parts = chat(ollama_client)
    reply = parts[-1]
    assert text(parts) == "def f(): pass"
    assert reply.message.role == "assistant"
    assert (reply.model, reply.done, reply.done_reason) == (QWEN, True, "stop")
    assert (reply.prompt_eval_count, reply.eval_count) == (321, 77)
    assert (reply.prompt_eval_duration, reply.eval_duration) == (150_000_000, 1_250_000_000)
    assert reply.total_duration >= reply.load_duration + reply.prompt_eval_duration + reply.eval_duration
    assert fake_ollama.chat_requests(QWEN) == [{"model": QWEN, "messages": HELLO, "tools": [], "stream": True}]


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
        chat(ollama_client, model="mistral:7b")
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
            chat(ollama_client)
        assert (info.value.status_code, info.value.error) == (status, message)
    assert text(chat(ollama_client)) == "ok"  # script used up: default


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
        chat(client)


def test_ollama_disconnects_before_and_during_a_stream(fake_ollama, ollama_client):
    fake_ollama.script(QWEN, OllamaDisconnect(), OllamaDisconnect(after_chunks=1))
    with pytest.raises(httpx.RemoteProtocolError):
        chat(ollama_client)
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        for part in ollama_client.chat(model=QWEN, messages=HELLO, stream=True):
            received.append(part)
    assert len(received) == 1


def test_ollama_default_behaviour_can_depend_on_the_request(fake_ollama, ollama_client):
    fake_ollama.set_default(
        QWEN, lambda body: OllamaError(503) if "busy" in body["messages"][0]["content"] else OllamaReply("fine")
    )
    assert text(chat(ollama_client)) == "fine"
    with pytest.raises(ollama.ResponseError) as info:
        chat(ollama_client, messages=[{"role": "user", "content": "be busy"}])
    assert info.value.status_code == 503


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
        return text(chat(ollama.Client(host=fake_ollama.url, timeout=20)))

    with ThreadPoolExecutor(5) as pool:
        assert list(pool.map(ask, range(5))) == ["together"] * 5


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
