"""Ingest benchmark: OTLP/HTTP protobuf into `costline serve`, end to end, against its own limits.

For each pre-loaded ledger size (``--preload``, default 0, 1M and 5M rows):

1. a ledger with that many rows is made with the collector's schema and DuckDB SQL (``bench/ledger_gen.py``);
2. ``costline serve`` runs in its own process on loopback (peak RSS read from ``/proc/<pid>/status`` VmHWM);
3. a load generator in another process (multiprocessing) posts 512-span router-shaped batches
   (``bench/otlp_batches.py``) over ``--connections`` keep-alive connections, one thread each, and counts the
   spans acknowledged (HTTP 200 without rejected spans; a 503 is retried after its Retry-After);
4. the collector is stopped (SIGTERM), and the ledger's row count proves every acknowledged span is durable;
5. on the very same spans (same seed, same bytes), in this process: the collector's parse + mapping
   (``decode_protobuf`` + ``map_spans``) alone, and its ledger write path (``LedgerWriter.write`` into a copy of
   the pre-loaded ledger, requests grouped ``--connections`` at a time as the writer thread would find them) alone.

The limit is both stages run back to back on one core: 1 / (1/parse + 1/insert). Figures are spans per second
of wall time; the machine is shared, so compare the ratios printed within one run.

    python bench/ingest.py                         # 200k spans per run, preloads 0, 1M, 5M
    python bench/ingest.py --spans 10000000 --preload 0   # the 10M-span RSS run
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing as mp
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ledger_gen
import otlp_batches
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from collector.ledger import LedgerWriter, open_ledger
from collector.mapping import map_spans
from collector.otlp_decode import decode_protobuf
from collector.price_cache import FastPricer
from costline.config import load_config
from costline.pricing import Pricer

SPANS = otlp_batches.SPANS_PER_BATCH
TARGET_SPANS_PER_S = 50_000
TARGET_LIMIT_SHARE = 0.50
TARGET_PRELOADED_SHARE = 0.70
TARGET_RSS_MB = 400


@dataclass
class LoadResult:
    acked_spans: int
    rejected_spans: int
    retries_503: int
    errors: int
    wall_s: float


@dataclass
class RunResult:
    preload: int
    spans: int
    preload_s: float
    e2e_spans_per_s: float
    acked: int
    stored_rows: int
    durable: bool
    retries_503: int
    parse_spans_per_s: float
    parse_cpu_us: float
    insert_spans_per_s: float
    limit_spans_per_s: float
    share_of_limit: float
    limit_sample_spans: int
    rss_peak_mb: float


# --- load generator (its own process) -------------------------------------------------------------------------


def _generator(
    url: str, seed: int, base_ns: int, batches: int, connections: int, ready: mp.Event, go: mp.Event, out: mp.Queue
) -> None:
    factory = otlp_batches.BatchFactory(seed, base_ns)
    encoded: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=4 * connections)

    def produce() -> None:  # batches are encoded ahead of the senders, never on their critical path
        for b in range(batches):
            encoded.put((b, factory.batch(b)))
        for _ in range(connections):
            encoded.put(None)

    host, port = url.removeprefix("http://").rsplit(":", 1)
    totals = {"acked": 0, "rejected": 0, "retries": 0, "errors": 0}
    lock = threading.Lock()

    def send() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        headers = {"Content-Type": "application/x-protobuf"}
        while (item := encoded.get()) is not None:
            _, body = item
            for _attempt in range(50):
                try:
                    conn.request("POST", "/v1/traces", body=body, headers=headers)
                    response = conn.getresponse()
                    payload = response.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection(host, int(port), timeout=120)
                    with lock:
                        totals["errors"] += 1
                    continue
                if response.status == 503:
                    with lock:
                        totals["retries"] += 1
                    time.sleep(min(float(response.getheader("Retry-After") or 1), 1.0) / 10)
                    continue
                rejected = 0
                if response.status == 200:
                    rejected = ExportTraceServiceResponse.FromString(payload).partial_success.rejected_spans
                with lock:
                    if response.status == 200:
                        totals["acked"] += SPANS - rejected
                        totals["rejected"] += rejected
                    else:
                        totals["errors"] += 1
                break
        conn.close()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    while encoded.qsize() < min(batches, encoded.maxsize) and producer.is_alive():
        time.sleep(0.01)  # a full pipeline before the clock starts
    ready.set()
    go.wait()
    started = time.perf_counter()
    senders = [threading.Thread(target=send) for _ in range(connections)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    wall = time.perf_counter() - started
    out.put(LoadResult(totals["acked"], totals["rejected"], totals["retries"], totals["errors"], wall))


# --- the collector process --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_config(directory: Path, ledger: Path) -> tuple[Path, int, int]:
    otlp, metrics = _free_port(), _free_port()
    config = directory / "costline.toml"
    config.write_text(
        f"""
[router]
usage_db = "{directory / "usage.sqlite"}"

[collector]
host = "127.0.0.1"
otlp_port = {otlp}
metrics_port = {metrics}
ledger = "{ledger}"
""",
        encoding="utf-8",
    )
    return config, otlp, metrics


def costline_command() -> list[str]:
    script = Path(sys.executable).with_name("costline")
    return [str(script)] if script.exists() else [sys.executable, "-m", "costline.cli"]


def start_collector(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*costline_command(), "serve", "--config", str(config)], stdout=sink, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"costline serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response,
        ):
            if response.status == 200:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("costline serve did not become ready")


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def stop_collector(proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM, wait for the commit and close; the peak RSS seen just before the process ends."""
    rss = peak_rss_mb(proc.pid)
    proc.send_signal(signal.SIGTERM)
    while proc.poll() is None:
        rss = max(rss, peak_rss_mb(proc.pid))
        time.sleep(0.02)
    if proc.returncode != 0:
        raise RuntimeError(f"costline serve exited with {proc.returncode}")
    return rss


# --- limits: the same spans without HTTP -----------------------------------------------------------------------


def parse_limit(factory: otlp_batches.BatchFactory, batches: int, pricer: FastPricer) -> tuple[float, float, list]:
    bodies = [factory.batch(b) for b in range(batches)]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    mapped = [map_spans(decode_protobuf(body), pricer) for body in bodies]
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    spans = batches * SPANS
    if any(m.rejected for m in mapped) or sum(m.attempts.num_rows for m in mapped) != spans:
        raise AssertionError("the mapping rejected benchmark spans")
    return spans / wall, cpu / spans * 1e6, mapped


def insert_limit(ledger: Path, mapped: list, group: int) -> float:
    con = open_ledger(ledger)
    try:
        writer = LedgerWriter(con.cursor())
        started = time.perf_counter()
        for i in range(0, len(mapped), group):
            requests = mapped[i : i + group]
            writer.write([m.attempts for m in requests], [m.tasks for m in requests])
        con.execute("CHECKPOINT")  # the collector's rows are durable at COMMIT; a checkpoint is extra work
        wall = time.perf_counter() - started
    finally:
        con.close()
    return sum(m.attempts.num_rows for m in mapped) / wall


# --- one run ----------------------------------------------------------------------------------------------------


def run_once(preload: int, spans: int, connections: int, limit_spans: int, workdir: Path, seed: int, say) -> RunResult:
    batches = max(1, spans // SPANS)
    spans = batches * SPANS
    directory = Path(tempfile.mkdtemp(prefix=f"ingest-{preload}-", dir=workdir))
    ledger = directory / "ledger.duckdb"
    now = datetime.now(UTC)
    # The benchmark's spans start three hours ago, one per millisecond; the pre-loaded history ends before them.
    base_ns = int((now - timedelta(hours=3)).timestamp()) * 1_000_000_000
    say(f"  preload {preload:,} rows …")
    preload_s = ledger_gen.make_ledger(
        ledger, preload, start=now - timedelta(days=90), end=now - timedelta(hours=4), seed=seed + 7, tasks=False
    )
    limit_copy = directory / "limit.duckdb"
    shutil.copyfile(ledger, limit_copy)

    config, otlp_port, _ = _write_config(directory, ledger)
    proc = start_collector(config, otlp_port, directory / "serve.log")
    try:
        ready, go, out = mp.Event(), mp.Event(), mp.Queue()
        gen = mp.Process(
            target=_generator,
            args=(f"http://127.0.0.1:{otlp_port}", seed, base_ns, batches, connections, ready, go, out),
        )
        gen.start()
        ready.wait(600)
        say(f"  posting {spans:,} spans over {connections} connections …")
        go.set()
        load: LoadResult = out.get(timeout=3600)
        gen.join()
    finally:
        rss = stop_collector(proc) if proc.poll() is None else peak_rss_mb(proc.pid)
    con = duckdb.connect(str(ledger), read_only=True)
    try:
        stored = con.execute("SELECT count(*) FROM attempts").fetchone()[0] - preload
    finally:
        con.close()

    sample_batches = max(1, min(batches, limit_spans // SPANS))
    say(f"  limits on the first {sample_batches * SPANS:,} of the same spans …")
    factory = otlp_batches.BatchFactory(seed, base_ns)
    pricer = FastPricer(Pricer(load_config(config)))
    parse_rate, parse_cpu_us, mapped = parse_limit(factory, sample_batches, pricer)
    insert_rate = insert_limit(limit_copy, mapped, connections)
    limit = 1 / (1 / parse_rate + 1 / insert_rate)
    e2e = load.acked_spans / load.wall_s
    shutil.rmtree(directory, ignore_errors=True)
    return RunResult(
        preload=preload,
        spans=spans,
        preload_s=round(preload_s, 1),
        e2e_spans_per_s=round(e2e),
        acked=load.acked_spans,
        stored_rows=stored,
        durable=stored == load.acked_spans == spans,
        retries_503=load.retries_503,
        parse_spans_per_s=round(parse_rate),
        parse_cpu_us=round(parse_cpu_us, 1),
        insert_spans_per_s=round(insert_rate),
        limit_spans_per_s=round(limit),
        share_of_limit=round(e2e / limit, 3),
        limit_sample_spans=sample_batches * SPANS,
        rss_peak_mb=round(rss, 1),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=200_000, help="spans posted per run (default 200000)")
    parser.add_argument("--preload", default="0,1000000,5000000", help="comma list of ledger sizes to pre-load (rows)")
    parser.add_argument("--connections", type=int, default=4, help="concurrent keep-alive connections")
    parser.add_argument("--limit-spans", type=int, default=200_000, help="spans (of the same run) timed for the limits")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="where ledgers go (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = parser.parse_args(argv)
    preloads = [int(p) for p in args.preload.split(",") if p.strip()]
    say = (lambda _msg: None) if args.json else (lambda msg: print(msg, flush=True))

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="costline-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    try:
        for preload in preloads:
            say(f"run: {preload:,} rows pre-loaded")
            results.append(run_once(preload, args.spans, args.connections, args.limit_spans, workdir, args.seed, say))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    empty = next((r for r in results if r.preload == 0), None)
    if args.json:
        print(json.dumps({"runs": [asdict(r) for r in results]}, indent=2))
    else:
        print_table(results, empty)
    return 0 if all(r.durable for r in results) else 1


def print_table(results: list[RunResult], empty: RunResult | None) -> None:
    print()
    print(
        f"{'preload':>10} {'spans':>10} {'e2e/s':>8} {'parse/s':>8} {'insert/s':>9} {'limit/s':>8} "
        f"{'e2e/limit':>9} {'vs empty':>8} {'RSS MB':>7} {'503s':>5} durable"
    )
    for r in results:
        vs_empty = f"{r.e2e_spans_per_s / empty.e2e_spans_per_s:.0%}" if empty and empty.e2e_spans_per_s else "-"
        print(
            f"{r.preload:>10,} {r.spans:>10,} {r.e2e_spans_per_s:>8,} {r.parse_spans_per_s:>8,} "
            f"{r.insert_spans_per_s:>9,} {r.limit_spans_per_s:>8,} {r.share_of_limit:>9.0%} {vs_empty:>8} "
            f"{r.rss_peak_mb:>7.0f} {r.retries_503:>5} {'yes' if r.durable else 'NO'} ({r.stored_rows:,} rows)"
        )
    print()
    print("parse+map CPU per span: " + ", ".join(f"{r.parse_cpu_us} µs" for r in results))
    for r in results:
        checks = [
            (f"e2e >= {TARGET_SPANS_PER_S:,}/s", r.e2e_spans_per_s >= TARGET_SPANS_PER_S),
            (f"e2e >= {TARGET_LIMIT_SHARE:.0%} of limit", r.share_of_limit >= TARGET_LIMIT_SHARE),
            (f"RSS < {TARGET_RSS_MB} MB", r.rss_peak_mb < TARGET_RSS_MB),
        ]
        if empty and r.preload >= 5_000_000:
            share = r.e2e_spans_per_s / empty.e2e_spans_per_s
            checks.append(
                (f"at {r.preload:,} rows >= {TARGET_PRELOADED_SHARE:.0%} of empty", share >= TARGET_PRELOADED_SHARE)
            )
        print(
            f"targets, {r.preload:,} pre-loaded: "
            + "; ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in checks)
        )


if __name__ == "__main__":
    sys.exit(main())
