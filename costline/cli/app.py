"""The Typer application and the options every command shares."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from costline.config import Config, ConfigError, load_config, with_overrides

app = typer.Typer(
    name="costline",
    help="Local-first LLM routing with an exact cost ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (default: $COSTLINE_CONFIG, else built-in defaults)."),
]


CollectorUrlOption = Annotated[
    str | None,
    typer.Option(
        "--collector-url",
        help="Ask the collector at this URL (its metrics port), wherever its ledger is (or $COSTLINE_COLLECTOR_URL).",
    ),
]


LakeOption = Annotated[
    bool,
    typer.Option("--lake", help="Read the shared ledger ([lake] catalog): every collector's rows, not this ledger's."),
]


def load_or_exit(path: Path | None, *, collector_url: str | None = None) -> Config:
    """Load the config, or print the problem (key, value, fix) and exit with status 2."""
    try:
        config = load_config(path)
        return with_overrides(config, collector={"url": collector_url}) if collector_url else config
    except ConfigError as exc:
        fail(str(exc), code=2)


def fail(message: str, code: int = 1) -> NoReturn:
    # soft_wrap: never fold a long path or URL across lines (stderr is often a log file, 80 columns wide)
    err_console.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(f"costline {version('costline')}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print costline's version and exit."),
    ] = False,
) -> None:
    """Local-first LLM routing with an exact cost ledger."""
