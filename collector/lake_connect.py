"""Opening the shared ledger (DuckLake): the extensions from their PyPI packages, the catalog, the data path.

DuckDB would download ``ducklake`` and ``postgres_scanner`` on first use; the collector may run without network,
so they are installed from the files that the ``duckdb-extension-*`` packages ship (``costline[lake]``), which are
built for exactly one DuckDB version — hence ``duckdb`` is pinned in pyproject.toml.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import duckdb

from costline.config import POSTGRES_SCHEMES, LakeConfig

LAKE = "lake"  # the name the lake is attached under
INSTALL_HINT = "pip install 'costline[lake]'"


class LakeError(RuntimeError):
    """The lake cannot be opened or written; the message says why and what to do."""


def extension_file(name: str) -> Path:
    """The extension binary that the package ``duckdb-extension-<name>`` ships for the running DuckDB."""
    package = f"duckdb_extension_{name}"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise LakeError(
            f"the shared ledger needs the DuckDB extension {name!r}, which is not installed: {INSTALL_HINT}"
        ) from None
    file = Path(module.__file__ or "").parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not file.is_file():
        raise LakeError(
            f"{package} has no build for DuckDB {duckdb.__version__} (looked for {file}); install the version of "
            f"both that costline pins: {INSTALL_HINT}"
        )
    return file


def load_extensions(con: duckdb.DuckDBPyConnection, *names: str) -> None:
    # LOAD from the package's file: no copy into ~/.duckdb (INSTALL would write 40 MB there on every start, and the
    # home directory of a container may be read-only).
    for name in names:
        con.execute(f"LOAD '{_quote(str(extension_file(name)))}'")


def catalog_extensions(catalog: str) -> tuple[str, ...]:
    return ("ducklake", "postgres_scanner" if catalog.startswith(POSTGRES_SCHEMES) else "sqlite_scanner")


def attach_target(catalog: str) -> str:
    """The ``ATTACH`` string for a catalog: a PostgreSQL URL (libpq reads the password from PGPASSWORD or
    ~/.pgpass) or a file path, a SQLite catalog: a DuckDB file catalog is locked by the one process that opens it,
    so no second collector, and no `costline report --lake` beside a running collector, could open it."""
    if catalog.startswith(POSTGRES_SCHEMES):
        return f"ducklake:postgres:{catalog}"
    return f"ducklake:sqlite:{Path(catalog).expanduser()}"


def connect_lake(lake: LakeConfig, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake attached as ``lake``; its data files go under ``lake.data_path``."""
    if not lake.enabled:
        raise LakeError("no shared ledger is configured: set [lake] catalog and data_path (docs/scale-out.md)")
    con = duckdb.connect()
    try:
        load_extensions(con, *catalog_extensions(lake.catalog))
        data_path = Path(lake.data_path).expanduser()
        if not read_only:
            data_path.mkdir(parents=True, exist_ok=True)
        options = [f"DATA_PATH '{_quote(str(data_path))}'"]
        if read_only:
            options.append("READ_ONLY")
        con.execute(f"ATTACH '{_quote(attach_target(lake.catalog))}' AS {LAKE} ({', '.join(options)})")
    except duckdb.Error as exc:
        con.close()
        raise LakeError(f"cannot open the shared ledger {shown_catalog(lake.catalog)}: {_first_line(exc)}") from None
    except BaseException:
        con.close()
        raise
    return con


def shown_catalog(catalog: str) -> str:
    """The catalog as logs may show it (the config refuses passwords, but a libpq string could still hold one)."""
    return catalog.split("?", 1)[0]


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
