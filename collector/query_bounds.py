"""The query endpoint's bound on the values a query builds, which DuckDB's memory limit does not cover.

DuckDB's ``memory_limit`` governs what its buffer manager holds: tables, aggregate states (``string_agg``,
``list``), sorts, joins and hash tables all stop at it with an out-of-memory error. The vectors an expression
builds while a query runs are outside it: ``SELECT repeat('x', 200000000)`` allocates 200 MB in one call, and a
vector holds up to 2,048 rows of such values, before any interrupt or result bound can act. So through the query API
a function whose result size is set by an argument is accepted only when that argument is a literal within
:data:`MAX_BUILT_CHARS` characters (or elements) per value:

- ``repeat``, ``lpad``, ``rpad``, ``list_resize``/``array_resize`` and ``bar``'s width;
- ``printf``/``format`` patterns: literal, with widths and precisions up to :data:`MAX_FORMAT_WIDTH`;
- ``range``/``generate_series`` as scalar functions (a list per row) are refused: their table form
  (``FROM range(…)``) streams rows and is bounded.

The bound is on single calls. A query that concatenates a value with itself through nested subqueries still builds
values outside the limit; the deployment bounds that case with the collector's container memory limit (an
out-of-memory kill loses nothing acknowledged: the ledger is durable and senders retry).
"""

from __future__ import annotations

import re
from typing import Any, Final

MAX_BUILT_CHARS: Final = 65_536  # x 2,048 rows per vector = 128 MiB at most per built column
MAX_FORMAT_WIDTH: Final = 9_999

# function -> index of the argument that sets the result's length (in characters or list elements)
_LENGTH_ARGUMENT: Final = {"lpad": 1, "rpad": 1, "list_resize": 1, "array_resize": 1, "bar": 3}
_REPEAT: Final = frozenset({"repeat", "list_repeat", "array_repeat"})
_FORMATS: Final = frozenset({"printf", "format"})
_SERIES: Final = frozenset({"range", "generate_series"})

# A printf conversion's flags, width and precision; a {fmt} replacement field's spec.
_PRINTF_SPEC = re.compile(r"%[-+ #0]*(\*|\d*)(?:\.(\*|\d*))?")
_FMT_FIELD = re.compile(r"\{[^{}]*\{|\{[^{}]*\}")
_NUMBER = re.compile(r"\d+")


class UnboundedValue(Exception):
    """A query that would build values larger than the query API allows."""


def check_function(node: dict[str, Any]) -> None:
    """Refuse a scalar function call (a parsed FUNCTION node) that could build a value past the bound."""
    name = str(node.get("function_name", "")).lower()
    args = _arguments(node)
    if name in _SERIES:
        raise UnboundedValue(
            f"{name}() as a scalar builds a list per row, outside DuckDB's memory limit; "
            f"use its table form: SELECT … FROM {name}(…)"
        )
    if name in _REPEAT and len(args) >= 2:
        unit = _literal_text(args[0])
        count = _literal_int(args[1])
        size = None if count is None else count * (len(unit) if unit is not None else MAX_BUILT_CHARS)
        _check_size(name, size, "the repeated value times the count")
    elif name in _LENGTH_ARGUMENT and len(args) > _LENGTH_ARGUMENT[name]:
        _check_size(name, _literal_int(args[_LENGTH_ARGUMENT[name]]), "its length argument")
    elif name in _FORMATS and args:
        _check_format(name, _literal_text(args[0]))


def _check_size(name: str, size: int | None, what: str) -> None:
    if size is None:
        raise UnboundedValue(f"{name}(): {what} must be a literal number through the query API")
    if abs(size) > MAX_BUILT_CHARS:
        raise UnboundedValue(
            f"{name}() would build values of {abs(size):,} characters; the query API allows {MAX_BUILT_CHARS:,} "
            "(DuckDB's memory limit does not cover values a query builds)"
        )


def _check_format(name: str, pattern: str | None) -> None:
    if pattern is None:
        raise UnboundedValue(f"{name}(): the pattern must be a literal string through the query API")
    specs = (
        [s for spec in _PRINTF_SPEC.finditer(pattern) for s in spec.groups() if s]
        if name == "printf"
        else [field.group() for field in _FMT_FIELD.finditer(pattern)]
    )
    for spec in specs:
        if "*" in spec or spec.count("{") > 1:
            raise UnboundedValue(f"{name}(): widths taken from arguments are not allowed through the query API")
        if any(int(n) > MAX_FORMAT_WIDTH for n in _NUMBER.findall(spec)):
            raise UnboundedValue(f"{name}(): widths and precisions above {MAX_FORMAT_WIDTH:,} are not allowed")


def _literal_text(expression: Any) -> str | None:
    literal = _literal(expression)
    return literal.get("text") if literal is not None and literal.get("kind") == "STRING" else None


def _literal_int(expression: Any) -> int | None:
    literal = _literal(expression)
    if literal is None or literal.get("kind") not in ("INTEGER", "BIGINT", "HUGEINT", "UBIGINT"):
        return None
    try:
        return int(literal.get("text", ""))
    except ValueError:
        return None


def _arguments(node: dict[str, Any]) -> list[Any]:
    # DuckDB 1.5 serialises a call's arguments as ``children``; the other layout (``arguments`` of ``expression``)
    # is kept so the bound does not depend on which DuckDB is installed.
    if "children" in node:
        return list(node.get("children") or [])
    return [a.get("expression") for a in node.get("arguments", []) if isinstance(a, dict)]


def _literal(expression: Any) -> dict[str, Any] | None:
    if not (isinstance(expression, dict) and expression.get("class") == "CONSTANT"):
        return None
    literal = expression.get("literal")
    if isinstance(literal, dict):
        return literal
    value = expression.get("value")  # DuckDB 1.5: {"type": {"id": "INTEGER"}, "is_null": false, "value": 200000000}
    if isinstance(value, dict) and not value.get("is_null"):
        kind = (value.get("type") or {}).get("id")
        text = value.get("value")
        return {"kind": "STRING" if kind == "VARCHAR" else kind, "text": None if text is None else str(text)}
    return None
