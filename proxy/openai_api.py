"""The OpenAI Chat Completions API in front of the router: ``POST /v1/chat/completions`` (``stream`` true or false;
with ``stream_options.include_usage`` the last chunk carries ``usage``) and ``GET /v1/models``, in OpenAI's shapes
(``chat.completion``, ``chat.completion.chunk`` server-sent events ending with ``data: [DONE]``, and errors as
``{"error": {"message", "type", "param", "code"}}``).

The chain answers whole, so a streamed answer arrives as a role chunk, one content chunk and the finish chunk.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.tasks import ProxyError, build_task, cost_headers, json_body, model_names, run_task, whole_stream
from router import Router

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error"}


def error_response(error: ProxyError) -> Response:
    kind = _ERROR_TYPES.get(error.status, "rate_limit_error" if error.status == 429 else "api_error")
    body = {"error": {"message": error.message, "type": kind, "param": None, "code": error.kind}}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


async def models(router: Router, request: Request) -> Response:
    created = int(time.time())
    data = [{"id": name, "object": "model", "created": created, "owned_by": "costline"} for name in model_names(router)]
    return JSONResponse({"object": "list", "data": data})


async def chat_completions(router: Router, request: Request) -> Response:
    body = await json_body(request)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ProxyError(400, "messages: give at least one message", kind="invalid_request")
    converted = [_message(m) for m in messages]
    task = build_task(router, request, model=body.get("model"), messages=converted, user=body.get("user"))
    answer = await run_task(router, request, task)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    usage = {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }
    finish = "length" if answer.truncated else "stop"
    headers = cost_headers(answer)
    text = answer.result.text or ""
    if not body.get("stream"):
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": answer.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "finish_reason": finish,
                        "logprobs": None,
                    }
                ],
                "usage": usage,
            },
            headers=headers,
        )
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        event = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": answer.model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()

    events = [
        chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
        chunk([{"index": 0, "delta": {"content": text}, "finish_reason": None}]),
        chunk([{"index": 0, "delta": {}, "finish_reason": finish}]),
    ]
    if include_usage:
        events.append(chunk([], usage=usage))
    events.append(b"data: [DONE]\n\n")
    return whole_stream(events, media_type="text/event-stream", headers=headers)


def _message(message: Any) -> dict[str, Any]:
    """An OpenAI message as the router's chat message: text parts joined, other parts refused."""
    if not isinstance(message, dict) or "role" not in message:
        raise ProxyError(400, "each message needs a role", kind="invalid_request")
    role = "system" if message["role"] == "developer" else message["role"]
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise ProxyError(400, "only text content parts are supported", kind="invalid_request")
            texts.append(str(part.get("text", "")))
        content = "".join(texts)
    if not isinstance(content, str):
        raise ProxyError(400, "each message needs a text content", kind="invalid_request")
    return {"role": role, "content": content}
