"""Hostile requests against a live collector: each gets its documented answer, stores exactly what it should, and
leaves the collector ready with a /metrics page that stays small (``make soak`` prints the same run as a table)."""

from __future__ import annotations

from pathlib import Path

from faults.hostile import run_all, table
from test_collector_support import collector_config, rows

from collector.service import Collector

METRICS_PAGE_LIMIT_KB = 2048  # 500 label sets per metric at most: far below, whatever the model names


def test_hostile_inputs_get_their_answers_and_store_exactly_what_they_should(tmp_path: Path) -> None:
    with Collector(collector_config(tmp_path / "ledger.duckdb")) as collector:

        def stored() -> int:
            ((attempts, tasks),) = rows(
                collector, "SELECT (SELECT count(*) FROM attempts), (SELECT count(*) FROM tasks)"
            )
            return attempts + tasks

        outcomes = run_all(collector.otlp_url, collector.metrics_url, stored)
        longest_service = rows(collector, "SELECT max(length(service_name)) FROM attempts")[0][0]
    assert all(o.ok for o in outcomes), "\n" + table(outcomes)
    assert max(o.metrics_kb for o in outcomes) < METRICS_PAGE_LIMIT_KB, "\n" + table(outcomes)
    assert longest_service == 1024
