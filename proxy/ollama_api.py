"""Ollama's HTTP API in front of the router: ``POST /api/chat``, ``POST /api/generate``, ``GET /api/tags``,
``GET /api/version``, with Ollama's field names (docs/api.md of the Ollama project): NDJSON streams by default, one
JSON object with ``"stream": false``, a final object with ``done``, ``done_reason`` and nanosecond durations, and
errors as ``{"error": message}``.

The chain answers whole (a local model may fail mid-answer and the next one start over), so a streamed answer arrives
as one content chunk followed by the final chunk.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.tasks import Answer, ProxyError, build_task, cost_headers, json_body, model_names, run_task, whole_stream
from router import Router

OLLAMA_API_VERSION = "0.12.6"  # the Ollama release whose API this follows
NDJSON = "application/x-ndjson"


def error_response(error: ProxyError) -> Response:
    return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)


async def chat(router: Router, request: Request) -> Response:
    body = await json_body(request)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ProxyError(400, "messages: give at least one message", kind="invalid_request")
    return await _answer(router, request, body, messages, as_chat=True)


async def generate(router: Router, request: Request) -> Response:
    body = await json_body(request)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ProxyError(400, "prompt: give the text to complete", kind="invalid_request")
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("system"), str) and body["system"]:
        messages.append({"role": "system", "content": body["system"]})
    messages.append({"role": "user", "content": prompt})
    return await _answer(router, request, body, messages, as_chat=False)


async def tags(router: Router, request: Request) -> Response:
    now = _timestamp()
    models = [
        {
            "name": name,
            "model": name,
            "modified_at": now,
            "size": 0,
            "digest": "",
            "details": {"format": "", "family": "costline", "parameter_size": "", "quantization_level": ""},
        }
        for name in model_names(router)
    ]
    return JSONResponse({"models": models})


async def version(router: Router, request: Request) -> Response:
    return JSONResponse({"version": OLLAMA_API_VERSION})


async def _answer(
    router: Router, request: Request, body: dict[str, Any], messages: list[dict[str, Any]], *, as_chat: bool
) -> Response:
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ProxyError(400, "each message needs a role and a content", kind="invalid_request")
    started = time.monotonic_ns()
    task = build_task(router, request, model=body.get("model"), messages=messages)
    answer = await run_task(router, request, task)
    final = _final(answer, time.monotonic_ns() - started, as_chat=as_chat)
    headers = cost_headers(answer)
    if body.get("stream") is False:
        return JSONResponse({**final, **_content(answer.result.text or "", as_chat)}, headers=headers)

    first = {"model": answer.model, "created_at": _timestamp(), **_content(answer.result.text or "", as_chat)}
    lines = [_line({**first, "done": False}), _line({**final, "created_at": _timestamp(), **_content("", as_chat)})]
    return whole_stream(lines, media_type=NDJSON, headers=headers)


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _content(text: str, as_chat: bool) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": text}} if as_chat else {"response": text}


def _final(answer: Answer, total_ns: int, *, as_chat: bool) -> dict[str, Any]:
    last = answer.result.attempts[-1] if answer.result.attempts else None
    eval_ns = round((last.compute_seconds or 0.0) * 1e9) if last else 0
    return {
        "model": answer.model,
        "created_at": _timestamp(),
        "done": True,
        "done_reason": "length" if answer.truncated else "stop",
        "total_duration": total_ns,
        "load_duration": 0,
        "prompt_eval_count": answer.input_tokens,
        "prompt_eval_duration": 0,
        "eval_count": answer.output_tokens,
        "eval_duration": eval_ns,
    }


def _timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
