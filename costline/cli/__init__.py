"""The `costline` command: one face that dispatches into router and collector."""

from __future__ import annotations

# Each module registers its commands on `app` when imported.
# (Command modules are added here as they land.)
from costline.cli import config_cmd, demo, export, proxy, reconcile, report, route, serve, sql, usage  # noqa: F401
from costline.cli.app import app


def main() -> None:
    app()
