"""`costline demo`: a mixed workload through the real pipeline on SIMULATED models — part of it through
`costline proxy` from two teams' tools — then reports from the ledger."""

from __future__ import annotations

import shlex
import shutil
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from collector.reports import Report, cost_report, escalation_report, savings_report
from costline.cli.app import app, console, fail
from costline.cli.report import ReportFormat, render_report
from costline.demo.profiles import CLAUDE_PROFILE, LOCAL_PROFILES, SPEEDUP
from costline.ledger_reader import LedgerError
from costline.spans import OUTCOME_BUDGET_EXHAUSTED, OUTCOME_CANCELLED, OUTCOME_TRUNCATED, REFUSAL_ERROR_TYPES

if TYPE_CHECKING:
    from costline.demo.run import DemoRun


@app.command()
def demo(
    tasks: Annotated[int, typer.Option("--tasks", "-n", min=1, help="How many tasks to route.")] = 300,
    directory: Annotated[
        Path, typer.Option("--dir", help="Demo directory (ledger, config, usage db); deleted and recreated each run.")
    ] = Path("costline-demo"),
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Tasks routed at once.")] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the workload and the simulated answers.")] = 7,
    quota: Annotated[
        int | None, typer.Option("--quota", min=0, help="Escalation calls per hour (default: 10 % of the tasks).")
    ] = None,
    keep_serving: Annotated[
        bool, typer.Option("--keep-serving", help="Leave the collector (/metrics, query API) up until Ctrl-C.")
    ] = False,
    otlp_endpoint: Annotated[
        str | None,
        typer.Option("--otlp-endpoint", help="Send the spans to this running collector instead of starting one."),
    ] = None,
) -> None:
    """The whole pipeline end to end on SIMULATED Ollama and Claude, then the cost reports."""
    # Imported here: the router and the Anthropic SDK take a second to load, which every other command would pay.
    from costline.demo.run import Demo, DemoError, DemoOptions, ctrl_c_noticed, wait_for_interrupt

    options = DemoOptions(tasks, directory, concurrency, seed, quota, keep_serving, otlp_endpoint)
    demo_run = Demo(options, console)
    try:
        with ctrl_c_noticed(), demo_run:
            run = demo_run.run(on_started=_print_banner)
            if run.ledger is None:
                _print_router_summary(run)
                return
            _print_reports(run)
            if keep_serving:
                metrics_url = demo_run.serve(run)
                console.print(
                    f"\n[bold]Collector still serving[/bold]: {metrics_url} — Ctrl-C to stop.", highlight=False
                )
                wait_for_interrupt()
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted[/yellow]: the simulated servers and the collector are stopped.")
        raise typer.Exit(130) from None
    except (DemoError, LedgerError) as exc:
        fail(str(exc))


def _print_banner(run: DemoRun) -> None:
    chain = " → ".join(p.model for p in LOCAL_PROFILES)
    lines = Text()
    lines.append("SIMULATED Ollama  ", style="bold magenta")
    lines.append(f"{run.ollama_url}  {chain}\n")
    lines.append("SIMULATED Claude  ", style="bold magenta")
    quota = run.config.escalation.max_calls_per_hour
    lines.append(f"{run.claude_url}  {CLAUDE_PROFILE.model} (escalation quota: {quota} calls/hour)\n")
    if run.proxy_url:
        from costline.demo.workload import TEAMS  # loads the router: only once the demo runs

        teams = " · ".join(f"team {t.name}: {t.api} API" for t in TEAMS)
        lines.append("costline proxy    ", style="bold")
        lines.append(f"{run.proxy_url}  {teams}\n")
    if run.metrics_url:
        lines.append("collector         ", style="bold")
        lines.append(f"OTLP {run.config.telemetry.otlp_endpoint}  metrics {run.metrics_url}\n")
        lines.append("ledger            ", style="bold")
        lines.append(f"{_shown(run.ledger_path)} (fresh)\n")
    else:
        lines.append("spans to          ", style="bold")
        lines.append(f"{run.config.telemetry.otlp_endpoint}\n")
    lines.append(
        "\nNo real model runs and no real API key is used. The simulated servers speak the real Ollama and Anthropic "
        "HTTP APIs to the real client libraries, report realistic token counts and durations (then answer "
        f"{SPEEDUP:g}x faster), and fail at realistic rates: busy, crashed, broken streams, hangs, bad answers, "
        "429 and 529."
    )
    title = f"costline demo — {run.options.tasks} tasks on SIMULATED models, some through costline proxy"
    console.print(Panel(lines, title=title, title_align="left", border_style="magenta"), highlight=False)


def _routing_line(run: DemoRun) -> str:
    outcomes = run.outcomes()
    escalated = sum(r.escalated for r in run.results if r.outcome == "completed")
    local = outcomes["completed"] - escalated
    # Outcomes this workload rarely or never has are named only when they happened.
    others = "".join(
        f", {outcomes[o]} {o.replace('_', ' ')}"
        for o in (OUTCOME_BUDGET_EXHAUSTED, OUTCOME_TRUNCATED, OUTCOME_CANCELLED)
        if outcomes[o]
    )
    # Tasks and attempts apart: a task the quota stopped may have had several escalations refused on the way.
    refused = sum(a.error_type in REFUSAL_ERROR_TYPES for r in run.results for a in r.attempts)
    return (
        f"Routed {len(run.results)} tasks ({run.attempts} attempts, {refused} of them escalations refused before "
        f"sending) in {run.elapsed_s:.1f} s, {run.options.concurrency} at a time: {local} tasks completed locally, "
        f"{escalated} completed on Claude, {outcomes['quota_exhausted']} ended refused by the quota, "
        f"{outcomes['failed']} failed{others}."
    )


def _proxy_line(run: DemoRun) -> str:
    """What went through the proxy, as its clients saw it."""
    from costline.demo.workload import TEAMS

    if not run.proxied:
        return f"No task went through costline proxy; all {len(run.results)} used the Python API."
    sent = Counter(p.team for p in run.proxied)
    teams = " and ".join(f"{sent[t.name]} {t.api} API requests from team {t.name}" for t in TEAMS)
    statuses = ", ".join(f"{n} × HTTP {s}" for s, n in sorted(Counter(p.status for p in run.proxied).items()))
    return (
        f"Through costline proxy: {teams} ({statuses}); the other {len(run.results) - len(run.proxied)} tasks "
        "used the Python API."
    )


def _teams_line(run: DemoRun) -> str:
    """Each team's tasks and dollars as the ledger has them (`costline report --by team`)."""
    from costline.demo.workload import TEAMS

    shown = []
    for name in [*(t.name for t in TEAMS), None]:
        totals = run.teams.get(name)
        tasks, cost = (totals.tasks, totals.cost_usd) if totals else (0, Decimal(0))
        shown.append(f"{name or 'no team (Python API)'} {tasks} tasks ${cost:.6f}")
    return "Ledger by team: " + " · ".join(shown) + " — each proxy request is one task."


def _print_router_summary(run: DemoRun) -> None:
    console.print(_routing_line(run), highlight=False)
    console.print(_proxy_line(run), highlight=False)
    console.print(
        f"Spans sent to {run.config.telemetry.otlp_endpoint}; query that collector's ledger with `costline report`.",
        highlight=False,
    )


def _print_reports(run: DemoRun) -> None:
    assert run.ledger is not None and run.reader is not None and run.window is not None
    ledger = run.ledger
    console.print(_routing_line(run), highlight=False)
    console.print(_proxy_line(run), highlight=False)
    problems = run.ledger_disagreements()
    verdict = "[green]matches the routers[/green]" if not problems else "[red]DOES NOT match the routers[/red]"
    console.print(
        f"Ledger: {ledger.tasks} tasks and {ledger.attempts} attempts stored, total cost "
        f"${ledger.cost_usd:.6f} — {verdict}.",
        highlight=False,
    )
    if problems:
        from costline.demo.run import DemoError

        raise DemoError("; ".join(problems))
    console.print(_teams_line(run), highlight=False)

    window = run.window
    cost = cost_report(run.reader, window, ("provider", "model")).tables
    escalations = escalation_report(run.reader, window).tables
    savings = savings_report(run.reader, window, run.config.escalation.model).tables
    console.print()
    render_report(Report("demo", window, [*cost, escalations[0], escalations[1], savings[0]]), ReportFormat.table)
    _print_headroom(run)
    _print_where(run)


def _ratio(used: Decimal | int, limit: Decimal | int) -> str:
    if not limit:
        return "no limit"
    left = max(Decimal(0), min(Decimal(1), (Decimal(limit) - Decimal(used)) / Decimal(limit)))
    return f"{left * 100:.1f} % headroom"


def _print_headroom(run: DemoRun) -> None:
    room = run.headroom
    if room is None:
        return
    grid = Table(title="Quota and budget headroom", title_justify="left", show_header=False, box=None)
    grid.add_column(style="bold")
    grid.add_column(justify="right")
    grid.add_column()
    next_slot = f" (next slot {room.next_slot_at:%H:%M:%S} UTC)" if room.next_slot_at else ""
    grid.add_row(
        "escalation calls, last hour",
        f"{room.calls_last_hour} / {room.max_calls_per_hour}",
        _ratio(room.calls_last_hour, room.max_calls_per_hour) + next_slot,
    )
    daily = f"${room.spent_today_usd:.2f} / ${room.daily_usd:.2f}"
    grid.add_row("daily budget", daily, _ratio(room.spent_today_usd, room.daily_usd))
    grid.add_row(
        "monthly budget",
        f"${room.spent_month_usd:.2f} / ${room.monthly_usd:.2f}",
        _ratio(room.spent_month_usd, room.monthly_usd),
    )
    # As the team's own budget checks count its escalations (the router's usage store, like the rows above).
    for team, budget in sorted(run.config.team_budgets.items()):
        spent_day, spent_month = run.team_spend.get(team, (Decimal(0), Decimal(0)))
        own = [("daily", spent_day, budget.daily_usd), ("monthly", spent_month, budget.monthly_usd)]
        own = [(period, spent, Decimal(str(limit))) for period, spent, limit in own if limit]
        for period, spent, limit in own:
            grid.add_row(f"team {team}, {period} budget", f"${spent:.2f} / ${limit:.2f}", _ratio(spent, limit))
        if not own:
            grid.add_row(f"team {team}, today", f"${spent_day:.2f}", "no budget of its own")
    console.print(grid)
    gauges = _headroom_gauges(run.metrics_text)
    if gauges:
        console.print("  as /metrics exports them: " + ", ".join(gauges), highlight=False)
    console.print()


def _headroom_gauges(metrics_text: str | None) -> list[str]:
    if not metrics_text:
        return []
    from prometheus_client.parser import text_string_to_metric_families  # ~40 ms: only the demo's summary uses it

    shown = []
    for family in text_string_to_metric_families(metrics_text):
        if family.name in ("costline_quota_headroom_ratio", "costline_budget_headroom_ratio"):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
                shown.append(f"{sample.name}{{{labels}}} {sample.value:.3f}")
    return shown


def _shown(path: Path) -> str:
    """Relative to the working directory when inside it: shorter, and what the user would type."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _costline() -> str:
    """How to run costline from here: `costline` when it is on PATH, else the script beside this interpreter (after
    `make demo`, `.venv/bin/costline`: the venv is not activated)."""
    script = Path(sys.executable).parent / "costline"
    on_path = shutil.which("costline")
    if on_path is not None and (not script.exists() or Path(on_path).resolve() == script.resolve()):
        return "costline"
    return shlex.quote(_shown(script)) if script.exists() else "costline"


def _print_where(run: DemoRun) -> None:
    ledger, config = shlex.quote(_shown(run.ledger_path)), shlex.quote(_shown(run.config_path))
    costline = _costline()
    console.print("[bold]Where things are[/bold]")
    # soft_wrap: a command broken at the terminal's width would not paste back whole.
    console.print(f"  ledger   {ledger}   (a DuckDB file: any DuckDB client reads it)", highlight=False, soft_wrap=True)
    console.print(
        f"  config   {config}   ({costline} report --config {config} --by team)", highlight=False, soft_wrap=True
    )
    serving = "serving until Ctrl-C" if run.options.keep_serving else "stopped now; --keep-serving keeps it up"
    console.print(f"  metrics  {run.metrics_url}   ({serving})", highlight=False)
    from costline.demo.run import SQL_TO_TRY

    console.print("\n[bold]Three queries to try[/bold]")
    for title, sql in SQL_TO_TRY:
        console.print(f"  # {title}", style="dim", highlight=False)
        console.print(f"  {costline} sql --config {config} {_shell_quote(sql)}", highlight=False, soft_wrap=True)


def _shell_quote(sql: str) -> str:
    """SQL's own 'quotes' read better inside "double quotes" when nothing in it is special to the shell."""
    if "'" in sql and not any(c in sql for c in '"$`\\!'):
        return f'"{sql}"'
    return shlex.quote(sql)
