"""Spans leave the router over real OTLP/HTTP (protobuf), batched and flushed on close."""

from __future__ import annotations

from costline import spans as attr
from costline.demo.fake_ollama import OllamaError
from router import Router, Task


def test_spans_reach_an_otlp_http_endpoint_on_close(
    fake_ollama, fake_anthropic, make_config, otlp_receiver, monkeypatch
):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)
    fake_ollama.script("qwen2.5-coder:14b", OllamaError(404))
    fake_ollama.script("qwen3:30b-a3b", OllamaError(503))
    config = make_config(telemetry={"otlp_endpoint": otlp_receiver.url, "service_name": "my-router"})
    with Router(config) as router:
        result = router.run(Task("x", type="summarize"))
    assert result.ok

    received = otlp_receiver.spans()
    assert otlp_receiver.headers[0]["content-type"] == "application/x-protobuf"
    assert {resource["service.name"] for resource, _, _ in received} == {"my-router"}
    by_name = {span.name: (attrs, span) for _, attrs, span in received}
    assert set(by_name) == {"task summarize", "chat qwen2.5-coder:14b", "chat qwen3:30b-a3b", "chat claude-sonnet-4-6"}
    task_attrs, task = by_name["task summarize"]
    assert task_attrs[attr.TASK_OUTCOME] == "completed" and task_attrs[attr.TASK_ATTEMPTS] == 3
    assert task_attrs[attr.TASK_ESCALATED] is True
    claude_attrs, claude = by_name["chat claude-sonnet-4-6"]
    assert claude.parent_span_id == task.span_id and claude.trace_id == task.trace_id
    assert claude_attrs[attr.ESCALATION_REASON] == "threshold"
    assert claude_attrs[attr.USAGE_INPUT_TOKENS] == 800 and claude_attrs[attr.USAGE_OUTPUT_TOKENS] == 300
    assert by_name["chat qwen3:30b-a3b"][0][attr.ERROR_TYPE] == "overloaded"


def test_standard_otel_variables_override_the_config(fake_ollama, make_config, otlp_receiver, monkeypatch, unused_port):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", otlp_receiver.url + "/v1/traces")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    config = make_config(telemetry={"otlp_endpoint": f"http://127.0.0.1:{unused_port}"})
    with Router(config) as router:
        assert router.run(Task("x")).ok
    received = otlp_receiver.spans()
    assert len(received) == 2 and {resource["service.name"] for resource, _, _ in received} == {"from-env"}
