"""The routing library: local-first Ollama chain, bounded Claude escalation, one span per attempt."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router.router import Router
    from router.task import AttemptRecord, Task, TaskResult

__all__ = ["AttemptRecord", "Router", "Task", "TaskResult"]

# Loaded on first use: `costline usage` and the collector read router.usage_store and must not pay for the model
# clients (the Anthropic SDK alone takes seconds to import).
_HOMES = {"Router": "router.router", "AttemptRecord": "router.task", "Task": "router.task", "TaskResult": "router.task"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'router' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
