"""The collector's query endpoint under queries that never end, clients that leave, results that do not fit, and a
collector stopped in the middle; and Ctrl-C on ``costline sql`` reading the file."""

from __future__ import annotations

import json
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from faults.otlp import post
from faults.serve import ServedCollector
from test_collector_support import collector_config
from typer.testing import CliRunner

from collector.service import Collector
from costline.cli.app import app
from costline.ledger_reader import LedgerReader, LedgerSource, QueryInterrupted

ENDLESS = "SELECT count(*) FROM range(10000000000000) a"  # hours of work: it ends only if interrupted
WAIT_S = 60


def _query(url: str, sql: str, timeout: float = 120) -> tuple[int | None, Any]:
    answer = post(
        f"{url}/api/v1/query", json.dumps({"sql": sql}).encode(), content_type="application/json", timeout=timeout
    )
    if answer.status == 200:
        return 200, pa.ipc.open_stream(answer.body).read_all().to_pylist()
    return answer.status, json.loads(answer.body) if answer.body else None


def _start_query(url: str, sql: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
    body = json.dumps({"sql": sql}).encode()
    sock.sendall(
        f"POST /api/v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def test_a_query_past_its_timeout_is_cancelled_and_the_endpoint_keeps_answering(tmp_path: Path) -> None:
    config = collector_config(tmp_path / "ledger.duckdb", collector={"query_timeout_s": 0.5})
    with Collector(config) as collector:
        status, error = _query(collector.metrics_url, ENDLESS)
        assert status == 504
        assert error["error"] == "the query ran longer than 0.5 s (collector.query_timeout_s) and was cancelled"
        assert _query(collector.metrics_url, "SELECT 42 AS answer") == (200, [{"answer": 42}])


def test_a_query_whose_client_left_is_interrupted(tmp_path: Path) -> None:
    with Collector(collector_config(tmp_path / "ledger.duckdb", collector={"query_timeout_s": 3600.0})) as collector:
        sock = _start_query(collector.metrics_url, ENDLESS)
        assert collector.queries.wait_running(1, WAIT_S)
        sock.close()  # the user pressed Ctrl-C on `costline sql`
        assert collector.queries.wait_running(0, WAIT_S), "the abandoned query still runs"
        assert _query(collector.metrics_url, "SELECT 1 AS one") == (200, [{"one": 1}])


def test_a_result_larger_than_the_bound_is_refused_not_held(tmp_path: Path) -> None:
    config = collector_config(tmp_path / "ledger.duckdb", collector={"max_query_result_mb": 1})
    with Collector(config) as collector:
        status, error = _query(collector.metrics_url, "SELECT repeat('x', 1000) AS big FROM range(5000)")
        assert status == 413
        assert error["error"].startswith("the result is larger than 1 MB (collector.max_query_result_mb)")
        assert _query(collector.metrics_url, "SELECT repeat('x', 1000) AS small")[0] == 200


def test_stopping_the_collector_interrupts_a_running_query(tmp_path: Path) -> None:
    collector = Collector(collector_config(tmp_path / "ledger.duckdb", collector={"query_timeout_s": 3600.0}))
    collector.start()
    answers: list[tuple[int | None, Any]] = []
    client = threading.Thread(target=lambda: answers.append(_query(collector.metrics_url, ENDLESS)))
    client.start()
    try:
        assert collector.queries.wait_running(1, WAIT_S)
    finally:
        collector.stop()  # raised ResourceInUse (or aborted the process) while the query held the ledger
    client.join(WAIT_S)
    assert answers and answers[0][0] in (503, None)  # told to retry, or the connection closed with the server
    con = duckdb.connect(str(tmp_path / "ledger.duckdb"))  # the ledger was closed and released
    con.close()


def _wait_for_log(served: ServedCollector, text: str) -> None:
    for _ in range(WAIT_S * 20):
        if text in served.stderr():
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"{text!r} never appeared in the collector's log: {served.stderr()}")


@pytest.mark.parametrize("client_leaves", [False, True])
def test_sigterm_during_a_query_exits_0(tmp_path: Path, client_leaves: bool) -> None:
    with ServedCollector(tmp_path, tmp_path / "ledger.duckdb", query_timeout_s=3600.0) as served:
        served.start("--verbose")
        sock = _start_query(served.metrics_url, ENDLESS)
        _wait_for_log(served, "query started: SELECT count(*) FROM range(")
        if client_leaves:
            sock.close()
        code = served.stop()
        sock.close()
        log = served.stderr()
    assert code == 0, log
    assert "terminate called" not in log and "ResourceInUse" not in log and "Traceback" not in log


def _ledger(tmp_path: Path) -> Path:
    ledger = tmp_path / "ledger.duckdb"
    duckdb.connect(str(ledger)).close()
    return ledger


def _interrupt_once_running(thread_name: str) -> threading.Thread:
    """Ctrl-C to the main thread once the query's worker thread exists (what a terminal's SIGINT does)."""
    main = threading.main_thread().ident
    assert main is not None

    def send() -> None:
        for _ in range(WAIT_S * 100):
            if any(t.name == thread_name for t in threading.enumerate()):
                signal.pthread_kill(main, signal.SIGINT)
                return
            threading.Event().wait(0.01)

    sender = threading.Thread(target=send)
    sender.start()
    return sender


def test_ctrl_c_stops_a_file_query_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = _ledger(tmp_path)
    reader = LedgerReader(LedgerSource(ledger, "http://127.0.0.1:1"))
    sender = _interrupt_once_running("costline-sql")
    with pytest.raises(QueryInterrupted, match="interrupted; the query was stopped"):
        reader.query(ENDLESS)
    sender.join()

    config = tmp_path / "c.toml"
    config.write_text(f'[collector]\nledger = "{ledger}"\nmetrics_port = 1\n', encoding="utf-8")
    monkeypatch.setenv("COLUMNS", "200")
    sender = _interrupt_once_running("costline-sql")
    result = CliRunner().invoke(app, ["sql", ENDLESS, "--config", str(config)])
    sender.join()
    assert result.exit_code == 130
    assert result.output.strip() == "error: interrupted; the query was stopped"


# Each would build one value (or a vector of them) far larger than DuckDB's memory limit, outside it.
HUGE_VALUES = {
    "SELECT repeat('x', 200000000) AS s": "repeat() would build values of 200,000,000 characters",
    "SELECT lpad('x', 200000000, 'y') AS s": "lpad() would build values of 200,000,000 characters",
    "SELECT repeat(name, 100) AS s FROM (SELECT 'abc' AS name)": "repeat() would build values of 6,553,600",
    "SELECT repeat('x', n) FROM (SELECT 200000000 AS n)": "repeat(): the repeated value times the count must be a lit",
    "SELECT printf('%200000000d', 1) AS s": "printf(): widths and precisions above 9,999 are not allowed",
    "SELECT printf('%.*f', 200000000, 1.5) AS s": "printf(): widths taken from arguments are not allowed",
    "SELECT format('{:>200000000}', 1) AS s": "format(): widths and precisions above 9,999 are not allowed",
    "SELECT range(0, 30000000) AS l": "range() as a scalar builds a list per row",
    "SELECT len(generate_series(1, 30000000)) AS n": "generate_series() as a scalar builds a list per row",
    "SELECT list_resize([1], 100000000) AS l": "list_resize() would build values of 100,000,000",
    "SELECT bar(1, 0, 2, 200000000) AS b": "bar() would build values of 200,000,000 characters",
}


def test_queries_that_would_build_huge_values_are_refused_before_they_run(tmp_path: Path) -> None:
    with Collector(collector_config(tmp_path / "ledger.duckdb")) as collector:
        for sql, message in HUGE_VALUES.items():
            status, error = _query(collector.metrics_url, sql)
            assert (status, error["error"][: len(message)]) == (400, message), sql


def test_the_same_functions_within_bounds_answer_as_duckdb_does(tmp_path: Path) -> None:
    sql = (
        "SELECT printf('%.2f', 1.5) AS dollars, printf('%5d|%%', 42) AS padded, format('{:>6}', 'ab') AS right, "
        "lpad('7', 3, '0') AS day, repeat('-', 5) AS rule, bar(1, 0, 2, 10) AS half, "
        "(SELECT count(*) FROM range(3)) AS streamed, (SELECT max(generate_series) FROM generate_series(1, 4)) AS top"
    )
    with Collector(collector_config(tmp_path / "ledger.duckdb")) as collector:
        status, answer = _query(collector.metrics_url, sql)
    assert status == 200
    assert answer == duckdb.sql(sql).to_arrow_table().to_pylist()
    assert answer[0]["dollars"] == "1.50" and answer[0]["streamed"] == 3 and answer[0]["top"] == 4


def test_hostile_queries_leave_the_collectors_memory_within_its_bounds(tmp_path: Path) -> None:
    """The collector's peak RSS after the refused queries and an aggregate that DuckDB's memory limit stops: without
    the bounds, ``repeat('x', 200000000)`` alone added about 600 MB."""
    ledger_memory_mb = 64
    with ServedCollector(tmp_path, tmp_path / "ledger.duckdb", ledger_memory_mb=ledger_memory_mb) as served:
        served.start()
        assert _query(served.metrics_url, "SELECT 1 AS one") == (200, [{"one": 1}])
        baseline = served.peak_rss_mb()
        for sql in HUGE_VALUES:
            assert _query(served.metrics_url, sql)[0] == 400, sql
        status, error = _query(served.metrics_url, "SELECT string_agg(repeat('x', 1000), '') FROM range(400000)")
        assert status == 400 and "Out of Memory" in error["error"]
        assert _query(served.metrics_url, "SELECT 2 AS two") == (200, [{"two": 2}])
        grown = served.peak_rss_mb() - baseline
    assert grown < ledger_memory_mb + 64, f"peak RSS grew by {grown:.0f} MiB"
