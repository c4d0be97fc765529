"""`costline report --by team`: the router's spans, through the collector's decoder into a ledger, give each team
exactly what its attempts cost."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from ledger_fixtures import write_config
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from typer.testing import CliRunner

from collector.ledger import LedgerWriter, open_ledger
from collector.price_cache import FastPricer
from collector.protobuf_rows import map_protobuf
from costline import clock
from costline.cli import app
from costline.demo.fake_anthropic import ClaudeReply
from costline.pricing import Pricer
from router import Router, Task

SONNET = "claude-sonnet-4-6"  # $3 input, $15 output per million tokens
PROMPT = "p" * 2000
ANSWER = ClaudeReply(text="done", input_tokens=1500, output_tokens=300)  # (1,500 x $3 + 300 x $15) / 1M
ONE_CALL = Decimal("0.009")


def _ledger_from_router_spans(path: Path, exporter: InMemorySpanExporter, pricer: FastPricer) -> datetime:
    """The spans the router made, as OTLP protobuf through the collector's hot path into a ledger; their last end."""
    spans = exporter.get_finished_spans()
    last_end_ns = max(span.end_time for span in spans)
    mapped = map_protobuf(encode_spans(spans).SerializeToString(), pricer, now_ns=last_end_ns)
    assert mapped.rejected == []
    con = open_ledger(path)
    try:
        LedgerWriter(con).write([mapped.attempts], [mapped.tasks])
    finally:
        con.close()
    return datetime.fromtimestamp(last_end_ns / 1e9, UTC)


def _report(config: Path, *args: str) -> Any:
    result = CliRunner().invoke(app, ["report", "--since", "1h", "--by", "team", *args, "-c", str(config)])
    assert result.exit_code == 0, result.output
    return result


def test_report_by_team_shows_each_teams_exact_dollars(
    fake_anthropic: Any, make_config: Any, tracer_provider: Any, span_exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    fake_anthropic.set_default(SONNET, ANSWER)
    config = make_config(escalation={"model": SONNET})
    with Router(config, tracer_provider=tracer_provider) as router:
        results = [
            router.run(Task(PROMPT, prefer_escalation=True, team="search", project="atlas", user="u-1")),
            router.run(Task(PROMPT, prefer_escalation=True, team="search", project="atlas", user="u-2")),
            router.run(Task(PROMPT, prefer_escalation=True, team="ads", project="banner", user="u-1")),
            router.run(Task(PROMPT, prefer_escalation=True)),  # a caller that names no team
        ]
    assert [r.outcome for r in results] == ["completed"] * 4
    ledger = tmp_path / "ledger.duckdb"
    last_end = _ledger_from_router_spans(ledger, span_exporter, FastPricer(Pricer(config)))
    report_config = write_config(tmp_path, ledger)

    # The window ends a minute after the last span: the clock is pinned to the data, not to the day the test runs.
    with clock.pinned(last_end + timedelta(minutes=1)):
        doc = json.loads(_report(report_config, "--format", "json").stdout, parse_float=Decimal)
        table = _report(report_config).stdout
        by_user = json.loads(
            _report(report_config, "--by", "team,project,user", "--format", "json").stdout, parse_float=Decimal
        )

    rows = {row["team"]: row for row in doc["tables"]["cost"]["rows"]}
    assert {team: row["cost_usd"] for team, row in rows.items()} == {
        "search": 2 * ONE_CALL,
        "ads": ONE_CALL,
        None: ONE_CALL,
    }
    assert {team: row["tasks"] for team, row in rows.items()} == {"search": 2, "ads": 1, None: 1}
    assert doc["tables"]["cost"]["total"]["cost_usd"] == 4 * ONE_CALL

    # The same figures as the attempts the ledger holds for each team.
    con = open_ledger(ledger)
    try:
        sums = dict(con.execute("SELECT team, sum(cost_usd) FROM attempts GROUP BY team").fetchall())
        tasks = dict(con.execute("SELECT task_id, team FROM tasks").fetchall())
    finally:
        con.close()
    assert {team: row["cost_usd"] for team, row in rows.items()} == sums
    assert sorted(tasks.values(), key=str) == sorted(["search", "search", "ads", None], key=str)

    # A table shows the group without a team as other absent values are shown; dollars to the cent.
    rows_shown = {line.split()[0]: line.split()[-2] for line in table.splitlines() if line.strip().endswith(" 0")}
    assert rows_shown == {"search": "$0.02", "ads": "$0.01", "—": "$0.01", "total": "$0.04"}

    # --by with several attribution columns: `user` is the user_id column.
    keys = {(r["team"], r["project"], r["user_id"]): r["cost_usd"] for r in by_user["tables"]["cost"]["rows"]}
    assert keys == {
        ("search", "atlas", "u-1"): ONE_CALL,
        ("search", "atlas", "u-2"): ONE_CALL,
        ("ads", "banner", "u-1"): ONE_CALL,
        (None, None, None): ONE_CALL,
    }
