"""When a task escalates to Claude, and why (DESIGN §2 ``costline.escalation.reason``)."""

from __future__ import annotations

from costline.config import Config
from router.task import Task

REASON_THRESHOLD = "threshold"
REASON_CRITICAL = "critical"
REASON_REQUESTED = "requested"


def is_critical(config: Config, task: Task) -> bool:
    """The task's own flag wins; otherwise its type must match a critical type exactly."""
    return task.critical if task.critical is not None else config.is_critical(task.type)


def threshold_for(config: Config, task: Task) -> int:
    return 1 if is_critical(config, task) else config.escalation.threshold


def escalation_before_local(config: Config, task: Task) -> str | None:
    """A caller who asks for Claude skips the local models."""
    return REASON_REQUESTED if task.prefer_escalation else None


def escalation_after_failure(config: Config, task: Task, local_failures: int, local_left: int) -> str | None:
    """After a local failure: escalate once failures reach the threshold or the local chain is exhausted.

    Returns the reason, or None to go on with the next local model (or to give up, when none is left).
    Disabled escalation never escalates.
    """
    if not config.escalation.enabled:
        return None
    critical = is_critical(config, task)
    if local_failures >= threshold_for(config, task) or local_left == 0:
        return REASON_CRITICAL if critical else REASON_THRESHOLD
    return None
