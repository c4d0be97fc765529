"""`costline route PROMPT`: route one task and print the answer and what it cost."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from costline.cli.app import ConfigOption, app, err_console, fail, load_or_exit
from costline.config import ConfigError
from costline.spans import OUTCOME_BUDGET_EXHAUSTED, OUTCOME_QUOTA_EXHAUSTED

if TYPE_CHECKING:
    from router import Router, Task
    from router.task import TaskResult

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_REFUSED = 3  # quota or budget refused the escalation the task needed
EXIT_CANCELLED = 130  # Ctrl-C, as shells report SIGINT
EXIT_TERMINATED = 143  # SIGTERM


async def _run_cancellable(router: Router, task: Task) -> TaskResult | int:
    """Run the task to its result; Ctrl-C or SIGTERM cancels it (the call in flight is booked as cancelled) and gives
    the exit status instead.

    The event loop takes the signals through its wakeup fd and cancels the task at its next await. A Python signal
    handler would raise wherever the main thread happens to be, and when that is inside a weakref callback or a
    finalizer the exception is printed as ignored and lost: the call would wait on its socket for good."""
    loop = asyncio.get_running_loop()
    running = asyncio.current_task()
    assert running is not None
    received: list[int] = []

    def cancel(code: int) -> None:
        received.append(code)
        running.cancel()

    for signum, code in ((signal.SIGINT, EXIT_CANCELLED), (signal.SIGTERM, EXIT_TERMINATED)):
        loop.add_signal_handler(signum, cancel, code)
    # A parent may have started us with SIGTERM blocked (the mask is inherited): it would wait forever.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        return await router.arun(task)
    except asyncio.CancelledError:
        if not received:
            raise
        return received[0]
    finally:
        await router.aclose()


EXPORT_TIMEOUT_S = 2.0


@app.command()
def route(
    prompt: Annotated[str, typer.Argument(help="The task for the model.")],
    task_type: Annotated[str, typer.Option("--type", "-t", help="Task type (critical types escalate sooner).")] = (
        "general"
    ),
    critical: Annotated[bool, typer.Option("--critical", help="Escalate after one local failure.")] = False,
    claude: Annotated[bool, typer.Option("--claude", help="Skip the local models and ask Claude.")] = False,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt.")] = None,
    config: ConfigOption = None,
) -> None:
    """Route one task: local models first, Claude when they fail. Prints the answer, then a cost summary."""
    # Imported here so `costline --help` and the collector commands do not load the model clients.
    from router import Router, Task
    from router.telemetry import build_tracer_provider

    cfg = load_or_exit(config)
    # A short export deadline: a missing collector must not hold the answer back for long.
    provider, exporter = build_tracer_provider(cfg, export_timeout_s=EXPORT_TIMEOUT_S)
    logging.getLogger("router.delivery").setLevel(logging.ERROR)  # one warning below instead
    try:
        try:
            router = Router(cfg, tracer_provider=provider)
        except ConfigError as exc:
            fail(str(exc), code=EXIT_CONFIG)
        with router:
            task = Task(
                prompt, type=task_type, system=system, critical=True if critical else None, prefer_escalation=claude
            )
            result = asyncio.run(_run_cancellable(router, task))
    finally:
        provider.shutdown()
    if isinstance(result, int):
        fail(f"cancelled: task {task.id} is booked as cancelled (costline usage shows its cost)", code=result)
    if result.text is not None:  # a truncated answer is shown too, and the task still fails
        typer.echo(result.text)
    err_console.print(summary_line(result), highlight=False, soft_wrap=True)
    for sender in exporter.routes:
        if waiting := sender.waiting():
            err_console.print(
                f"warning: the collector at {sender.endpoint} did not take the spans ({sender.last_error}); "
                f"{len(waiting)} batches wait in {sender.spool.directory} and are sent by the next costline route or "
                "router that reaches it (is costline serve running? or set telemetry.otlp_endpoint)",
                highlight=False,
                soft_wrap=True,
            )
    if exporter.spans_lost:
        err_console.print(
            f"warning: {exporter.spans_lost} spans were dropped: the spool {cfg.spool_dir} is full "
            "(telemetry.spool_max_mb)",
            highlight=False,
            soft_wrap=True,
        )
    if not result.ok:
        refused = result.outcome in (OUTCOME_QUOTA_EXHAUSTED, OUTCOME_BUDGET_EXHAUSTED)
        fail(result.error or result.outcome, code=EXIT_REFUSED if refused else EXIT_FAILED)


def summary_line(result: TaskResult) -> Text:
    """One line: attempts with their models, tokens, cost, and whether the task escalated."""
    steps = ", ".join(f"{a.model} {'ok' if a.ok else a.error_type}" for a in result.attempts) or "no model called"
    reasons = sorted({a.escalation_reason for a in result.attempts if a.escalation_reason})
    escalated = f"escalated ({', '.join(reasons)})" if result.escalated else "not escalated"
    noun = "attempt" if len(result.attempts) == 1 else "attempts"
    return Text(
        f"{len(result.attempts)} {noun} ({steps}) · {result.input_tokens:,} in / {result.output_tokens:,} out tokens"
        f" · ${result.cost_usd:.6f} · {escalated} · {result.outcome}",
        style="dim",
    )
