"""When a task escalates to Claude, and why (DESIGN §2 ``costline.escalation.reason``)."""

from __future__ import annotations

from costline import spans as attr
from costline.config import Config
from router.task import Task


def is_critical(config: Config, task: Task) -> bool:
    """The task's own flag wins; otherwise its type must match a critical type exactly."""
    return task.critical if task.critical is not None else config.is_critical(task.type)


def threshold_for(config: Config, task: Task) -> int:
    return 1 if is_critical(config, task) else config.escalation.threshold


def escalation_before_local(config: Config, task: Task) -> str | None:
    """A caller who asks for Claude skips the local models."""
    return attr.REASON_REQUESTED if task.prefer_escalation else None


def escalation_after_failure(config: Config, task: Task, local_failures: int, local_left: int) -> str | None:
    """After a local failure: escalate once failures reach the threshold (``critical`` for critical tasks), or when the
    local chain ran out before reaching it (``exhausted``).

    Returns the reason, or None to go on with the next local model. Disabled escalation never escalates.
    """
    if not config.escalation.enabled:
        return None
    if local_failures >= threshold_for(config, task):
        return attr.REASON_CRITICAL if is_critical(config, task) else attr.REASON_THRESHOLD
    if local_left == 0:
        return attr.REASON_EXHAUSTED
    return None
