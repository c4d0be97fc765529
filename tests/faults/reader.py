"""Read a ledger that a ``costline serve`` process holds, the way the CLI does (through its query endpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from costline.config import load_config
from costline.ledger_reader import LedgerReader


def ledger_query(config_path: Path):  # type: ignore[no-untyped-def]
    reader = LedgerReader.from_config(load_config(config_path, env={}))

    def query(sql: str) -> list[tuple[Any, ...]]:
        table = reader.query(sql)
        columns = [column.to_pylist() for column in table.columns]
        return list(zip(*columns, strict=True)) if columns else []

    return query
