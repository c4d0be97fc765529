"""`costline init` writes a starter config; `costline config check` validates one and shows where each value is from."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from costline.cli.app import ConfigOption, app, console, fail, load_or_exit
from costline.config import SECTIONS

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"

config_app = typer.Typer(help="Check the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@app.command("init")
def init(
    path: Annotated[Path, typer.Argument(help="Where to write it.")] = Path("costline.toml"),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Write a commented starter config: every key at its default, ready to edit."""
    if path.exists() and not force:
        fail(f"{path} already exists; pass --force to replace it")
    path.write_text(EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    console.print(
        f"wrote {path}: edit router.models and the budgets, then `costline config check --config {path}`",
        highlight=False,
        soft_wrap=True,
    )


@config_app.command("check")
def check(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of a table.")] = False,
) -> None:
    """Validate the configuration (exit 2 naming the key, value and fix) and print every effective value with
    where it came from: the default, the file, or an environment variable. Secrets are never shown."""
    cfg = load_or_exit(config)
    keys = [(name, f.name) for name in SECTIONS for f in fields(getattr(cfg, name))]
    rows = [
        (f"{name}.{key}", _shown(getattr(getattr(cfg, name), key)), cfg.origins.get(f"{name}.{key}", "default"))
        for name, key in keys
    ]
    extra = {
        "prices": sorted(cfg.prices),
        "team budgets": sorted(cfg.team_budgets),
        "validators": dict(cfg.validators),
        "ANTHROPIC_API_KEY": "set" if cfg.anthropic_api_key else "not set",
        "COSTLINE_INGEST_TOKEN": "set" if cfg.ingest_token else "not set",
    }
    if as_json:
        document = {"source": cfg.source, "keys": {k: {"value": v, "from": o} for k, v, o in rows}, **extra}
        typer.echo(json.dumps(document, indent=2, default=str))
        return
    table = Table(title=f"costline configuration (file: {cfg.source}) — valid", title_justify="left")
    for column in ("key", "value", "from"):
        table.add_column(column)
    for key, value, origin in rows:
        table.add_row(key, json.dumps(value, default=str), origin, style=None if origin == "default" else "bold")
    console.print(table)
    for name, value in extra.items():
        console.print(f"{name}: {value}", highlight=False)


def _shown(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return value
