"""The demo's proxy part: a real `costline proxy` served in the demo's process, and two teams' tools that use it.

Team ``search`` speaks the OpenAI Chat Completions API and team ``support`` the Ollama API, with the real ``ollama``
client. The OpenAI side goes over httpx, in exactly the shape the ``openai`` SDK sends, because the SDK is only a
dev dependency and ``costline demo`` must run from a plain install; tests/test_proxy.py drives the proxy with the
SDK itself.

The proxy has its own router, as the ``costline proxy`` process would, sharing the demo's usage store (one quota, one
budget) and span exporter. That router keeps each task's result, so the demo accounts for the proxy's tasks exactly
like the ones it routes itself, and checks that each client saw the status the router's outcome calls for.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass

import httpx
import ollama
import uvicorn
from opentelemetry.sdk.trace import TracerProvider

from costline import spans as attr
from costline.config import Config
from costline.demo.workload import API_OLLAMA, API_OPENAI, DemoTask, task_number
from proxy import build_app
from proxy.tasks import MODEL_AUTO, MODEL_CLAUDE
from router import Router, Task, TaskResult

START_TIMEOUT_S = 30.0
# After Ctrl-C the proxy gives the requests in flight this long to finish; then uvicorn cancels them, and a
# cancelled task's attempts are booked as cancelled.
STOP_GRACE_S = 3
# A task may walk the whole chain with retries (timeout_s 2 per call, waits up to max_retry_wait_s): well under this.
CLIENT_TIMEOUT_S = 120.0


class ProxyCheckError(Exception):
    """What a client of the proxy saw disagrees with what its router did."""


class RecordingRouter(Router):
    """The proxy's router: it also keeps each finished task's result, by the demo task number in its prompt."""

    def __init__(self, config: Config, *, tracer_provider: TracerProvider) -> None:
        super().__init__(config, tracer_provider=tracer_provider)
        self._results: dict[int, TaskResult] = {}
        self._lock = threading.Lock()

    async def arun(self, task: Task) -> TaskResult:
        result = await super().arun(task)
        # Kept before the proxy answers, so it is here when the client has its answer.
        number = task_number(" ".join(str(m.get("content", "")) for m in task.conversation()))
        if number is not None:
            with self._lock:
                self._results[number] = result
        return result

    def result_of(self, number: int) -> TaskResult:
        with self._lock:
            result = self._results.pop(number, None)
        if result is None:
            raise ProxyCheckError(f"the proxy answered demo task #{number}, but its router has no result for it")
        return result


class DemoProxy:
    """``build_app`` — what ``costline proxy`` serves — on a free loopback port, in a thread of its own."""

    def __init__(self, router: RecordingRouter, token: str) -> None:
        self.router = router
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))  # handed to uvicorn as it is: no window for another process to take it
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(
            build_app(router, token=token),
            log_config=None,  # the demo's logging stays as it is
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=STOP_GRACE_S,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="demo-proxy", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        try:
            await self.server.serve(sockets=[self._sock])
        finally:
            await self.router.aclose()  # the async clients of this loop, before it ends

    def __enter__(self) -> DemoProxy:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ProxyCheckError(f"the proxy did not start on {self.url}")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_GRACE_S + 10)
        self._sock.close()


@dataclass(frozen=True)
class ProxyRequest:
    """One request a team's tool sent through the proxy, and the task the proxy's router made of it."""

    task: DemoTask
    status: int  # the HTTP status the client got
    result: TaskResult

    @property
    def team(self) -> str:
        assert self.task.team is not None
        return self.task.team.name


def expected_status(result: TaskResult) -> int:
    """The status docs/proxy.md promises for a task's outcome."""
    if result.ok or result.outcome == attr.OUTCOME_TRUNCATED:
        return 200
    if result.outcome in (attr.OUTCOME_QUOTA_EXHAUSTED, attr.OUTCOME_BUDGET_EXHAUSTED):
        return 429
    return 502


class TeamClients:
    """The two teams' tools: one OpenAI-API client for ``search``, ``ollama`` clients for ``support``."""

    def __init__(self, proxy: DemoProxy, token: str) -> None:
        self.proxy = proxy
        self._auth = {"Authorization": f"Bearer {token}"}
        self._openai = httpx.Client(base_url=f"{proxy.url}/v1", headers=self._auth, timeout=CLIENT_TIMEOUT_S)
        # The ollama client takes its headers once, when it is made, as a tool configured per task type would.
        self._ollama: dict[tuple[tuple[str, str], ...], ollama.Client] = {}
        self._lock = threading.Lock()
        self._in_flight = 0
        self._closing = False

    def __enter__(self) -> TeamClients:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the clients once no request is in flight (after Ctrl-C, the last request to end closes them).

        Closing a connection that another thread is reading would free its file descriptor for reuse while the read
        goes on, and that thread could then wait out its timeout on some other socket."""
        with self._lock:
            self._closing = True
            if self._in_flight:
                return
        self._close_now()

    def _close_now(self) -> None:
        self._openai.close()
        with self._lock:
            clients, self._ollama = list(self._ollama.values()), {}
        for client in clients:
            client.close()

    def send(self, task: DemoTask) -> ProxyRequest:
        """Send the task through the proxy as its team's tool does; the router's result for it, checked."""
        with self._lock:
            if self._closing:
                raise ProxyCheckError("the demo is stopping: no more requests through the proxy")
            self._in_flight += 1
        try:
            return self._send(task)
        finally:
            with self._lock:
                self._in_flight -= 1
                last = self._closing and not self._in_flight
            if last:
                self._close_now()

    def _send(self, task: DemoTask) -> ProxyRequest:
        team = task.team
        assert team is not None
        headers = {
            "X-Costline-Team": team.name,
            "X-Costline-Project": team.project,
            "X-Costline-Task-Type": task.kind.type,
        }
        if task.critical:
            headers["X-Costline-Critical"] = "true"
        model = MODEL_CLAUDE if task.kind.prefer_escalation else MODEL_AUTO
        messages = [{"role": "user", "content": task.prompt}]
        if team.api == API_OPENAI:
            status, task_id = self._openai_chat(model, messages, task.user, headers)
        elif team.api == API_OLLAMA:
            if task.user:
                headers["X-Costline-User"] = task.user
            status, task_id = self._ollama_chat(model, messages, headers), None
        else:
            raise ValueError(f"team {team.name}: unknown API {team.api!r}")
        result = self.proxy.router.result_of(task.number)
        if status != expected_status(result):
            raise ProxyCheckError(
                f"demo task #{task.number} through the proxy ({team.api} API): the client got HTTP {status}, "
                f"but the task's outcome is {result.outcome}"
            )
        if task_id is not None and task_id != result.task_id:
            raise ProxyCheckError(
                f"demo task #{task.number}: X-Costline-Task-Id {task_id} is not the routed task {result.task_id}"
            )
        return ProxyRequest(task, status, result)

    def _openai_chat(
        self, model: str, messages: list[dict[str, str]], user: str | None, headers: dict[str, str]
    ) -> tuple[int, str | None]:
        body: dict[str, object] = {"model": model, "messages": messages}
        if user:
            body["user"] = user  # OpenAI's own field for the end user: the proxy attributes the cost to it
        try:
            response = self._openai.post("/chat/completions", json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ProxyCheckError(f"the OpenAI API request to {self.proxy.url} failed: {exc}") from None
        if response.status_code == 200 and not response.json()["choices"][0]["message"]["content"]:
            raise ProxyCheckError(f"the proxy answered {model} with no content")
        return response.status_code, response.headers.get("x-costline-task-id")

    def _ollama_chat(self, model: str, messages: list[dict[str, str]], headers: dict[str, str]) -> int:
        key = tuple(sorted(headers.items()))
        with self._lock:
            client = self._ollama.get(key)
            if client is None:
                client = self._ollama[key] = ollama.Client(
                    host=self.proxy.url, headers={**self._auth, **headers}, timeout=CLIENT_TIMEOUT_S
                )
        try:
            # Streamed, as Ollama clients ask by default: the answer, then the final chunk with the counts.
            chunks = list(client.chat(model=model, messages=messages, stream=True))
        except ollama.ResponseError as exc:
            return exc.status_code
        except (httpx.HTTPError, ConnectionError) as exc:
            raise ProxyCheckError(f"the Ollama API request to {self.proxy.url} failed: {exc}") from None
        if not chunks or not chunks[-1].done:
            raise ProxyCheckError(f"the proxy's Ollama stream for {model} ended without its final chunk")
        return 200
