"""Proxy overhead: the same tasks through `costline proxy` (OpenAI API, over HTTP) and through the router directly.

The simulated Ollama (``costline/demo/fake_ollama.py``) answers every request after ``--latency-ms`` (default 10 ms)
and runs in this process; `costline proxy` runs as its own process, as users run it, with spans going to a dead
endpoint's spool (delivery is the router benchmark's subject). Reported:

- p50 latency added per request at concurrency 1: proxy minus direct ``Router.arun``, medians of alternating rounds;
- streaming: p50 time to the first chunk through the proxy, against the direct answer time;
- throughput at ``--streams`` (default 64) concurrent streaming requests, and the proxy process's peak RSS (VmHWM).

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
from pathlib import Path

import httpx

from costline.config import load_config
from costline.demo.fake_ollama import FakeOllama, OllamaReply
from router import Router, Task

MODEL = "qwen2.5-coder:14b"
TARGET_ADDED_MS = 2.0
TARGET_RSS_MB = 300
BODY = {"model": "auto", "messages": [{"role": "user", "content": "Summarise: the numbers were flat."}]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _write_config(directory: Path, ollama_url: str, port: int) -> Path:
    path = directory / "costline.toml"
    path.write_text(
        f'[router]\nollama_host = "{ollama_url}"\nmodels = ["{MODEL}"]\nusage_db = "{directory / "usage.sqlite"}"\n'
        f'[telemetry]\notlp_endpoint = "http://127.0.0.1:9"\nspool_dir = "{directory / "spool"}"\n'
        f"spool_max_mb = 64\n[proxy]\nport = {port}\n",
        encoding="utf-8",
    )
    return path


async def _timed(call) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    await call()
    return (time.perf_counter() - start) * 1000


async def measure(latency_s: float, requests: int, rounds: int, streams: int, directory: Path) -> dict[str, float]:
    with FakeOllama(models=(MODEL,)) as fake:
        fake.set_default(MODEL, OllamaReply(content="Flat numbers.", delay_s=latency_s, chunks=4))
        port = _free_port()
        config_path = _write_config(directory, fake.url, port)
        proxy = subprocess.Popen(
            [str(Path(sys.executable).parent / "costline"), "proxy", "--config", str(config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "COSTLINE_PROXY_TOKEN"))},
        )
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        try:
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=streams)) as client:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        (await client.get(f"http://127.0.0.1:{port}/v1/models")).raise_for_status()
                        break
                    except httpx.TransportError:
                        if time.monotonic() > deadline or proxy.poll() is not None:
                            raise RuntimeError("costline proxy did not start") from None
                        await asyncio.sleep(0.1)
                with Router(load_config(config_path, env={})) as router:

                    async def direct() -> None:
                        result = await router.arun(Task(BODY["messages"][0]["content"]))
                        assert result.ok, result.error

                    async def proxied() -> None:
                        (await client.post(url, json=BODY)).raise_for_status()

                    async def first_chunk() -> None:
                        async with client.stream("POST", url, json={**BODY, "stream": True}) as response:
                            response.raise_for_status()
                            async for _ in response.aiter_bytes():
                                break

                    for _ in range(20):  # warm-up: connections, imports, price caches
                        await direct()
                        await proxied()
                    times: dict[str, list[float]] = {"direct": [], "proxied": [], "first_chunk": []}
                    for _ in range(rounds):  # alternate, so background load falls on all alike
                        for name, call in (("direct", direct), ("proxied", proxied), ("first_chunk", first_chunk)):
                            for _ in range(requests):
                                times[name].append(await _timed(call))

                    async def one_stream() -> None:
                        async with client.stream("POST", url, json={**BODY, "stream": True}) as response:
                            response.raise_for_status()
                            async for _ in response.aiter_bytes():
                                pass

                    total = streams * 8
                    start = time.perf_counter()
                    for _ in range(total // streams):
                        await asyncio.gather(*(one_stream() for _ in range(streams)))
                    elapsed = time.perf_counter() - start
        finally:
            rss = _peak_rss_mb(proxy.pid) if proxy.poll() is None else float("nan")
            proxy.terminate()
            proxy.wait(timeout=30)
    p50 = {name: statistics.median(values) for name, values in times.items()}
    return {
        "latency_ms": latency_s * 1000,
        "requests_per_side": len(times["direct"]),
        "direct_p50_ms": round(p50["direct"], 3),
        "proxied_p50_ms": round(p50["proxied"], 3),
        "added_p50_ms": round(p50["proxied"] - p50["direct"], 3),
        "first_chunk_p50_ms": round(p50["first_chunk"], 3),
        "streams": streams,
        "stream_requests_per_s": round(total / elapsed, 1),
        "proxy_peak_rss_mb": round(rss, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100, help="requests per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="costline-bench-proxy-") as tmp:
        figures = asyncio.run(measure(args.latency_ms / 1000, args.requests, args.rounds, args.streams, Path(tmp)))
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    added_ok = figures["added_p50_ms"] <= TARGET_ADDED_MS
    rss_ok = figures["proxy_peak_rss_mb"] <= TARGET_RSS_MB
    print(
        f"{figures['latency_ms']:.0f} ms backend, {figures['requests_per_side']} requests a side: direct router "
        f"{figures['direct_p50_ms']:.2f} ms, through the proxy {figures['proxied_p50_ms']:.2f} ms (p50); added "
        f"{figures['added_p50_ms']:.2f} ms, target <= {TARGET_ADDED_MS:g} ms: {'met' if added_ok else 'MISSED'}"
    )
    print(f"streaming: first chunk after {figures['first_chunk_p50_ms']:.2f} ms (p50; answers arrive whole)")
    print(
        f"{figures['streams']} concurrent streams: {figures['stream_requests_per_s']:.0f} requests/s; proxy peak RSS "
        f"{figures['proxy_peak_rss_mb']:.0f} MB, target < {TARGET_RSS_MB} MB: {'met' if rss_ok else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
