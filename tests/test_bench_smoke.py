"""The benchmarks run, at a tiny scale, and what they count is right. No timing is asserted (that is bench/'s job)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from collector.mapping import map_spans
from collector.otlp_decode import decode_protobuf
from collector.price_cache import FastPricer
from costline.config import Config
from costline.pricing import Pricer

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import otlp_batches  # noqa: E402


def _run(script: str, *args: str, timeout: float = 300) -> dict:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_patched_batches_are_router_shaped_spans_the_collector_stores_whole() -> None:
    factory = otlp_batches.BatchFactory(seed=3, base_ns=1_790_000_000 * 10**9, templates=2)
    first, second = factory.batch(0), factory.batch(1)
    request = otlp_batches.check_batch(first)
    otlp_batches.check_batch(second)
    assert factory.batch(0) == first  # the limit measurement rebuilds the very same bytes

    pricer = FastPricer(Pricer(Config()))
    mapped = [map_spans(decode_protobuf(body), pricer, now_ns=1_790_000_000 * 10**9) for body in (first, second)]
    assert [m.rejected for m in mapped] == [[], []]
    assert [m.attempts.num_rows for m in mapped] == [512, 512]
    span_ids = [s for m in mapped for s in m.attempts.column("span_id").to_pylist()]
    assert len(set(span_ids)) == 1024
    tiers = set(mapped[0].attempts.column("tier").to_pylist())
    assert tiers == {"primary", "fallback", "escalation"}
    starts = mapped[0].attempts.column("start_time").to_pylist()
    assert starts == sorted(starts)
    service = request.resource_spans[0].resource.attributes[0]
    assert (service.key, service.value.string_value) == ("service.name", "costline-router")


@pytest.mark.slow
def test_ingest_bench_stores_every_acknowledged_span(tmp_path: Path) -> None:
    result = _run(
        "ingest.py",
        "--spans",
        "1024",
        "--preload",
        "0,3000",
        "--limit-spans",
        "1024",
        "--connections",
        "2",
        "--workdir",
        str(tmp_path),
    )
    runs = result["runs"]
    assert [r["preload"] for r in runs] == [0, 3000]
    for run in runs:
        assert run["acked"] == run["stored_rows"] == run["spans"] == 1024
        assert run["durable"] is True
        assert run["limit_sample_spans"] == 1024
        assert run["rss_peak_mb"] > 0
        assert run["e2e_spans_per_s"] > 0 and run["limit_spans_per_s"] > 0


def test_router_overhead_bench_routes_every_task_once() -> None:
    result = _run("router_overhead.py", "--tasks", "5", "--rounds", "1", "--latency-ms", "1")
    for side in ("instant_backend", "latency_backend"):
        figures = result[side]
        assert figures["calls_per_side"] == 5
        # 20 warm-up tasks and 5 measured ones, each a task span and one attempt span, all through the spool.
        assert figures["spans_delivered"] == 2 * 25 and figures["spooled_left"] == 0
        assert figures["wall_bare_us"] > 0 and figures["wall_routed_us"] > 0


def test_proxy_overhead_bench_accounts_every_request_through_the_proxy_and_the_router() -> None:
    result = _run(
        "proxy_overhead.py",
        "--requests",
        "5",
        "--rounds",
        "1",
        "--streams",
        "4",
        "--stream-requests",
        "2",
        "--latency-ms",
        "1",
    )
    assert result["requests_per_side"] == 5 and result["stream_requests"] == 8
    # Every task, direct or through the proxy, is a task span and an attempt span, received by the backend's sink
    # after `costline proxy` was stopped with SIGTERM.
    assert result["spans_received"] == result["spans_expected"] > 0
    assert result["proxy_cpu_ms_per_request"] > 0 and result["stream_requests_per_s"] > 0
    assert 0 < result["proxy_peak_rss_mb"] < 1000


@pytest.mark.parametrize("rows", [4000])
def test_reports_bench_reports_and_scrapes_the_generated_ledger(tmp_path: Path, rows: int) -> None:
    result = _run("reports.py", "--rows", str(rows), "--repeats", "1", "--scrapes", "2", "--workdir", str(tmp_path))
    assert result["rows"] == rows
    assert len(result["report_subprocess_s"]) == 1
    assert result["scrapes"] == 2 and result["scrape_bytes"] > 0
    assert not list(tmp_path.iterdir())  # the ledger it made is gone


def test_lake_bench_flushes_every_generated_row_once_and_reports_over_the_lake(tmp_path: Path) -> None:
    result = _run(
        "lake.py", "--flush-rows", "3000", "--report-rows", "4000", "--repeats", "1", "--workdir", str(tmp_path)
    )
    flush, report = result["flush"], result["report"]
    assert (flush["copied_first"], flush["copied_second"]) == (3000, 3000)  # two ledgers, distinct spans
    assert flush["peak_lag_s"] > 10  # the interval plus one flush
    assert report["lake_rows"] == 4000 and len(report["report_s"]) == 1
