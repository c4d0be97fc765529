"""The `costline` command: one face that dispatches into router and collector."""

from __future__ import annotations

from costline.cli.app import app

# Each module registers its commands on `app` when imported.
# (Command modules are added here as they land.)


def main() -> None:
    app()
