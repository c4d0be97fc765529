"""Which instrumentation sent a GenAI span, and how it writes usage: emitters as data.

Each :class:`Emitter` row says how the emitter is recognised (instrumentation scope name, ``telemetry.sdk.name`` on
the resource or the span), which attributes carry its provider, token counts, cache counts and carried cost, and
whether its input count includes cached tokens. :mod:`collector.mapping` reads spans through these rows only;
``docs/emitters.md`` lists the versions each row was checked against.

Input counts and cache: the GenAI conventions count cached tokens inside ``gen_ai.usage.input_tokens``. OpenLIT's
Anthropic instrumentation passes Anthropic's own ``input_tokens``, which leave cache reads and writes out; its row
says so (``input_excludes_cache``) and the mapping adds them back. For a span of no known emitter whose cache
counts exceed its input, only the exclusive reading is possible, so it is taken (``Emitter.strict`` false); a known
emitter that documents inclusive counts and sends such a span is inconsistent and the span is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from costline import spans as S

TELEMETRY_SDK_NAME: Final = "telemetry.sdk.name"
# Logfire keeps the provider's usage object here (JSON); the cache breakdown is only there.
USAGE_RAW: Final = "gen_ai.usage.raw"
PROVIDER_KEYS: Final = (S.PROVIDER_NAME, S.ALIAS_SYSTEM)


@dataclass(frozen=True, slots=True)
class Emitter:
    name: str
    scopes: tuple[str, ...]  # instrumentation scope names (a trailing "." matches any name under it)
    sdk_names: tuple[str, ...]  # telemetry.sdk.name values, on the resource or (OpenLIT) the span
    input: tuple[str, ...]  # attribute names, the first present wins
    output: tuple[str, ...]
    cache_read: tuple[str, ...]
    cache_write: tuple[str, ...]
    cost: tuple[str, ...]  # a cost the emitter computed itself, in USD
    input_excludes_cache: frozenset[str] = frozenset()  # normalised providers whose input count leaves cache out
    raw_usage: str | None = None  # JSON usage object holding the cache breakdown when no cache attribute is set
    strict: bool = True  # cache above an inclusive input count is inconsistent (False: read it as exclusive)


_SEMCONV_INPUT: Final = (S.USAGE_INPUT_TOKENS,)
_SEMCONV_OUTPUT: Final = (S.USAGE_OUTPUT_TOKENS,)
_SEMCONV_READ: Final = (S.USAGE_CACHE_READ_INPUT_TOKENS,)
_SEMCONV_WRITE: Final = (S.USAGE_CACHE_CREATION_INPUT_TOKENS,)

COSTLINE: Final = Emitter(
    "costline",
    scopes=("costline.",),
    sdk_names=(),
    input=_SEMCONV_INPUT,
    output=_SEMCONV_OUTPUT,
    cache_read=_SEMCONV_READ,
    cache_write=_SEMCONV_WRITE,
    cost=(),
)
OPENLIT: Final = Emitter(
    "openlit",
    scopes=("openlit", "openlit."),
    sdk_names=("openlit",),
    input=_SEMCONV_INPUT,
    output=_SEMCONV_OUTPUT,
    cache_read=_SEMCONV_READ,
    cache_write=_SEMCONV_WRITE,
    cost=(S.ALIAS_COST_OPENLIT,),
    input_excludes_cache=frozenset({S.PROVIDER_ANTHROPIC}),
)
OPENLLMETRY: Final = Emitter(
    "openllmetry",
    scopes=(
        "opentelemetry.instrumentation.anthropic",
        "opentelemetry.instrumentation.ollama",
        "opentelemetry.instrumentation.openai",
        "opentelemetry.instrumentation.bedrock",
        "opentelemetry.instrumentation.langchain",
    ),
    sdk_names=(),
    input=(S.USAGE_INPUT_TOKENS, S.ALIAS_PROMPT_TOKENS),  # prompt_tokens up to 0.47, cache included
    output=(S.USAGE_OUTPUT_TOKENS, S.ALIAS_COMPLETION_TOKENS),
    cache_read=(S.USAGE_CACHE_READ_INPUT_TOKENS, S.ALIAS_CACHE_READ_INPUT_TOKENS_FLAT),
    cache_write=(S.USAGE_CACHE_CREATION_INPUT_TOKENS, S.ALIAS_CACHE_CREATION_INPUT_TOKENS_FLAT),
    cost=(),
)
LOGFIRE: Final = Emitter(
    "logfire",
    scopes=("logfire", "logfire."),
    sdk_names=(),
    input=_SEMCONV_INPUT,
    output=_SEMCONV_OUTPUT,
    cache_read=_SEMCONV_READ,
    cache_write=_SEMCONV_WRITE,
    cost=(S.ALIAS_COST_LOGFIRE,),
    raw_usage=USAGE_RAW,
)
PYDANTIC_AI: Final = Emitter(
    "pydantic-ai",
    scopes=("pydantic-ai",),
    sdk_names=(),
    input=_SEMCONV_INPUT,
    output=_SEMCONV_OUTPUT,
    cache_read=_SEMCONV_READ,
    cache_write=_SEMCONV_WRITE,
    cost=(S.ALIAS_COST_LOGFIRE,),
)
# Anything else: the conventions, with every alias the emitters above use.
OTHER: Final = Emitter(
    "semconv",
    scopes=(),
    sdk_names=(),
    input=(S.USAGE_INPUT_TOKENS, S.ALIAS_PROMPT_TOKENS),
    output=(S.USAGE_OUTPUT_TOKENS, S.ALIAS_COMPLETION_TOKENS),
    cache_read=(S.USAGE_CACHE_READ_INPUT_TOKENS, S.ALIAS_CACHE_READ_INPUT_TOKENS_FLAT),
    cache_write=(
        S.USAGE_CACHE_CREATION_INPUT_TOKENS,
        S.ALIAS_CACHE_WRITE_INPUT_TOKENS,
        S.ALIAS_CACHE_CREATION_INPUT_TOKENS_FLAT,
    ),
    cost=(S.ALIAS_COST_OPENLIT, S.ALIAS_COST_LOGFIRE),
    raw_usage=USAGE_RAW,
    strict=False,
)

EMITTERS: Final = (COSTLINE, OPENLIT, OPENLLMETRY, LOGFIRE, PYDANTIC_AI, OTHER)

# Every attribute an emitter row names; decoders read these and may skip the others.
USAGE_ATTRIBUTES: Final = tuple(
    dict.fromkeys(
        key
        for e in EMITTERS
        for key in (
            *e.input,
            *e.output,
            *e.cache_read,
            *e.cache_write,
            *e.cost,
            *((e.raw_usage,) if e.raw_usage else ()),
        )
    )
)


def emitter_for(scope_name: str, sdk_name: str | None) -> Emitter:
    """The emitter of spans under one instrumentation scope of one resource."""
    for emitter in EMITTERS:
        for scope in emitter.scopes:
            if scope_name == scope.rstrip(".") or (scope.endswith(".") and scope_name.startswith(scope)):
                return emitter
        if sdk_name is not None and sdk_name in emitter.sdk_names:
            return emitter
    return OTHER


def emitter_by_sdk_name(sdk_name: object) -> Emitter | None:
    """An emitter that marks each span with its own ``telemetry.sdk.name`` (OpenLIT does)."""
    if sdk_name.__class__ is str:
        for emitter in EMITTERS:
            if sdk_name in emitter.sdk_names:
                return emitter
    return None


# Provider names as emitters spell them → one label. Lower case first; then the conventions' older names.
PROVIDER_ALIASES: Final = {
    "az.ai.inference": "azure.ai.inference",
    "az.ai.openai": "azure.ai.openai",
    "azure_openai": "azure.ai.openai",
    "gemini": "gcp.gemini",
    "google_genai": "gcp.gen_ai",
    "vertex_ai": "gcp.vertex_ai",
    "bedrock": "aws.bedrock",
    "aws_bedrock": "aws.bedrock",
    "mistralai": "mistral_ai",
    "mistral": "mistral_ai",
    "xai": "x_ai",
    "ollama_chat": S.PROVIDER_OLLAMA,
}
_normalised: dict[str, str] = {}


def normalise_provider(name: str) -> str:
    """One label per provider, whatever the case or the alias an emitter uses (``Anthropic`` → ``anthropic``)."""
    label = _normalised.get(name)
    if label is None:
        lowered = name.strip().lower()
        label = PROVIDER_ALIASES.get(lowered, lowered)
        if len(_normalised) < 4096:  # bounded: odd names are normalised again rather than kept
            _normalised[name] = label
    return label
