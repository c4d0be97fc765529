"""Reading the shared ledger (`costline report --lake`, `costline sql --lake`): every collector's rows at once.

The lake is attached read-only in an in-memory DuckDB; ``attempts`` and ``tasks`` there are views over the lake's
tables and the documented views are created over them, so a query or report reads the same names as on a local
ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa

from collector.lake_connect import LAKE, LakeError, connect_lake
from collector.views import create_views
from costline.config import Config, LakeConfig
from costline.ledger_reader import (
    LedgerError,
    LedgerReader,
    check_read_only,
    source_from_config,
)


class LakeReader(LedgerReader):
    def __init__(self, config: Config) -> None:
        super().__init__(source_from_config(config))
        self.lake: LakeConfig = config.lake

    def query(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        check_read_only(sql)
        con = self._con or self._connect()
        self.via = "lake"
        return self._run(con, sql, params)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        try:
            con = connect_lake(self.lake, read_only=True)
        except LakeError as exc:
            raise LedgerError(str(exc)) from None
        try:
            listed = con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [LAKE])
            tables = {row[0] for row in listed.fetchall()}
            for table in ("attempts", "tasks"):
                if table not in tables:
                    raise LedgerError(
                        f"the shared ledger has no {table} table yet: no collector has flushed to it "
                        "(is [lake] catalog set on the collectors?)"
                    )
                con.execute(f"CREATE VIEW {table} AS SELECT * FROM {LAKE}.{table}")
            create_views(con)
            con.execute("SET TimeZone = 'UTC'")
        except BaseException:
            con.close()
            raise
        return con
