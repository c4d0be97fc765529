"""`costline demo` end to end, as a user runs it, then checked against the ledger it leaves behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from costline import spans as attr
from costline.demo.fake_anthropic import ClaudeError, ClaudeReply
from costline.demo.fake_ollama import OllamaError, OllamaHang, OllamaReply, OllamaStreamError
from costline.demo.profiles import LOCAL_PROFILES
from costline.demo.run import MARKER, SQL_TO_TRY, DemoError, _toml_config, _write_config, prepare_directory
from costline.demo.via_proxy import DemoProxy, RecordingRouter, TeamClients
from costline.demo.workload import KINDS, TEAMS, Simulation, make_tasks

COSTLINE = Path(sys.executable).with_name("costline")


def run_demo(directory: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COSTLINE_", "ANTHROPIC_", "OTEL_"))}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [str(COSTLINE), "demo", "--dir", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def ledger_rows(path: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.sql(sql).fetchall()


@pytest.mark.slow
def test_demo_ledger_agrees_with_what_was_routed_and_printed(tmp_path):
    directory = tmp_path / "demo"
    done = run_demo(directory, "--tasks", "60", "--quota", "3")
    assert done.returncode == 0, done.stderr + done.stdout
    out = done.stdout
    assert "SIMULATED Ollama" in out
    assert "SIMULATED Claude" in out

    summary = json.loads((directory / "summary.json").read_text())
    ledger = directory / "costline.duckdb"
    [(tasks, attempts, cost)] = ledger_rows(
        ledger,
        "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM attempts), "
        "(SELECT coalesce(sum(cost_usd), 0) FROM attempts)",
    )
    assert tasks == summary["tasks"] == 60
    assert attempts == summary["attempts"]
    # The ledger keeps each attempt's cost to the nano-dollar (DECIMAL(18, 9)); the router sums unrounded prices.
    assert abs(cost - Decimal(summary["routed_cost_usd"])) <= Decimal("1e-9") * attempts
    outcomes = dict(ledger_rows(ledger, "SELECT outcome, count(*) FROM tasks GROUP BY outcome"))
    assert outcomes == summary["outcomes"]
    assert outcomes.get("quota_exhausted", 0) > 0  # a quota of 3 calls cannot cover 60 tasks' escalations
    [(escalated,)] = ledger_rows(ledger, "SELECT count(*) FROM tasks WHERE escalated")
    assert escalated == summary["escalated_tasks"] > 0
    # Each task the quota stopped has its refused escalation on record (others went on down the local chain).
    [(refused_tasks, unexplained)] = ledger_rows(
        ledger,
        "SELECT (SELECT count(DISTINCT task_id) FROM attempts WHERE error_type = 'quota_exhausted'), "
        "(SELECT count(*) FROM tasks t WHERE outcome = 'quota_exhausted' AND NOT EXISTS "
        "(SELECT 1 FROM attempts a WHERE a.task_id = t.task_id AND a.error_type = 'quota_exhausted'))",
    )
    assert refused_tasks >= outcomes["quota_exhausted"]
    assert unexplained == 0

    # Every attempt hangs under its task, and the attempt counts on the task rows add up.
    [(orphans,)] = ledger_rows(
        ledger, "SELECT count(*) FROM attempts a ANTI JOIN tasks t ON a.task_id = t.task_id AND a.trace_id = t.trace_id"
    )
    assert orphans == 0
    [(declared,)] = ledger_rows(ledger, "SELECT sum(attempts) FROM tasks")
    assert declared == attempts

    # The printed figures are the ledger's.
    assert f"Ledger: {tasks} tasks and {attempts} attempts stored, total cost ${cost:.6f} — matches the routers" in out
    [(local_ok,)] = ledger_rows(ledger, "SELECT count(*) FROM tasks WHERE outcome = 'completed' AND NOT escalated")
    [(claude_ok,)] = ledger_rows(ledger, "SELECT count(*) FROM tasks WHERE outcome = 'completed' AND escalated")
    [(refused,)] = ledger_rows(ledger, "SELECT count(*) FROM attempts WHERE error_type = 'quota_exhausted'")
    assert refused > 0  # the demo's quota is small on purpose
    assert (
        f"Routed {tasks} tasks ({attempts} attempts, {refused} of them escalations refused before sending) in " in out
        and f"{local_ok} tasks completed locally, {claude_ok} completed on Claude, "
        f"{outcomes.get('quota_exhausted', 0)} ended refused by the quota, {outcomes.get('failed', 0)} failed."
        in out
    )
    assert "escalation calls, last hour" in out
    assert re.search(r"escalation calls, last hour\s+3 / 3\s+0\.0 % headroom", out)
    assert str(ledger) in out
    assert re.search(r"metrics\s+http://127\.0\.0\.1:\d+/metrics", out)
    for _, sql in SQL_TO_TRY:
        assert ledger_rows(ledger, sql), sql
    assert out.count("costline sql --config") == 3  # costline, or the venv's script when it is not on PATH
    # The commands it prints work when pasted as printed, from where the demo ran.
    printed = [line.strip() for line in out.splitlines() if re.match(r"\s+\S*costline sql --config ", line)]
    hint = re.search(r"\((\S*costline report --config \S+ --by team)\)", out)
    assert hint is not None and len(printed) == 3
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COSTLINE_", "ANTHROPIC_", "OTEL_"))}
    for command in [*printed, hint.group(1)]:
        pasted = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60, env=env, check=False)
        assert pasted.returncode == 0 and pasted.stdout.strip(), command + pasted.stderr

    # Every local model and Claude did real work, and local failures of several kinds were recorded.
    models = dict(ledger_rows(ledger, "SELECT request_model, count(*) FROM attempts GROUP BY ALL"))
    assert {LOCAL_PROFILES[0].model, LOCAL_PROFILES[1].model, "claude-sonnet-4-6"} <= set(models)
    assert set(models) <= {p.model for p in LOCAL_PROFILES} | {"claude-sonnet-4-6"}
    [(error_kinds,)] = ledger_rows(
        ledger, "SELECT count(DISTINCT error_type) FROM attempts WHERE provider = 'ollama' AND outcome = 'error'"
    )
    assert error_kinds >= 2


@pytest.mark.slow
def test_demo_proxy_part_each_request_one_task_and_team_dollars_from_the_ledger(tmp_path):
    directory = tmp_path / "demo"
    done = run_demo(directory, "--tasks", "60", "--seed", "11")
    assert done.returncode == 0, done.stderr + done.stdout
    out = done.stdout
    summary = json.loads((directory / "summary.json").read_text())
    ledger = directory / "costline.duckdb"
    sent = Counter(t.team.name for t in make_tasks(60, seed=11) if t.team is not None)
    assert set(sent) == {"search", "support"}  # both teams' tools send requests

    # Every proxy request is one task in the ledger, once, under its team.
    proxied = summary["proxy"]["task_ids"]
    assert summary["proxy"]["requests"] == len(proxied) == len(set(proxied)) == sum(sent.values())
    stored = dict(ledger_rows(ledger, "SELECT task_id, count(*) FROM tasks WHERE team IS NOT NULL GROUP BY task_id"))
    assert sorted(stored) == proxied and set(stored.values()) == {1}
    by_team = {
        team: (tasks, cost)
        for team, tasks, cost in ledger_rows(
            ledger, "SELECT team, count(DISTINCT task_id), sum(cost_usd) FROM attempts GROUP BY team"
        )
    }
    assert {team: tasks for team, (tasks, _) in by_team.items() if team} == dict(sent)
    assert by_team[None][0] == summary["no_team"]["tasks"] == 60 - sum(sent.values())
    [(attempts,)] = ledger_rows(ledger, "SELECT count(*) FROM attempts")

    # The summary's dollars per team are the ledger's sums by team (to the nano-dollar per attempt).
    assert set(summary["teams"]) == {"search", "support"}
    for team, routed in [*summary["teams"].items(), (None, summary["no_team"])]:
        tasks, cost = by_team[team]
        assert routed["tasks"] == tasks
        assert abs(Decimal(routed["routed_cost_usd"]) - cost) <= Decimal("1e-9") * attempts, team
    # And so are the printed ones.
    printed = re.search(r"Ledger by team: (.*) — each proxy request is one task\.", out)
    assert printed is not None, out
    shown = dict(
        (name, (int(tasks), Decimal(cost)))
        for name, tasks, cost in re.findall(r"(search|support|no team \(Python API\)) (\d+) tasks \$(\d+\.\d{6})", out)
    )
    assert shown == {
        "search": (by_team["search"][0], round(by_team["search"][1], 6)),
        "support": (by_team["support"][0], round(by_team["support"][1], 6)),
        "no team (Python API)": (by_team[None][0], round(by_team[None][1], 6)),
    }
    assert f"{sent['search']} OpenAI API requests from team search" in out
    assert f"{sent['support']} Ollama API requests from team support" in out

    # Each team's project and users came through: headers, and OpenAI's own `user` field for team search.
    attribution = set(
        ledger_rows(ledger, "SELECT DISTINCT team, project, user_id FROM attempts WHERE team IS NOT NULL")
    )
    assert {(team, project) for team, project, _ in attribution} == {(t.name, t.project) for t in TEAMS}
    assert all(user in next(t.users for t in TEAMS if t.name == team) for team, _, user in attribution)
    # Both teams are declared in the config; search's daily budget is shown with its headroom.
    assert re.search(r"team search, daily budget\s+\$\d+\.\d\d / \$\d+\.\d\d\s+\d+\.\d % headroom", out)
    assert re.search(r"team support, today\s+\$\d+\.\d\d\s+no budget of its own", out)


@pytest.mark.slow
def test_demo_runs_twice_in_a_row_on_a_fresh_ledger(tmp_path):
    directory = tmp_path / "demo"
    for _ in range(2):
        done = run_demo(directory, "--tasks", "15")
        assert done.returncode == 0, done.stderr + done.stdout
        [(tasks,)] = ledger_rows(directory / "costline.duckdb", "SELECT count(*) FROM tasks")
        assert tasks == 15


def test_demo_refuses_to_delete_a_directory_it_did_not_create(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    done = run_demo(precious, "--tasks", "5")
    assert done.returncode == 1
    assert "was not created by `costline demo`" in done.stderr
    assert (precious / "thesis.tex").read_text() == "years of work"
    with pytest.raises(DemoError):
        prepare_directory(precious)


def test_prepare_directory_recreates_its_own_directory(tmp_path):
    directory = prepare_directory(tmp_path / "d")
    (directory / "old.duckdb").write_text("stale")
    again = prepare_directory(directory)
    assert sorted(p.name for p in again.iterdir()) == [MARKER]


def _ctrl_c_interrupts() -> None:
    """In the child: SIGINT interrupts, as Ctrl-C in a terminal does, even when the test runner was started in the
    background (a shell starts background jobs with SIGINT ignored, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_keep_serving_stays_up_until_ctrl_c_and_then_leaves_nothing_running(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COSTLINE_", "ANTHROPIC_", "OTEL_"))}
    proc = subprocess.Popen(
        [str(COSTLINE), "demo", "--dir", str(tmp_path / "demo"), "--tasks", "10", "--keep-serving"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=_ctrl_c_interrupts,
    )
    lines: list[str] = []
    serving = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Collector still serving" in line:
                serving.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert serving.wait(120), "".join(lines)
        url = re.search(r"Collector still serving: (http://127\.0\.0\.1:(\d+)/metrics)", "".join(lines))
        assert url is not None
        import urllib.request

        with urllib.request.urlopen(url.group(1), timeout=10) as response:
            assert "costline_attempts_total" in response.read().decode()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=5)
    assert "interrupted" in "".join(lines)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(url.group(2)))) != 0  # nothing listens any more


# --- the workload and the simulation, without servers ------------------------------------------------------------


def test_workload_is_seeded_and_mixed():
    first, second = make_tasks(300, seed=7), make_tasks(300, seed=7)
    assert [(t.kind.type, t.input_tokens, t.critical) for t in first] == [
        (t.kind.type, t.input_tokens, t.critical) for t in second
    ]
    kinds = Counter(t.kind.type for t in first)
    assert set(kinds) == {k.type for k in KINDS}
    assert sum(t.kind.prefer_escalation for t in first) > 0
    assert any(t.critical for t in first)
    assert make_tasks(300, seed=8) != first
    # About a third come through the proxy from the two teams, each with one of its users.
    senders = Counter(t.team.name if t.team else None for t in first)
    assert set(senders) == {None, "search", "support"}
    assert 60 <= senders["search"] + senders["support"] <= 140
    assert all(t.user in t.team.users for t in first if t.team) and all(t.user is None for t in first if not t.team)


def test_each_teams_tool_goes_through_a_real_proxy_and_gets_the_status_of_its_task(
    tmp_path, fake_ollama, fake_anthropic, tracer_provider, spans
):
    # The demo's own config: both teams declared, support's table empty; an escalation quota of 0.
    config = _write_config(
        tmp_path / "costline.toml",
        _toml_config(tmp_path, fake_ollama.url, fake_anthropic.url, 0, "http://127.0.0.1:4318", (0, 0)),
    )
    assert config.team_budgets["search"].daily_usd > 0
    assert (config.team_budgets["support"].daily_usd, config.team_budgets["support"].monthly_usd) == (0, 0)
    tasks = [t for t in make_tasks(300, seed=7) if t.team and not t.kind.prefer_escalation and not t.critical]
    search = next(t for t in tasks if t.team.name == "search")
    support = [t for t in tasks if t.team.name == "support"][:2]
    token = "demo-proxy-test-token"
    with (
        RecordingRouter(config, tracer_provider=tracer_provider) as router,
        DemoProxy(router, token) as proxy,
        TeamClients(proxy, token) as clients,
    ):
        answered = [clients.send(search), clients.send(support[0])]
        for profile in LOCAL_PROFILES:  # the whole local chain fails; Claude is refused by the quota of 0
            fake_ollama.script(profile.model, OllamaError(500))
        refused = clients.send(support[1])
    assert [p.status for p in answered] == [200, 200] and all(p.result.ok for p in answered)
    assert refused.status == 429 and refused.result.outcome == "quota_exhausted"
    for sent in [*answered, refused]:
        task_span = spans.task(sent.result.task_id)
        assert task_span.attributes[attr.TEAM] == sent.task.team.name
        assert task_span.attributes[attr.PROJECT] == sent.task.team.project
        assert task_span.attributes[attr.USER_ID] == sent.task.user
        assert task_span.attributes[attr.TASK_TYPE] == sent.task.kind.type
        assert len(spans.attempts(sent.result.task_id)) == len(sent.result.attempts)


def test_simulation_decides_per_task_model_and_call_whatever_the_order():
    tasks = make_tasks(200, seed=3)
    profile = LOCAL_PROFILES[0]

    def answers(order: list[int]) -> dict[int, object]:
        answer = Simulation(tasks, seed=3).ollama(profile)
        return {n: answer({"model": profile.model, "messages": [tasks[n].to_task().conversation()[0]]}) for n in order}

    forward = answers(list(range(200)))
    assert forward == answers(list(reversed(range(200))))
    kinds = Counter(type(b).__name__ for b in forward.values())
    assert kinds["OllamaReply"] > 150
    assert sum(kinds[k] for k in ("OllamaError", "OllamaStreamError", "OllamaHang")) > 0
    rejected = [
        n
        for n, b in forward.items()
        if isinstance(b, OllamaReply) and (check := tasks[n].kind.validator) is not None and check(b.content)
    ]
    assert rejected  # some answers are ones the task's validator turns down
    for n, b in forward.items():
        if isinstance(b, OllamaReply):
            assert b.prompt_eval_count == tasks[n].input_tokens
            assert b.eval_duration_s == pytest.approx(b.eval_count / profile.output_tokens_per_s)
    assert all(not isinstance(b, OllamaHang) or b.seconds > 2 for b in forward.values())
    assert all(not isinstance(b, OllamaError) or b.status in (500, 503) for b in forward.values())
    assert all(not isinstance(b, OllamaStreamError) or b.after_chunks == 2 for b in forward.values())


def test_simulated_claude_reports_cache_use_and_fails_sometimes():
    tasks = make_tasks(300, seed=5)
    simulation = Simulation(tasks, seed=5)
    replies = [
        simulation.anthropic({"model": "claude-sonnet-4-6", "messages": t.to_task().conversation()}) for t in tasks
    ]
    ok = [r for r in replies if isinstance(r, ClaudeReply)]
    assert ok[0].cache_creation_input_tokens > 0 and ok[0].cache_read_input_tokens == 0
    assert any(r.cache_read_input_tokens > 0 for r in ok)
    errors = {r.status for r in replies if isinstance(r, ClaudeError)}
    assert errors == {429, 529}
    assert all(r.retry_after is not None for r in replies if isinstance(r, ClaudeError) and r.status == 429)


@pytest.mark.slow
def test_demo_can_feed_an_already_running_collector(tmp_path):
    """The compose `demo` service: spans go to the stack's collector, whose ledger then holds every one."""
    from collector.service import Collector
    from costline.config import load_config, with_overrides

    config = with_overrides(
        load_config(env={}),
        collector={"ledger": str(tmp_path / "stack.duckdb"), "otlp_port": 0, "metrics_port": 0},
    )
    collector = Collector(config).start()
    try:
        done = run_demo(tmp_path / "demo", "--tasks", "20", "--otlp-endpoint", collector.otlp_url)
    finally:
        collector.stop()
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"Spans sent to {collector.otlp_url}" in done.stdout
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert not (tmp_path / "demo" / "costline.duckdb").exists()
    [(tasks, attempts)] = ledger_rows(
        tmp_path / "stack.duckdb", "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM attempts)"
    )
    assert (tasks, attempts) == (summary["tasks"], summary["attempts"]) == (20, summary["attempts"])


@pytest.mark.slow
def test_ctrl_c_while_routing_stops_every_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COSTLINE_", "ANTHROPIC_", "OTEL_"))}
    env["COLUMNS"] = "200"
    proc = subprocess.Popen(
        [str(COSTLINE), "demo", "--dir", str(tmp_path / "demo"), "--tasks", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=_ctrl_c_interrupts,
    )
    assert proc.stdout is not None
    banner = ""
    for line in proc.stdout:
        banner += line
        if "metrics http://" in line:
            break
    ports = [int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", banner)]
    assert len(ports) == 5  # simulated Ollama and Claude, the proxy, the collector's OTLP and metrics servers
    threading.Event().wait(1.0)  # let the routing get going
    proc.send_signal(signal.SIGINT)
    try:
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "interrupted: the simulated servers and the collector are stopped." in rest
    assert "Traceback" not in rest
    for port in ports:
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
