"""``costline serve`` as a real subprocess: a tmp config on free loopback ports, logs to files, kill -9."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

READY_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def costline_command() -> list[str]:
    script = Path(sys.executable).with_name("costline")
    if script.exists():
        return [str(script)]
    found = shutil.which("costline")
    if found is None:
        raise RuntimeError("the costline console script is not installed next to this Python")
    return [found]


def write_config(path: Path, ledger: Path, *, otlp_port: int, metrics_port: int, **collector: Any) -> Path:
    lines = [
        "[router]",
        f"usage_db = {str(path.parent / 'usage.sqlite')!r}",
        "[collector]",
        'host = "127.0.0.1"',
        f"otlp_port = {otlp_port}",
        f"metrics_port = {metrics_port}",
        f"ledger = {str(ledger)!r}",
    ]
    lines += [f"{key} = {value!r}" for key, value in collector.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class ServedCollector:
    """One ``costline serve`` process on fixed free ports; restartable on the same ledger and ports."""

    def __init__(self, workdir: Path, ledger: Path, *, env: dict[str, str] | None = None, **collector: Any) -> None:
        self.workdir = workdir
        self.ledger = ledger
        self.otlp_port, self.metrics_port = free_port(), free_port()
        while self.metrics_port == self.otlp_port:
            self.metrics_port = free_port()
        self.config = write_config(
            workdir / "collector.toml",
            ledger,
            otlp_port=self.otlp_port,
            metrics_port=self.metrics_port,
            **collector,
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("COSTLINE_", "OTEL_"))}
        self.env.update(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def otlp_url(self) -> str:
        return f"http://127.0.0.1:{self.otlp_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def traces_url(self) -> str:
        return f"{self.otlp_url}/v1/traces"

    def log_paths(self, run: int | None = None) -> tuple[Path, Path]:
        run = self.runs if run is None else run
        return self.workdir / f"serve-{run}.out", self.workdir / f"serve-{run}.err"

    def start(self, *extra: str, wait: bool = True) -> ServedCollector:
        self.runs += 1
        out, err = self.log_paths()
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self.process = subprocess.Popen(
                [*costline_command(), "serve", "--config", str(self.config), *extra],
                stdout=stdout,
                stderr=stderr,
                env=self.env,
                cwd=self.workdir,
                start_new_session=True,  # its own process group: the decode workers it spawns go down with it
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"costline serve exited with {self.process.returncode}: {self.stderr()}")
            try:
                with urllib.request.urlopen(f"{self.otlp_url}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"costline serve not ready after {READY_TIMEOUT_S:g}s: {self.stderr()}")

    def stdout(self, run: int | None = None) -> str:
        return self.log_paths(run)[0].read_text(encoding="utf-8", errors="replace")

    def stderr(self, run: int | None = None) -> str:
        return self.log_paths(run)[1].read_text(encoding="utf-8", errors="replace")

    def peak_rss_mb(self) -> float:
        """The process's high-water resident set size (VmHWM), in MiB."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc/PID/status")

    def kill9(self) -> None:
        """SIGKILL the collector process alone, as `kill -9 PID` does: its decode workers must end by themselves
        (the test watches them). Whatever is left is killed with the process group when the test ends."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def _kill_group(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self) -> int:
        """SIGTERM (a clean drain), then the exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self._kill_group()
            self.process.wait(10)
            raise

    def __enter__(self) -> ServedCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self._kill_group()  # whatever of the last run is left, workers included
            self.process.wait(30)
