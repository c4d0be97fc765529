"""The demo's mixed workload, and how the SIMULATED backends answer each of its requests.

Tasks are drawn from a seeded generator, so two runs with the same seed route the same tasks. Every prompt carries
its task number (``(demo task #17)``); the simulated servers read it back to decide, deterministically per task,
model and call, whether to answer well, answer badly (the task's validator rejects it) or fail at the protocol
level — with token counts and durations drawn from the model's profile.

About a third of the tasks come from two teams' tools through `costline proxy` instead of the Python API: team
``search`` speaks the OpenAI Chat Completions API, team ``support`` the Ollama API. Which tasks, and whose, is drawn
from its own seeded generator, so the tasks themselves are the same as without the proxy.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from costline.demo.fake_anthropic import ClaudeBehaviour, ClaudeError, ClaudeReply
from costline.demo.fake_ollama import (
    OllamaBehaviour,
    OllamaError,
    OllamaHang,
    OllamaReply,
    OllamaStreamError,
)
from costline.demo.profiles import CLAUDE_PROFILE, SPEEDUP, ClaudeProfile, LocalProfile, local_profile
from router.task import Task

Validator = Callable[[str], str | None]
_MARKER = re.compile(r"\(demo task #(\d+)\)")
_CHARS_PER_TOKEN = 4


def _bulleted(text: str) -> str | None:
    return None if text.lstrip().startswith("- ") else "a summary must be a bullet list"


_LABELS = ("bug", "feature_request", "question", "billing")


def _one_label(text: str) -> str | None:
    return None if text.strip() in _LABELS else f"answer with exactly one of {', '.join(_LABELS)}"


def _json_object(text: str) -> str | None:
    try:
        return None if isinstance(json.loads(text), dict) else "the answer must be a JSON object"
    except ValueError as exc:
        return f"not valid JSON ({exc.msg})"


def _python_code(text: str) -> str | None:
    match = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    if not match:
        return "no ```python block in the answer"
    try:
        compile(match.group(1), "<answer>", "exec")
    except SyntaxError as exc:
        return f"the code does not compile: {exc.msg} (line {exc.lineno})"
    return None


def _unified_diff(text: str) -> str | None:
    return None if text.startswith("--- ") and "\n+++ " in text else "the answer must be a unified diff"


@dataclass(frozen=True)
class TaskKind:
    type: str
    weight: float
    prompts: tuple[str, ...]
    input_tokens: tuple[int, int]
    output_tokens: tuple[int, int]
    good: str  # an answer the validator accepts
    bad: str  # an answer it rejects
    validator: Validator | None
    prefer_escalation: bool = False
    critical_share: float = 0.0  # share of tasks the caller flags critical although the type is not


KINDS: tuple[TaskKind, ...] = (
    TaskKind(
        "summarize",
        0.27,
        (
            "Summarize this incident report for the on-call channel",
            "Summarize the meeting notes into five bullet points",
            "Summarize the customer's thread before the hand-over",
        ),
        (700, 2600),
        (90, 260),
        "- The deploy at 14:02 UTC doubled p95 latency.\n- Rolled back at 14:20; no data lost.",
        "As a language model I think the text is mostly about several different things.",
        _bulleted,
        critical_share=0.1,
    ),
    TaskKind(
        "classify",
        0.20,
        ("Label this support ticket", "Route this inbound e-mail to a queue", "Triage this GitHub issue"),
        (150, 420),
        (2, 8),
        "bug",
        "This looks like it could be a bug report, or maybe a question.",
        _one_label,
    ),
    TaskKind(
        "extract_json",
        0.16,
        ("Extract the invoice fields as JSON", "Pull name, company and e-mail out of this signature as JSON"),
        (300, 1400),
        (40, 160),
        '{"name": "Ada Lovelace", "company": "Analytical Engines Ltd", "email": "ada@example.com"}',
        "Here is the JSON you asked for: {name: 'Ada Lovelace', company: Analytical",
        _json_object,
    ),
    TaskKind(
        "code_generation",
        0.20,
        (
            "Write a Python function that parses ISO-8601 durations",
            "Write a retry decorator with exponential backoff",
            "Write a function that merges overlapping intervals",
        ),
        (250, 900),
        (180, 700),
        "```python\ndef merge(intervals):\n    out = []\n    for lo, hi in sorted(intervals):\n"
        "        if out and lo <= out[-1][1]:\n            out[-1][1] = max(out[-1][1], hi)\n"
        "        else:\n            out.append([lo, hi])\n    return out\n```",
        "```python\ndef merge(intervals):\n    out = [\n    for lo, hi in sorted(intervals)\n```",
        _python_code,
    ),
    TaskKind(
        "file_write",
        0.07,
        ("Update the config loader to read TOML", "Add a --dry-run flag to the release script"),
        (900, 3200),
        (150, 600),
        "--- a/release.sh\n+++ b/release.sh\n@@ -1,2 +1,3 @@\n set -e\n+DRY_RUN=${DRY_RUN:-0}\n",
        "I have updated the file for you; let me know if anything else is needed.",
        _unified_diff,
    ),
    TaskKind(
        "architecture_review",
        0.10,
        ("Review this service design for failure modes", "Review the migration plan for the billing database"),
        (1800, 5200),
        (400, 1200),
        "Three risks stand out: the retry storm on failover, the unbounded queue, and the missing idempotency key.",
        "",
        None,
        prefer_escalation=True,
    ),
)


@dataclass(frozen=True)
class Team:
    """A team whose tool reaches the router through `costline proxy`."""

    name: str
    api: str  # API_OPENAI or API_OLLAMA: what its tool speaks
    project: str
    users: tuple[str, ...]


API_OPENAI = "OpenAI"
API_OLLAMA = "Ollama"
TEAMS: tuple[Team, ...] = (
    Team("search", API_OPENAI, "ranker", ("ada", "grace")),
    Team("support", API_OLLAMA, "helpdesk", ("linus", "margaret", "alan")),
)
PROXY_SHARE = 1 / 3  # of the tasks, sent through the proxy by one of the TEAMS


@dataclass(frozen=True)
class DemoTask:
    number: int
    kind: TaskKind
    input_tokens: int
    critical: bool | None  # None: the router decides from the type
    team: Team | None = None  # None: routed with the Python API; else sent through the proxy by this team
    user: str | None = None

    @property
    def prompt(self) -> str:
        template = self.kind.prompts[self.number % len(self.kind.prompts)]
        return f"{template}. (demo task #{self.number})"

    def to_task(self) -> Task:
        return Task(
            prompt=self.prompt,
            type=self.kind.type,
            critical=self.critical,
            prefer_escalation=self.kind.prefer_escalation,
            validator=self.kind.validator,
        )


def make_tasks(count: int, seed: int) -> list[DemoTask]:
    rng = random.Random(f"costline-demo/{seed}")
    senders = random.Random(f"costline-demo/{seed}/proxy")
    weights = [k.weight for k in KINDS]
    tasks = []
    for number in range(count):
        kind = rng.choices(KINDS, weights)[0]
        critical = True if rng.random() < kind.critical_share else None
        team = senders.choice(TEAMS) if senders.random() < PROXY_SHARE else None
        user = senders.choice(team.users) if team else None
        tasks.append(DemoTask(number, kind, rng.randint(*kind.input_tokens), critical, team, user))
    return tasks


def task_number(text: str) -> int | None:
    """The demo task number a prompt carries, if any."""
    match = _MARKER.search(text)
    return int(match.group(1)) if match else None


class Simulation:
    """Decides each simulated answer from (seed, task, model, call number), so concurrency does not change them."""

    def __init__(self, tasks: list[DemoTask], seed: int, claude: ClaudeProfile = CLAUDE_PROFILE) -> None:
        self.tasks = {t.number: t for t in tasks}
        self.seed = seed
        self.claude = claude
        self._calls: dict[tuple[int, str], int] = {}
        self._lock = threading.Lock()
        self._cache_written = False

    def _draw(self, body: dict[str, Any]) -> tuple[DemoTask, random.Random] | None:
        text = " ".join(str(m.get("content", "")) for m in body.get("messages", []) if m.get("role") == "user")
        number = task_number(text)
        task = self.tasks.get(number) if number is not None else None
        if task is None:
            return None
        model = str(body.get("model"))
        with self._lock:
            call = self._calls.get((task.number, model), 0)
            self._calls[(task.number, model)] = call + 1
        return task, random.Random(f"{self.seed}/{task.number}/{model}/{call}")

    def ollama(self, profile: LocalProfile) -> Callable[[dict[str, Any]], OllamaBehaviour]:
        def answer(body: dict[str, Any]) -> OllamaBehaviour:
            drawn = self._draw(body)
            if drawn is None:
                return OllamaReply()
            task, rng = drawn
            output = rng.randint(*task.kind.output_tokens)
            prompt_s = task.input_tokens / profile.prompt_tokens_per_s
            eval_s = output / profile.output_tokens_per_s
            good = OllamaReply(
                content=task.kind.good,
                prompt_eval_count=task.input_tokens,
                eval_count=output,
                prompt_eval_duration_s=prompt_s,
                eval_duration_s=eval_s,
                delay_s=(prompt_s + eval_s) / SPEEDUP,
            )
            roll = rng.random()
            for share, behaviour in (
                (profile.busy, OllamaError(503)),
                (profile.crash, OllamaError(500)),
                (profile.stream_error, OllamaStreamError(after_chunks=2)),
                (profile.hang, OllamaHang(seconds=60)),
                (profile.bad_output if task.kind.validator else 0.0, replace(good, content=task.kind.bad)),
            ):
                if roll < share:
                    return behaviour
                roll -= share
            return good

        return answer

    def anthropic(self, body: dict[str, Any]) -> ClaudeBehaviour:
        drawn = self._draw(body)
        if drawn is None:
            return ClaudeReply()
        task, rng = drawn
        roll = rng.random()
        if roll < self.claude.overloaded:
            return ClaudeError(529)
        if roll < self.claude.overloaded + self.claude.rate_limited:
            return ClaudeError(429, retry_after=self.claude.retry_after_s)
        system = body.get("system") or ""
        notes_tokens = len(system) // _CHARS_PER_TOKEN if isinstance(system, str) else 0
        output = int(rng.randint(*task.kind.output_tokens) * 1.15)
        with self._lock:
            hit = self._cache_written and rng.random() < self.claude.cache_hit
            self._cache_written = True
        prefix = self.claude.cached_prefix_tokens
        return ClaudeReply(
            text=task.kind.good,
            input_tokens=task.input_tokens + notes_tokens,
            output_tokens=output,
            cache_read_input_tokens=prefix if hit else 0,
            cache_creation_input_tokens=0 if hit else prefix,
            delay_s=(self.claude.first_token_s + output / self.claude.output_tokens_per_s) / SPEEDUP,
        )


__all__ = [
    "API_OLLAMA",
    "API_OPENAI",
    "KINDS",
    "TEAMS",
    "DemoTask",
    "Simulation",
    "TaskKind",
    "Team",
    "local_profile",
    "make_tasks",
    "task_number",
]
