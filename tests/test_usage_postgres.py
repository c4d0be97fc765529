"""The usage store on PostgreSQL: the same quota and budget semantics as the SQLite file, shared by routers on any
number of machines (simulated here by processes with separate local state and one ``usage_db`` URL)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from pg_server import fresh_database, running_postgres
from router_processes import escalate_in_processes
from typer.testing import CliRunner

from costline.cli import app
from costline.config import Config, ConfigError, load_config, with_overrides
from costline.demo.fake_anthropic import ClaudeReply
from costline.demo.fake_ollama import OllamaError
from costline.pricing import TokenUsage
from router import Router, Task
from router.usage_store import Limits, Refusal, Reservation, Settlement, UsageStore

SONNET = "claude-sonnet-4-6"


@pytest.fixture(scope="module")
def pg_server() -> Iterator[str]:
    with running_postgres() as url:
        yield url


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    with fresh_database(pg_server, f"usage_{uuid.uuid4().hex[:12]}") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    if request.param == "sqlite":
        return tmp_path / "usage.sqlite"
    return request.getfixturevalue("pg_url")


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def test_the_rolling_hour_and_the_budgets_behave_the_same_on_both_stores(location):
    clock = Clock(datetime(2026, 3, 31, 23, 0, tzinfo=UTC))
    store = UsageStore(location, Limits(2, Decimal("1"), Decimal(0)), clock=clock)
    first = store.reserve("a", "threshold", SONNET, bound_usd=Decimal("0.40"), trace_id="t" * 32, span_id="s" * 16)
    assert isinstance(first, Reservation)
    clock.now += timedelta(minutes=10)
    second = store.reserve("b", "critical", SONNET, bound_usd=Decimal("0.40"))
    assert isinstance(second, Reservation)
    # 0.40 + 0.40 in flight: a third bound of 0.40 would pass the $1 budget (and the quota of 2 is used up).
    assert store.reserve("c", "threshold", SONNET, bound_usd=Decimal("0.40")) == Refusal(
        "quota_exhausted", "escalation quota reached (2/h); next slot in 50 min"
    )
    assert store.settle(first, Settlement("succeeded", TokenUsage(1000, 100), Decimal("0.123456789"))) == Decimal(
        "0.123456789"
    )
    assert store.settle(second, Settlement("unbilled", TokenUsage(), Decimal(0))) == 0  # gives its slot back
    headroom = store.headroom()
    assert (headroom.calls_last_hour, headroom.spent_today_usd, headroom.reserved_usd) == (
        1,
        Decimal("0.123456789"),
        Decimal(0),
    )
    refusal = store.reserve("d", "threshold", SONNET, bound_usd=Decimal("0.90"))
    assert refusal == Refusal(
        "budget_exhausted",
        "daily budget of $1.00 reached: $0.1235 spent + $0.0000 reserved by calls in flight, and this call may cost "
        "up to $0.9000; resets at 00:00 UTC",
    )
    (call,) = [c for c in store.calls(clock.now - timedelta(hours=2), clock.now) if c.status == "succeeded"]
    assert (call.trace_id, call.span_id, call.cost_usd, call.estimated) == (
        "t" * 32,
        "s" * 16,
        Decimal("0.123456789"),
        False,
    )
    # A restart (a new store on the same location) forgets nothing.
    again = UsageStore(location, Limits(2, Decimal("1"), Decimal(0)), clock=clock)
    assert again.headroom() == headroom


def _machine(tmp_path: Path, name: str, fake_anthropic: Any, usage_db: str, budgets: str) -> Config:
    """A router config with its own local state (spool, default SQLite location) and the shared usage store."""
    home = tmp_path / name
    home.mkdir()
    path = home / "costline.toml"
    path.write_text(
        f'[router]\nusage_db = "{usage_db}"\n'
        f'[escalation]\nbase_url = "{fake_anthropic.url}"\nmax_calls_per_hour = 5\nmax_tokens = 400\n'
        f'[telemetry]\nspool_dir = "{home / "spool"}"\notlp_endpoint = "http://127.0.0.1:9"\n{budgets}',
        encoding="utf-8",
    )
    return load_config(path, env={})


def test_two_machines_share_one_hourly_quota(tmp_path, fake_anthropic, pg_url):
    fake_anthropic.set_default(SONNET, ClaudeReply(input_tokens=1500, output_tokens=300, delay_s=0.2))
    budgets = "[budgets]\ndaily_usd = 0\nmonthly_usd = 0\n"
    configs = [_machine(tmp_path, name, fake_anthropic, pg_url, budgets) for name in ("a", "b")]
    outcomes = escalate_in_processes(configs, "p" * 2000, 10)
    assert sorted(outcome for outcome, _ in outcomes) == ["completed"] * 5 + ["quota_exhausted"] * 15
    assert len(fake_anthropic.message_requests()) == 5


def test_two_machines_never_spend_more_than_one_budget_together(tmp_path, fake_anthropic, pg_url):
    # Each call is bounded at $0.01377 and costs $0.009: a $0.025 daily budget holds less than two bounds.
    fake_anthropic.set_default(SONNET, ClaudeReply(input_tokens=1500, output_tokens=300, delay_s=0.2))
    budgets = "[budgets]\ndaily_usd = 0.025\nmonthly_usd = 0\n"
    configs = [_machine(tmp_path, name, fake_anthropic, pg_url, budgets) for name in ("a", "b")]
    outcomes = escalate_in_processes(configs, "p" * 2000, 4)
    assert sum(Decimal(cost) for _, cost in outcomes) <= Decimal("0.025")
    assert {outcome for outcome, _ in outcomes} == {"completed", "budget_exhausted"}
    headroom = UsageStore(pg_url, Limits(5, Decimal("0.025"), Decimal(0))).headroom()
    assert headroom.spent_today_usd <= Decimal("0.025") and headroom.reserved_usd == 0


def test_costline_usage_reads_the_shared_store(tmp_path, fake_anthropic, pg_url):
    config = _machine(tmp_path, "a", fake_anthropic, pg_url, "")
    with Router(config, tracer_provider=TracerProvider()) as router:
        assert router.run(Task("x", prefer_escalation=True)).ok
    result = CliRunner().invoke(app, ["usage", "--format", "json", "-c", str(tmp_path / "a" / "costline.toml")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["usage_db"] == pg_url and report["total"]["calls"] == 1 and report["quota"]["used"] == 1


def test_a_password_in_the_url_is_refused_at_start(tmp_path):
    path = tmp_path / "costline.toml"
    path.write_text('[router]\nusage_db = "postgresql://router:s3cret@db.internal:5432/costline"\n')
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={})
    assert "s3cret" not in str(refused.value)
    assert "give it in PGPASSWORD or a ~/.pgpass file" in str(refused.value)


def test_an_unreachable_store_refuses_the_escalation_and_the_local_chain_goes_on(
    tmp_path, fake_ollama, fake_anthropic, pg_server, pg_url
):
    config = with_overrides(
        _machine(tmp_path, "a", fake_anthropic, pg_url, ""),
        router={"ollama_host": fake_ollama.url, "timeout_s": 5.0},
    )
    database = pg_url.rsplit("/", 1)[1]
    fake_ollama.script("qwen2.5-coder:14b", OllamaError(500))
    fake_ollama.script("qwen3:30b-a3b", OllamaError(500))
    with Router(config, tracer_provider=TracerProvider()) as router:
        with psycopg.connect(pg_server, autocommit=True) as admin:  # the database goes away under the router
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
        outage = router.run(Task("x"))
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        back = router.run(Task("y", prefer_escalation=True))

    assert outage.ok and not outage.escalated  # the last local model answered
    assert [a.error_type for a in outage.attempts] == ["server_error", "server_error", "usage_store_unavailable", None]
    assert outage.attempts[2].error_message.startswith(f"the usage store {pg_url} is unavailable")
    assert fake_anthropic.message_requests()[0]["messages"][0]["content"] == "y"  # nothing went out during the outage
    assert back.ok and back.escalated  # the next escalation reconnected
