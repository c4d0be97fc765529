"""Validators a config can name for a task type (``[validators] extract = "json"``), so that tasks fail over to the
next model on unusable output without Python code. A validator returns None for a usable answer, else why not."""

from __future__ import annotations

import json

from router.task import Validator


def must_be_json(text: str) -> str | None:
    """The whole answer must parse as JSON (a fenced code block does not: callers parse the answer as it is)."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    return None


BUILTIN: dict[str, Validator] = {"json": must_be_json}
