"""Ingest benchmark: OTLP/HTTP protobuf into `costline serve`, end to end, against its own limits.

For each pre-loaded ledger size (``--preload``, default 0, 1M and 5M rows):

1. a ledger with that many rows is made with the collector's schema and DuckDB SQL (``bench/ledger_gen.py``);
2. ``costline serve`` runs in its own process on loopback (peak RSS read from ``/proc/<pid>/status`` VmHWM);
3. a load generator in another process (multiprocessing) posts 512-span router-shaped batches
   (``bench/otlp_batches.py``) over ``--connections`` keep-alive connections, one thread each, and counts the
   spans acknowledged (HTTP 200 without rejected spans; a 503 is retried after its Retry-After);
4. the collector is stopped (SIGTERM), and the ledger's row count proves every acknowledged span is durable;
5. on the very same spans (same seed, same bytes), in this process: the collector's parse + mapping
   (``decode_and_map``, as the collector runs it) alone, and its ledger write path (``LedgerWriter.write`` into a
   copy of the pre-loaded ledger, requests grouped ``--connections`` at a time as the writer thread would find them)
   alone.

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
import os
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

from collector.decode_pool import decode_and_map
from collector.ledger import LedgerWriter, open_ledger
from collector.price_cache import FastPricer
from costline.config import load_config
from costline.pricing import Pricer

SPANS = otlp_batches.SPANS_PER_BATCH
PRE_ENCODE_BYTES = 1 << 30
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
    cpu_s: float  # the load generator's own CPU while sending (it shares the machine's cores with the collector)


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
    insert_cpu_us: float
    collector_cpu_us: float  # CPU of the collector's processes during the load, per stored span
    collector_main_cpu_us: float  # of which the main process (HTTP, ledger writer); the rest is decode workers
    generator_cpu_us: float  # the load generator's CPU per span, on the same cores
    limit_spans_per_s: float
    share_of_limit: float
    limit_sample_spans: int
    rss_peak_mb: float
    rss_tree_peak_mb: float  # summed RSS of the collector and its child processes, sampled
    collector_processes: int
    rss_by_quarter_mb: list[float]  # peak RSS at 25, 50, 75 and 100 % of the load phase: does it level off?


# --- load generator (its own process) -------------------------------------------------------------------------


def _generator(
    url: str, seed: int, base_ns: int, batches: int, connections: int, ready: mp.Event, go: mp.Event, out: mp.Queue
) -> None:
    factory = otlp_batches.BatchFactory(seed, base_ns)
    # Every batch is encoded before the clock starts when they fit in PRE_ENCODE_BYTES; beyond that (the 10M-span
    # RSS run) a thread keeps a few ahead of the senders, and its CPU competes with the collector's.
    ahead = batches if batches * len(factory.batch(0)) <= PRE_ENCODE_BYTES else 4 * connections
    encoded: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=ahead + connections)

    def produce() -> None:
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
    while encoded.qsize() < min(batches, ahead) and producer.is_alive():
        time.sleep(0.01)  # a full pipeline before the clock starts
    ready.set()
    go.wait()
    started, cpu_started = time.perf_counter(), time.process_time()
    senders = [threading.Thread(target=send) for _ in range(connections)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    out.put(LoadResult(totals["acked"], totals["rejected"], totals["retries"], totals["errors"], wall, cpu))


# --- the collector process --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_config(directory: Path, ledger: Path, extra: list[str]) -> tuple[Path, int, int]:
    otlp, metrics = _free_port(), _free_port()
    more = "\n".join(extra)
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
{more}
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


class RssWatch:
    """Samples the collector a few times a second while the load runs: the main process's peak RSS (VmHWM), and
    the summed RSS of the main process and its children (decode workers, if the collector runs any)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self.tree_peak_mb = 0.0
        self.tree_processes = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssWatch:
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.samples.append((time.perf_counter() - self._started, peak_rss_mb(self.pid)))
            tree = process_tree(self.pid)
            self.tree_processes = max(self.tree_processes, len(tree))
            self.tree_peak_mb = max(self.tree_peak_mb, sum(_status_mb(p, "VmRSS:") for p in tree))

    def by_quarter(self) -> list[float]:
        if not self.samples:
            return []
        total = self.samples[-1][0]
        return [round(max((mb for t, mb in self.samples if t <= total * q / 4), default=0.0), 1) for q in range(1, 5)]


def process_tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in task.read_text().split()]
    return found


def tree_cpu_s(pid: int) -> dict[int, float]:
    """User + system CPU seconds of the collector and of each of its children (reaped ones included), by pid."""
    cpu = {}
    tick = os.sysconf("SC_CLK_TCK")
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu[p] = sum(int(v) for v in fields[11:15]) / tick  # utime, stime, cutime, cstime
    return cpu


def _status_mb(pid: int, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmHWM:")


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
    mapped = [decode_and_map(body, False, pricer) for body in bodies]
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    spans = batches * SPANS
    if any(m.rejected for m in mapped) or sum(m.attempts.num_rows for m in mapped) != spans:
        raise AssertionError("the mapping rejected benchmark spans")
    return spans / wall, cpu / spans * 1e6, mapped


def insert_limit(ledger: Path, mapped: list, group: int) -> tuple[float, float]:
    con = open_ledger(ledger)
    try:
        writer = LedgerWriter(con.cursor())
        cpu0 = time.process_time()
        started = time.perf_counter()
        for i in range(0, len(mapped), group):
            requests = mapped[i : i + group]
            writer.write([m.attempts for m in requests], [m.tasks for m in requests])
        con.execute("CHECKPOINT")  # the collector's rows are durable at COMMIT; a checkpoint is extra work
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu0
    finally:
        con.close()
    rows = sum(m.attempts.num_rows for m in mapped)
    return rows / wall, cpu / rows * 1e6


# --- one run ----------------------------------------------------------------------------------------------------


def _start_py_spy(pid: int, directory: Path, preload: int) -> subprocess.Popen[bytes]:
    """py-spy (pip install py-spy) sampling the collector, all threads, as collapsed stacks for flame graphs."""
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"collector-preload-{preload}.txt"
    return subprocess.Popen(
        [
            shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--format",
            "raw",
            "--rate",
            "200",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run_once(
    preload: int,
    spans: int,
    connections: int,
    limit_spans: int,
    workdir: Path,
    seed: int,
    say,
    py_spy: Path | None = None,
    collector_options: list[str] | None = None,
) -> RunResult:
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

    config, otlp_port, _ = _write_config(directory, ledger, collector_options or [])
    proc = start_collector(config, otlp_port, directory / "serve.log")
    try:
        ready, go, out = mp.Event(), mp.Event(), mp.Queue()
        gen = mp.Process(
            target=_generator,
            args=(f"http://127.0.0.1:{otlp_port}", seed, base_ns, batches, connections, ready, go, out),
            daemon=True,  # never outlives a failed run
        )
        gen.start()
        ready.wait(600)
        say(f"  posting {spans:,} spans over {connections} connections …")
        profiler = _start_py_spy(proc.pid, py_spy, preload) if py_spy else None
        with RssWatch(proc.pid) as watch:
            cpu_before = tree_cpu_s(proc.pid)
            go.set()
            load: LoadResult = out.get(timeout=3600)
            cpu_after = tree_cpu_s(proc.pid)
        main_cpu = cpu_after.get(proc.pid, 0.0) - cpu_before.get(proc.pid, 0.0)
        cpu_used = sum(cpu_after.values()) - sum(cpu_before.values())
        gen.join()
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)
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
    insert_rate, insert_cpu_us = insert_limit(limit_copy, mapped, connections)
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
        insert_cpu_us=round(insert_cpu_us, 1),
        collector_cpu_us=round(cpu_used / max(load.acked_spans, 1) * 1e6, 1),
        collector_main_cpu_us=round(main_cpu / max(load.acked_spans, 1) * 1e6, 1),
        generator_cpu_us=round(load.cpu_s / max(load.acked_spans, 1) * 1e6, 1),
        limit_spans_per_s=round(limit),
        share_of_limit=round(e2e / limit, 3),
        limit_sample_spans=sample_batches * SPANS,
        rss_peak_mb=round(rss, 1),
        rss_tree_peak_mb=round(watch.tree_peak_mb, 1),
        collector_processes=watch.tree_processes,
        rss_by_quarter_mb=watch.by_quarter(),
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
    parser.add_argument("--py-spy", type=Path, default=None, help="profile the collector with py-spy into DIR")
    parser.add_argument(
        "--collector-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra [collector] config line for experiments, e.g. max_queued_spans=400000 (repeatable)",
    )
    args = parser.parse_args(argv)
    preloads = [int(p) for p in args.preload.split(",") if p.strip()]
    say = (lambda _msg: None) if args.json else (lambda msg: print(msg, flush=True))

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="costline-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    try:
        for preload in preloads:
            say(f"run: {preload:,} rows pre-loaded")
            results.append(
                run_once(
                    preload,
                    args.spans,
                    args.connections,
                    args.limit_spans,
                    workdir,
                    args.seed,
                    say,
                    args.py_spy,
                    args.collector_option,
                )
            )
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
        f"{'e2e/limit':>9} {'vs empty':>8} {'RSS MB':>7} {'tree MB':>7} {'503s':>5} durable"
    )
    for r in results:
        vs_empty = f"{r.e2e_spans_per_s / empty.e2e_spans_per_s:.0%}" if empty and empty.e2e_spans_per_s else "-"
        print(
            f"{r.preload:>10,} {r.spans:>10,} {r.e2e_spans_per_s:>8,} {r.parse_spans_per_s:>8,} "
            f"{r.insert_spans_per_s:>9,} {r.limit_spans_per_s:>8,} {r.share_of_limit:>9.0%} {vs_empty:>8} "
            f"{r.rss_peak_mb:>7.0f} {r.rss_tree_peak_mb:>7.0f} {r.retries_503:>5} "
            f"{'yes' if r.durable else 'NO'} ({r.stored_rows:,} rows)"
        )
    print()
    print("CPU per span (noise-robust): alone parse+map + insert = limit; the collector's processes end to end")
    for r in results:
        print(
            f"  {r.preload:>10,} pre-loaded: {r.parse_cpu_us} + {r.insert_cpu_us} = "
            f"{r.parse_cpu_us + r.insert_cpu_us:.1f} µs alone; {r.collector_cpu_us} µs end to end "
            f"(main process {r.collector_main_cpu_us}, "
            f"decode workers {r.collector_cpu_us - r.collector_main_cpu_us:.1f}); load generator {r.generator_cpu_us}"
        )
    for r in results:
        print(
            f"collector, {r.preload:,} pre-loaded: main process peak RSS at 25/50/75/100 % of the load "
            f"{r.rss_by_quarter_mb} MB; {r.collector_processes} process(es), summed RSS peak {r.rss_tree_peak_mb} MB"
        )
    for r in results:
        checks = [
            (f"e2e >= {TARGET_SPANS_PER_S:,}/s", r.e2e_spans_per_s >= TARGET_SPANS_PER_S),
            (f"e2e >= {TARGET_LIMIT_SHARE:.0%} of limit", r.share_of_limit >= TARGET_LIMIT_SHARE),
            (f"RSS < {TARGET_RSS_MB} MB", max(r.rss_peak_mb, r.rss_tree_peak_mb) < TARGET_RSS_MB),
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
