"""The "Escalations and reliability" dashboard: why tasks leave the local models, and whether ingest keeps up."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders

from costline.spans import ESCALATION_REASONS, REFUSAL_ERROR_TYPES, TASK_OUTCOMES, TIER_ESCALATION
from dashboards import metrics as m
from dashboards.layout import new_dashboard
from dashboards.panels import (
    BY_MODEL,
    COUNT,
    PER_SECOND,
    Query,
    bar_gauge_panel,
    row,
    stat_panel,
    timeseries_panel,
)
from dashboards.stack import Stack
from dashboards.thresholds import Thresholds

UID = "costline-reliability"
TITLE = "Escalations and reliability"

LOCAL_FAILURES = f"{m.ATTEMPTS}{{{m.LOCAL_PROVIDER}, {m.ERROR}, {BY_MODEL}}}"
ESCALATION_FAILURES = f'{m.ATTEMPTS}{{tier="{TIER_ESCALATION}", {m.ERROR}, {BY_MODEL}}}'


def build(t: Thresholds, stack: Stack) -> dashboard_builders.Dashboard:
    up = f'up{{job="{stack.collector_job}"}}'
    return new_dashboard(
        UID,
        TITLE,
        "Local model failures, escalation reasons, attempts per task and the collector's ingest health.",
        stack,
        [
            row("Local models"),
            timeseries_panel(
                "Local failures by model and error type",
                "Failed attempts on local (Ollama) models per second, by model and error.type.",
                PER_SECOND,
                [
                    Query(
                        f"sum by (model, error_type) (rate({LOCAL_FAILURES}[$__rate_interval]))",
                        "{{model}} {{error_type}}",
                    )
                ],
                stacked=True,
            ),
            bar_gauge_panel(
                "Local failures in range",
                "Failed local attempts in the time range, by model and error.type.",
                COUNT,
                [
                    Query(
                        f"sum by (model, error_type) (increase({LOCAL_FAILURES}[$__range]))",
                        "{{model}} {{error_type}}",
                    )
                ],
                decimals=0,
            ),
            row("Escalations"),
            timeseries_panel(
                "Escalation reasons",
                f"Escalations to Claude per second, by reason ({', '.join(ESCALATION_REASONS)}).",
                PER_SECOND,
                [Query(f"sum by (reason) (rate({m.ESCALATIONS}{{{BY_MODEL}}}[$__rate_interval]))", "{{reason}}")],
                stacked=True,
            ),
            bar_gauge_panel(
                "Escalation reasons in range",
                "Escalations in the time range, by reason.",
                COUNT,
                [Query(f"sum by (reason) (increase({m.ESCALATIONS}{{{BY_MODEL}}}[$__range]))", "{{reason}}")],
                decimals=0,
            ),
            timeseries_panel(
                "Escalation failures by error type",
                f"Failed or refused escalation attempts per second ({', '.join(REFUSAL_ERROR_TYPES)} are refusals: "
                "nothing was sent to Claude).",
                PER_SECOND,
                [
                    Query(
                        f"sum by (model, error_type) (rate({ESCALATION_FAILURES}[$__rate_interval]))",
                        "{{model}} {{error_type}}",
                    )
                ],
                stacked=True,
            ),
            row("Tasks"),
            timeseries_panel(
                "Attempts per task",
                "Average model call attempts per routed task, 5-minute window (1 = the primary model answered).",
                COUNT,
                [Query(m.windowed(m.ATTEMPTS_PER_TASK, "5m"), "attempts per task")],
            ),
            timeseries_panel(
                "Task outcomes",
                f"Routed tasks per second by outcome ({', '.join(TASK_OUTCOMES)}).",
                PER_SECOND,
                [Query(f"sum by (outcome) (rate({m.TASKS}[$__rate_interval]))", "{{outcome}}")],
                stacked=True,
            ),
            row("Ingest"),
            timeseries_panel(
                "Ingested spans by result",
                "Spans the collector received per second: stored, duplicate (an exporter retry, stored once) "
                "or rejected.",
                PER_SECOND,
                [Query(f"sum by (result) (rate({m.INGEST}[$__rate_interval]))", "{{result}}")],
                stacked=True,
            ),
            stat_panel(
                "Collector up",
                "1 when Prometheus scrapes the collector, 0 when it cannot.",
                COUNT,
                [Query(f"min({up})")],
                steps=((None, "red"), (1, "green")),
                width=6,
            ),
            stat_panel(
                "Rejected spans in range",
                "Spans the collector rejected in the time range; their cost is missing from the ledger.",
                COUNT,
                [Query(f"sum(increase({m.INGEST}{{{m.REJECTED}}}[$__range]))")],
                steps=((None, "green"), (0.5, "red")),
                no_value="0",
                decimals=0,
                width=6,
            ),
        ],
    )
