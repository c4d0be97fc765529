"""The routing library: local-first Ollama chain, bounded Claude escalation, one span per attempt."""

from router.router import Router
from router.task import AttemptRecord, Task, TaskResult

__all__ = ["AttemptRecord", "Router", "Task", "TaskResult"]
