"""Cost by team on /metrics: a bounded `team` label on the cost and token counters, and per-team budget gauges."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from test_collector_support import (
    LOCAL,
    NOW,
    SONNET_45,
    attempt,
    collector_config,
    otel,
    rows,
    sample,
    samples,
    scrape,
)

from collector.service import Collector
from costline import spans as S
from costline.config import BudgetConfig, Config

RECENT = NOW - timedelta(minutes=10)
# Escalations of 1000 input + 500 output tokens on Sonnet 4.5 ($3 / $15 per million) cost $0.0105 each.
CALL_USD = Decimal("0.0105")


def _config(tmp_path: Path) -> Config:
    config = collector_config(tmp_path / "ledger.duckdb", budgets={"daily_usd": 1.0, "monthly_usd": 20.0})
    return replace(
        config,
        team_budgets={
            "search": BudgetConfig(daily_usd=0.05, monthly_usd=2.0),
            "support": BudgetConfig(daily_usd=0.0, monthly_usd=0.0),  # declared for its label, no budget
        },
    )


def _send(collector: Collector) -> None:
    with otel(collector) as (tracer, provider):
        for team, n in (("search", 3), ("support", 2), ("ml-research", 1), ("data-eng", 1), (None, 1)):
            extra = {S.TEAM: team} if team else {}
            for i in range(n):
                attempt(tracer, start=RECENT, task_id=f"{team}-{i}", reason="threshold", extra=extra)
        # Yesterday's escalation counts in the month but not the day; a local call adds tokens and no dollars.
        attempt(tracer, start=NOW - timedelta(days=1), task_id="old", reason="threshold", extra={S.TEAM: "search"})
        attempt(tracer, start=RECENT, provider="ollama", model=LOCAL, tier="primary", extra={S.TEAM: "support"})
        assert provider.force_flush()


def _by_team(values: dict, name: str, **labels: str) -> dict[str, Decimal]:
    """The samples of ``name`` matching ``labels``, summed per team, as the decimals /metrics shows."""
    out: dict[str, Decimal] = {}
    for (sample_name, label_set), value in values.items():
        found = dict(label_set)
        if sample_name == name and all(found.get(k) == v for k, v in labels.items()):
            team = found.get("team", "")
            out[team] = out.get(team, Decimal(0)) + Decimal(repr(value))
    return out


def test_declared_teams_label_cost_and_tokens_the_rest_fold_into_other(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with Collector(config) as collector:
        collector.metrics.clock = lambda: NOW
        _send(collector)
        live = samples(scrape(collector))
        ledger = dict(
            rows(
                collector,
                "SELECT coalesce(team, ''), sum(cost_usd) FROM attempts WHERE cost_usd > 0 GROUP BY ALL",
            )
        )
    with Collector(config) as restarted:  # counters seeded from the ledger by SQL, not by the commit path
        restarted.metrics.clock = lambda: NOW
        seeded = samples(scrape(restarted))

    cost = _by_team(live, "costline_cost_usd_total", provider="anthropic", model=SONNET_45)
    assert cost == {
        "search": 4 * CALL_USD,
        "support": 2 * CALL_USD,
        "other": 2 * CALL_USD,  # ml-research and data-eng are not declared
        "": 1 * CALL_USD,  # no team given: no team label
    }
    # Every dollar is on exactly one series: the labels add up to the ledger.
    assert sum(cost.values()) == sum(ledger.values())
    assert _by_team(live, "costline_tokens_total", provider="ollama", model=LOCAL, type="input") == {"support": 1000}
    assert _by_team(live, "costline_tokens_total", provider="anthropic", type="output") == {
        "search": 2000,
        "support": 1000,
        "other": 1000,
        "": 500,
    }
    # No per-team label on the other families: they keep DESIGN §5's labels.
    assert all("team" not in dict(labels) for name, labels in live if name.startswith("costline_attempts_total"))
    # The commit path (pyarrow) and the restart path (SQL) label alike.
    team_series = {key: v for key, v in live.items() if key[0] in ("costline_cost_usd_total", "costline_tokens_total")}
    assert team_series == {key: v for key, v in seeded.items() if key in team_series}
    assert len(team_series) == len([k for k in seeded if k[0] in ("costline_cost_usd_total", "costline_tokens_total")])


def test_each_team_with_a_budget_has_its_own_headroom_gauges_beside_the_global_ones(tmp_path: Path) -> None:
    with Collector(_config(tmp_path)) as collector:
        collector.metrics.clock = lambda: NOW
        _send(collector)
        values = samples(scrape(collector))
        next_month = NOW.replace(day=1) + timedelta(days=32)
        collector.metrics.clock = lambda: next_month
        later = samples(scrape(collector))

    search = {"team": "search"}

    def usd(name: str, period: str, **labels: str) -> Decimal | None:
        value = sample(values, name, period=period, **labels)
        return None if value is None else Decimal(repr(value))

    assert sample(values, "costline_budget_limit_usd", period="daily", **search) == 0.05
    assert usd("costline_budget_spent_usd", "daily", **search) == 3 * CALL_USD
    # A ratio of floats, not a sum of dollars: approximately (0.05 - 0.0315) / 0.05.
    assert sample(values, "costline_budget_headroom_ratio", period="daily", **search) == pytest.approx(0.37)
    assert sample(values, "costline_budget_limit_usd", period="monthly", **search) == 2.0
    assert usd("costline_budget_spent_usd", "monthly", **search) == 4 * CALL_USD
    # A declared team without budgets has no gauges; an undeclared one never does.
    teams = {dict(labels).get("team", "") for name, labels in values if name == "costline_budget_limit_usd"}
    assert teams == {"", "search"}
    # The global gauges carry no team and count every team's spend.
    assert usd("costline_budget_spent_usd", "daily") == 8 * CALL_USD
    assert usd("costline_budget_spent_usd", "monthly") == 9 * CALL_USD
    assert sample(values, "costline_budget_limit_usd", period="monthly") == 20.0
    # A new month: the team's headroom is whole again, with no new spans.
    assert sample(later, "costline_budget_spent_usd", period="monthly", **search) == 0
    assert sample(later, "costline_budget_headroom_ratio", period="monthly", **search) == 1.0
