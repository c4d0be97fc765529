"""Proxy overhead: the same tasks through `costline proxy` (OpenAI API, over HTTP) and through the router directly.

Three processes, so that none measures against another's work: the backend (the simulated Ollama of
``costline/demo/fake_ollama.py``, answering every request after ``--latency-ms``, default 10 ms, and an OTLP/HTTP sink
that acknowledges the spans, so they take the router's real delivery path and the spool stays empty), `costline proxy`
as users run it, and this process, which sends the requests and runs the direct router. Reported:

- p50 latency added per request at concurrency 1: proxy minus direct ``Router.arun`` (the sides alternate in blocks
  of 10 requests), beside the p50 of a request that runs no task (``GET /v1/models``): the HTTP round trip, client
  side included, and the p50 added with a minimal HTTP client (asyncio streams) instead of httpx;
- streaming: p50 time to the first chunk through the proxy, and what it adds to the direct answer time;
- throughput at ``--streams`` (default 64) concurrent streaming requests, each stream its own client and connection
  sending ``--stream-requests`` requests back to back, beside the backend's own rate with the same streams straight
  to the simulated Ollama (the ceiling the proxy works under) and this process's CPU share (< 100 %: the load
  generator is not what limits the rate);
- the proxy process's CPU per request (user + system, all its threads) at concurrency 1 and under the streams, and its
  peak RSS (VmHWM).

    python bench/proxy_overhead.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from costline.config import load_config
from router import Router, Task

MODEL = "qwen2.5-coder:14b"
TARGET_ADDED_MS = 2.0
TARGET_RSS_MB = 300
BODY = {"model": "auto", "messages": [{"role": "user", "content": "Summarise: the numbers were flat."}]}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BLOCK = 10  # requests a side before the next side's turn


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _write_config(directory: Path, ollama_url: str, otlp_url: str, port: int) -> Path:
    path = directory / "costline.toml"
    path.write_text(
        f'[router]\nollama_host = "{ollama_url}"\nmodels = ["{MODEL}"]\nusage_db = "{directory / "usage.sqlite"}"\n'
        f'[telemetry]\notlp_endpoint = "{otlp_url}"\nspool_dir = "{directory / "spool"}"\n'
        f"spool_max_mb = 64\n[proxy]\nport = {port}\n",
        encoding="utf-8",
    )
    return path


def serve_backend(latency_s: float) -> None:
    """The backend process: the simulated Ollama and an OTLP sink; prints their URLs, then the spans it received."""
    from router_overhead import SpanCount, otlp_sink

    from costline.demo.fake_ollama import FakeOllama, OllamaReply

    received = SpanCount()
    with FakeOllama(models=(MODEL,)) as fake, otlp_sink(received) as sink:
        fake.set_default(MODEL, OllamaReply(content="Flat numbers.", delay_s=latency_s, chunks=4))
        fake.requests = _Discard()  # the fake records every request; keep memory flat
        print(json.dumps({"ollama": fake.url, "otlp": sink}), flush=True)
        sys.stdin.read()  # until the benchmark closes it
        print(json.dumps({"spans": received.spans}), flush=True)


class _Discard(list):
    def append(self, item: object) -> None:
        pass


class _MinimalClient:
    """HTTP/1.1 on one kept-alive connection with nothing but asyncio streams: what the proxy adds, without what an
    HTTP client library spends building the request and parsing the answer (the answers it reads have a
    Content-Length, which the proxy always sends)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: dict) -> bytes:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        payload = json.dumps(body).encode()
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        answer = await reader.readexactly(length)
        if status != 200:
            raise RuntimeError(f"{status}: {answer[:200]!r}")
        return answer

    async def aclose(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            await self.streams[1].wait_closed()


async def _timed(call: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await call()
    return (time.perf_counter() - start) * 1000


async def _streams(url: str, body: dict, streams: int, per_stream: int) -> tuple[float, float]:
    """``streams`` clients, one connection each, each sending ``per_stream`` streaming requests back to back;
    returns (requests/s, this process's CPU seconds per wall second).

    One client per stream, as separate users would be: httpx's pool walks all its connections for every request
    (httpcore 1.0), and one client holding 64 connections spends more CPU on that than on the requests."""
    clients = [httpx.AsyncClient(timeout=60) for _ in range(streams)]

    async def one(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", url, json=body) as response:
            response.raise_for_status()
            async for _ in response.aiter_bytes():
                pass

    async def stream(client: httpx.AsyncClient) -> None:
        for _ in range(per_stream):
            await one(client)

    try:
        await asyncio.gather(*(one(c) for c in clients))  # connect every stream before the clock starts
        cpu0, start = time.process_time(), time.perf_counter()
        await asyncio.gather(*(stream(c) for c in clients))
        elapsed = time.perf_counter() - start
        return streams * per_stream / elapsed, (time.process_time() - cpu0) / elapsed
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


async def measure(
    latency_s: float, requests: int, rounds: int, streams: int, per_stream: int, directory: Path
) -> dict[str, float]:
    backend = subprocess.Popen(
        [sys.executable, __file__, "--backend", "--latency-ms", str(latency_s * 1000)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    proxy: subprocess.Popen[bytes] | None = None
    try:
        assert backend.stdout is not None
        urls = json.loads(backend.stdout.readline())
        port = _free_port()
        config_path = _write_config(directory, urls["ollama"], urls["otlp"], port)
        proxy_log = (directory / "proxy.log").open("wb")
        proxy = subprocess.Popen(
            [str(Path(sys.executable).parent / "costline"), "proxy", "--config", str(config_path)],
            stdout=subprocess.DEVNULL,
            stderr=proxy_log,
            env={k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "COSTLINE_PROXY_TOKEN"))},
        )
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        async with httpx.AsyncClient(timeout=60) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    (await client.get(f"http://127.0.0.1:{port}/v1/models")).raise_for_status()
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or proxy.poll() is not None:
                        raise RuntimeError(f"costline proxy did not start; see {directory / 'proxy.log'}") from None
                    await asyncio.sleep(0.1)
            with Router(load_config(config_path, env={})) as router:

                async def direct() -> None:
                    result = await router.arun(Task(BODY["messages"][0]["content"]))
                    assert result.ok, result.error

                minimal = _MinimalClient("127.0.0.1", port)

                async def proxied_minimal() -> None:
                    await minimal.post("/v1/chat/completions", BODY)

                async def round_trip() -> None:
                    (await client.get(f"http://127.0.0.1:{port}/v1/models")).raise_for_status()

                async def proxied() -> None:
                    (await client.post(url, json=BODY)).raise_for_status()

                async def first_chunk() -> float:
                    start = time.perf_counter()
                    first: float | None = None
                    async with client.stream("POST", url, json={**BODY, "stream": True}) as response:
                        response.raise_for_status()
                        async for _ in response.aiter_bytes():
                            first = first or time.perf_counter()
                    # read to the end: a response closed half-read costs its connection, and the next request a new one
                    assert first is not None
                    return (first - start) * 1000

                for _ in range(20):  # warm-up: connections, imports, price caches
                    await direct()
                    await proxied()
                times: dict[str, list[float]] = {
                    name: [] for name in ("direct", "proxied", "first_chunk", "round_trip", "minimal")
                }
                proxy_cpu = direct_cpu = client_cpu = 0.0
                # Alternate in short blocks, so background load, and the spans this process's router sends every
                # half second, fall on all sides alike.
                for size in [BLOCK] * (rounds * requests // BLOCK) + [rounds * requests % BLOCK]:
                    direct_cpu0 = time.process_time()
                    for _ in range(size):
                        times["direct"].append(await _timed(direct))
                    direct_cpu += time.process_time() - direct_cpu0
                    cpu0, client_cpu0 = _cpu_s(proxy.pid), time.process_time()
                    for _ in range(size):
                        times["proxied"].append(await _timed(proxied))
                    client_cpu += time.process_time() - client_cpu0
                    for _ in range(size):
                        times["first_chunk"].append(await first_chunk())
                    proxy_cpu += _cpu_s(proxy.pid) - cpu0
                    for _ in range(size):
                        times["round_trip"].append(await _timed(round_trip))
                    for _ in range(size):
                        times["minimal"].append(await _timed(proxied_minimal))
                await minimal.aclose()
        ollama_stream = {"model": MODEL, "messages": BODY["messages"], "stream": True}
        backend_rate, _ = await _streams(f"{urls['ollama']}/api/chat", ollama_stream, streams, per_stream)
        cpu0 = _cpu_s(proxy.pid)
        rate, load_cpu = await _streams(url, {**BODY, "stream": True}, streams, per_stream)
        stream_cpu = _cpu_s(proxy.pid) - cpu0
        rss = _peak_rss_mb(proxy.pid) if proxy.poll() is None else float("nan")
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=30)
        out, _ = backend.communicate("", timeout=30)
    spans = json.loads(out.splitlines()[-1])["spans"] if out.strip() else -1
    p50 = {name: statistics.median(values) for name, values in times.items()}
    proxied_requests = 2 * rounds * requests
    return {
        "latency_ms": latency_s * 1000,
        "requests_per_side": len(times["direct"]),
        "direct_p50_ms": round(p50["direct"], 3),
        "proxied_p50_ms": round(p50["proxied"], 3),
        "added_p50_ms": round(p50["proxied"] - p50["direct"], 3),
        "round_trip_p50_ms": round(p50["round_trip"], 3),
        "minimal_client_p50_ms": round(p50["minimal"], 3),
        "minimal_client_added_p50_ms": round(p50["minimal"] - p50["direct"], 3),
        "first_chunk_p50_ms": round(p50["first_chunk"], 3),
        "first_chunk_added_p50_ms": round(p50["first_chunk"] - p50["direct"], 3),
        "proxy_cpu_ms_per_request": round(proxy_cpu / proxied_requests * 1000, 3),
        "direct_cpu_ms_per_task": round(direct_cpu / (rounds * requests) * 1000, 3),
        "client_cpu_ms_per_request": round(client_cpu / (rounds * requests) * 1000, 3),
        "streams": streams,
        "stream_requests": streams * per_stream,
        "stream_requests_per_s": round(rate, 1),
        "backend_requests_per_s": round(backend_rate, 1),
        "load_generator_cpu_share": round(load_cpu, 3),
        "proxy_cpu_ms_per_stream_request": round(stream_cpu / (streams * per_stream) * 1000, 3),
        "proxy_peak_rss_mb": round(rss, 1),
        # every task (direct, proxied, warm-up, streams) is a task span and one attempt span
        "spans_expected": 2 * (20 * 2 + 4 * rounds * requests + streams * (per_stream + 1)),
        "spans_received": spans,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100, help="requests per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--stream-requests", type=int, default=8, help="requests each stream sends")
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--backend", action="store_true", help=argparse.SUPPRESS)  # the backend process
    args = parser.parse_args(argv)
    if args.backend:
        serve_backend(args.latency_ms / 1000)
        return 0
    with tempfile.TemporaryDirectory(prefix="costline-bench-proxy-") as tmp:
        figures = asyncio.run(
            measure(args.latency_ms / 1000, args.requests, args.rounds, args.streams, args.stream_requests, Path(tmp))
        )
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    added_ok = figures["added_p50_ms"] <= TARGET_ADDED_MS
    rss_ok = figures["proxy_peak_rss_mb"] <= TARGET_RSS_MB
    print(
        f"{figures['latency_ms']:.0f} ms backend, {figures['requests_per_side']} requests a side: direct router "
        f"{figures['direct_p50_ms']:.2f} ms, through the proxy {figures['proxied_p50_ms']:.2f} ms (p50); added "
        f"{figures['added_p50_ms']:.2f} ms, target <= {TARGET_ADDED_MS:g} ms: {'met' if added_ok else 'MISSED'}; "
        f"an HTTP round trip with no task (GET /v1/models, same client) takes {figures['round_trip_p50_ms']:.2f} ms"
    )
    print(
        f"through the proxy with a minimal HTTP client (asyncio streams, no HTTP library): "
        f"{figures['minimal_client_p50_ms']:.2f} ms (p50), added {figures['minimal_client_added_p50_ms']:.2f} ms"
    )
    print(
        f"streaming: first chunk after {figures['first_chunk_p50_ms']:.2f} ms (p50; answers arrive whole), "
        f"{figures['first_chunk_added_p50_ms']:.2f} ms over the direct answer"
    )
    print(
        f"CPU per request, all threads: the proxy process {figures['proxy_cpu_ms_per_request']:.2f} ms, the direct "
        f"router {figures['direct_cpu_ms_per_task']:.2f} ms (this process, during the direct rounds), the HTTP client "
        f"{figures['client_cpu_ms_per_request']:.2f} ms (this process, during the proxied rounds)"
    )
    print(
        f"{figures['streams']} concurrent streams, {figures['stream_requests']} requests: "
        f"{figures['stream_requests_per_s']:.0f} requests/s through the proxy (the backend alone: "
        f"{figures['backend_requests_per_s']:.0f}/s; load generator at {figures['load_generator_cpu_share']:.0%} "
        f"of a core); proxy CPU {figures['proxy_cpu_ms_per_stream_request']:.2f} ms per request"
    )
    print(
        f"proxy peak RSS {figures['proxy_peak_rss_mb']:.0f} MB, target < {TARGET_RSS_MB} MB: "
        f"{'met' if rss_ok else 'MISSED'}; spans received {figures['spans_received']} of "
        f"{figures['spans_expected']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
