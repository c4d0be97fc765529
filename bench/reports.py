"""Reports and scrapes over a large ledger: `costline report`, the collector's start and its /metrics.

A ledger of ``--rows`` attempts (default 2M; the target is stated at 10M: ``--rows 10000000``) over 90 days and
eight models, with their task rows, is generated with DuckDB SQL into the collector's schema
(``bench/ledger_gen.py``). Then:

1. ``costline report --since 30d --by model`` as a subprocess, wall time, the file free (read-only open); the
   same query in-process (``collector.reports.cost_report``) to tell the query from the interpreter's start;
2. the collector opened on that ledger in this process: ``Collector(config)`` (open, migrate, seed the counters
   from the ledger) and ``start()``;
3. ``GET /metrics`` scrapes (headroom gauges included, checked in the body);
4. ``costline report`` again while the collector holds the file (it goes through ``/api/v1/query``).

    python bench/reports.py                  # 2M rows
    python bench/reports.py --rows 10000000  # the target's scale
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ledger_gen
from ingest import costline_command

from collector.metrics import LedgerMetrics
from collector.reports import cost_report, parse_window
from collector.service import Collector
from costline.config import load_config
from costline.ledger_reader import LedgerReader

TARGET_REPORT_S = 1.0
TARGET_SCRAPE_MS = 100.0
HEADROOM_FAMILIES = ("costline_quota_headroom_ratio", "costline_budget_headroom_ratio")


def _config(directory: Path, ledger: Path) -> Path:
    path = directory / "costline.toml"
    path.write_text(
        f"""
[router]
usage_db = "{directory / "usage.sqlite"}"

[collector]
host = "127.0.0.1"
otlp_port = 0
metrics_port = 0
ledger = "{ledger}"
""",
        encoding="utf-8",
    )
    return path


def report_subprocess(config: Path, repeats: int, *options: str) -> tuple[list[float], str]:
    """`costline report [options] --since 30d --by model`, as users run it, `repeats` times: wall times, last output."""
    times, output = [], ""
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(
            [*costline_command(), "report", *options, "--since", "30d", "--by", "model", "--config", str(config)],
            capture_output=True,
            text=True,
            check=False,
        )
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"costline report failed: {done.stderr[-2000:]}")
        output = done.stdout
    return times, output


def _scrape(url: str) -> tuple[float, bytes]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        started = time.perf_counter()
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"/metrics answered {response.status}")
    return elapsed, body


def run(rows: int, repeats: int, scrapes: int, workdir: Path, say) -> dict[str, object]:
    ledger = workdir / "ledger.duckdb"
    now = datetime.now(UTC)
    say(f"generating {rows:,} attempts over 90 days …")
    generated_s = ledger_gen.make_ledger(ledger, rows, start=now - timedelta(days=90), end=now)
    config_path = _config(workdir, ledger)
    config = load_config(config_path)

    say("costline report --since 30d --by model (subprocess) …")
    report_times, output = report_subprocess(config_path, repeats)
    if "claude-sonnet-4-6" not in output:
        raise RuntimeError(f"the report does not show the models: {output[:500]}")
    in_process = []
    for _ in range(repeats):
        started = time.perf_counter()
        cost_report(LedgerReader.from_config(config), parse_window("30d", None, None), ("model",))
        in_process.append(time.perf_counter() - started)

    say("collector start on the ledger, then /metrics scrapes …")
    started = time.perf_counter()
    collector = Collector(config)
    opened_s = time.perf_counter() - started
    try:
        started = time.perf_counter()
        collector.start()
        start_s = time.perf_counter() - started
        seed_times = []
        for _ in range(max(1, repeats)):
            con = collector.connection
            try:
                started = time.perf_counter()
                LedgerMetrics(config, collector.connection).seed(con)
                seed_times.append(time.perf_counter() - started)
            finally:
                con.close()
        _scrape(collector.metrics_url)  # first scrape: connection and query caches
        scrape_times, body = [], b""
        for _ in range(scrapes):
            elapsed, body = _scrape(collector.metrics_url)
            scrape_times.append(elapsed)
        text = body.decode()
        missing = [family for family in HEADROOM_FAMILIES if f"\n{family}{{" not in text]
        if missing:
            raise RuntimeError(f"/metrics lacks {missing}")
        say("costline report while the collector holds the ledger (via /api/v1/query) …")
        locked_config = workdir / "locked.toml"
        _host, port = collector.metrics_url.removeprefix("http://").rsplit(":", 1)
        locked_config.write_text(
            config_path.read_text().replace("metrics_port = 0", f"metrics_port = {port}"), encoding="utf-8"
        )
        via_collector, _ = report_subprocess(locked_config, repeats)
    finally:
        collector.stop()

    return {
        "rows": rows,
        "generated_s": round(generated_s, 1),
        "ledger_mb": round(ledger.stat().st_size / 1e6),
        "report_subprocess_s": [round(t, 3) for t in report_times],
        "report_subprocess_median_s": round(statistics.median(report_times), 3),
        "report_query_in_process_median_s": round(statistics.median(in_process), 3),
        "report_via_collector_median_s": round(statistics.median(via_collector), 3),
        "collector_open_and_seed_s": round(opened_s, 3),
        "collector_seed_only_median_s": round(statistics.median(seed_times), 3),
        "collector_start_servers_s": round(start_s, 3),
        "scrape_median_ms": round(statistics.median(scrape_times) * 1000, 1),
        "scrape_max_ms": round(max(scrape_times) * 1000, 1),
        "scrape_bytes": len(body),
        "scrapes": scrapes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000, help="attempt rows in the ledger (default 2M)")
    parser.add_argument("--repeats", type=int, default=3, help="report runs (subprocess and in-process)")
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=None, help="where the ledger goes (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    args = parser.parse_args(argv)
    say = (lambda _msg: None) if args.json else (lambda msg: print(msg, flush=True))
    workdir = Path(tempfile.mkdtemp(prefix="costline-bench-reports-", dir=args.workdir))
    try:
        result = run(args.rows, args.repeats, args.scrapes, workdir, say)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    r = result
    report_ok = r["report_subprocess_median_s"] < TARGET_REPORT_S
    scrape_ok = r["scrape_median_ms"] < TARGET_SCRAPE_MS
    print()
    print(f"ledger: {r['rows']:,} attempts, {r['ledger_mb']} MB, generated in {r['generated_s']} s")
    print(
        f"costline report --since 30d --by model: {r['report_subprocess_median_s']:.3f} s wall (median of "
        f"{r['report_subprocess_s']}); the query alone in-process {r['report_query_in_process_median_s']:.3f} s; "
        f"through the running collector {r['report_via_collector_median_s']:.3f} s"
    )
    print(
        f"collector start: open + migrate + seed {r['collector_open_and_seed_s']:.3f} s (seed alone "
        f"{r['collector_seed_only_median_s']:.3f} s), servers {r['collector_start_servers_s']:.3f} s"
    )
    print(
        f"/metrics scrape: median {r['scrape_median_ms']:.1f} ms, max {r['scrape_max_ms']:.1f} ms over "
        f"{r['scrapes']} scrapes ({r['scrape_bytes']:,} bytes, headroom gauges included)"
    )
    print(
        f"targets at {r['rows']:,} rows: report < {TARGET_REPORT_S:.0f} s: {'met' if report_ok else 'MISSED'}; "
        f"scrape < {TARGET_SCRAPE_MS:.0f} ms: {'met' if scrape_ok else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
