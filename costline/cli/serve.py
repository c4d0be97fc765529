"""`costline serve`: run the collector until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from costline.cli.app import ConfigOption, app, console, fail, load_or_exit


@app.command("serve")
def serve(
    config: ConfigOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every request.")] = False,
) -> None:
    """Run the collector: OTLP/HTTP in, the DuckDB ledger and Prometheus /metrics out."""
    # Imported here so that other commands do not pay for the collector's imports.
    from collector.ledger import LedgerError
    from collector.service import Collector

    cfg = load_or_exit(config)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ledger = Path(cfg.collector.ledger).expanduser()
    new_ledger = not ledger.exists()
    try:
        collector = Collector(cfg)
    except LedgerError as exc:
        fail(str(exc))
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            collector.start()
        except OSError as exc:
            collector.stop()
            if new_ledger:  # a collector that never ran leaves no empty ledger behind
                for path in (ledger, ledger.with_name(ledger.name + ".wal")):
                    path.unlink(missing_ok=True)
            fail(f"cannot listen on {cfg.collector.host}: {exc}; stop what holds the port, or choose another")
        collector.decoder.start()  # a service warms up before it is ready: /readyz answers 503 until then
        console.print(
            f"costline collector: OTLP {collector.otlp_url}/v1/traces · metrics {collector.metrics_url}/metrics · "
            f"ledger {cfg.collector.ledger} — Ctrl-C to stop",
            highlight=False,
        )
        stop.wait()
        console.print("stopping: committing queued spans…", highlight=False)
    finally:
        collector.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
