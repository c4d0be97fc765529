"""Ledger trouble at start: a ledger another process holds, or a corrupt file → a clear error that names the path,
the file left byte-for-byte as it was, and no new file created in its place."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest
from faults.otlp import make_batch, post
from faults.reader import ledger_query
from faults.serve import ServedCollector, costline_command, free_port, write_config

from collector.ledger import LedgerError
from collector.service import Collector
from costline.config import load_config, with_overrides

SERVE_TIMEOUT_S = 60


def _serve_once(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTLINE_")}
    return subprocess.run(
        [*costline_command(), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=SERVE_TIMEOUT_S,
        env=env,
        cwd=cwd,
    )


def _other_config(directory: Path, ledger: Path) -> Path:
    directory.mkdir(exist_ok=True)
    return write_config(directory / "other.toml", ledger, otlp_port=free_port(), metrics_port=free_port())


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


def test_a_ledger_held_by_a_running_collector_is_refused_and_the_running_one_keeps_going(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.duckdb"
    rng = random.Random(3)
    first, second = make_batch(rng, 2), make_batch(rng, 3)
    with ServedCollector(tmp_path, ledger) as served:
        served.start()
        assert post(served.traces_url, first.body).status == 200

        other = _other_config(tmp_path / "second", ledger)
        refused = _serve_once(other, tmp_path / "second")
        assert refused.returncode == 1
        assert f"error: ledger {ledger} is in use by another process" in refused.stderr
        assert "is another `costline serve` running?" in refused.stderr
        with pytest.raises(LedgerError, match="is in use by another process") as caught:
            Collector(load_config(other, env={}))
        assert str(ledger) in str(caught.value)

        # The refused starts wrote nothing; the running collector still stores and serves.
        assert post(served.traces_url, second.body).status == 200
        query = ledger_query(served.config)
        stored = sorted(row[0] for row in query("SELECT span_id FROM attempts UNION ALL SELECT span_id FROM tasks"))
        assert stored == sorted(first.span_ids + second.span_ids)
        assert served.stop() == 0


HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("holding", flush=True)
time.sleep(120)
"""


def test_a_ledger_held_by_another_duckdb_process_is_a_clear_error_and_stays_untouched(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.duckdb"
    with Collector(load_config(_other_config(tmp_path, ledger), env={})) as collector:
        assert post(f"{collector.otlp_url}/v1/traces", make_batch(random.Random(1), 2).body).status == 200
    before = _snapshot(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(ledger)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        refused = _serve_once(tmp_path / "other.toml", tmp_path)
        assert refused.returncode == 1
        assert f"error: ledger {ledger} is in use by another process" in refused.stderr
    finally:
        holder.kill()
        holder.wait(30)
    assert _snapshot(tmp_path) == before


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(9).randbytes(64 * 1024))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size // 2)


def _bad_header_block(path: Path) -> None:
    with path.open("r+b") as file:
        file.seek(4096)  # the first database header: checksummed
        file.write(random.Random(5).randbytes(4096))


def _real_ledger(path: Path) -> None:
    """A ledger with enough rows to span several blocks."""
    with Collector(load_config(_other_config(path.parent, path), env={})) as collector:
        rng = random.Random(2)
        for _ in range(150):
            assert post(f"{collector.otlp_url}/v1/traces", make_batch(rng, 40).body).status == 200


@pytest.mark.parametrize(
    ("damage", "needs_real_ledger", "problem"),
    [
        (_random_bytes, False, "cannot be opened as a DuckDB database"),
        (_empty, False, "cannot be opened as a DuckDB database"),
        (_truncated, True, "Could not read enough bytes"),
        (_bad_header_block, True, "Corrupt database file"),
    ],
    ids=["random-bytes", "empty-file", "truncated", "bad-header"],
)
def test_a_corrupt_ledger_fails_at_start_naming_the_path_and_is_left_untouched(
    tmp_path: Path, damage: Callable[[Path], None], needs_real_ledger: bool, problem: str
) -> None:
    directory = tmp_path / "ledgers"
    directory.mkdir()
    ledger = directory / "costline.duckdb"
    if needs_real_ledger:
        _real_ledger(ledger)
    damage(ledger)
    config = write_config(tmp_path / "c.toml", ledger, otlp_port=free_port(), metrics_port=free_port())
    before = _snapshot(directory)

    refused = _serve_once(config, tmp_path)

    assert refused.returncode == 1, refused.stdout
    assert f"ledger {ledger} " in refused.stderr or f"ledger {ledger}:" in refused.stderr  # whole, on one line
    assert problem in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _snapshot(directory) == before  # no partial write, no WAL, no fresh ledger beside it


def test_a_missing_ledger_directory_is_an_error_and_nothing_is_created(tmp_path: Path) -> None:
    ledger = tmp_path / "not-there" / "costline.duckdb"
    config = write_config(tmp_path / "c.toml", ledger, otlp_port=free_port(), metrics_port=free_port())
    refused = _serve_once(config, tmp_path)
    assert refused.returncode == 1
    assert f"ledger directory {ledger.parent} does not exist" in refused.stderr
    assert not ledger.parent.exists()


# --- a full disk -----------------------------------------------------------------------------------------------------


def _needs(reason: str) -> None:
    """Skip on a laptop; CI runs as root and can mount, so there the missing piece is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI runs as root and must run this test)")
    pytest.skip(reason)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, mounted for the test and unmounted after it."""
    if os.geteuid() != 0:
        _needs("needs root to mount a small tmpfs and fill it (run as root, or under CI)")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        _needs(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int, name: str = "filler") -> Path:
    """Fill ``disk`` with the file ``name`` until ``leave`` bytes are free (or it is full)."""
    filler = disk / name
    with filler.open("wb") as out:
        while (free := os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize) > leave:
            try:
                out.write(bytes(min(1 << 20, free - leave)))
                out.flush()
            except OSError:
                break
    return filler


def _probe(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_ledger_invalidated_by_a_full_disk_is_reopened_once_space_returns_and_loses_nothing(
    small_disk: Path,
) -> None:
    rng = random.Random(17)
    # `during` is large enough that its WAL record cannot fit in the slack of a page already allocated: whether a
    # small one does depends on the byte layout of everything written before it.
    before, during = make_batch(rng, 2), make_batch(rng, 60)
    config = with_overrides(
        load_config(env={}),
        collector={"otlp_port": 0, "metrics_port": 0, "ledger": str(small_disk / "ledger.duckdb")},
        router={"usage_db": str(small_disk.parent / "usage.sqlite")},
    )
    with Collector(config) as collector:
        traces = f"{collector.otlp_url}/v1/traces"
        filler = _fill(small_disk, leave=64 * 1024)  # room for a WAL record, not for a checkpoint's blocks
        assert post(traces, before.body).status == 200  # acknowledged: in the WAL
        rest = _fill(small_disk, leave=0, name="rest")
        no_room = post(traces, during.body)  # the WAL cannot grow: the COMMIT fails, then its ROLLBACK
        assert no_room.status == 503 and b"No space left on device" in no_room.body, no_room.body
        assert b"cannot rollback" not in no_room.body
        cursor = collector.connection
        with pytest.raises(duckdb.Error):
            cursor.execute("CHECKPOINT")  # fails on the full disk; DuckDB invalidates the database
        cursor.close()

        refused = post(traces, during.body)
        assert refused.status == 503 and refused.headers["retry-after"] == "1"
        assert b"No space left on device" in refused.body and b"cannot rollback" not in refused.body
        ready = _probe(f"{collector.otlp_url}/readyz")
        assert ready[0] == 503 and "the ledger is unavailable" in ready[1], ready
        assert _probe(f"{collector.metrics_url}/readyz")[0] == 503

        filler.unlink()  # space returns
        rest.unlink()
        for _ in range(600):  # the writer reopens the ledger on its own; bounded wait for the event
            if _probe(f"{collector.otlp_url}/readyz")[0] == 200:
                break
            threading.Event().wait(0.05)
        assert _probe(f"{collector.otlp_url}/readyz") == (200, "ready\n")
        assert post(traces, during.body).status == 200  # the sender's retry
        reader = collector.connection
        stored = sorted(r[0] for r in reader.execute(SPAN_IDS).fetchall())
        reader.close()
        assert _probe(f"{collector.metrics_url}/metrics")[0] == 200
    assert stored == sorted(before.span_ids + during.span_ids)


SPAN_IDS = "SELECT span_id FROM attempts UNION ALL SELECT span_id FROM tasks"
