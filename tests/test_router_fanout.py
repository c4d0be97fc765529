"""Fan-out: a router given several collectors sends each trace, whole, to the one its trace id picks; a collector that
is down keeps its share waiting in its own spool until it answers, and the others are not held back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import duckdb
import pytest
from faults.serve import ServedCollector, free_port
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.service import Collector
from costline.config import Config, load_config, with_overrides
from router import Router, Task
from router.fanout import pick
from router.spool_layout import open_spools, spool_directory
from router.telemetry import otlp_traces_endpoints

TASKS = 60


def collector_config(directory: Path, name: str) -> Config:
    directory.mkdir(parents=True, exist_ok=True)
    return with_overrides(
        load_config(env={}),
        collector={"otlp_port": free_port(), "metrics_port": free_port(), "ledger": str(directory / f"{name}.duckdb")},
    )


def ledger_rows(ledger: Path | duckdb.DuckDBPyConnection) -> dict[str, set[tuple[str, str]]]:
    """(task id, trace id) of every task row and every attempt row in a ledger."""
    con = duckdb.connect(str(ledger), read_only=True) if isinstance(ledger, Path) else ledger
    try:
        return {
            table: set(con.execute(f"SELECT task_id, trace_id FROM {table}").fetchall())
            for table in ("tasks", "attempts")
        }
    finally:
        con.close()


def run_tasks(config: Config, count: int) -> list[str]:
    with Router(config) as router:
        results = [router.run(Task(f"task {i}")) for i in range(count)]
    assert all(result.ok for result in results)
    return [result.task_id for result in results]


def picked(trace_id_hex: str, config: Config) -> int:
    return pick(bytes.fromhex(trace_id_hex), otlp_traces_endpoints(config))


@contextmanager
def running(*configs: Config) -> Iterator[list[Collector]]:
    with ExitStack() as stack:
        yield [stack.enter_context(Collector(config)) for config in configs]


@pytest.fixture(autouse=True)
def _no_otel_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def test_each_task_lands_whole_in_one_of_two_ledgers_and_together_they_hold_every_task_once(
    tmp_path, fake_ollama, make_config
):
    with running(collector_config(tmp_path, "one"), collector_config(tmp_path, "two")) as collectors:
        config = make_config(telemetry={"otlp_endpoint": [c.otlp_url for c in collectors]})
        task_ids = run_tasks(config, TASKS)  # the router's close sends every span before it returns
        ledgers = [ledger_rows(collector.connection) for collector in collectors]

    held = [{task for task, _ in ledger["tasks"]} for ledger in ledgers]
    assert held[0] | held[1] == set(task_ids)
    assert held[0] & held[1] == set()  # no task stored by both collectors
    for index, ledger in enumerate(ledgers):
        # A task's attempts are in the ledger that holds the task, and only there.
        assert {task for task, _ in ledger["attempts"]} == held[index]
        assert len(ledger["attempts"]) == len(ledger["tasks"])  # one local attempt per task, each stored once
        # The collector that holds a trace is the one its trace id picks.
        assert {picked(trace, config) for _, trace in ledger["tasks"] | ledger["attempts"]} == {index}
    # Roughly even: a split this lopsided has a chance below one in a million with random trace ids.
    assert TASKS // 5 <= len(held[0]) <= TASKS - TASKS // 5, [len(h) for h in held]


def test_a_down_collector_keeps_its_share_in_its_own_spool_and_gets_it_when_it_returns(
    tmp_path, fake_ollama, make_config
):
    (tmp_path / "two").mkdir()
    with ServedCollector(tmp_path / "two", tmp_path / "two" / "two.duckdb") as down:  # not started: down
        with running(collector_config(tmp_path, "one")) as (up,):
            config = make_config(telemetry={"otlp_endpoint": [up.otlp_url, down.otlp_url]})
            task_ids = run_tasks(config, TASKS)
            first = ledger_rows(up.connection)

            # Its share waits in its own spool, and only there.
            endpoints = otlp_traces_endpoints(config)
            waiting_dir = spool_directory(config.spool_dir, endpoints[1], endpoints)
            spooled = spooled_traces(waiting_dir)
            assert spooled and not list(spool_directory(config.spool_dir, endpoints[0], endpoints).glob("*.otlp"))
            assert {picked(trace, config) for trace in spooled} == {1}
            # The collector that answered holds its whole share, unaffected by the other's outage.
            stored_first = {trace for _, trace in first["tasks"]}
            assert {picked(trace, config) for trace in stored_first} == {0}
            assert stored_first.isdisjoint(spooled)

            down.start()
            with Router(config):
                pass  # a router that starts sends what an earlier one left, and flushes on close
            assert not list(waiting_dir.glob("*.otlp"))
            assert ledger_rows(up.connection) == first  # nothing was sent to it again
        assert down.stop() == 0
        second = ledger_rows(down.ledger)

    held = [{task for task, _ in ledger["tasks"]} for ledger in (first, second)]
    assert held[0] | held[1] == set(task_ids) and held[0] & held[1] == set()
    assert {trace for _, trace in second["tasks"] | second["attempts"]} == spooled
    assert {task for task, _ in second["attempts"]} == held[1]


def test_spans_spooled_for_one_collector_are_split_by_trace_id_when_the_router_is_given_several(
    tmp_path, fake_ollama, make_config
):
    """Going from one collector to two with spans still waiting: none is lost, each reaches the collector its trace
    id picks."""
    gone = f"http://127.0.0.1:{free_port()}"  # the collector this router used to send to; it never answers
    old = make_config(telemetry={"otlp_endpoint": gone})
    task_ids = run_tasks(old, 20)
    assert list(old.spool_dir.glob("*.otlp"))

    with running(collector_config(tmp_path, "one"), collector_config(tmp_path, "two")) as collectors:
        config = make_config(telemetry={"otlp_endpoint": [c.otlp_url for c in collectors]})
        with Router(config):
            pass
        ledgers = [ledger_rows(collector.connection) for collector in collectors]
    assert not list(config.spool_dir.rglob("*.otlp"))
    held = [{task for task, _ in ledger["tasks"]} for ledger in ledgers]
    assert held[0] | held[1] == set(task_ids) and held[0] & held[1] == set()
    for index, ledger in enumerate(ledgers):
        assert {picked(trace, config) for _, trace in ledger["tasks"] | ledger["attempts"]} <= {index}


def test_the_pick_is_stable_whatever_the_order_of_the_list_and_moves_few_traces_when_a_collector_is_added():
    trace_ids = [i.to_bytes(16, "big") for i in range(1, 3001)]
    three = ["http://a:4318/v1/traces", "http://b:4318/v1/traces", "http://c:4318/v1/traces"]
    chosen = [three[pick(t, three)] for t in trace_ids]
    assert chosen == [three[::-1][pick(t, three[::-1])] for t in trace_ids]
    four = [*three, "http://d:4318/v1/traces"]
    moved = [t for t, before in zip(trace_ids, chosen, strict=True) if four[pick(t, four)] != before]
    # Only traces the new collector wins move (about a quarter), none between the old ones.
    assert all(four[pick(t, four)] == four[3] for t in moved)
    assert len(trace_ids) // 6 < len(moved) < len(trace_ids) // 3


def spooled_traces(directory: Path) -> set[str]:
    traces = set()
    for path in directory.glob("*.otlp"):
        request = ExportTraceServiceRequest.FromString(path.read_bytes())
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                traces |= {span.trace_id.hex() for span in scope_spans.spans}
    return traces


def test_one_spool_allowance_covers_every_collector(tmp_path):
    endpoints = ["http://one:4318/v1/traces", "http://two:4318/v1/traces"]
    first, second = open_spools(tmp_path / "spool", endpoints, max_bytes=100)
    assert first.directory != second.directory and first.directory.parent == second.directory.parent
    assert first.add(b"x" * 60, 1) is not None
    assert second.add(b"x" * 60, 1) is None  # 120 bytes would wait in all: over the allowance, dropped and counted
    assert second.dropped_spans == 1
    assert second.add(b"x" * 40, 1) is not None


def test_costline_route_says_which_collector_its_spans_wait_for(tmp_path, fake_ollama, monkeypatch):
    from typer.testing import CliRunner

    from costline.cli import app

    down = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    config_path = tmp_path / "costline.toml"
    config_path.write_text(
        f'[router]\nollama_host = "{fake_ollama.url}"\nusage_db = "{tmp_path / "usage.sqlite"}"\n'
        f"[telemetry]\notlp_endpoint = {json.dumps(down)}\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["route", "hi", "--config", str(config_path)])
    assert result.exit_code == 0, result.output
    config = load_config(config_path, env={})
    endpoints = otlp_traces_endpoints(config)
    (waiting,) = [e for e in endpoints if list(spool_directory(config.spool_dir, e, endpoints).glob("*.otlp"))]
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    # One task, one trace: its spans wait for one collector, and the warning names that one and its spool.
    assert f"the collector at {waiting} did not take the spans" in warning
    assert str(spool_directory(config.spool_dir, waiting, endpoints)) in warning
