"""How each SIMULATED model behaves in the demo: speed, token counts and failure rates.

Speeds are those of a single 24 GB GPU box (generation tokens per second; prompt evaluation is much faster), and
the failure mix is what a busy local setup sees: a busy server (503), a crashed runner (500), a stream that breaks
off, a hang that trips the timeout, and answers that the task's validator rejects. The servers *report* realistic
durations (seconds of generation), but really wait only ``1 / SPEEDUP`` of that, so the demo runs in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

SPEEDUP = 100.0  # wall time = reported time / SPEEDUP


@dataclass(frozen=True)
class LocalProfile:
    model: str
    prompt_tokens_per_s: float
    output_tokens_per_s: float
    # Probabilities per call; the rest succeed.
    busy: float  # 503 "server busy"
    crash: float  # 500 runner terminated
    stream_error: float  # 200, then an error line mid-stream
    hang: float  # no answer until the client times out
    bad_output: float  # an answer the task's validator rejects

    @property
    def failure_rate(self) -> float:
        return self.busy + self.crash + self.stream_error + self.hang + self.bad_output


@dataclass(frozen=True)
class ClaudeProfile:
    model: str
    output_tokens_per_s: float
    first_token_s: float
    overloaded: float  # 529
    rate_limited: float  # 429 with retry-after
    retry_after_s: float
    cached_prefix_tokens: int  # a shared system prompt that Anthropic's prompt cache serves after the first call
    cache_hit: float  # share of calls that read the cached prefix


LOCAL_PROFILES: tuple[LocalProfile, ...] = (
    LocalProfile(
        "qwen2.5-coder:14b",
        prompt_tokens_per_s=2400,
        output_tokens_per_s=52,
        busy=0.04,
        crash=0.01,
        stream_error=0.02,
        hang=0.005,
        bad_output=0.13,
    ),
    LocalProfile(
        "qwen3:30b-a3b",
        prompt_tokens_per_s=1900,
        output_tokens_per_s=78,
        busy=0.03,
        crash=0.02,
        stream_error=0.03,
        hang=0.005,
        bad_output=0.10,
    ),
    LocalProfile(
        "llama3.1:70b",
        prompt_tokens_per_s=450,
        output_tokens_per_s=11,
        busy=0.02,
        crash=0.04,
        stream_error=0.02,
        hang=0.01,
        bad_output=0.07,
    ),
)

CLAUDE_PROFILE = ClaudeProfile(
    "claude-sonnet-4-6",
    output_tokens_per_s=70,
    first_token_s=0.9,
    overloaded=0.03,
    rate_limited=0.03,
    retry_after_s=1.0,
    cached_prefix_tokens=1800,
    cache_hit=0.6,
)


def local_profile(model: str) -> LocalProfile:
    for profile in LOCAL_PROFILES:
        if profile.model == model:
            return profile
    raise KeyError(f"no demo profile for {model}")
