"""GenAI spans as other instrumentations really send them, one Anthropic (or Ollama) call each.

Every fixture copies the attribute names, value types and conventions of the named emitter's source at the named
version (scope name, provider spelling, token attributes, whether input counts include cache, carried cost). The
counts are one cache-heavy Claude call: 100 uncached input tokens, 20,000 read from cache, 1,000 written to it,
500 output tokens; at claude-sonnet-4-5's list prices that is $0.01755.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from costline import spans as S

MODEL = "claude-sonnet-4-5"
LOCAL_MODEL = "qwen2.5-coder:14b"
UNCACHED, CACHE_READ, CACHE_WRITE, OUTPUT = 100, 20_000, 1_000, 500
INCLUSIVE = UNCACHED + CACHE_READ + CACHE_WRITE
CALL_USD = "0.01755"  # 100 × $3 + 20,000 × $0.30 + 1,000 × $3.75 + 500 × $15, per million


@dataclass(frozen=True)
class EmitterSpan:
    name: str  # emitter and version
    source: str  # where the shape was read
    scope: str  # instrumentation scope name
    span_name: str
    attributes: dict[str, Any]
    expected: dict[str, Any] = field(default_factory=dict)  # ledger columns this call must land as


_CLAUDE_INCLUSIVE = {
    "provider": "anthropic",
    "request_model": MODEL,
    "input_tokens": INCLUSIVE,
    "output_tokens": OUTPUT,
    "cache_read_tokens": CACHE_READ,
    "cache_write_tokens": CACHE_WRITE,
    "cost_usd": CALL_USD,
}

SPANS: list[EmitterSpan] = [
    EmitterSpan(
        "OpenLIT 1.45.0",
        "openlit/openlit sdk/python/src/openlit/instrumentation/anthropic/utils.py (common_chat_logic) and "
        "__helpers.py (common_span_attributes), commit ad20b7b; input_tokens is Anthropic's own, cache left out",
        "openlit.otel.tracing",
        f"chat {MODEL}",
        {
            "telemetry.sdk.name": "openlit",
            S.OPERATION_NAME: "chat",
            S.PROVIDER_NAME: "anthropic",
            S.SERVER_ADDRESS: "api.anthropic.com",
            S.SERVER_PORT: 443,
            S.REQUEST_MODEL: MODEL,
            S.RESPONSE_MODEL: MODEL,
            S.USAGE_INPUT_TOKENS: UNCACHED,
            S.USAGE_OUTPUT_TOKENS: OUTPUT,
            "gen_ai.client.token.usage": UNCACHED + OUTPUT,
            S.ALIAS_COST_OPENLIT: float(CALL_USD),
            S.USAGE_CACHE_READ_INPUT_TOKENS: CACHE_READ,
            S.USAGE_CACHE_CREATION_INPUT_TOKENS: CACHE_WRITE,
        },
        {**_CLAUDE_INCLUSIVE, "emitter": "openlit", "reported_cost_usd": CALL_USD, "cost_disagrees": False},
    ),
    EmitterSpan(
        "OpenLIT 1.34.31 (mid-2025)",
        "openlit/openlit sdk/python/src/openlit/instrumentation/anthropic/utils.py and __helpers.py, commit f0267ed "
        "(2025-07-17): gen_ai.system, Anthropic's input_tokens, no cache attributes, cost from input and output only",
        "openlit.otel.tracing",
        f"chat {MODEL}",
        {
            "telemetry.sdk.name": "openlit",
            S.OPERATION_NAME: "chat",
            S.ALIAS_SYSTEM: "anthropic",
            S.SERVER_ADDRESS: "api.anthropic.com",
            S.SERVER_PORT: 443,
            S.REQUEST_MODEL: MODEL,
            S.RESPONSE_MODEL: MODEL,
            S.USAGE_INPUT_TOKENS: UNCACHED,
            S.USAGE_OUTPUT_TOKENS: OUTPUT,
            S.ALIAS_COST_OPENLIT: 0.0078,
        },
        {
            "provider": "anthropic",
            "input_tokens": UNCACHED,  # the cache counts never left the process: nothing to add back
            "cache_read_tokens": None,
            "cost_usd": "0.0078",
            "reported_cost_usd": "0.0078",
            "cost_disagrees": False,
            "emitter": "openlit",
        },
    ),
    EmitterSpan(
        "OpenLLMetry 0.47.5, Anthropic",
        "traceloop/openllmetry packages/opentelemetry-instrumentation-anthropic/opentelemetry/instrumentation/"
        "anthropic/__init__.py (_set_token_usage) and opentelemetry-semantic-conventions-ai semconv_ai/__init__.py",
        "opentelemetry.instrumentation.anthropic",
        "anthropic.chat",
        {
            S.ALIAS_SYSTEM: "Anthropic",
            "llm.request.type": "chat",
            S.REQUEST_MODEL: MODEL,
            S.RESPONSE_MODEL: MODEL,
            S.ALIAS_PROMPT_TOKENS: INCLUSIVE,
            S.ALIAS_COMPLETION_TOKENS: OUTPUT,
            "llm.usage.total_tokens": INCLUSIVE + OUTPUT,
            S.ALIAS_CACHE_READ_INPUT_TOKENS_FLAT: CACHE_READ,
            S.ALIAS_CACHE_CREATION_INPUT_TOKENS_FLAT: CACHE_WRITE,
        },
        {**_CLAUDE_INCLUSIVE, "emitter": "openllmetry", "reported_cost_usd": None},
    ),
    EmitterSpan(
        "OpenLLMetry 0.54.0, Anthropic",
        "traceloop/openllmetry packages/opentelemetry-instrumentation-anthropic/opentelemetry/instrumentation/"
        "anthropic/__init__.py at v0.54.0 (unchanged to v0.59.2)",
        "opentelemetry.instrumentation.anthropic",
        "anthropic.chat",
        {
            S.PROVIDER_NAME: "anthropic",
            S.OPERATION_NAME: "chat",
            S.REQUEST_MODEL: MODEL,
            S.RESPONSE_MODEL: MODEL,
            S.USAGE_INPUT_TOKENS: INCLUSIVE,
            S.USAGE_OUTPUT_TOKENS: OUTPUT,
            "gen_ai.usage.total_tokens": INCLUSIVE + OUTPUT,
            S.USAGE_CACHE_READ_INPUT_TOKENS: CACHE_READ,
            S.USAGE_CACHE_CREATION_INPUT_TOKENS: CACHE_WRITE,
        },
        {**_CLAUDE_INCLUSIVE, "emitter": "openllmetry"},
    ),
    EmitterSpan(
        "OpenLLMetry 0.47.5, Ollama",
        "traceloop/openllmetry packages/opentelemetry-instrumentation-ollama/opentelemetry/instrumentation/ollama/"
        "__init__.py and span_utils.py at v0.47.5: gen_ai.system 'Ollama', prompt_tokens from prompt_eval_count",
        "opentelemetry.instrumentation.ollama",
        "ollama.chat",
        {
            S.ALIAS_SYSTEM: "Ollama",
            "llm.request.type": "chat",
            S.REQUEST_MODEL: LOCAL_MODEL,
            S.RESPONSE_MODEL: LOCAL_MODEL,
            "llm.usage.total_tokens": 1500,
            S.ALIAS_COMPLETION_TOKENS: 300,
            S.ALIAS_PROMPT_TOKENS: 1200,
        },
        {"provider": "ollama", "input_tokens": 1200, "output_tokens": 300, "cost_usd": "0", "local": True},
    ),
    EmitterSpan(
        "OpenLLMetry 0.59.2, Ollama",
        "traceloop/openllmetry packages/opentelemetry-instrumentation-ollama/opentelemetry/instrumentation/ollama/"
        "__init__.py and span_utils.py at v0.59.2: still only gen_ai.system 'Ollama', semconv token names",
        "opentelemetry.instrumentation.ollama",
        "ollama.chat",
        {
            S.ALIAS_SYSTEM: "Ollama",
            "llm.request.type": "chat",
            S.REQUEST_MODEL: LOCAL_MODEL,
            S.RESPONSE_MODEL: LOCAL_MODEL,
            "llm.usage.total_tokens": 1500,
            S.USAGE_OUTPUT_TOKENS: 300,
            S.USAGE_INPUT_TOKENS: 1200,
        },
        {"provider": "ollama", "input_tokens": 1200, "output_tokens": 300, "cost_usd": "0", "local": True},
    ),
    EmitterSpan(
        "Logfire 4.41.0, instrument_anthropic",
        "pydantic/logfire logfire/_internal/integrations/llm_providers/anthropic.py (get_anthropic_usage_attributes), "
        "usage.py and semconv.py: input includes cache, the breakdown only in gen_ai.usage.raw, cost in operation.cost",
        "logfire.anthropic",
        f"Message with {MODEL!r}",
        {
            S.ALIAS_SYSTEM: "anthropic",
            S.PROVIDER_NAME: "anthropic",
            S.REQUEST_MODEL: MODEL,
            S.OPERATION_NAME: "chat",
            S.RESPONSE_MODEL: MODEL,
            S.RESPONSE_ID: "msg_01XFDUDYJgAACzvnptvVoYEL",
            S.USAGE_INPUT_TOKENS: INCLUSIVE,
            S.USAGE_OUTPUT_TOKENS: OUTPUT,
            "gen_ai.usage.raw": json.dumps(
                {
                    "cache_creation_input_tokens": CACHE_WRITE,
                    "cache_read_input_tokens": CACHE_READ,
                    "input_tokens": UNCACHED,
                    "output_tokens": OUTPUT,
                    "service_tier": "standard",
                },
                separators=(",", ":"),
            ),
            S.ALIAS_COST_LOGFIRE: float(CALL_USD),
        },
        {**_CLAUDE_INCLUSIVE, "emitter": "logfire", "reported_cost_usd": CALL_USD, "cost_disagrees": False},
    ),
    EmitterSpan(
        "Pydantic AI 2.33.0",
        "pydantic/pydantic-ai pydantic_ai_slim/pydantic_ai/_instrumentation.py (provider_attributes, "
        "response_attributes), usage.py (opentelemetry_attributes); scope 'pydantic-ai' in models/instrumented.py",
        "pydantic-ai",
        f"chat {MODEL}",
        {
            S.OPERATION_NAME: "chat",
            S.PROVIDER_NAME: "anthropic",
            S.ALIAS_SYSTEM: "anthropic",
            S.REQUEST_MODEL: MODEL,
            S.USAGE_INPUT_TOKENS: INCLUSIVE,
            S.USAGE_OUTPUT_TOKENS: OUTPUT,
            S.USAGE_CACHE_CREATION_INPUT_TOKENS: CACHE_WRITE,
            "gen_ai.usage.details.cache_write_tokens": CACHE_WRITE,
            S.USAGE_CACHE_READ_INPUT_TOKENS: CACHE_READ,
            "gen_ai.usage.details.cache_read_tokens": CACHE_READ,
            S.RESPONSE_MODEL: MODEL,
            S.ALIAS_COST_LOGFIRE: float(CALL_USD),
            S.RESPONSE_FINISH_REASONS: ["stop"],
        },
        {**_CLAUDE_INCLUSIVE, "emitter": "pydantic-ai", "reported_cost_usd": CALL_USD, "cost_disagrees": False},
    ),
    EmitterSpan(
        "semantic conventions 1.41",
        "open-telemetry/semantic-conventions model/gen-ai/registry.yaml and spans.yaml (v1.41.0): input includes "
        "cache, cache_read / cache_creation as subsets",
        "example.genai.instrumentation",
        f"chat {MODEL}",
        {
            S.OPERATION_NAME: "chat",
            S.PROVIDER_NAME: "anthropic",
            S.REQUEST_MODEL: MODEL,
            S.RESPONSE_MODEL: MODEL,
            S.USAGE_INPUT_TOKENS: INCLUSIVE,
            S.USAGE_OUTPUT_TOKENS: OUTPUT,
            S.USAGE_CACHE_READ_INPUT_TOKENS: CACHE_READ,
            S.USAGE_CACHE_CREATION_INPUT_TOKENS: CACHE_WRITE,
        },
        {**_CLAUDE_INCLUSIVE, "emitter": "semconv"},
    ),
    EmitterSpan(
        "GenAI semantic conventions repository",
        "open-telemetry/semantic-conventions-genai model/gen-ai/registry.yaml (commit 002c8a6): the same names, "
        "plus modality and reasoning subsets",
        "example.genai.instrumentation",
        f"chat {MODEL}",
        {
            S.OPERATION_NAME: "chat",
            S.PROVIDER_NAME: "anthropic",
            S.REQUEST_MODEL: MODEL,
            S.RESPONSE_MODEL: MODEL,
            S.USAGE_INPUT_TOKENS: INCLUSIVE,
            "gen_ai.usage.text.input_tokens": INCLUSIVE,
            S.USAGE_OUTPUT_TOKENS: OUTPUT,
            "gen_ai.usage.reasoning.output_tokens": 200,
            S.USAGE_CACHE_READ_INPUT_TOKENS: CACHE_READ,
            S.USAGE_CACHE_CREATION_INPUT_TOKENS: CACHE_WRITE,
        },
        {**_CLAUDE_INCLUSIVE, "emitter": "semconv"},
    ),
    EmitterSpan(
        "only gen_ai.system",
        "the older conventions' provider attribute alone, as OpenLLMetry's Ollama wrapper starts its spans "
        "(opentelemetry-instrumentation-ollama __init__.py, v0.59.2) before a response fills them",
        "opentelemetry.instrumentation.ollama",
        "ollama.chat",
        {S.ALIAS_SYSTEM: "Ollama"},
        {
            "provider": "ollama",
            "request_model": None,
            "input_tokens": None,
            "cost_usd": None,
            "price_source": "no-usage",
        },
    ),
]
