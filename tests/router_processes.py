"""Routers in separate processes, racing: each process escalates its tasks from several threads at once, all processes
released together, so reservations really interleave across processes (and, with PostgreSQL, across "machines")."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from queue import Empty
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from costline.config import Config
from router import Router, Task


def _escalate(config: Config, prompt: str, tasks: int, barrier: Any, results: Any) -> None:
    barrier.wait()
    with Router(config, tracer_provider=TracerProvider()) as router, ThreadPoolExecutor(tasks) as pool:
        done = list(pool.map(router.run, [Task(prompt, prefer_escalation=True) for _ in range(tasks)]))
    results.put([(r.outcome, str(r.cost_usd)) for r in done])


def escalate_in_processes(configs: list[Config], prompt: str, tasks_each: int) -> list[tuple[str, str]]:
    """(outcome, cost) of every task, from one spawned process per config."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(configs)), ctx.Queue()
    children = [ctx.Process(target=_escalate, args=(c, prompt, tasks_each, barrier, results)) for c in configs]
    for child in children:
        child.start()
    outcomes: list[tuple[str, str]] = []
    try:
        for _ in children:
            while True:
                try:
                    outcomes += results.get(timeout=1)
                    break
                except Empty:
                    assert all(c.is_alive() or c.exitcode == 0 for c in children), "a router process failed"
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    assert all(child.exitcode == 0 for child in children)
    return outcomes
