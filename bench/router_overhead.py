"""Router overhead: the same tasks through ``Router.run()`` and through bare ``ollama`` client calls.

Both sides talk HTTP to the simulated Ollama server (``costline/demo/fake_ollama.py``, with TCP_NODELAY as the
real server has) running in this process,
streaming, with the same model and messages, so the difference is what the router adds per attempt: policy, the
usage store check, pricing, the attempt and task spans. By default spans take the router's real delivery path (the
batch processor, the on-disk spool, OTLP/HTTP) to a sink on loopback that acknowledges every request; with
``--delivery dead-end`` they go to an exporter that drops them, so only span creation and queueing are counted.

CPU added per attempt is the difference of the median per-call ``time.thread_time()`` of the calling thread (where
the router does all its work); the whole-process ``time.process_time()`` difference (fake server and span export
threads included) is printed beside it. Rounds alternate bare and routed so background load hits both alike. Wall
overhead is the ratio of median call times against a backend that answers after ``--latency-ms`` (default 10 ms).

    python bench/router_overhead.py             # 400 tasks per side per round, 5 rounds
    python bench/router_overhead.py --delivery dead-end
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import ollama
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from costline.config import Config, with_overrides
from costline.demo.fake_ollama import FakeOllama, OllamaReply
from router import Router, Task
from router.telemetry import build_tracer_provider

MODEL = "qwen2.5-coder:14b"
PROMPT = "Summarise the following paragraph in one sentence: the quarterly numbers were flat, costs went down."
TARGET_CPU_US = 250
TARGET_WALL_SHARE = 0.05


class DeadEndExporter(SpanExporter):
    """Accepts every batch and drops it: the cost of exporting is not part of the router's overhead here."""

    def __init__(self, count: SpanCount) -> None:
        self.count = count

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class SpanCount:
    def __init__(self) -> None:
        self.spans = 0
        self.lock = threading.Lock()


@contextmanager
def otlp_sink(count: SpanCount) -> Iterator[str]:
    """An OTLP/HTTP endpoint on loopback that counts the spans of each request and acknowledges it with a 200."""

    class Sink(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            spans = sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
            with count.lock:
                count.spans += spans
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _calls(fn: Callable[[], None], n: int, wall: list[float], thread_cpu: list[float]) -> float:
    """Run ``fn`` n times, appending per-call wall and calling-thread CPU (µs); returns process CPU µs per call."""
    process0 = time.process_time()
    for _ in range(n):
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - wall0) * 1e6)
        thread_cpu.append((time.thread_time() - cpu0) * 1e6)
    return (time.process_time() - process0) / n * 1e6


def measure(latency_s: float, tasks: int, rounds: int, workdir: Path, delivery: str) -> dict[str, float]:
    delivered = SpanCount()
    with FakeOllama(models=(MODEL,)) as fake, otlp_sink(delivered) as sink:
        fake.set_default(MODEL, OllamaReply(content="Flat numbers, lower costs.", delay_s=latency_s, chunks=4))
        config = with_overrides(
            Config(),
            router={"ollama_host": fake.url, "models": (MODEL,), "usage_db": str(workdir / "usage.sqlite")},
            telemetry={"otlp_endpoint": sink},
        )
        if delivery == "spool":
            provider, _ = build_tracer_provider(config)
        else:
            provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
            provider.add_span_processor(BatchSpanProcessor(DeadEndExporter(delivered)))
        client = ollama.Client(host=fake.url, timeout=30)
        messages = [{"role": "user", "content": PROMPT}]

        def bare() -> None:
            parts = [c.message.content for c in client.chat(model=MODEL, messages=messages, stream=True)]
            if not "".join(p or "" for p in parts):
                raise AssertionError("empty answer")

        with Router(config, tracer_provider=provider) as router:

            def routed() -> None:
                result = router.run(Task(prompt=PROMPT, type="summarise"))
                if not result.ok or len(result.attempts) != 1:
                    raise AssertionError(f"task failed: {result.error}")

            for fn in (bare, routed):  # warm-up: connections, imports, price caches
                _calls(fn, 20, [], [])
            wall: dict[str, list[float]] = {"bare": [], "routed": []}
            cpu: dict[str, list[float]] = {"bare": [], "routed": []}
            process_added: list[float] = []
            for _ in range(rounds):  # alternate, so background load falls on both sides alike
                process_bare = _calls(bare, tasks, wall["bare"], cpu["bare"])
                process_routed = _calls(routed, tasks, wall["routed"], cpu["routed"])
                process_added.append(process_routed - process_bare)
                fake.requests.clear()  # the fake records every request; keep memory flat
        provider.shutdown()
        client.close()
    med = {side: (statistics.median(wall[side]), statistics.median(cpu[side])) for side in ("bare", "routed")}
    return {
        "latency_ms": latency_s * 1000,
        "calls_per_side": len(wall["bare"]),
        "thread_cpu_bare_us": round(med["bare"][1], 1),
        "thread_cpu_routed_us": round(med["routed"][1], 1),
        "cpu_added_us_per_attempt": round(med["routed"][1] - med["bare"][1], 1),
        "process_cpu_added_us_per_attempt": round(statistics.median(process_added), 1),
        "wall_bare_us": round(med["bare"][0], 1),
        "wall_routed_us": round(med["routed"][0], 1),
        "wall_overhead": round(med["routed"][0] / med["bare"][0] - 1, 4),
        "spans_delivered": delivered.spans,
        "spooled_left": len(list(config.spool_dir.glob("*.otlp"))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=400, help="tasks per side per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=10.0, help="backend latency for the wall ratio")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument(
        "--delivery", choices=("spool", "dead-end"), default="spool", help="span delivery: the real path, or none"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="costline-bench-router-") as tmp:
        instant = measure(0.0, args.tasks, args.rounds, Path(tmp) / "instant", args.delivery)
        slow_tasks = max(1, min(args.tasks, 200))
        slow = measure(args.latency_ms / 1000, slow_tasks, args.rounds, Path(tmp) / "slow", args.delivery)
    if args.json:
        print(json.dumps({"instant_backend": instant, "latency_backend": slow}, indent=2))
        return 0
    cpu_ok = instant["cpu_added_us_per_attempt"] <= TARGET_CPU_US
    wall_ok = slow["wall_overhead"] <= TARGET_WALL_SHARE
    print(
        f"instant backend ({instant['calls_per_side']} calls a side): bare {instant['wall_bare_us']:.0f} µs, "
        f"routed {instant['wall_routed_us']:.0f} µs wall (medians)"
    )
    print(
        f"router CPU added per attempt: {instant['cpu_added_us_per_attempt']:.0f} µs in the calling thread "
        f"(median {instant['thread_cpu_routed_us']:.0f} routed - {instant['thread_cpu_bare_us']:.0f} bare); "
        f"whole process: {instant['process_cpu_added_us_per_attempt']:.0f} µs; "
        f"target <= {TARGET_CPU_US} µs: {'met' if cpu_ok else 'MISSED'}"
    )
    print(
        f"{slow['latency_ms']:.0f} ms backend: bare {slow['wall_bare_us'] / 1000:.2f} ms, routed "
        f"{slow['wall_routed_us'] / 1000:.2f} ms (medians), wall overhead {slow['wall_overhead']:.1%}; "
        f"target <= {TARGET_WALL_SHARE:.0%}: {'met' if wall_ok else 'MISSED'}"
    )
    print(
        f"span delivery: {args.delivery}; batches left in the spool: {instant['spooled_left'] + slow['spooled_left']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
