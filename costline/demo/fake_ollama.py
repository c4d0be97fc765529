"""A SIMULATED Ollama server that speaks Ollama's real HTTP API, for the demo and the tests.

It answers ``POST /api/chat`` (``stream`` true: NDJSON chunks over chunked transfer encoding, ending with a
``done: true`` chunk; ``stream`` false: one JSON object), ``GET /api/tags``, ``GET /api/version`` and
``GET``/``HEAD /`` ("Ollama is running"), with Ollama's field names, nanosecond durations and error bodies
(``{"error": message}``). What each chat request gets is scripted per model::

    with FakeOllama() as ollama:
        ollama.script("qwen3:30b-a3b", OllamaError(503), OllamaReply(content="hi", eval_count=12))
        ollama.set_default("llama3.1:70b", lambda body: OllamaHang(5))
        client = ollama_lib.Client(host=ollama.url)

A model outside ``models`` answers 404 ``model "x" not found, try pulling it first``, exactly like Ollama.
``OllamaHang`` sends nothing for ``seconds`` and then closes the connection (a client timeout fires first).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from http import HTTPStatus
from typing import Any

from costline.demo._fake_http import BehaviourScripts, Exchange, FakeHTTPServer, RecordedRequest

__all__ = [
    "FakeOllama",
    "OllamaBehaviour",
    "OllamaDisconnect",
    "OllamaError",
    "OllamaHang",
    "OllamaReply",
    "OllamaStreamError",
    "RecordedRequest",
]

OLLAMA_VERSION = "0.12.6"  # what GET /api/version reports
_LOAD_DURATION_NS = 18_000_000


@dataclass(frozen=True)
class OllamaReply:
    """A successful /api/chat answer."""

    content: str = "ok"
    prompt_eval_count: int = 120  # input tokens
    eval_count: int = 40  # output tokens
    prompt_eval_duration_s: float = 0.15  # reported in ns on the wire
    eval_duration_s: float = 0.8
    delay_s: float = 0.0  # real wall delay before answering
    chunks: int = 4  # NDJSON content chunks when streaming
    # "stop", or "length" when the answer hit num_predict or the context size (Ollama's api.md, "done_reason")
    done_reason: str = "stop"


@dataclass(frozen=True)
class OllamaError:
    """An HTTP error status with Ollama's JSON body ``{"error": message}``."""

    status: int  # 404 model not found, 503 busy, 500, 400 ...
    message: str | None = None  # default: Ollama's message for that status


@dataclass(frozen=True)
class OllamaStreamError:
    """Status 200, ``after_chunks`` content chunks, then an ``{"error": ...}`` line (when not streaming: a 500)."""

    after_chunks: int = 2
    message: str = "an error was encountered while running the model: unexpected EOF"


@dataclass(frozen=True)
class OllamaHang:
    """Accept the request, then send nothing for ``seconds`` and close the connection."""

    seconds: float = 30.0


@dataclass(frozen=True)
class OllamaDisconnect:
    """Close the connection without a response, or after ``after_chunks`` chunks when streaming."""

    after_chunks: int = 0


OllamaBehaviour = OllamaReply | OllamaError | OllamaStreamError | OllamaHang | OllamaDisconnect

_DEFAULT_MESSAGES = {
    400: "invalid request",
    500: "llama runner process has terminated: signal: killed",
    503: "server busy, please try again.  maximum pending requests exceeded",
}


def _model_not_found(model: str) -> str:
    return f'model "{model}" not found, try pulling it first'


def _canonical(model: str) -> str:
    return model if ":" in model else f"{model}:latest"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _split(text: str, parts: int) -> list[str]:
    parts = max(1, parts)
    size = -(-len(text) // parts) if text else 0
    pieces = [text[i * size : (i + 1) * size] for i in range(parts)] if size else [""] * parts
    return pieces


def _partial(after_chunks: int) -> OllamaReply:
    """The answer a stream that breaks off was producing."""
    words = ["The", " model", " was", " still", " writing", " this", " answer."]
    chunks = max(after_chunks + 1, len(words))
    return OllamaReply(content="".join(words), chunks=chunks)


class FakeOllama(FakeHTTPServer):
    def __init__(
        self,
        models: Iterable[str] = ("qwen2.5-coder:14b", "qwen3:30b-a3b", "llama3.1:70b"),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        self.models = tuple(models)
        self._known = {_canonical(m) for m in self.models}
        self._scripts: BehaviourScripts[OllamaBehaviour] = BehaviourScripts(OllamaReply)

    def script(self, model: str, *behaviours: OllamaBehaviour) -> None:
        """Queue behaviours for the next /api/chat requests naming ``model`` (one each, first in first out)."""
        self._scripts.script(model, behaviours)

    def set_default(self, model: str, behaviour: OllamaBehaviour | Callable[[dict], OllamaBehaviour]) -> None:
        """What ``model`` answers once its script is used up; a callable receives the request body."""
        self._scripts.set_default(model, behaviour)

    def chat_requests(self, model: str | None = None) -> list[dict]:
        return [
            r.body
            for r in list(self.requests)
            if r.path == "/api/chat" and r.body is not None and (model is None or r.body.get("model") == model)
        ]

    # --- HTTP ------------------------------------------------------------------------------------------------

    def handle(
        self, exchange: Exchange, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None
    ) -> None:
        if path == "/" and method in ("GET", "HEAD"):
            exchange.send_bytes(200, b"Ollama is running", "text/plain; charset=utf-8")
        elif path == "/api/version" and method == "GET":
            exchange.send_json(200, {"version": OLLAMA_VERSION})
        elif path == "/api/tags" and method == "GET":
            exchange.send_json(200, {"models": [self._tag(m) for m in self.models]})
        elif path == "/api/chat" and method == "POST":
            self._chat(exchange, body)
        elif path in ("/api/chat", "/api/tags", "/api/version"):
            exchange.send_bytes(405, b"405 method not allowed", "text/plain")
        else:
            exchange.send_bytes(404, b"404 page not found", "text/plain")

    def _tag(self, model: str) -> dict[str, Any]:
        family = re.match(r"[a-z]*", model.split(":", 1)[0]).group(0) or model
        size_tag = model.split(":", 1)[1] if ":" in model else "latest"
        return {
            "name": model,
            "model": model,
            "modified_at": "2026-01-15T09:30:00.000000000Z",
            "size": 9_000_000_000,
            "digest": sha256(model.encode()).hexdigest(),
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": family,
                "families": [family],
                "parameter_size": size_tag.split("-", 1)[0].upper(),
                "quantization_level": "Q4_K_M",
            },
        }

    def _chat(self, exchange: Exchange, body: dict[str, Any] | None) -> None:
        if exchange.body_error is not None or body is None:
            exchange.send_json(400, {"error": exchange.body_error or "missing request body"})
            return
        model = body.get("model")
        if not isinstance(model, str) or not model:
            exchange.send_json(400, {"error": "model is required"})
            return
        messages = body.get("messages", [])
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            exchange.send_json(400, {"error": "invalid message format"})
            return
        if _canonical(model) not in self._known:
            exchange.send_json(404, {"error": _model_not_found(model)})
            return
        stream = body.get("stream", True) is not False  # Ollama streams unless told not to
        behaviour = self._scripts.next_for(model, body)
        match behaviour:
            case OllamaError(status=status, message=message):
                default = _model_not_found(model) if status == 404 else _DEFAULT_MESSAGES.get(status)
                text = message or default or HTTPStatus(status).phrase.lower()
                exchange.send_json(status, {"error": text})
            case OllamaHang(seconds=seconds):
                exchange.pause(seconds)
                exchange.drop_connection()
            case OllamaDisconnect(after_chunks=after) if not stream or after == 0:
                exchange.drop_connection()
            case OllamaDisconnect(after_chunks=after):
                self._stream(exchange, model, _partial(after), stop_after=after, error=None)
            case OllamaStreamError(after_chunks=after, message=message) if stream:
                self._stream(exchange, model, _partial(after), stop_after=after, error=message)
            case OllamaStreamError(message=message):
                exchange.send_json(500, {"error": message})
            case OllamaReply() if stream:
                self._stream(exchange, model, behaviour, stop_after=None, error=None)
            case OllamaReply():
                if exchange.pause(behaviour.delay_s):
                    exchange.send_json(200, self._final(model, behaviour, behaviour.content))
                else:
                    exchange.drop_connection()
            case _:
                raise TypeError(f"not an Ollama behaviour: {behaviour!r}")

    def _final(self, model: str, reply: OllamaReply, content: str) -> dict[str, Any]:
        prompt_ns, eval_ns = _ns(reply.prompt_eval_duration_s), _ns(reply.eval_duration_s)
        return {
            "model": model,
            "created_at": _now(),
            "message": {"role": "assistant", "content": content},
            "done_reason": reply.done_reason,
            "done": True,
            "total_duration": _LOAD_DURATION_NS + prompt_ns + eval_ns + 2_500_000,
            "load_duration": _LOAD_DURATION_NS,
            "prompt_eval_count": reply.prompt_eval_count,
            "prompt_eval_duration": prompt_ns,
            "eval_count": reply.eval_count,
            "eval_duration": eval_ns,
        }

    def _stream(
        self, exchange: Exchange, model: str, reply: OllamaReply, *, stop_after: int | None, error: str | None
    ) -> None:
        pieces = _split(reply.content, reply.chunks)
        pause = reply.delay_s / len(pieces)
        if not exchange.pause(pause):
            exchange.drop_connection()
            return
        exchange.start_chunked(200, "application/x-ndjson")
        for sent, piece in enumerate(pieces):
            if sent == stop_after:
                if error is None:
                    exchange.drop_connection()
                    return
                exchange.write_chunk(json.dumps({"error": error}).encode() + b"\n")
                exchange.end_chunks()
                return
            if sent and not exchange.pause(pause):
                exchange.drop_connection()
                return
            chunk = {
                "model": model,
                "created_at": _now(),
                "message": {"role": "assistant", "content": piece},
                "done": False,
            }
            exchange.write_chunk(json.dumps(chunk).encode() + b"\n")
        exchange.write_chunk(json.dumps(self._final(model, reply, "")).encode() + b"\n")
        exchange.end_chunks()
