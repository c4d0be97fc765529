"""The span contract between router and collector (DESIGN §2).

Attribute names follow the OpenTelemetry GenAI semantic conventions; `costline.*` names are ours.
"""

from __future__ import annotations

from typing import Final

# OpenTelemetry GenAI semantic conventions.
OPERATION_NAME: Final = "gen_ai.operation.name"
PROVIDER_NAME: Final = "gen_ai.provider.name"
REQUEST_MODEL: Final = "gen_ai.request.model"
RESPONSE_MODEL: Final = "gen_ai.response.model"
RESPONSE_ID: Final = "gen_ai.response.id"
RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
INPUT_MESSAGES: Final = "gen_ai.input.messages"
OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
SYSTEM_INSTRUCTIONS: Final = "gen_ai.system_instructions"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"
SERVICE_NAME: Final = "service.name"

# Aliases written by other emitters; the collector maps them onto the same ledger columns.
ALIAS_SYSTEM: Final = "gen_ai.system"
ALIAS_PROMPT_TOKENS: Final = "gen_ai.usage.prompt_tokens"
ALIAS_COMPLETION_TOKENS: Final = "gen_ai.usage.completion_tokens"
ALIAS_CACHE_WRITE_INPUT_TOKENS: Final = "gen_ai.usage.cache_write.input_tokens"
ALIAS_COST_OPENLIT: Final = "gen_ai.usage.cost"
ALIAS_COST_LOGFIRE: Final = "operation.cost"
# OpenLLMetry up to 0.47 names its cache counts without the dot.
ALIAS_CACHE_READ_INPUT_TOKENS_FLAT: Final = "gen_ai.usage.cache_read_input_tokens"
ALIAS_CACHE_CREATION_INPUT_TOKENS_FLAT: Final = "gen_ai.usage.cache_creation_input_tokens"

# costline's own attributes.
TASK_ID: Final = "costline.task.id"
TASK_TYPE: Final = "costline.task.type"
TASK_CRITICAL: Final = "costline.task.critical"
TASK_OUTCOME: Final = "costline.task.outcome"
TASK_ESCALATED: Final = "costline.task.escalated"
TASK_ATTEMPTS: Final = "costline.task.attempts"
ATTEMPT_INDEX: Final = "costline.attempt.index"
ATTEMPT_TIER: Final = "costline.attempt.tier"
ESCALATION_REASON: Final = "costline.escalation.reason"
LOCAL_COMPUTE_SECONDS: Final = "costline.local.compute_seconds"
TEAM: Final = "costline.team"  # attribution, when the caller gives it (task and attempt spans)
PROJECT: Final = "costline.project"
USER_ID: Final = "user.id"  # OpenTelemetry's general attribute for the end user

OPERATION_CHAT: Final = "chat"
PROVIDER_OLLAMA: Final = "ollama"
PROVIDER_ANTHROPIC: Final = "anthropic"

TIER_PRIMARY: Final = "primary"
TIER_FALLBACK: Final = "fallback"
TIER_ESCALATION: Final = "escalation"
TIERS: Final = (TIER_PRIMARY, TIER_FALLBACK, TIER_ESCALATION)

REASON_THRESHOLD: Final = "threshold"  # local failures reached escalation.threshold
REASON_CRITICAL: Final = "critical"  # a critical task type: one local failure escalates
REASON_REQUESTED: Final = "requested"  # the caller asked for Claude
REASON_EXHAUSTED: Final = "exhausted"  # the local chain ran out before reaching the threshold
ESCALATION_REASONS: Final = (REASON_THRESHOLD, REASON_CRITICAL, REASON_REQUESTED, REASON_EXHAUSTED)

OUTCOME_COMPLETED: Final = "completed"
OUTCOME_TRUNCATED: Final = "truncated"  # Claude's answer was cut off by escalation.max_tokens
OUTCOME_FAILED: Final = "failed"
OUTCOME_CANCELLED: Final = "cancelled"  # the caller cancelled the task (asyncio cancellation, Ctrl-C, exit)
OUTCOME_QUOTA_EXHAUSTED: Final = "quota_exhausted"
OUTCOME_BUDGET_EXHAUSTED: Final = "budget_exhausted"
TASK_OUTCOMES: Final = (
    OUTCOME_COMPLETED,
    OUTCOME_TRUNCATED,
    OUTCOME_FAILED,
    OUTCOME_CANCELLED,
    OUTCOME_QUOTA_EXHAUSTED,
    OUTCOME_BUDGET_EXHAUSTED,
)

ERROR_QUOTA_EXHAUSTED: Final = "quota_exhausted"
ERROR_BUDGET_EXHAUSTED: Final = "budget_exhausted"
ERROR_MISSING_CREDENTIALS: Final = "missing_credentials"
ERROR_USAGE_STORE_UNAVAILABLE: Final = "usage_store_unavailable"  # the quota and budgets could not be checked
ERROR_TRUNCATED: Final = "truncated"
ERROR_CANCELLED: Final = "cancelled"
ERROR_VALIDATOR: Final = "validator_error"  # the task's validator raised instead of answering
# Escalations the router refused before calling Claude: they cost nothing and are not escalations.
REFUSAL_ERROR_TYPES: Final = (
    ERROR_QUOTA_EXHAUSTED,
    ERROR_BUDGET_EXHAUSTED,
    ERROR_MISSING_CREDENTIALS,
    ERROR_USAGE_STORE_UNAVAILABLE,
)

# error.type values the router emits. Other emitters' values are kept in the ledger as they come;
# metrics fold anything outside this set into "other" so label cardinality stays bounded.
ERROR_TYPES: Final = (
    "timeout",
    "connection",
    "model_not_found",
    "rate_limited",
    "overloaded",
    "server_error",
    "bad_request",
    "authentication",
    "permission_denied",
    "invalid_output",
    "empty_output",
    "stream_error",
    ERROR_TRUNCATED,
    ERROR_CANCELLED,
    ERROR_VALIDATOR,
    *REFUSAL_ERROR_TYPES,
)


def attempt_span_name(model: str) -> str:
    return f"{OPERATION_CHAT} {model}"


def task_span_name(task_type: str) -> str:
    return f"task {task_type}"
