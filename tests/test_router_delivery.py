"""Durable delivery: spans the collector has not acknowledged wait in the on-disk spool, survive a collector outage
and a router restart, and `costline reconcile` proves the usage store and the ledger agree call by call."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from faults.metrics import scrape, value
from ledger_fixtures import free_port
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from typer.testing import CliRunner

from collector.service import Collector
from costline import spans as attr
from costline.cli import app
from costline.config import load_config
from costline.demo.fake_anthropic import ClaudeReply
from router import Router, Task
from router.delivery import SpoolingExporter
from router.spool import Spool

SONNET = "claude-sonnet-4-6"
COSTLINE = str(Path(sys.executable).parent / "costline")


def write_config(tmp_path: Path, fake_anthropic, otlp_port: int, metrics_port: int) -> Path:
    path = tmp_path / "costline.toml"
    path.write_text(
        f'[router]\nusage_db = "{tmp_path / "usage.sqlite"}"\n'
        f'[escalation]\nbase_url = "{fake_anthropic.url}"\n'
        f'[telemetry]\notlp_endpoint = "http://127.0.0.1:{otlp_port}"\n'
        f"[collector]\notlp_port = {otlp_port}\nmetrics_port = {metrics_port}\n"
        f'ledger = "{tmp_path / "ledger.duckdb"}"\n',
        encoding="utf-8",
    )
    return path


def reconcile(config: Path) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["reconcile", "--format", "json", "-c", str(config)])
    return result.exit_code, json.loads(result.stdout) if result.stdout.startswith("{") else result.output


def test_spans_survive_a_collector_outage_and_a_router_restart(tmp_path, fake_anthropic, unused_port, monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)
    config_path = write_config(tmp_path, fake_anthropic, unused_port, free_port())
    config = load_config(config_path, env={})

    # The collector is down: the billed call is in the usage store, its spans wait in the spool.
    with Router(config) as router:
        down = router.run(Task("while the collector is down", prefer_escalation=True))
    assert down.ok
    spooled = sorted(config.spool_dir.glob("*.otlp"))
    assert spooled, "the spans must wait on disk"

    with Collector(config) as collector:
        code, output = reconcile(config_path)
        assert code == 1
        (missing,) = output["differences"]
        assert missing["kind"] == "only in the usage store" and missing["task_id"] == down.task_id
        assert missing["usage_usd"] == str(down.cost_usd)

        # A restarted router sends what an earlier one left, then its own spans.
        with Router(config) as router:
            up = router.run(Task("after the restart", prefer_escalation=True))
        assert not list(config.spool_dir.glob("*.otlp"))
        con = collector.connection
        try:
            rows = con.execute("SELECT task_id, cost_usd FROM attempts ORDER BY start_time").fetchall()
        finally:
            con.close()
        assert [(task, float(cost)) for task, cost in rows] == [
            (down.task_id, float(down.cost_usd)),
            (up.task_id, float(up.cost_usd)),
        ]
        code, output = reconcile(config_path)
        assert code == 0, output
        assert output["matched"] == 2 and output["differences"] == []


def test_reconcile_lists_a_call_priced_differently(tmp_path, fake_anthropic, unused_port, tracer_provider):
    """A ledger row whose cost differs from the usage store's is listed with the difference."""
    config_path = write_config(tmp_path, fake_anthropic, unused_port, free_port())
    config = load_config(config_path, env={})
    with Collector(config) as collector:
        with Router(config) as router:
            result = router.run(Task("x", prefer_escalation=True))
        con = collector.connection
        try:
            con.execute("UPDATE attempts SET cost_usd = cost_usd * 2")
        finally:
            con.close()
        code, output = reconcile(config_path)
    assert code == 1, output
    (differs,) = output["differences"]
    assert differs["kind"] == "cost differs" and differs["task_id"] == result.task_id
    assert Decimal(output["usage_minus_ledger_usd"]) == -result.cost_usd


def test_a_full_spool_drops_new_batches_counts_and_logs_them(tmp_path, unused_port, caplog):
    memory = []
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_Collect(memory)))
    one_batch = len(encode_spans(_one_span()).SerializeToString())
    exporter = SpoolingExporter(
        f"http://127.0.0.1:{unused_port}/v1/traces", {}, Spool(tmp_path / "spool", max_bytes=3 * one_batch), timeout_s=1
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with caplog.at_level(logging.ERROR, logger="router.spool"):
        for i in range(10):
            with tracer.start_as_current_span(f"span {i}", attributes={"padding": "x" * 50}):
                pass
    provider.shutdown()
    kept = len(list((tmp_path / "spool").glob("*.otlp")))
    assert kept == 3  # nothing reached the collector (none runs), so the spool filled up and stayed full
    assert exporter.spans_lost == 7
    assert "is full (telemetry.spool_max_mb)" in caplog.text


def _one_span() -> list:
    memory: list = []
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_Collect(memory)))
    with provider.get_tracer("t").start_as_current_span("span 0", attributes={"padding": "x" * 50}):
        pass
    return memory


class _Collect:
    def __init__(self, into: list) -> None:
        self.into = into

    def export(self, spans):  # type: ignore[no-untyped-def]
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.into.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 0) -> bool:
        return True


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


def test_costline_route_with_the_collector_down_says_where_its_spans_wait(tmp_path, fake_anthropic, unused_port):
    config_path = write_config(tmp_path, fake_anthropic, unused_port, 0)
    done = subprocess.run(
        [COSTLINE, "route", "hi", "--claude", "--config", str(config_path)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    spool = tmp_path / "spool"
    assert f"wait in {spool}" in " ".join(done.stderr.split())
    assert list(spool.glob("*.otlp"))


def _route_until_claude_is_asked(config_path: Path, fake_anthropic) -> subprocess.Popen:
    """`costline route --claude` as a process, returned once the simulated Claude has its request."""
    process = subprocess.Popen(
        [COSTLINE, "route", "hi", "--claude", "--config", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    deadline = time.monotonic() + 60
    while not fake_anthropic.message_requests():
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise AssertionError(f"costline route never called Claude: {process.communicate()[1]}")
        time.sleep(0.05)
    return process


def _stalling_claude_config(tmp_path: Path, fake_anthropic, otlp_url: str) -> Path:
    fake_anthropic.set_default(SONNET, ClaudeReply(input_tokens=1500, output_tokens=300, stall_s=60))
    config_path = tmp_path / "costline.toml"
    config_path.write_text(
        f'[router]\nusage_db = "{tmp_path / "usage.sqlite"}"\n'
        f'[escalation]\nbase_url = "{fake_anthropic.url}"\n'
        f'[telemetry]\notlp_endpoint = "{otlp_url}"\n',
        encoding="utf-8",
    )
    return config_path


def _calls(usage_db: Path) -> list[tuple[str, float, float, bool]]:
    with sqlite3.connect(usage_db) as db:
        rows = db.execute("SELECT status, cost_usd, reserved_usd, estimated FROM escalation_calls").fetchall()
    return [(status, float(cost), float(reserved), bool(estimated)) for status, cost, reserved, estimated in rows]


@pytest.mark.parametrize(("sent", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_during_an_escalation_books_the_call_and_delivers_its_spans(
    tmp_path, fake_anthropic, otlp_receiver, sent, code
):
    process = _route_until_claude_is_asked(
        _stalling_claude_config(tmp_path, fake_anthropic, otlp_receiver.url), fake_anthropic
    )
    process.send_signal(sent)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"costline route did not stop on {sent!r}: {process.communicate()[1]}") from None
    assert process.returncode == code, stderr
    assert "cancelled: task" in stderr
    ((status, cost, reserved, estimated),) = _calls(tmp_path / "usage.sqlite")
    # Before Claude began answering the call is unbilled; after, it stands at its reservation, marked estimated.
    assert (status, cost, estimated) in (("unbilled", 0.0, False), ("failed", reserved, True))
    spans = {span.name: attrs for _, attrs, span in otlp_receiver.spans()}
    assert spans["chat claude-sonnet-4-6"][attr.ERROR_TYPE] == "cancelled"
    assert spans["task general"][attr.TASK_OUTCOME] == "cancelled"


def test_a_router_killed_mid_call_leaves_its_reservation_counted_and_reconcile_finds_it(
    tmp_path, fake_anthropic, unused_port
):
    config_path = write_config(tmp_path, fake_anthropic, unused_port, free_port())
    fake_anthropic.set_default(SONNET, ClaudeReply(input_tokens=1500, output_tokens=300, stall_s=60))
    process = _route_until_claude_is_asked(config_path, fake_anthropic)
    process.kill()  # SIGKILL: nothing in the process can react
    process.communicate(timeout=30)
    ((status, cost, reserved, estimated),) = _calls(tmp_path / "usage.sqlite")
    assert status == "reserved" and cost == reserved > 0 and estimated  # never $0: the upper bound stays counted
    with Collector(load_config(config_path, env={})):
        code, output = reconcile(config_path)
    assert code == 1
    (missing,) = output["differences"]
    assert missing["kind"] == "only in the usage store" and float(missing["usage_usd"]) == reserved
    assert missing["note"].startswith("never settled")


def test_a_truncated_task_reaches_the_ledger_the_reports_and_the_metrics(tmp_path, fake_anthropic, unused_port):
    fake_anthropic.script(SONNET, ClaudeReply(text="the first half", input_tokens=100, output_tokens=9000))
    config_path = write_config(tmp_path, fake_anthropic, unused_port, free_port())
    config = load_config(config_path, env={})
    with Collector(config) as collector:
        with Router(config) as router:
            truncated = router.run(Task("write a long essay", type="essay", prefer_escalation=True))
        assert truncated.outcome == "truncated"
        report = CliRunner().invoke(
            app, ["report", "escalations", "--since", "1h", "--format", "json", "-c", str(config_path)]
        )
        assert report.exit_code == 0, report.output
        (reason,) = json.loads(report.stdout)["tables"]["reasons"]["rows"]
        assert (reason["reason"], reason["errors"], reason["truncated"]) == ("requested", 1, 1)
        con = collector.connection
        try:
            assert con.execute("SELECT outcome FROM tasks").fetchall() == [("truncated",)]
        finally:
            con.close()
        samples = scrape(collector.metrics_url)
    assert value(samples, "costline_tasks_total", task_type="essay", outcome="truncated", escalated="true") == 1


def test_the_library_without_a_collector_warns_once_and_keeps_the_spans(
    fake_ollama, make_config, unused_port, caplog
) -> None:
    config = make_config(telemetry={"otlp_endpoint": f"http://127.0.0.1:{unused_port}"})
    with caplog.at_level(logging.WARNING, logger="router.delivery"), Router(config) as router:
        for i in range(3):
            assert router.run(Task(f"task {i}")).ok
    warnings = [r.getMessage() for r in caplog.records if r.name == "router.delivery"]
    assert len(warnings) == 1 and warnings[0].startswith(f"cannot deliver spans to http://127.0.0.1:{unused_port}")
    assert list(config.spool_dir.glob("*.otlp"))  # sent by the next router that reaches a collector
