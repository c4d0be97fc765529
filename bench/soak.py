"""The long version of the fault and fuzz suites (``make soak``): the same scenarios as tests/test_faults_*.py and
tests/test_fuzz_otlp.py with bigger counts, several kill -9 rounds and a coverage-guided atheris run when atheris
is installed. Prints the figures and exits non-zero if a span was lost, a fuzzed input crashed something, or a
scenario's checks failed.

    python bench/soak.py [--scale 1.0] [--atheris-seconds 60]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

import hypothesis_profiles  # noqa: E402
from faults.hostile import run_all as run_hostile  # noqa: E402
from faults.hostile import table as hostile_table  # noqa: E402
from faults.proxy import DROP_AFTER, DROP_BEFORE, REFUSE_503, REPLACE_503  # noqa: E402
from test_collector_support import collector_config, rows  # noqa: E402
from test_faults_exporter import run_exporter_through_faults  # noqa: E402
from test_faults_kill import run_kill9  # noqa: E402
from test_faults_overload import run_overload  # noqa: E402
from test_fuzz_otlp import FUZZED, assert_collector_sound, fuzz_decode, fuzz_http  # noqa: E402
from test_fuzz_otlp import _config as fuzz_config  # noqa: E402

from collector.service import Collector  # noqa: E402

FIGURES = ("sent", "acknowledged", "stored", "duplicates", "lost", "faults injected")


class Soak:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.phases: list[tuple[str, dict[str, Any]]] = []
        self.failures: list[str] = []
        self.crashes = 0
        self.fuzzed = 0

    def phase(self, name: str, run: Callable[[Path], dict[str, Any]]) -> None:
        directory = self.workdir / re.sub(r"\W+", "-", name)
        directory.mkdir()
        started = time.perf_counter()
        print(f"· {name} …", flush=True)
        try:
            figures = run(directory)
        except Exception as exc:  # a failed check: report it and go on with the other phases
            self.failures.append(f"{name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            return
        figures["seconds"] = round(time.perf_counter() - started, 1)
        self.phases.append((name, figures))
        extra = {k: v for k, v in figures.items() if k not in FIGURES}
        print("  " + ", ".join(f"{k} {figures.get(k, 0):,}" for k in FIGURES) + f" · {extra}", flush=True)

    def total(self, key: str) -> int:
        return sum(int(figures.get(key, 0)) for _, figures in self.phases)


def exporter_phase(tasks: int, seed: int) -> Callable[[Path], dict[str, Any]]:
    weights = {REFUSE_503: 0.15, DROP_BEFORE: 0.1, DROP_AFTER: 0.1, REPLACE_503: 0.15}

    def run(directory: Path) -> dict[str, Any]:
        seen = run_exporter_through_faults(directory / "ledger.duckdb", tasks=tasks, seed=seed, weights=weights)
        if seen["violations"]:
            raise AssertionError(f"ledger invariants broken: {seen['violations']}")
        return {**seen["report"], "faults by kind": seen["faults"]}

    return run


def kill_phase(batches: int, seed: int) -> Callable[[Path], dict[str, Any]]:
    def run(directory: Path) -> dict[str, Any]:
        return run_kill9(
            directory, batches=batches, senders=16, kill_after_acks=batches // 3, resend_acked=0.3, seed=seed
        ).report

    return run


def overload_phase(seconds: float, seed: int) -> Callable[[Path], dict[str, Any]]:
    def run(directory: Path) -> dict[str, Any]:
        result = run_overload(directory, seconds=seconds, factor=2.0, seed=seed, max_queued_spans=256)
        if result.refusals == 0:
            raise AssertionError(f"2x capacity was never refused: {result.report}")
        return result.report

    return run


def fuzz_phase(decode_examples: int, http_examples: int) -> Callable[[Path], dict[str, Any]]:
    def run(directory: Path) -> dict[str, Any]:
        before = sum(FUZZED.values())
        fuzz_decode(decode_examples)
        with Collector(fuzz_config(directory / "ledger.duckdb")) as collector:
            statuses = fuzz_http(collector, http_examples)
            assert_collector_sound(collector)
        return {"inputs fuzzed": sum(FUZZED.values()) - before, "http statuses": dict(statuses)}

    return run


def hostile_phase() -> Callable[[Path], dict[str, Any]]:
    """The hostile inputs of tests/faults/hostile.py, one by one, printed as a table of what each got."""

    def run(directory: Path) -> dict[str, Any]:
        with Collector(collector_config(directory / "ledger.duckdb")) as collector:

            def stored() -> int:
                return rows(collector, "SELECT (SELECT count(*) FROM attempts) + (SELECT count(*) FROM tasks)")[0][0]

            outcomes = run_hostile(collector.otlp_url, collector.metrics_url, stored)
        print(hostile_table(outcomes), flush=True)
        wrong = [o.name for o in outcomes if not o.ok]
        assert not wrong, f"hostile inputs not answered as required: {wrong}"
        return {"hostile inputs": len(outcomes)}

    return run


def atheris_phase(seconds: int) -> Callable[[Path], dict[str, Any]]:
    def run(directory: Path) -> dict[str, Any]:
        harness = TESTS / "faults" / "atheris_otlp.py"
        done = subprocess.run(
            [sys.executable, str(harness), str(directory / "corpus"), f"-max_total_time={seconds}"],
            capture_output=True,
            text=True,
            cwd=directory,
            timeout=seconds + 120,
        )
        runs = re.search(r"Done (\d+) runs", done.stderr)
        if done.returncode != 0 or runs is None:
            tail = "\n".join(done.stderr.splitlines()[-30:])
            raise AssertionError(f"atheris found a crash (exit {done.returncode}); inputs in {directory}:\n{tail}")
        return {"inputs fuzzed": int(runs.group(1))}

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every count (0.1 for a quick look)")
    parser.add_argument("--atheris-seconds", type=int, default=60)
    args = parser.parse_args()
    print(f"· hypothesis profile: {hypothesis_profiles.load(default='soak')}", flush=True)

    def n(count: int) -> int:
        return max(1, int(count * args.scale))

    with tempfile.TemporaryDirectory(prefix="costline-soak-") as tmp:
        soak = Soak(Path(tmp))
        soak.phase("exporter retries through a flaky proxy", exporter_phase(n(1500), seed=1))
        for round_ in range(3):
            soak.phase(f"kill -9 under load, round {round_ + 1}", kill_phase(n(2500), seed=100 + round_))
        soak.phase("overload at 2x capacity", overload_phase(max(2.0, 20 * args.scale), seed=7))
        soak.phase("fuzz: decode, mapping and a live collector", fuzz_phase(n(4000), n(1000)))
        soak.phase("hostile inputs, one by one", hostile_phase())
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("· atheris is not installed: coverage-guided fuzzing skipped (pip install atheris)")
        else:
            soak.phase("fuzz: atheris on decode and mapping", atheris_phase(max(5, int(args.atheris_seconds))))

    fuzz_failures = [f for f in soak.failures if f.startswith("fuzz")]
    crashes = len(fuzz_failures)
    print("\ncostline soak figures")
    print(f"  spans sent          {soak.total('sent'):>12,}")
    print(f"  spans acknowledged  {soak.total('acknowledged'):>12,}")
    print(f"  spans stored        {soak.total('stored'):>12,}")
    print(f"  duplicates stored   {soak.total('duplicates'):>12,}")
    absorbed = soak.total("re-sends absorbed as duplicates")
    print(f"  re-sends absorbed   {absorbed:>12,}  (counted as duplicates, not stored again)")
    print(f"  lost                {soak.total('lost'):>12,}  (must be 0)")
    print(f"  faults injected     {soak.total('faults injected'):>12,}")
    print(f"  503/429 answers     {soak.total('503/429 answers'):>12,}  (overload back-pressure)")
    print(f"  inputs fuzzed       {soak.total('inputs fuzzed'):>12,}")
    print(f"  crashes             {crashes:>12,}  (must be 0)")
    for failure in soak.failures:
        print(f"  FAILED {failure.splitlines()[0][:300]}")
    ok = not soak.failures and soak.total("lost") == 0 and soak.total("duplicates") == 0 and crashes == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
