"""Local models through the real ``ollama`` client, streaming so a mid-stream error is caught."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ollama

from costline.pricing import TokenUsage
from router.errors import ProviderFailure, classify_ollama
from router.providers import CallProgress, Endpoint, LazyClients, Reply

NS_PER_S = 1e9
# Concurrent calls per async client before another client is made. httpx's connection pool (httpcore 1.0) walks all
# its connections, probing the idle ones, on every request and every release, so its cost per call grows with the
# connections it holds; several small pools cost less than one large one.
CALLS_PER_ASYNC_CLIENT = 8
DONE_LENGTH = "length"  # Ollama's done_reason when the answer hit its length limit (num_predict or the context)


class OllamaProvider(LazyClients):
    name = "ollama"

    def __init__(self, host: str, timeout_s: float) -> None:
        self.host = host
        self.timeout_s = timeout_s
        self.endpoint = Endpoint.from_url(host)
        # Clients are made on first use. They have no timeout by default: a hung server would block forever.
        self._client: ollama.Client | None = None
        self._lock = threading.Lock()  # run() may be called from several threads
        self._async_clients: list[_AsyncClient] = []  # one event loop's, made as concurrency needs them

    def chat(self, model: str, messages: Sequence[Mapping[str, Any]], progress: CallProgress) -> Reply:
        with self._lock:
            if self._client is None:
                self._client = ollama.Client(host=self.host, timeout=self.timeout_s)
            client = self._client
        deadline = time.monotonic() + self.timeout_s
        try:
            collector = _StreamCollector(model, self.host, deadline, progress)
            for chunk in client.chat(model=model, messages=messages, stream=True):
                collector.add(chunk)
            return collector.reply()
        except Exception as exc:
            raise collector.failed(classify_ollama(exc, self.host)) from exc

    async def achat(self, model: str, messages: Sequence[Mapping[str, Any]], progress: CallProgress) -> Reply:
        client = self._least_busy_async_client()
        client.calls += 1
        deadline = time.monotonic() + self.timeout_s
        try:
            collector = _StreamCollector(model, self.host, deadline, progress)
            async for chunk in await client.ollama.chat(model=model, messages=messages, stream=True):
                collector.add(chunk)
            return collector.reply()
        except Exception as exc:
            raise collector.failed(classify_ollama(exc, self.host)) from exc
        finally:
            client.calls -= 1

    def _least_busy_async_client(self) -> _AsyncClient:
        client = min(self._async_clients, key=lambda c: c.calls, default=None)
        if client is None or client.calls >= CALLS_PER_ASYNC_CLIENT:
            client = _AsyncClient(ollama.AsyncClient(host=self.host, timeout=self.timeout_s))
            self._async_clients.append(client)
        return client

    async def aclose(self) -> None:
        clients, self._async_clients = self._async_clients, []
        for client in clients:
            await client.ollama.close()


class _AsyncClient:
    """An async client and the calls it has in flight (counted in its event loop's thread only)."""

    def __init__(self, client: ollama.AsyncClient) -> None:
        self.ollama = client
        self.calls = 0


class _StreamCollector:
    """Joins NDJSON chunks into one reply; the final ``done`` chunk carries usage and timings."""

    def __init__(self, model: str, host: str, deadline: float, progress: CallProgress) -> None:
        self.model, self.host, self.deadline, self.progress = model, host, deadline, progress
        self.started = time.monotonic()
        self.chunks = 0
        self.parts: list[str] = []
        self.final: ollama.ChatResponse | None = None

    def failed(self, failure: ProviderFailure) -> ProviderFailure:
        """Attach the compute time a failed call used, so a local compute rate prices it instead of leaving it
        unpriced: none when Ollama refused the request or was unreachable before answering; otherwise the model
        was busy until it failed, and the wall time is the best measure there is (an upper bound)."""
        if failure.reply is None and failure.compute_seconds is None:
            never_ran = self.chunks == 0 and (failure.status is not None or failure.error_type == "connection")
            failure.compute_seconds = 0.0 if never_ran else time.monotonic() - self.started
        return failure

    def add(self, chunk: ollama.ChatResponse) -> None:
        # The client's timeout bounds each read; this bounds the whole answer.
        if time.monotonic() > self.deadline:
            raise ProviderFailure("timeout", f"Ollama at {self.host} was still streaming after the timeout")
        self.chunks += 1
        self.progress.answering = True
        if chunk.message is not None and chunk.message.content:
            self.parts.append(chunk.message.content)
        if chunk.done:
            self.final = chunk
            self.progress.complete = True
            self.progress.usage = TokenUsage(
                input_tokens=chunk.prompt_eval_count or 0, output_tokens=chunk.eval_count or 0
            )

    def reply(self) -> Reply:
        if self.final is None:
            raise ProviderFailure("stream_error", f"Ollama ended the stream for {self.model} without a final chunk")
        text = "".join(self.parts)
        final = self.final
        usage = self.progress.usage or TokenUsage()
        compute_ns = (final.prompt_eval_duration or 0) + (final.eval_duration or 0)
        reply = Reply(
            text=text,
            response_model=final.model or self.model,
            response_id=None,
            finish_reasons=(final.done_reason,) if final.done_reason else (),
            usage=usage,
            compute_seconds=compute_ns / NS_PER_S,
        )
        if final.done_reason == DONE_LENGTH:
            raise ProviderFailure(
                "truncated", f"{self.model} stopped at its length limit (done_reason {DONE_LENGTH})", reply=reply
            )
        if not text.strip():
            raise ProviderFailure("empty_output", f"{self.model} returned an empty answer", reply=reply)
        return reply
