"""kill -9 under load: every span acknowledged with 200 survives, none is stored twice after the senders re-send,
the restarted collector's /metrics counters continue from the ledger, and no child process (decode workers,
multiprocessing's resource tracker) outlives the killed collector."""

from __future__ import annotations

import os
import queue
import random
import select
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from faults.ledger import stored_span_ids, violations
from faults.metrics import scrape, total, value
from faults.otlp import Batch, make_batch, post
from faults.reader import ledger_query
from faults.serve import ServedCollector

pytestmark = pytest.mark.slow  # rounds of kill -9 on a costline serve under load; CI runs it (make test-slow)

ORPHAN_WAIT_S = 60.0


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (children, their children, ...), by pid, with its command line."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # it ended while we looked
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found[child] = commands.get(child, "")
                frontier.append(child)
    return found


def survivors(watched: dict[int, int], timeout_s: float) -> list[int]:
    """Which of the processes (pid -> pidfd) have not exited within ``timeout_s``; waits on their pidfds."""
    pending = dict(watched)
    deadline = time.monotonic() + timeout_s
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select(list(pending.values()), [], [], remaining)
        for fd in ready:
            pending = {pid: f for pid, f in pending.items() if f != fd}
    return sorted(pending)


@dataclass
class KillRun:
    batches: list[Batch]
    acked: set[int] = field(default_factory=set)  # batch indexes answered 200 before the kill
    stored_at_restart: set[str] = field(default_factory=set)
    resent: list[int] = field(default_factory=list)
    report: dict[str, float] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)  # command lines of the killed collector's children


def _send_until_killed(url: str, batches: list[Batch], acked: set[int], killed: threading.Event, senders: int) -> None:
    work: queue.Queue[int] = queue.Queue()
    for index in range(len(batches)):
        work.put(index)
    lock = threading.Lock()

    def sender() -> None:
        while not killed.is_set():
            try:
                index = work.get_nowait()
            except queue.Empty:
                return
            answer = post(url, batches[index].body, timeout=30)
            if answer.status == 200:
                with lock:
                    acked.add(index)

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)


def deliver(url: str, body: bytes, *, attempts: int = 60) -> None:
    """What a well-behaved exporter does: retry 503/429 after Retry-After, and broken connections, until 200."""
    for _ in range(attempts):
        answer = post(url, body, timeout=60)
        if answer.status == 200:
            return
        if answer.status not in (None, 429, 503):
            raise AssertionError(f"collector answered {answer.status}: {answer.body[:200]!r}")
        time.sleep(min(float(answer.headers.get("retry-after", "0.1")), 5.0))
    raise AssertionError("batch not accepted after many retries")


def run_kill9(
    workdir: Path, *, batches: int, senders: int, kill_after_acks: int, resend_acked: float, seed: int
) -> KillRun:
    rng = random.Random(seed)
    run = KillRun([make_batch(rng, rng.randint(1, 4)) for _ in range(batches)])
    all_ids = {span for batch in run.batches for span in batch.span_ids}
    with ServedCollector(workdir, workdir / "ledger.duckdb") as served:
        served.start()
        killed = threading.Event()
        load = threading.Thread(
            target=_send_until_killed, args=(served.traces_url, run.batches, run.acked, killed, senders)
        )
        load.start()
        while len(run.acked) < kill_after_acks and load.is_alive():
            time.sleep(0.001)
        assert served.process is not None
        children = descendants(served.process.pid)
        watched = {pid: os.pidfd_open(pid) for pid in children}
        served.kill9()
        killed.set()
        load.join(120)
        acked_at_kill = set(run.acked)
        try:
            left = survivors(watched, ORPHAN_WAIT_S)
        finally:
            for fd in watched.values():
                os.close(fd)
        assert not left, f"processes outlived the killed collector: {[children[pid] for pid in left]}"
        run.children = sorted(children.values())

        served.start()  # the same ledger, the same ports
        query = ledger_query(served.config)
        stored = stored_span_ids(query)
        run.stored_at_restart = set(stored)
        assert len(stored) == len(run.stored_at_restart), "a span is stored twice after the restart"
        acked_ids = {span for i in acked_at_kill for span in run.batches[i].span_ids}
        lost = acked_ids - run.stored_at_restart
        assert not lost, f"{len(lost)} acknowledged spans are missing after kill -9"

        # The counters start from the ledger, not from zero.
        before = scrape(served.metrics_url)
        attempts, tasks = query("SELECT (SELECT count(*) FROM attempts), (SELECT count(*) FROM tasks)")[0]
        assert value(before, "costline_ingest_spans_total", result="stored") == attempts + tasks
        assert total(before, "costline_attempts_total") == attempts
        assert total(before, "costline_tasks_total") == tasks
        input_tokens, output_tokens, cost = query(
            "SELECT sum(input_tokens), sum(output_tokens), sum(cost_usd)::DOUBLE FROM attempts"
        )[0]
        assert total(before, "costline_tokens_total", type="input") == input_tokens
        assert total(before, "costline_tokens_total", type="output") == output_tokens
        assert abs(total(before, "costline_cost_usd_total") - cost) < 1e-9

        # The senders re-send everything they have no 200 for, and some acknowledged batches too.
        run.resent = [i for i in range(batches) if i not in acked_at_kill or rng.random() < resend_acked]
        for index in run.resent:
            deliver(served.traces_url, run.batches[index].body)
        after = scrape(served.metrics_url)
        final = stored_span_ids(query)
        assert sorted(final) == sorted(all_ids)
        assert violations(query) == {}
        expected_duplicates = sum(
            run.batches[i].span_count for i in run.resent if run.batches[i].span_ids[0] in run.stored_at_restart
        )
        duplicate_delta = value(after, "costline_ingest_spans_total", result="duplicate") - value(
            before, "costline_ingest_spans_total", result="duplicate"
        )
        assert duplicate_delta == expected_duplicates
        assert value(after, "costline_ingest_spans_total", result="stored") == len(all_ids)
        assert served.stop() == 0
        run.report = {
            "sent": len(all_ids),
            "acknowledged": len(all_ids),  # every batch ended with a 200 after the re-sends
            "stored": len(set(final)),
            "duplicates": len(final) - len(set(final)),
            "lost": len(all_ids - set(final)),
            "faults injected": 1,  # the kill -9
            "acknowledged before the kill": len(acked_ids),
            "committed but unacknowledged at the kill": len(run.stored_at_restart - acked_ids),
            "re-sends absorbed as duplicates": int(duplicate_delta),
        }
    return run


def test_spans_acknowledged_before_kill_9_survive_and_resends_are_not_stored_twice(tmp_path: Path) -> None:
    run = run_kill9(tmp_path, batches=300, senders=8, kill_after_acks=80, resend_acked=0.3, seed=11)
    assert run.acked, "the kill came before any acknowledgement"
    assert len(run.acked) < len(run.batches), "the kill came after the load ended"
    assert run.report["lost"] == 0 and run.report["duplicates"] == 0
    assert run.report["re-sends absorbed as duplicates"] > 0
    assert any("resource_tracker" in command for command in run.children), run.children
    assert any("multiprocessing" in command for command in run.children if "resource_tracker" not in command)
