"""The shared ledger (DuckLake): two collectors, one lake, every span once and the dollars exact — with a SQLite file
catalog and with a real PostgreSQL catalog; a flusher killed with SIGKILL between writing and committing loses and
doubles nothing; columns the local ledger gains reach the lake."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from faults.metrics import scrape, value
from faults.otlp import post
from faults.serve import ServedCollector
from lake_support import attempt_spans, body, chunks, distinct_dollars, lake_config, lake_reader, lake_totals
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pg_server import fresh_database, running_postgres
from test_collector_support import collector_config
from typer.testing import CliRunner

from collector import lake_sync
from collector.lake import TABLES, LakeFlusher
from collector.lake_connect import connect_lake
from collector.ledger import open_ledger
from collector.service import Collector
from costline.cli import app
from costline.config import ConfigError, LakeConfig, load_config

SPANS, SHARED = 300, 20


@pytest.fixture(scope="module")
def pg_server() -> Iterator[str]:
    with running_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite-file", "postgresql"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite-file":
        yield str(tmp_path / "catalog.sqlite")
        return
    with fresh_database(request.getfixturevalue("pg_server"), f"lake_{uuid.uuid4().hex[:12]}") as url:
        yield url


def send(collector: Collector, spans: list) -> None:
    for part in chunks(spans):
        answer = post(f"{collector.otlp_url}/v1/traces", body(part))
        assert answer.status == 200, answer


def test_two_collectors_store_every_span_once_in_the_lake(tmp_path: Path, catalog: str) -> None:
    lake = lake_config(catalog, tmp_path / "lake-data", flush_interval_s=3600)  # flushes below are explicit
    spans = attempt_spans(SPANS)
    first, second = spans[: SPANS // 2], spans[SPANS // 2 :]
    both = spans[SPANS // 2 - SHARED // 2 : SPANS // 2 + SHARED // 2]  # the last 10 of one half, first 10 of the other
    ledgers = [tmp_path / "one.duckdb", tmp_path / "two.duckdb"]
    with (
        Collector(collector_config(ledgers[0], lake=asdict(lake))) as one,
        Collector(collector_config(ledgers[1], lake=asdict(lake))) as two,
    ):
        assert one.lake is not None and two.lake is not None
        send(one, first)
        send(two, second)
        assert one.lake.flush_now() and two.lake.flush_now()
        send(one, both)  # a sender's retry reached the other collector too
        send(two, both)
        assert two.lake.flush_now() and one.lake.flush_now()
        assert one.lake.flush_now()  # nothing new: nothing copied again
    rows, distinct, dollars = lake_totals(lake)
    exact, naive = distinct_dollars(*ledgers)
    assert (rows, distinct) == (SPANS, SPANS)
    assert dollars == exact
    assert naive > exact  # the 20 spans are in both ledgers: the lake did not count them twice


def test_a_clean_stop_flushes_the_rows_stored_since_the_last_flush(tmp_path: Path) -> None:
    lake = lake_config(str(tmp_path / "catalog.sqlite"), tmp_path / "lake-data", flush_interval_s=3600)
    ledger = tmp_path / "one.duckdb"
    with Collector(collector_config(ledger, lake=asdict(lake))) as one:
        send(one, attempt_spans(40))
        assert one.lake is not None
        assert one.lake.flush_now()
        assert lake_totals(lake)[:2] == (40, 40)
        send(one, attempt_spans(60, seed=8))
    assert lake_totals(lake)[:2] == (100, 100)  # the stop flushed the 60 sent after the last flush


def test_the_lake_metrics_count_rows_per_table(tmp_path: Path) -> None:
    lake = lake_config(str(tmp_path / "catalog.sqlite"), tmp_path / "lake-data", flush_interval_s=3600)
    with Collector(collector_config(tmp_path / "one.duckdb", lake=asdict(lake))) as one:
        send(one, attempt_spans(40))
        assert one.lake is not None and one.lake.flush_now()
        samples = {(s.name, s.labels.get("table", "")): s.value for m in one.registry.collect() for s in m.samples}
    assert samples[("costline_lake_rows_flushed_total", "attempts")] == 40
    assert samples[("costline_lake_rows_flushed_total", "tasks")] == 0
    assert samples[("costline_lake_lag_seconds", "")] >= 0


def test_an_attempt_superseded_after_its_flush_is_marked_in_the_lake_too(tmp_path: Path) -> None:
    """A framework's span without usage arrives and is flushed; the SDK span inside it, with the call's usage, arrives
    later and supersedes it locally: the lake must count the call once, at its price, not once more as an attempt."""
    lake = lake_config(str(tmp_path / "catalog.sqlite"), tmp_path / "lake-data", flush_interval_s=3600)
    (inner,) = attempt_spans(1)
    outer = Span()
    outer.CopyFrom(inner)
    outer.span_id = bytes(reversed(inner.span_id))
    outer.start_time_unix_nano -= 1_000_000
    del outer.attributes[3:]  # no token counts
    inner.parent_span_id = outer.span_id
    ledger = tmp_path / "one.duckdb"
    with Collector(collector_config(ledger, lake=asdict(lake))) as one:
        assert one.lake is not None
        send(one, [outer])
        assert one.lake.flush_now()
        send(one, [inner])
        assert one.lake.flush_now()
        with lake_reader(lake) as con:
            in_lake = con.execute(
                "SELECT span_id, input_tokens, superseded_by FROM lake.attempts ORDER BY start_time"
            ).fetchall()
        assert one.lake.flush_now()  # replayed once: nothing left to mark
        left = one.connection.execute("SELECT count(*) FROM supersede_log").fetchone()
    outer_id, inner_id = outer.span_id.hex(), inner.span_id.hex()
    assert in_lake == [(outer_id, None, inner_id), (inner_id, 1000, None)]
    assert left == (0,)
    # The lake's rows that count are the local ledger's: one attempt, at the call's price.
    with lake_reader(lake) as con:
        counted = con.execute(
            "SELECT count(*), sum(cost_usd) FROM lake.attempts WHERE superseded_by IS NULL"
        ).fetchone()
    local = duckdb.connect(str(ledger), read_only=True)
    try:
        assert counted == local.execute("SELECT count(*), sum(cost_usd) FROM attempt_costs").fetchone()
    finally:
        local.close()


_FLUSH_AND_DIE = """
import os, signal, sys
from collector.lake import LakeFlusher
from collector.lake_connect import connect_lake
from collector.ledger import open_ledger
from costline.config import LakeConfig

def die(table):
    os.kill(os.getpid(), signal.SIGKILL)  # the rows are written to the data path; the commit never happens

local = open_ledger(sys.argv[1])
lake = connect_lake(LakeConfig(catalog=sys.argv[2], data_path=sys.argv[3]))
LakeFlusher(local.cursor(), lake, before_commit=die if sys.argv[4] == "die" else None).flush()
"""


def flush_in_process(ledger: Path, lake: LakeConfig, mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _FLUSH_AND_DIE, str(ledger), lake.catalog, lake.data_path, mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode


def test_a_flusher_killed_before_its_commit_leaves_nothing_and_the_next_flush_is_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = lake_config(str(tmp_path / "catalog.sqlite"), tmp_path / "lake-data")
    ledgers = [tmp_path / "one.duckdb", tmp_path / "two.duckdb"]
    spans = attempt_spans(SPANS)
    with (
        Collector(collector_config(ledgers[0])) as one,  # no lake: the flushes below run in other processes
        Collector(collector_config(ledgers[1])) as two,
    ):
        send(one, spans[:170])
        send(two, spans[150:])  # 20 spans in both
    assert flush_in_process(ledgers[0], lake, "die") == -signal.SIGKILL
    assert lake_totals(lake)[0] == 0  # nothing of the killed flush is visible
    assert flush_in_process(ledgers[1], lake, "flush") == 0
    assert flush_in_process(ledgers[0], lake, "die") == -signal.SIGKILL  # killed again, after the other's commit
    assert flush_in_process(ledgers[0], lake, "flush") == 0
    assert flush_in_process(ledgers[0], lake, "flush") == 0  # a restart with nothing new copies nothing
    rows, distinct, dollars = lake_totals(lake)
    assert (rows, distinct) == (SPANS, SPANS)
    assert dollars == distinct_dollars(*ledgers)[0]

    # The killed flushes' Parquet files are on disk, referenced by no snapshot; the orphan sweep removes exactly them.
    def on_disk() -> set[str]:
        return {str(p) for p in Path(lake.data_path).rglob("*.parquet")}

    with lake_reader(lake) as con:
        referenced = {
            row[0]
            for table in (*TABLES, "costline_positions", "costline_flush_lock")
            for row in con.execute("SELECT data_file FROM ducklake_list_files('lake', ?)", [table]).fetchall()
        }
    orphans = on_disk() - referenced
    assert len(orphans) == 2
    local = open_ledger(ledgers[0])
    con = connect_lake(lake)
    try:
        assert LakeFlusher(local.cursor(), con).delete_orphans(older_than_s=3600) == []  # could be a running flush
    finally:
        con.close()
        local.close()
    assert on_disk() - referenced == orphans
    # A collector's first flush sweeps files older than ORPHAN_AGE_S (here: any age).
    monkeypatch.setattr(lake_sync, "ORPHAN_AGE_S", 0.0)
    with Collector(collector_config(ledgers[0], lake=asdict(lake))) as one:
        assert one.lake is not None and one.lake.flush_now()
    assert on_disk() == referenced
    assert lake_totals(lake) == (rows, distinct, dollars)


def test_a_column_the_local_ledger_gains_is_added_to_the_lake_and_copied(tmp_path: Path) -> None:
    lake = lake_config(str(tmp_path / "catalog.sqlite"), tmp_path / "lake-data")
    ledger = tmp_path / "one.duckdb"
    with Collector(collector_config(ledger)) as one:
        send(one, attempt_spans(10))
    local = open_ledger(ledger)
    lake_con = connect_lake(lake)
    try:
        LakeFlusher(local.cursor(), lake_con).flush()
        # A newer costline adds a column to its ledger (as the team columns did); the next rows carry it.
        local.execute("ALTER TABLE attempts ADD COLUMN cost_center VARCHAR")
        local.execute("UPDATE attempts SET cost_center = 'payments'")
        local.execute(
            "INSERT INTO attempts SELECT * REPLACE ('00000000000000000000000000000abc' AS trace_id, "
            "'0000000000000abc' AS span_id, 2748::UBIGINT AS span_key, 'search' AS cost_center) FROM attempts LIMIT 1"
        )
        LakeFlusher(local.cursor(), lake_con).flush()
    finally:
        lake_con.close()
        local.close()
    with lake_reader(lake) as con:
        centres = con.execute("SELECT cost_center, count(*) FROM lake.attempts GROUP BY ALL ORDER BY ALL").fetchall()
    # Rows flushed before the column existed keep NULL; the new row carries its team.
    assert centres == [("search", 1), (None, 10)] or centres == [(None, 10), ("search", 1)]


def test_lake_config_keys_come_from_the_environment_and_a_catalog_password_is_refused(tmp_path: Path) -> None:
    env = {"COSTLINE_LAKE_CATALOG": "postgresql://costline@db:5432/lake", "COSTLINE_LAKE_DATA_PATH": "/srv/lake"}
    config = load_config(env=env)
    assert (config.lake.catalog, config.lake.data_path, config.lake.flush_interval_s) == (
        "postgresql://costline@db:5432/lake",
        "/srv/lake",
        10,
    )
    with pytest.raises(ConfigError) as refused:
        load_config(env={**env, "COSTLINE_LAKE_CATALOG": "postgresql://costline:hunter2@db:5432/lake"})
    assert "hunter2" not in str(refused.value) and "PGPASSWORD" in str(refused.value)
    with pytest.raises(ConfigError, match=r"lake\.data_path"):
        load_config(env={"COSTLINE_LAKE_CATALOG": str(tmp_path / "catalog.sqlite")})


def test_the_embedded_ledger_needs_no_lake_and_no_extension(tmp_path: Path) -> None:
    config = collector_config(tmp_path / "one.duckdb")
    assert not config.lake.enabled
    with Collector(config) as one:
        assert one.lake is None
        send(one, attempt_spans(5))
    con = duckdb.connect(str(tmp_path / "one.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM attempts").fetchone() == (5,)
        loaded = con.execute("SELECT extension_name FROM duckdb_extensions() WHERE loaded").fetchall()
    finally:
        con.close()
    assert ("ducklake",) not in loaded


def test_report_and_sql_with_lake_read_every_collectors_rows(tmp_path: Path) -> None:
    lake = lake_config(str(tmp_path / "catalog.sqlite"), tmp_path / "lake-data", flush_interval_s=3600)
    spans = attempt_spans(60)
    ledgers = [tmp_path / "one.duckdb", tmp_path / "two.duckdb"]
    with (
        Collector(collector_config(ledgers[0], lake=asdict(lake))) as one,
        Collector(collector_config(ledgers[1], lake=asdict(lake))) as two,
    ):
        send(one, spans[:40])
        send(two, spans[30:])  # 10 spans in both
    exact = distinct_dollars(*ledgers)[0]
    config = tmp_path / "costline.toml"
    config.write_text(
        f"[collector]\nledger = {str(ledgers[0])!r}\n"
        f"[lake]\ncatalog = {lake.catalog!r}\ndata_path = {lake.data_path!r}\n",
        encoding="utf-8",
    )
    runner = CliRunner()
    query = "SELECT count(*) AS attempts, sum(cost_usd) AS dollars FROM attempt_costs"
    both = runner.invoke(app, ["sql", "--lake", "--config", str(config), "-f", "json", query])
    assert both.exit_code == 0, both.output
    assert json.loads(both.stdout, parse_float=Decimal) == [{"attempts": 60, "dollars": exact}]
    mine = runner.invoke(app, ["sql", "--config", str(config), "-f", "json", query])  # without --lake: this ledger
    assert json.loads(mine.stdout, parse_float=Decimal)[0]["attempts"] == 40
    report = runner.invoke(
        app, ["report", "--lake", "--config", str(config), "--from", "2026-01-01", "--to", "2026-01-02", "-f", "json"]
    )
    assert report.exit_code == 0, report.output
    (cost,) = json.loads(report.stdout, parse_float=Decimal)["tables"]["cost"]["rows"]
    assert (cost["attempts"], cost["cost_usd"]) == (60, exact)
    refused = runner.invoke(app, ["sql", "--lake", "--config", str(config), "DELETE FROM attempts"])
    assert refused.exit_code != 0
    assert lake_totals(lake)[0] == 60


def _served(workdir: Path, name: str, lake: LakeConfig) -> ServedCollector:
    workdir.mkdir(parents=True, exist_ok=True)
    served = ServedCollector(workdir, workdir / f"{name}.duckdb")
    with served.config.open("a", encoding="utf-8") as config:
        config.write(
            f"[lake]\ncatalog = {lake.catalog!r}\ndata_path = {lake.data_path!r}\n"
            f"flush_interval_s = {lake.flush_interval_s!r}\n"
        )
    return served


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _flushes(served: ServedCollector) -> float:
    return sum(value(scrape(served.metrics_url), "costline_lake_rows_flushed_total", table=t) for t in TABLES)


@pytest.mark.slow
def test_costline_serve_killed_while_flushing_then_restarted_and_resent_keeps_the_lake_exact(tmp_path: Path) -> None:
    """Real `costline serve` processes flushing every 50 ms; one is SIGKILLed while spans still arrive and flushes
    run, restarted on its ledger, and its senders resend everything: the lake still holds each span once."""
    lake = lake_config(str(tmp_path / "catalog.sqlite"), tmp_path / "lake-data", flush_interval_s=0.05)
    spans = attempt_spans(SPANS)
    first, second = spans[:160], spans[140:]  # 20 spans to both
    with (
        _served(tmp_path / "one", "one", lake) as one,
        _served(tmp_path / "two", "two", lake) as two,
    ):
        one.start()
        two.start()
        for part in chunks(second):
            assert post(two.traces_url, body(part)).status == 200
        parts = list(chunks(first, 10))
        for part in parts[: len(parts) // 2]:
            assert post(one.traces_url, body(part)).status == 200
        _wait_for(lambda: _flushes(one) > 0, "a first flush of the collector to kill")
        one.kill9()
        one.start()
        for part in parts:  # the senders resend whatever they are unsure of: here, all of it
            assert post(one.traces_url, body(part)).status == 200
        assert one.stop() == 0 and two.stop() == 0  # a clean stop flushes the rest
    rows, distinct, dollars = lake_totals(lake)
    assert (rows, distinct) == (SPANS, SPANS)
    assert dollars == distinct_dollars(tmp_path / "one" / "one.duckdb", tmp_path / "two" / "two.duckdb")[0]
