"""The API key appears in no span, log record or file the router writes (scenario 9 of issue 2)."""

from __future__ import annotations

import logging

from conftest import TEST_API_KEY

from costline.demo.fake_anthropic import ClaudeError, ClaudeReply
from costline.demo.fake_ollama import OllamaError
from router import Router, Task

WRONG_KEY = "sk-ant-wrong-key-do-not-leak-777"


def test_api_key_never_reaches_spans_logs_or_files(
    fake_ollama, fake_anthropic, make_config, tracer_provider, span_exporter, caplog, tmp_path, monkeypatch
):
    fake_ollama.script("qwen2.5-coder:14b", OllamaError(404))
    fake_ollama.script("qwen3:30b-a3b", OllamaError(500))
    fake_anthropic.script("claude-sonnet-4-6", ClaudeError(429, retry_after=0), ClaudeReply(text="fine"))
    # Opting in to content capture must not change anything about secrets.
    config = make_config(telemetry={"capture_content": True})
    results = []
    with caplog.at_level(logging.DEBUG), Router(config, tracer_provider=tracer_provider) as router:
        results.append(router.run(Task("escalate please", system="sys")))
        monkeypatch.setenv("ANTHROPIC_API_KEY", WRONG_KEY)
        results.append(router.run(Task("with a wrong key", prefer_escalation=True)))

    assert results[0].ok and results[1].attempts[0].error_type == "authentication"
    assert len(fake_anthropic.message_requests()) == 3  # the key really was sent, and used
    secrets = (TEST_API_KEY, WRONG_KEY)

    spans = span_exporter.get_finished_spans()
    assert len(spans) == 2 + 5
    for span in spans:
        texts = [span.name, span.status.description or "", str(dict(span.attributes)), str(span.resource.attributes)]
        texts += [str(event.attributes) for event in span.events]
        assert not any(secret in text for secret in secrets for text in texts), span.name

    assert caplog.records, "the router and its clients log at DEBUG"
    for record in caplog.records:
        text = f"{record.getMessage()} {record.args!r} {record.exc_text or ''}"
        assert not any(secret in text for secret in secrets), record.name

    for result in results:
        assert not any(secret in str(result) for secret in secrets)

    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.name == "usage.sqlite" for path in written)
    for path in written:
        data = path.read_bytes()
        assert not any(secret.encode() in data for secret in secrets), path
