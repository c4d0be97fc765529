"""The read-only query endpoint's guard: one SELECT that provably writes nothing.

DuckDB reports a data-modifying CTE (``WITH x AS (DELETE … RETURNING *) SELECT …``) as a SELECT statement, so
the statement type alone is not enough: the parsed statement (``json_serialize_sql``) must contain only select,
set-operation and CTE query nodes, and no table function that changes the database. As a second line, the query
runs in a transaction that is always rolled back. The ledger connection itself has external file access disabled,
so a query cannot read or write files either.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import duckdb
import pyarrow as pa

READ_ONLY_MESSAGE = "only read-only queries are allowed"
_READ_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
_WRITING_FUNCTIONS = frozenset({"checkpoint", "force_checkpoint"})


class ReadOnlyViolation(Exception):
    def __init__(self, detail: str = "") -> None:
        super().__init__(READ_ONLY_MESSAGE + (f": {detail}" if detail else ""))


def run_read_only(reader: Callable[[], duckdb.DuckDBPyConnection], sql: str, params: list[Any]) -> pa.Table:
    """Run one read-only SELECT on its own cursor and return the result; refuse anything else."""
    statements = duckdb.extract_statements(sql)
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise ReadOnlyViolation
    con = reader()
    try:
        _check_tree(con, statements[0].query)
        con.execute("BEGIN TRANSACTION")
        try:
            return con.sql(statements[0].query, params=params or None).to_arrow_table()
        finally:
            con.execute("ROLLBACK")
    finally:
        con.close()


def _check_tree(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    row = con.execute("SELECT json_serialize_sql($1)", [sql]).fetchone()
    tree = json.loads(row[0]) if row else {"error": True}
    if tree.get("error"):
        raise ReadOnlyViolation("this statement form cannot be checked; write it as a plain SELECT")
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            kind = node.get("type")
            if isinstance(kind, str) and kind.endswith("_NODE") and kind not in _READ_NODES:
                raise ReadOnlyViolation
            function = node.get("function_name")
            if isinstance(function, str) and function.lower() in _WRITING_FUNCTIONS:
                raise ReadOnlyViolation
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
