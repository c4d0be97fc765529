"""Security: an optional bearer token for ingest (compared in constant time), a warning when the collector listens
beyond loopback without one, no secret in any output of a full run, and SQL that can neither write nor be
injected into."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import subprocess
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pytest
from faults.metrics import scrape_text
from faults.otlp import make_batch, post
from faults.proxy import FlakyProxy
from faults.serve import ServedCollector, costline_command
from typer.testing import CliRunner

import collector.http
import collector.service
from collector.service import Collector
from costline.cli.app import app
from costline.config import load_config, with_overrides
from costline.demo.fake_anthropic import ClaudeReply, FakeAnthropic
from costline.demo.fake_ollama import FakeOllama, OllamaError

TOKEN = f"ingest-SENTINEL-{uuid.uuid4().hex}"
API_KEY = f"sk-ant-SENTINEL-{uuid.uuid4().hex}"
WRONG_KEY = f"sk-ant-WRONG-SENTINEL-{uuid.uuid4().hex}"
SECRETS = (TOKEN, API_KEY, WRONG_KEY)


def _config(tmp_path: Path, **collector_values: Any):  # type: ignore[no-untyped-def]
    return with_overrides(
        load_config(env={}),
        collector={"otlp_port": 0, "metrics_port": 0, "ledger": str(tmp_path / "ledger.duckdb"), **collector_values},
        router={"usage_db": str(tmp_path / "usage.sqlite")},
    )


# --- bearer token ----------------------------------------------------------------------------------------------------


def test_ingest_with_a_token_refuses_missing_and_wrong_tokens_with_401(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COSTLINE_INGEST_TOKEN", TOKEN)
    compared: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(collector.http.hmac, "compare_digest", spy)
    batch = make_batch(random.Random(4), 2)
    with Collector(_config(tmp_path)) as served:
        url = f"{served.otlp_url}/v1/traces"
        missing = post(url, batch.body)
        wrong = post(url, batch.body, headers={"Authorization": f"Bearer {TOKEN}x"})
        basic = post(url, batch.body, headers={"Authorization": f"Basic {TOKEN}"})
        as_json = post(url, b"{}", content_type="application/json", headers={"Authorization": "Bearer nope"})
        right = post(url, batch.body, headers={"Authorization": f"Bearer {TOKEN}"})
        con = served.connection
        try:
            stored = con.execute("SELECT count(*) FROM attempts").fetchone()
        finally:
            con.close()
        query = post(
            f"{served.metrics_url}/api/v1/query",
            json.dumps({"sql": "SELECT 1"}).encode(),
            content_type="application/json",
        )
    assert [missing.status, wrong.status, basic.status, as_json.status, right.status] == [401, 401, 401, 401, 200]
    assert b"missing or wrong bearer token" in missing.body and TOKEN.encode() not in wrong.body
    assert json.loads(as_json.body)["message"] == "missing or wrong bearer token"
    assert stored == (2,)  # only the authorised request was stored
    assert query.status == 401  # the read endpoint wants the token too
    # Every check went through the constant-time comparison, against the full expected header.
    assert len(compared) >= 5 and all(b == f"Bearer {TOKEN}".encode() for _, b in compared)


def test_listening_beyond_loopback_without_a_token_warns(tmp_path, monkeypatch, caplog) -> None:
    # The warning depends on the configured host; the sockets still bind to loopback only in this test.
    bind = collector.service.make_server
    monkeypatch.setattr(collector.service, "make_server", lambda host, port, handler: bind("127.0.0.1", port, handler))
    monkeypatch.delenv("COSTLINE_INGEST_TOKEN", raising=False)
    with caplog.at_level(logging.WARNING, logger="costline.collector"), Collector(_config(tmp_path, host="0.0.0.0")):
        pass
    warned = [r.getMessage() for r in caplog.records if "beyond loopback" in r.getMessage()]
    assert warned == [
        "collector listens on 0.0.0.0, beyond loopback, without COSTLINE_INGEST_TOKEN: anyone who can reach it can "
        "write spans into the ledger; set COSTLINE_INGEST_TOKEN to require a bearer token"
    ]

    caplog.clear()
    monkeypatch.setenv("COSTLINE_INGEST_TOKEN", TOKEN)
    with caplog.at_level(logging.WARNING, logger="costline.collector"), Collector(_config(tmp_path, host="0.0.0.0")):
        pass
    assert not [r for r in caplog.records if "beyond loopback" in r.getMessage()]
    caplog.clear()
    monkeypatch.delenv("COSTLINE_INGEST_TOKEN")
    with caplog.at_level(logging.WARNING, logger="costline.collector"), Collector(_config(tmp_path)):
        pass
    assert not [r for r in caplog.records if "beyond loopback" in r.getMessage()]


# --- no secret in any output of a full run ---------------------------------------------------------------------------


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*costline_command(), *args], capture_output=True, env=env, cwd=cwd, timeout=120)


def _write_router_config(path: Path, *, ollama: str, claude: str, otlp: str, served: ServedCollector) -> Path:
    path.write_text(
        f"""
[router]
ollama_host = "{ollama}"
models = ["qwen2.5-coder:14b", "qwen3:30b-a3b"]
timeout_s = 5
usage_db = "{path.parent / "usage.sqlite"}"
max_retries = 1
[escalation]
base_url = "{claude}"
[telemetry]
otlp_endpoint = "{otlp}"
capture_content = true
[collector]
host = "127.0.0.1"
otlp_port = {served.otlp_port}
metrics_port = {served.metrics_port}
ledger = "{served.ledger}"
""",
        encoding="utf-8",
    )
    return path


@pytest.mark.slow
def test_a_full_route_collect_report_run_leaks_no_secret_anywhere(tmp_path: Path) -> None:
    outputs: dict[str, bytes] = {}
    ledger = tmp_path / "ledger.duckdb"
    with (
        FakeOllama() as ollama,
        FakeAnthropic(api_key=API_KEY) as claude,
        ServedCollector(tmp_path, ledger, env={"COSTLINE_INGEST_TOKEN": TOKEN}) as served,
    ):
        served.start("--verbose")
        ollama.set_default("qwen2.5-coder:14b", OllamaError(500))
        ollama.set_default("qwen3:30b-a3b", OllamaError(503))
        claude.set_default("claude-sonnet-4-6", ClaudeReply(text="the answer"))
        with FlakyProxy(served.otlp_url, record=True) as spy:  # records every exported span body on its way
            config = _write_router_config(
                tmp_path / "router.toml", ollama=ollama.url, claude=claude.url, otlp=spy.url, served=served
            )
            base = {k: v for k, v in os.environ.items() if not k.startswith(("COSTLINE_", "OTEL_", "ANTHROPIC_"))}
            env = {**base, "ANTHROPIC_API_KEY": API_KEY, "COSTLINE_INGEST_TOKEN": TOKEN}
            routed = _cli(["route", "say something", "--config", str(config)], env, tmp_path)
            assert routed.returncode == 0, routed.stderr.decode()
            assert routed.stdout.decode().strip() == "the answer"
            wrong_env = {**env, "ANTHROPIC_API_KEY": WRONG_KEY}
            wrong = _cli(["route", "again", "--claude", "--config", str(config)], wrong_env, tmp_path)
            assert wrong.returncode == 1 and b"check ANTHROPIC_API_KEY" in wrong.stderr
            runs = {"route": routed, "route-wrong-key": wrong}
            for name, args in {
                "report": ["report", "--since", "1d", "--format", "json"],
                "report-escalations": ["report", "escalations", "--since", "1d"],
                "sql": ["sql", "SELECT * FROM attempts", "--format", "json"],
                "usage": ["usage", "--format", "json"],
            }.items():
                runs[name] = _cli([*args, "--config", str(config)], env, tmp_path)
                assert runs[name].returncode == 0, (name, runs[name].stderr.decode())
            stored = json.loads(runs["sql"].stdout)
            metrics = scrape_text(served.metrics_url)
        assert served.stop() == 0

    # The spans really went through (the token was accepted), and the keys really were used.
    assert len(stored) == 3 + 1, "the router's spans did not reach the ledger"
    assert [r["error_type"] for r in sorted(stored, key=lambda r: (r["task_id"], r["attempt_index"]))].count(
        "authentication"
    ) == 1
    assert len(claude.message_requests()) == 2
    assert spy.bodies and all(h.get("authorization") == f"Bearer {TOKEN}" for h in spy.headers)

    for name, run in runs.items():
        outputs[f"{name} stdout"], outputs[f"{name} stderr"] = run.stdout, run.stderr
    outputs["/metrics"] = metrics.encode()
    for n, body in enumerate(spy.bodies):
        outputs[f"exported span request {n}"] = body
    for path in sorted(tmp_path.rglob("*")):  # serve logs, the ledger and its WAL, usage.sqlite and its WAL …
        if path.is_file():
            outputs[str(path.relative_to(tmp_path))] = path.read_bytes()
    assert any(name.endswith("ledger.duckdb") for name in outputs) and any("usage.sqlite" in n for n in outputs)
    leaks = [(name, secret[:20]) for name, data in outputs.items() for secret in SECRETS if secret.encode() in data]
    assert leaks == []


# --- SQL: read-only, and never built from user input ------------------------------------------------------------------

WRITES = [
    "INSERT INTO attempts SELECT * FROM attempts",
    "UPDATE attempts SET cost_usd = 0",
    "DELETE FROM attempts",
    "DROP TABLE attempts",
    "CREATE TABLE evil AS SELECT 1",
    "CREATE VIEW evil AS SELECT 1",
    "ALTER TABLE attempts ADD COLUMN evil INT",
    "COPY attempts TO 'stolen.csv'",
    "COPY (SELECT * FROM attempts) TO 'stolen.parquet'",
    "EXPORT DATABASE 'stolen'",
    "ATTACH 'other.duckdb' AS other",
    "DETACH ledger",
    "PRAGMA enable_profiling",
    "SET memory_limit = '1GB'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "CHECKPOINT",
    "VACUUM",
    "CALL pragma_version()",
    "SELECT 1; DELETE FROM attempts",
    "DELETE FROM attempts; SELECT 1",
    "SELECT 1; SELECT 2",
    "WITH gone AS (DELETE FROM attempts RETURNING *) SELECT count(*) FROM gone",
    "SELECT checkpoint()",
]
# The collector's endpoint answers over the network: there, reading the server's files is refused too.
FILE_READS = ["SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM read_text('/etc/hostname')"]


@pytest.fixture
def sql_ledger(tmp_path: Path) -> tuple[Path, Path]:
    """A ledger with rows, and a config pointing at it (collector on free ports, not running)."""
    with Collector(_config(tmp_path)) as served:
        rng = random.Random(8)
        for _ in range(3):
            assert post(f"{served.otlp_url}/v1/traces", make_batch(rng, 2).body).status == 200
    config = tmp_path / "c.toml"
    config.write_text(f'[collector]\nledger = "{tmp_path / "ledger.duckdb"}"\nmetrics_port = 1\n', encoding="utf-8")
    return tmp_path / "ledger.duckdb", config


def _fingerprint(ledger: Path) -> str:
    con = duckdb.connect(str(ledger), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]
        rows = [con.execute(f'SELECT * FROM "{t}" ORDER BY ALL').fetchall() for t in tables]
    finally:
        con.close()
    return hashlib.sha256(repr((tables, rows)).encode()).hexdigest()


@pytest.mark.parametrize("statement", WRITES)
def test_costline_sql_cannot_write_from_the_file(sql_ledger, statement, monkeypatch) -> None:
    ledger, config = sql_ledger
    monkeypatch.chdir(ledger.parent)
    before, files = _fingerprint(ledger), sorted(p.name for p in ledger.parent.iterdir())
    result = CliRunner().invoke(app, ["sql", statement, "--config", str(config)])
    assert result.exit_code != 0, result.output
    assert _fingerprint(ledger) == before
    assert sorted(p.name for p in ledger.parent.iterdir()) == files  # no file written beside it


def test_costline_sql_cannot_write_through_the_running_collector(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.duckdb"
    with ServedCollector(tmp_path, ledger) as served:
        served.start()
        assert post(served.traces_url, make_batch(random.Random(2), 3).body).status == 200
        count = "SELECT (SELECT count(*) FROM attempts) AS attempts, (SELECT count(*) FROM tasks) AS tasks"
        env = {k: v for k, v in os.environ.items() if not k.startswith("COSTLINE_")}
        refused = {}
        for statement in WRITES + FILE_READS:
            answer = post(
                f"{served.metrics_url}/api/v1/query",
                json.dumps({"sql": statement, "params": []}).encode(),
                content_type="application/json",
            )
            refused[statement] = answer.status
        cli = _cli(["sql", "DELETE FROM attempts", "--config", str(served.config)], env, tmp_path)
        after = _cli(["sql", count, "--format", "json", "--config", str(served.config)], env, tmp_path)
        files = sorted(p.name for p in tmp_path.iterdir())
        assert served.stop() == 0
    assert all(status == 400 for status in refused.values()), refused
    assert cli.returncode == 1 and b"only read-only queries are allowed" in cli.stderr
    assert json.loads(after.stdout) == [{"attempts": 3, "tasks": 1}]
    assert not any(name.startswith(("stolen", "other")) for name in files)


INJECTIONS = [
    (["report", "--since", "7d'; DELETE FROM attempts; --"], "is not a window"),
    (["report", "--since", "1d", "--by", "model; DELETE FROM attempts"], "not a column"),
    (["report", "--since", "1d", "--by", "model,(SELECT 1)"], "--by (select 1): not a column"),
    (["report", "--from", "2026-01-01' OR 1=1 --"], "is not a date"),
    (["report", "escalations", "--since", "1 day); DROP TABLE attempts; --"], "is not a window"),
    (["report", "savings", "--since", "1d' UNION SELECT 1 --"], "is not a window"),
]


@pytest.mark.parametrize(("args", "message"), INJECTIONS, ids=[" ".join(a)[:40] for a, _ in INJECTIONS])
def test_report_options_are_checked_not_spliced_into_sql(sql_ledger, args, message) -> None:
    ledger, config = sql_ledger
    before = _fingerprint(ledger)
    result = CliRunner().invoke(app, [*args, "--config", str(config)])
    assert result.exit_code == 2, result.output  # a usage error naming the option, before any SQL runs
    assert message in result.output
    assert _fingerprint(ledger) == before


@pytest.mark.parametrize("statement", FILE_READS)
def test_costline_sql_cannot_read_other_files_from_the_ledger_file(sql_ledger, statement) -> None:
    _, config = sql_ledger
    result = CliRunner().invoke(app, ["sql", statement, "--config", str(config)])
    assert result.exit_code != 0
    assert "root:" not in result.output and "file system operations are disabled" in result.output
