"""Reports against a real collector: they reconcile with /metrics, and work while the collector holds the ledger.

Spans go through the real OTel SDK and OTLP/HTTP exporter into a collector on loopback; the CLI then reads the
ledger over the collector's /api/v1/query endpoint (the file is held) and, once the collector stops, from the file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from ledger_fixtures import free_port, write_config
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Tracer
from test_collector_support import LOCAL, NOW, attempt, collector_config, samples, scrape, task
from typer.testing import CliRunner

from collector.service import Collector
from costline import clock
from costline import spans as S
from costline.cli import app
from costline.ledger_reader import LedgerReader, LedgerSource

runner = CliRunner()


@pytest.fixture(autouse=True)
def stopped_clock() -> Iterator[None]:
    """The workload happens in the hour before NOW, and the reports' --since windows end at NOW."""
    with clock.pinned(NOW):
        yield


def send_workload(tracer: Tracer, now: datetime) -> None:
    """Five routed tasks, eight attempts, all in the last hour."""
    t = now - timedelta(minutes=50)
    local = {"provider": S.PROVIDER_OLLAMA, "model": LOCAL}
    with task(tracer, start=t, task_id="a", task_type="general"):
        attempt(tracer, start=t, task_id="a", tier="primary", input_tokens=1200, output_tokens=300, **local)
    t += timedelta(minutes=5)
    with task(tracer, start=t, task_id="b", task_type="summarize", escalated=True, attempts=3):
        attempt(
            tracer, start=t, task_id="b", tier="primary", error_type="timeout", input_tokens=0, output_tokens=0, **local
        )
        attempt(
            tracer,
            start=t + timedelta(seconds=2),
            task_id="b",
            tier="fallback",
            index=1,
            error_type="invalid_output",
            input_tokens=800,
            output_tokens=90,
            **local,
        )
        attempt(
            tracer,
            start=t + timedelta(seconds=9),
            task_id="b",
            index=2,
            reason="threshold",
            input_tokens=5000,
            output_tokens=1200,
            cache_read=2000,
            cache_write=500,
        )
    t += timedelta(minutes=5)
    with task(tracer, start=t, task_id="c", task_type="code_generation", escalated=True):
        attempt(tracer, start=t, task_id="c", reason="critical", input_tokens=3000, output_tokens=2500)
    t += timedelta(minutes=5)
    with task(tracer, start=t, task_id="d", task_type="summarize", outcome="quota_exhausted"):
        attempt(
            tracer,
            start=t,
            task_id="d",
            reason="threshold",
            error_type="quota_exhausted",
            input_tokens=0,
            output_tokens=0,
        )
    t += timedelta(minutes=5)
    with task(tracer, start=t, task_id="e", task_type="general", escalated=True, attempts=2):
        attempt(tracer, start=t, task_id="e", tier="primary", input_tokens=400, output_tokens=100, **local)
        # A model nobody can price: stored with a NULL cost and counted as unpriced on both sides.
        attempt(
            tracer,
            start=t,
            task_id="e",
            index=1,
            reason="requested",
            model="claude-imaginary-9",
            input_tokens=10,
            output_tokens=10,
        )


def report_json(config: Path, *args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["report", *args, "--format", "json", "-c", str(config)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout, parse_float=Decimal)


def by_label(values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for (sample_name, labels), value in values.items():
        if sample_name == name:
            out[dict(labels).get(label, "")] += value
    return dict(out)


def total(values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    return sum(value for (sample_name, _), value in values.items() if sample_name == name)


def cents(value: Decimal | float) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.01"))


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Collector, Path]]:
    ledger = tmp_path / "ledger.duckdb"
    collector = Collector(collector_config(ledger)).start()
    try:
        provider = TracerProvider(resource=Resource.create({"service.name": "costline-router"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{collector.otlp_url}/v1/traces")))
        send_workload(provider.get_tracer("reports-test"), NOW)
        provider.shutdown()  # flushes: every span is acknowledged, so durable in the ledger
        port = int(collector.metrics_url.rsplit(":", 1)[1])
        yield collector, write_config(tmp_path, ledger, metrics_port=port)
    finally:
        collector.stop()


def test_reports_reconcile_with_the_collector_metrics(running: tuple[Collector, Path]) -> None:
    collector, config = running
    metrics = samples(scrape(collector))
    cost = report_json(config, "--since", "24h", "--by", "model")["tables"]["cost"]
    grand = cost["total"]
    assert grand["attempts"] == total(metrics, "costline_attempts_total") == 8
    assert cents(grand["cost_usd"]) == cents(total(metrics, "costline_cost_usd_total"))
    assert grand["cost_usd"] > 0
    assert grand["unpriced_attempts"] == total(metrics, "costline_unpriced_attempts_total") == 1
    tokens = by_label(metrics, "costline_tokens_total", "type")
    assert grand["input_tokens"] == tokens["input"] == 10_410
    assert grand["output_tokens"] == tokens["output"]
    assert grand["cache_read_tokens"] == tokens["cache_read"] == 2000
    assert grand["cache_write_tokens"] == tokens["cache_write"] == 500
    per_model_cost = by_label(metrics, "costline_cost_usd_total", "model")
    per_model_attempts = by_label(metrics, "costline_attempts_total", "model")
    for row in cost["rows"]:
        assert cents(row["cost_usd"]) == cents(per_model_cost.get(row["model"], 0.0)), row["model"]
        assert row["attempts"] == per_model_attempts[row["model"]], row["model"]

    escalations = report_json(config, "escalations", "--since", "24h")["tables"]
    made = {r["reason"]: r["escalations"] for r in escalations["reasons"]["rows"]}
    assert (
        made
        == by_label(metrics, "costline_escalations_total", "reason")
        == {"threshold": 1, "critical": 1, "requested": 1}
    )
    tasks = escalations["by_task_type"]["total"]
    assert tasks["tasks"] == total(metrics, "costline_tasks_total") == 5
    escalated = by_label(metrics, "costline_tasks_total", "escalated")
    assert tasks["escalated_tasks"] == escalated["true"] == 3

    savings = report_json(config, "savings", "--since", "24h")["tables"]["summary"]["rows"][0]
    assert savings["local_successes"] == 2
    assert savings["counterfactual_usd"] > 0
    assert cents(savings["counterfactual_usd"]) == cents(total(metrics, "costline_counterfactual_usd_total"))


def test_sql_and_reports_go_over_loopback_while_the_collector_holds_the_ledger(
    running: tuple[Collector, Path], tmp_path: Path
) -> None:
    collector, config = running
    ledger = tmp_path / "ledger.duckdb"
    reader = LedgerReader(LedgerSource(ledger, collector.metrics_url))
    assert reader.query("SELECT count(*) AS n FROM attempts").to_pylist() == [{"n": 8}]
    assert reader.via == "collector"

    query = "SELECT model, count(*) AS n, sum(cost_usd) AS cost FROM attempt_costs GROUP BY model ORDER BY model"
    live_sql = runner.invoke(app, ["sql", query, "--format", "json", "-c", str(config)])
    assert live_sql.exit_code == 0, live_sql.output
    live_report = report_json(config, "--since", "24h", "--by", "provider,tier")
    bad = runner.invoke(app, ["sql", "SELECT nope FROM attempts", "-c", str(config)])
    assert bad.exit_code == 1
    assert 'Referenced column "nope" not found' in " ".join(bad.stderr.split())

    collector.stop()  # the file is free again: the same figures, read from the file
    assert reader.query("SELECT count(*) AS n FROM attempts").to_pylist() == [{"n": 8}]
    assert reader.via == "file"
    file_sql = runner.invoke(app, ["sql", query, "--format", "json", "-c", str(config)])
    assert json.loads(live_sql.stdout, parse_float=Decimal) == json.loads(file_sql.stdout, parse_float=Decimal)
    file_report = report_json(config, "--since", "24h", "--by", "provider,tier")
    assert live_report["tables"] == file_report["tables"]


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"costline serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("costline serve did not become ready")


def test_cli_reads_through_a_collector_in_another_process(tmp_path: Path) -> None:
    """The real situation: `costline serve` holds the file lock, so the CLI must ask it."""
    ledger = tmp_path / "ledger.duckdb"
    metrics_port, otlp_port = free_port(), free_port()
    config = write_config(tmp_path, ledger, metrics_port=metrics_port)
    text = config.read_text().replace("otlp_port = 0", f"otlp_port = {otlp_port}")
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("COSTLINE_INGEST_TOKEN", "COSTLINE_CONFIG")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from costline.cli import main; main()", "serve", "-c", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{metrics_port}", proc)
        provider = TracerProvider(resource=Resource.create({"service.name": "costline-router"}))
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{otlp_port}/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
        send_workload(provider.get_tracer("reports-test"), NOW)
        provider.shutdown()

        reader = LedgerReader(LedgerSource(ledger, f"http://127.0.0.1:{metrics_port}"))
        assert reader.query("SELECT count(*) AS n FROM attempts").to_pylist() == [{"n": 8}]
        assert reader.via == "collector"
        live = report_json(config, "--since", "24h", "--by", "model")
        live_escalations = report_json(config, "escalations", "--since", "24h")
        refused = runner.invoke(app, ["sql", "DELETE FROM attempts", "-c", str(config)])
        assert refused.exit_code == 1
        assert "only read-only queries are allowed" in refused.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert live["tables"] == report_json(config, "--since", "24h", "--by", "model")["tables"]
    assert live_escalations["tables"] == report_json(config, "escalations", "--since", "24h")["tables"]
    assert live["tables"]["cost"]["total"]["attempts"] == 8


def test_export_works_while_the_collector_holds_the_ledger(running: tuple[Collector, Path], tmp_path: Path) -> None:
    collector, config = running
    out = tmp_path / "parquet"
    result = runner.invoke(app, ["export", "parquet", str(out), "-c", str(config)])
    assert result.exit_code == 0, result.output
    live = collector.connection
    try:
        want = live.execute("SELECT count(*), sum(cost_usd), sum(input_tokens) FROM attempts").fetchall()
    finally:
        live.close()
    got = duckdb.sql(
        f"SELECT count(*), sum(cost_usd), sum(input_tokens) FROM read_parquet('{out}/attempts/*/*.parquet')"
    ).fetchall()
    assert got == want
    assert want[0][0] == 8


def test_the_collectors_token_is_sent_and_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "tok-0123456789-SECRET"
    monkeypatch.setenv("COSTLINE_INGEST_TOKEN", token)
    ledger = tmp_path / "ledger.duckdb"
    with Collector(collector_config(ledger)) as collector:
        config = write_config(tmp_path, ledger, metrics_port=int(collector.metrics_url.rsplit(":", 1)[1]))
        with_token = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM attempts", "-f", "json", "-c", str(config)])
        assert with_token.exit_code == 0, with_token.output
        assert json.loads(with_token.stdout) == [{"n": 0}]
        monkeypatch.setenv("COSTLINE_INGEST_TOKEN", "wrong-token")
        refused = runner.invoke(app, ["report", "-c", str(config)])
        assert refused.exit_code == 1
        message = " ".join(refused.stderr.split())
        assert "the collector refused the query (401" in message
        assert "set COSTLINE_INGEST_TOKEN to the collector's token" in message
        assert token not in refused.output and "wrong-token" not in refused.output


def test_a_write_hidden_in_a_select_is_refused_by_the_collector_too(running: tuple[Collector, Path]) -> None:
    collector, config = running
    result = runner.invoke(
        app, ["sql", "WITH gone AS (DELETE FROM attempts RETURNING *) SELECT count(*) FROM gone", "-c", str(config)]
    )
    assert result.exit_code == 1
    assert "only read-only queries are allowed" in result.stderr
    live = collector.connection
    try:
        assert live.execute("SELECT count(*) FROM attempts").fetchall() == [(8,)]
    finally:
        live.close()


def test_collector_url_reaches_a_collector_whose_ledger_is_elsewhere(
    running: tuple[Collector, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compose stack or another host: no ledger file here, only the collector's URL."""
    collector, here = running
    elsewhere = tmp_path / "laptop"
    elsewhere.mkdir()
    config = write_config(elsewhere, elsewhere / "no-ledger-here.duckdb", metrics_port=1)
    url = ["--collector-url", collector.metrics_url]
    expected = report_json(here, "--since", "24h", "--by", "model")

    assert report_json(config, "--since", "24h", "--by", "model", *url) == expected
    escalations = runner.invoke(app, ["report", *url, "escalations", "--since", "24h", "-c", str(config)])
    assert escalations.exit_code == 0, escalations.output
    query = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM attempts", "-f", "json", *url, "-c", str(config)])
    assert query.exit_code == 0, query.output
    assert json.loads(query.stdout) == [{"n": 8}]
    exported = runner.invoke(app, ["export", "parquet", str(elsewhere / "out"), *url, "-c", str(config)])
    assert exported.exit_code == 0, exported.output
    assert duckdb.sql(f"SELECT count(*) FROM '{elsewhere}/out/attempts/*/*.parquet'").fetchall() == [(8,)]

    monkeypatch.setenv("COSTLINE_COLLECTOR_URL", collector.metrics_url)
    assert report_json(config, "--since", "24h", "--by", "model") == expected

    monkeypatch.setenv("COSTLINE_COLLECTOR_URL", "http://127.0.0.1:1")
    refused = runner.invoke(app, ["sql", "SELECT 1", "-c", str(config)])
    assert refused.exit_code == 1
    assert "no collector answers at http://127.0.0.1:1/api/v1/query" in " ".join(refused.output.split())
    monkeypatch.setenv("COSTLINE_COLLECTOR_URL", "collector:9464")
    bad = runner.invoke(app, ["sql", "SELECT 1", "-c", str(config)])
    assert bad.exit_code == 2 and "collector.url" in bad.output
