"""`costline demo`: the whole pipeline on SIMULATED models.

Simulated Ollama and Claude servers (real HTTP, real client libraries), a collector on free loopback ports with a
fresh DuckDB ledger in the demo directory, and a few hundred mixed tasks routed concurrently through the real router,
whose spans travel over real OTLP/HTTP: most with the Python API, the rest sent by two teams' tools through a real
`costline proxy`. When every span is stored, the caller prints the reports from the ledger.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from collector.reports import Window, cost_report
from costline import spans as attr
from costline.config import Config, load_config
from costline.demo.fake_anthropic import FakeAnthropic
from costline.demo.fake_ollama import FakeOllama
from costline.demo.profiles import CLAUDE_PROFILE, LOCAL_PROFILES
from costline.demo.via_proxy import DemoProxy, ProxyCheckError, ProxyRequest, RecordingRouter, TeamClients
from costline.demo.workload import TEAMS, DemoTask, Simulation, make_tasks
from costline.ledger_reader import LedgerReader
from router import Router, TaskResult
from router.usage_store import Headroom

MARKER = ".costline-demo"  # the demo only ever deletes a directory that carries this file
CONFIG_NAME = "costline.toml"
LEDGER_NAME = "costline.duckdb"
USAGE_NAME = "usage.sqlite"
SUMMARY_NAME = "summary.json"
SERVICE_NAME = "costline-demo"
KEEP_SERVING_PORTS = (4318, 9464)  # used when free, so a local Prometheus finds the collector where it expects
STORE_TIMEOUT_S = 60.0
DEMO_DAILY_BUDGET_USD = 2.0
DEMO_MONTHLY_BUDGET_USD = 40.0
DEMO_LOCAL_USD_PER_HOUR = 0.40  # power and amortisation of a 24 GB GPU box
# Team search has a daily budget of its own, within the global one; team support has none (an empty table).
DEMO_SEARCH_DAILY_BUDGET_USD = 0.25


class DemoError(Exception):
    """A problem the user can act on; the message is complete."""


@dataclass(frozen=True)
class DemoOptions:
    tasks: int = 300
    directory: Path = Path("costline-demo")
    concurrency: int = 16
    seed: int = 7
    quota: int | None = None  # escalation calls per hour; default: 10 % of the tasks
    keep_serving: bool = False
    otlp_endpoint: str | None = None  # send spans to this collector instead of starting one

    def escalation_quota(self) -> int:
        return self.quota if self.quota is not None else max(2, self.tasks // 10)


@dataclass(frozen=True)
class LedgerTotals:
    tasks: int
    attempts: int
    cost_usd: Decimal
    outcomes: dict[str, int]


@dataclass(frozen=True)
class TeamTotals:
    """One team's tasks and dollars in the ledger (team None: tasks without a team)."""

    tasks: int
    cost_usd: Decimal


@dataclass
class DemoRun:
    options: DemoOptions
    config: Config
    directory: Path
    config_path: Path
    ollama_url: str
    claude_url: str
    started_at: datetime
    results: list[TaskResult] = field(default_factory=list)
    elapsed_s: float = 0.0
    headroom: Headroom | None = None
    team_spend: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)  # each declared team's (day, month)
    metrics_url: str | None = None
    metrics_text: str | None = None
    ledger: LedgerTotals | None = None
    teams: dict[str | None, TeamTotals] = field(default_factory=dict)  # from the ledger
    reader: LedgerReader | None = None
    window: Window | None = None  # the reports' window: the whole run
    proxy_url: str | None = None
    proxied: list[ProxyRequest] = field(default_factory=list)  # the part of ``results`` sent through the proxy

    @property
    def ledger_path(self) -> Path:
        return self.directory / LEDGER_NAME

    @property
    def attempts(self) -> int:
        return sum(len(r.attempts) for r in self.results)

    def outcomes(self) -> Counter[str]:
        return Counter(r.outcome for r in self.results)

    def routed_by_team(self) -> dict[str | None, tuple[int, Decimal]]:
        """Tasks and dollars per team as the routers reported them (None: the tasks routed with the Python API)."""
        team_of = {p.result.task_id: p.team for p in self.proxied}
        totals: dict[str | None, tuple[int, Decimal]] = {team.name: (0, Decimal(0)) for team in TEAMS}
        totals[None] = (0, Decimal(0))
        for result in self.results:
            team = team_of.get(result.task_id)
            tasks, cost = totals[team]
            totals[team] = (tasks + 1, cost + _routed_cost(result))
        return totals

    def ledger_disagreements(self) -> list[str]:
        """Where the ledger differs from what the routers did: empty when every task, attempt and proxy request is
        in it exactly once."""
        if self.ledger is None:
            return []
        problems = []
        if (self.ledger.tasks, self.ledger.attempts) != (len(self.results), self.attempts):
            problems.append(
                f"the ledger has {self.ledger.tasks} tasks and {self.ledger.attempts} attempts, but the routers "
                f"routed {len(self.results)} tasks with {self.attempts} attempts"
            )
        for team, (tasks, _) in self.routed_by_team().items():
            stored = self.teams.get(team, TeamTotals(0, Decimal(0))).tasks
            if stored != tasks:
                whose = f"team {team}" if team else "the Python API (no team)"
                problems.append(f"the ledger has {stored} tasks of {whose}, but {tasks} were sent")
        return problems


# Three queries to try on the demo ledger (the test runs each of them).
SQL_TO_TRY: tuple[tuple[str, str], ...] = (
    ("cost and success by model", "SELECT model, attempts, successes, cost_usd FROM model_cost ORDER BY cost_usd DESC"),
    (
        "escalation rate by task type",
        "SELECT task_type, count(*) AS tasks, round(avg(escalated::INT), 3) AS escalation_rate "
        "FROM tasks GROUP BY task_type ORDER BY escalation_rate DESC",
    ),
    (
        "how local models fail",
        "SELECT model, error_type, count(*) AS failures FROM attempt_costs "
        "WHERE is_local AND outcome = 'error' GROUP BY ALL ORDER BY failures DESC LIMIT 10",
    ),
)


def prepare_directory(directory: Path) -> Path:
    """A fresh, empty demo directory; an existing one is deleted only when the demo made it."""
    directory = directory.expanduser().resolve()
    if directory.exists():
        if not directory.is_dir():
            raise DemoError(f"--dir {directory} is a file; give a directory for the demo's ledger and config")
        if not (directory / MARKER).is_file() and any(directory.iterdir()):
            raise DemoError(
                f"--dir {directory} exists and was not created by `costline demo` (no {MARKER} file in it); "
                "the demo deletes its directory on every run, so give a new or empty directory"
            )
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text("created by `costline demo`; deleted and recreated on each run\n")
    return directory


def _port_or_any(port: int) -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


def _toml_config(
    directory: Path, ollama_url: str, claude_url: str, quota: int, otlp_endpoint: str, ports: tuple[int, int]
) -> str:
    def q(text: str) -> str:
        return json.dumps(text)  # a JSON string is a valid TOML basic string

    models = ", ".join(q(p.model) for p in LOCAL_PROFILES)
    return f"""# Written by `costline demo` for its SIMULATED backends; use it with the other commands, e.g.
#   costline report --config {q(str(directory / CONFIG_NAME))} --by model

[router]
ollama_host = {q(ollama_url)}            # SIMULATED Ollama (stopped when the demo ends)
models = [{models}]
timeout_s = 2.0                  # the simulated models answer 100x faster than real ones
usage_db = {q(str(directory / USAGE_NAME))}
max_retry_wait_s = 5

[escalation]
model = {q(CLAUDE_PROFILE.model)}
base_url = {q(claude_url)}            # SIMULATED Claude
max_calls_per_hour = {quota}            # small on purpose: the end of the workload runs into it

[budgets]
daily_usd = {DEMO_DAILY_BUDGET_USD}
monthly_usd = {DEMO_MONTHLY_BUDGET_USD}

[budgets.teams."search"]           # a team's escalations count against its own budget and the global ones
daily_usd = {DEMO_SEARCH_DAILY_BUDGET_USD}

[budgets.teams."support"]          # declared, with no budget of its own: only the global budgets apply

[validators]
extract_json = "json"            # tasks through the proxy carry no Python validator: their JSON is checked here

[local_compute]
usd_per_hour = {DEMO_LOCAL_USD_PER_HOUR}

[telemetry]
otlp_endpoint = {q(otlp_endpoint)}
service_name = {q(SERVICE_NAME)}

[collector]
host = "127.0.0.1"
otlp_port = {ports[0]}
metrics_port = {ports[1]}
ledger = {q(str(directory / LEDGER_NAME))}
"""


def _write_config(path: Path, text: str) -> Config:
    path.write_text(text, encoding="utf-8")
    return load_config(path, env={})  # the demo's settings, whatever COSTLINE_* the user has exported


def _tracer_provider(otlp_endpoint: str) -> TracerProvider:
    token = os.environ.get("COSTLINE_INGEST_TOKEN")
    exporter = OTLPSpanExporter(
        endpoint=otlp_endpoint.rstrip("/") + "/v1/traces",
        headers={"Authorization": f"Bearer {token}"} if token else None,
        timeout=10,
    )
    provider = TracerProvider(resource=Resource.create({attr.SERVICE_NAME: SERVICE_NAME}))
    # Large queue: a few hundred tasks end within seconds, and a dropped span would be a missing ledger row.
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=200_000, schedule_delay_millis=200, max_export_batch_size=512)
    )
    return provider


@contextlib.contextmanager
def _quiet_loggers(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Per-attempt warnings would tear up the progress bar; the reports show every failure instead."""
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _routed_cost(result: TaskResult) -> Decimal:
    return sum((a.cost_usd or Decimal(0) for a in result.attempts), Decimal(0))


def _team_totals(reader: LedgerReader, window: Window) -> dict[str | None, TeamTotals]:
    """Tasks and dollars by team, with the report code behind `costline report --by team`."""
    (by_team,) = cost_report(reader, window, ("team",)).tables
    return {row["team"]: TeamTotals(row["tasks"], row["cost_usd"]) for row in by_team.rows}


def _ledger_totals(reader: LedgerReader) -> LedgerTotals:
    row = reader.query(
        "SELECT (SELECT count(*) FROM tasks) AS tasks, (SELECT count(*) FROM attempts) AS attempts, "
        "(SELECT coalesce(sum(cost_usd), 0) FROM attempts) AS cost_usd"
    ).to_pylist()[0]
    outcomes = reader.query("SELECT outcome, count(*) AS n FROM tasks GROUP BY outcome").to_pylist()
    return LedgerTotals(
        int(row["tasks"]), int(row["attempts"]), Decimal(row["cost_usd"]), {o["outcome"]: int(o["n"]) for o in outcomes}
    )


def _stored_spans(metrics_text: str | None) -> int:
    if not metrics_text:
        return 0
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "costline_ingest_spans":
            return int(
                sum(s.value for s in family.samples if s.name.endswith("_total") and s.labels.get("result") == "stored")
            )
    return 0


def _wait_until_stored(metrics_url: str, spans: int) -> str:
    """Wait until the collector says it has committed ``spans`` spans; returns its last /metrics text."""
    deadline = time.monotonic() + STORE_TIMEOUT_S
    while True:
        text = _scrape(metrics_url)
        stored = _stored_spans(text)
        if stored >= spans and text is not None:
            return text
        if time.monotonic() > deadline:
            raise DemoError(f"after {STORE_TIMEOUT_S:g} s the collector had stored {stored} of the {spans} spans sent")
        time.sleep(0.1)


def _scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


def _base_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Demo:
    """Runs the demo; ``stop`` (also on Ctrl-C) stops every server it started."""

    def __init__(self, options: DemoOptions, console: Console) -> None:
        self.options = options
        self.console = console
        self._stack = contextlib.ExitStack()
        self.collector = None

    def __enter__(self) -> Demo:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stack.close()

    def run(self, on_started: Callable[[DemoRun], None] | None = None) -> DemoRun:
        opts = self.options
        if opts.tasks < 1:
            raise DemoError("--tasks must be at least 1")
        if opts.concurrency < 1:
            raise DemoError("--concurrency must be at least 1")
        directory = prepare_directory(opts.directory)
        tasks = make_tasks(opts.tasks, opts.seed)
        simulation = Simulation(tasks, opts.seed)
        demo_key = "sk-ant-demo-" + secrets.token_hex(16)  # accepted only by the simulated Claude

        ollama = self._stack.enter_context(FakeOllama(models=[p.model for p in LOCAL_PROFILES]))
        for profile in LOCAL_PROFILES:
            ollama.set_default(profile.model, simulation.ollama(profile))
        claude = self._stack.enter_context(FakeAnthropic(api_key=demo_key))
        claude.set_default(CLAUDE_PROFILE.model, simulation.anthropic)
        self._stack.enter_context(_environment(ANTHROPIC_API_KEY=demo_key))
        self._stack.enter_context(_quiet_loggers("router", "collector", "costline", "proxy"))
        # uvicorn logs the requests it cancels when Ctrl-C stops the proxy; any other failure of the proxy shows as
        # an HTTP status the demo checks against the task's outcome.
        self._stack.enter_context(_quiet_loggers("uvicorn", level=logging.CRITICAL))

        config_path = directory / CONFIG_NAME
        quota = opts.escalation_quota()
        ports = (0, 0)
        if opts.keep_serving:
            ports = (_port_or_any(KEEP_SERVING_PORTS[0]), _port_or_any(KEEP_SERVING_PORTS[1]))
        endpoint = opts.otlp_endpoint or "http://127.0.0.1:4318"
        config = _write_config(config_path, _toml_config(directory, ollama.url, claude.url, quota, endpoint, ports))
        run = DemoRun(opts, config, directory, config_path, ollama.url, claude.url, datetime.now(UTC))

        if opts.otlp_endpoint is None:
            from collector.service import Collector  # the demo is the one place that starts both sides in one process

            collector = Collector(config)
            collector.start()
            self._stack.callback(collector.stop)
            self.collector = collector
            otlp_port = urlsplit(collector.otlp_url).port or 0
            metrics_port = urlsplit(collector.metrics_url).port or 0
            endpoint = _base_url(collector.otlp_url)
            config = _write_config(
                config_path,
                _toml_config(directory, ollama.url, claude.url, quota, endpoint, (otlp_port, metrics_port)),
            )
            run.config = config
            run.metrics_url = _base_url(collector.metrics_url) + "/metrics"

        provider = _tracer_provider(endpoint)
        self._stack.callback(provider.shutdown)
        router = Router(config, tracer_provider=provider)
        self._stack.callback(router.close)
        # The proxy's router shares the usage store (one quota, one budget) and the span exporter with the demo's.
        proxy_router = RecordingRouter(config, tracer_provider=provider)
        self._stack.callback(proxy_router.close)
        proxy_token = secrets.token_hex(16)  # the teams' tools send it as OpenAI and Ollama clients do: Bearer
        try:
            proxy = self._stack.enter_context(DemoProxy(proxy_router, proxy_token))
        except ProxyCheckError as exc:
            raise DemoError(str(exc)) from None
        clients = self._stack.enter_context(TeamClients(proxy, proxy_token))
        run.proxy_url = proxy.url

        if on_started is not None:
            on_started(run)

        started = time.monotonic()
        try:
            run.results, run.proxied = self._route_all(router, clients, tasks)
        except ProxyCheckError as exc:
            raise DemoError(str(exc)) from None
        run.elapsed_s = time.monotonic() - started
        run.headroom = router.usage.headroom()
        run.team_spend = router.usage.team_spend()
        router.close()
        proxy.stop()
        proxy_router.close()
        provider.force_flush()

        if self.collector is not None and run.metrics_url is not None:
            run.metrics_text = _wait_until_stored(run.metrics_url, len(run.results) + run.attempts)
            # The reports read the ledger file itself, so the collector lets go of it first.
            self.collector.stop()
            run.reader = LedgerReader.from_config(config)
            run.window = Window(run.started_at - timedelta(minutes=1), datetime.now(UTC) + timedelta(minutes=1))
            run.ledger = _ledger_totals(run.reader)
            run.teams = _team_totals(run.reader, run.window)
        _write_summary(run)
        return run

    def serve(self, run: DemoRun) -> str:
        """Start the collector again on the same ports and ledger (``--keep-serving``); returns its /metrics URL."""
        from collector.service import Collector

        collector = Collector(run.config)
        collector.start()
        self._stack.callback(collector.stop)
        self.collector = collector
        return _base_url(collector.metrics_url) + "/metrics"

    def _route_all(
        self, router: Router, clients: TeamClients, tasks: list[DemoTask]
    ) -> tuple[list[TaskResult], list[ProxyRequest]]:
        """Route every task, 16 at a time: with the Python API, or through the proxy by its team's tool."""

        def route(task: DemoTask) -> TaskResult | ProxyRequest:
            return router.run(task.to_task()) if task.team is None else clients.send(task)

        results: list[TaskResult] = []
        proxied: list[ProxyRequest] = []
        counts: Counter[str] = Counter()
        progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]routing[/bold]"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[stats]}"),
            console=self.console,
        )
        pool = ThreadPoolExecutor(max_workers=self.options.concurrency, thread_name_prefix="demo-task")
        try:
            with progress:
                bar = progress.add_task("routing", total=len(tasks), stats="")
                pending: set[Future[TaskResult | ProxyRequest]] = {pool.submit(route, task) for task in tasks}
                while pending:
                    done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    _raise_if_ctrl_c()
                    for future in done:
                        result = future.result()
                        if isinstance(result, ProxyRequest):
                            proxied.append(result)
                            result = result.result
                        results.append(result)
                        counts[_bucket(result)] += 1
                    progress.update(bar, completed=len(results), stats=_stats(counts))
        finally:
            # On Ctrl-C: drop what has not started; the running ones end fast once the servers stop.
            pool.shutdown(wait=False, cancel_futures=True)
        return results, proxied


def _bucket(result: TaskResult) -> str:
    if result.outcome != "completed":
        return result.outcome
    return "claude" if result.escalated else "local"


def _stats(counts: Counter[str]) -> str:
    return (
        f"[green]{counts['local']} local[/green] · [cyan]{counts['claude']} Claude[/cyan] · "
        f"[yellow]{counts['quota_exhausted']} quota[/yellow] · [red]{counts['failed']} failed[/red]"
    )


def _write_summary(run: DemoRun) -> None:
    """What the routers did, from their own results: the ledger must agree with it."""
    routed_cost = sum((_routed_cost(r) for r in run.results), Decimal(0))
    by_team = run.routed_by_team()
    summary = {
        "tasks": len(run.results),
        "attempts": run.attempts,
        "outcomes": dict(run.outcomes()),
        "escalated_tasks": sum(r.escalated for r in run.results),
        "routed_cost_usd": format(routed_cost, "f"),
        "proxy": {
            "url": run.proxy_url,
            "requests": len(run.proxied),
            "statuses": {str(k): n for k, n in sorted(Counter(p.status for p in run.proxied).items())},
            "task_ids": sorted(p.result.task_id for p in run.proxied),
        },
        # As the routers saw it: each team's tasks through the proxy, and the tasks routed with the Python API.
        "teams": {
            team: {"tasks": tasks, "routed_cost_usd": format(cost, "f")}
            for team, (tasks, cost) in by_team.items()
            if team is not None
        },
        "no_team": {"tasks": by_team[None][0], "routed_cost_usd": format(by_team[None][1], "f")},
        "seed": run.options.seed,
        "ledger": str(run.ledger_path),
        "config": str(run.config_path),
    }
    (run.directory / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


_ctrl_c = threading.Event()


@contextlib.contextmanager
def ctrl_c_noticed() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt at once, as usual, and is also remembered: the demo's waits raise it again.

    A KeyboardInterrupt lands wherever the main thread is; inside a garbage-collector callback Python prints it as
    ignored and drops it, and the demo would run on."""

    def on_sigint(signum: int, frame: object) -> None:
        _ctrl_c.set()
        raise KeyboardInterrupt

    _ctrl_c.clear()
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


def _raise_if_ctrl_c() -> None:
    if _ctrl_c.is_set():
        raise KeyboardInterrupt


def wait_for_interrupt() -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            _raise_if_ctrl_c()
    finally:
        signal.signal(signal.SIGTERM, previous)
