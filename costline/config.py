"""One TOML file configures router and collector alike (DESIGN §6).

Resolution order: built-in defaults, then the file (``--config PATH`` or ``COSTLINE_CONFIG``), then the
environment. Every problem is a :class:`ConfigError` naming the key, the value and the fix.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CONFIG_ENV = "COSTLINE_CONFIG"
INGEST_TOKEN_ENV = "COSTLINE_INGEST_TOKEN"
PROXY_TOKEN_ENV = "COSTLINE_PROXY_TOKEN"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SECRET_KEY_NAMES = ("api_key", "anthropic_api_key", "x_api_key", "auth_token", "ingest_token", "token")


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who has to fix it."""

    def __init__(self, key: str, value: object, fix: str, source: str | None = None) -> None:
        self.key, self.value, self.fix, self.source = key, value, fix, source
        where = f" (from {source})" if source else ""
        shown = "<redacted>" if _looks_secret(key) else repr(value)
        super().__init__(f"config error: {key} = {shown}{where}: {fix}")


def _looks_secret(key: str) -> bool:
    last = key.rsplit(".", 1)[-1].lower()
    return last in SECRET_KEY_NAMES or "key" in last or "token" in last or "secret" in last


@dataclass(frozen=True)
class RouterConfig:
    ollama_host: str = "http://127.0.0.1:11434"
    models: tuple[str, ...] = ("qwen2.5-coder:14b", "qwen3:30b-a3b", "llama3.1:70b")
    timeout_s: float = 120.0
    usage_db: str = ""  # a path, or postgresql://USER@HOST:PORT/DB; empty: $XDG_STATE_HOME/costline/usage.sqlite
    max_retry_wait_s: float = 30.0  # longest retry-after the router will honour
    max_retries: int = 2  # extra attempts on a retryable escalation error (429, 529, 5xx, timeout)


@dataclass(frozen=True)
class EscalationConfig:
    enabled: bool = True
    model: str = "claude-sonnet-4-6"
    threshold: int = 2
    critical_task_types: tuple[str, ...] = ("code_generation", "file_write", "batch_process")
    max_calls_per_hour: int = 50
    base_url: str = ""  # empty: ANTHROPIC_BASE_URL or the SDK default
    max_tokens: int = 4096
    timeout_s: float = 600.0  # a streamed answer may take minutes; each read and the whole answer are bounded by it


@dataclass(frozen=True)
class BudgetConfig:
    daily_usd: float = 5.0  # 0: no daily budget
    monthly_usd: float = 100.0  # 0: no monthly budget


@dataclass(frozen=True)
class LocalComputeConfig:
    usd_per_hour: float = 0.0


@dataclass(frozen=True)
class ModelPrice:
    """A price override, USD per million tokens."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None


@dataclass(frozen=True)
class TelemetryConfig:
    # One collector's URL, or a list of them: each trace then goes to one collector chosen by its trace id.
    otlp_endpoint: str | tuple[str, ...] = "http://127.0.0.1:4318"
    capture_content: bool = False
    service_name: str = "costline-router"
    spool_dir: str = ""  # empty: "spool" beside the usage store
    spool_max_mb: int = 256  # spans waiting for the collector; beyond this new batches are dropped, counted and logged

    @property
    def otlp_endpoints(self) -> tuple[str, ...]:
        """``otlp_endpoint`` as a list, whether one URL or several were given."""
        endpoint = self.otlp_endpoint
        return (endpoint,) if isinstance(endpoint, str) else tuple(endpoint)


@dataclass(frozen=True)
class CollectorConfig:
    host: str = "127.0.0.1"
    otlp_port: int = 4318
    metrics_port: int = 9464
    ledger: str = "costline.duckdb"
    max_request_bytes: int = 16 * 1024 * 1024  # after decompression
    max_queued_spans: int = 200_000  # beyond this, ingest answers 503 with Retry-After
    ledger_memory_mb: int = 96  # DuckDB memory limit of the collector's ledger; larger queries spill to disk
    decode_workers: int = 1  # processes that decode large OTLP requests; 0: in the collector process
    commit_linger_ms: float = 3.0  # group commit: wait this long for requests still being decoded; 0: never wait
    read_timeout_s: float = 30.0  # a connection that sends no bytes for this long is closed
    query_timeout_s: float = 30.0  # a /api/v1/query query running longer is cancelled
    max_query_result_mb: int = 64  # a /api/v1/query answer larger than this is refused
    max_series_per_metric: int = 500  # label sets per metric; more are counted under 'other'
    # Where reports, `costline sql` and exports ask a running collector, whose ledger may be on another host
    # (env COSTLINE_COLLECTOR_URL); empty: the ledger file, or the local collector that holds it.
    url: str = ""


@dataclass(frozen=True)
class LakeConfig:
    """The shared ledger (docs/scale-out.md): every collector appends its committed rows to one DuckLake."""

    catalog: str = ""  # postgresql://USER@HOST:PORT/DB, or a file path for a DuckDB catalog; empty: no lake
    data_path: str = ""  # the directory (shared filesystem) where the lake's Parquet files go
    flush_interval_s: float = 10.0  # how often a collector appends its new rows to the lake

    @property
    def enabled(self) -> bool:
        return bool(self.catalog)

    @property
    def shared_catalog(self) -> bool:
        return self.catalog.startswith(POSTGRES_SCHEMES)


@dataclass(frozen=True)
class ProxyConfig:
    host: str = "127.0.0.1"
    port: int = 11435
    allow_unauthenticated: bool = False  # serve beyond loopback without COSTLINE_PROXY_TOKEN


@dataclass(frozen=True)
class Config:
    router: RouterConfig = field(default_factory=RouterConfig)
    escalation: EscalationConfig = field(default_factory=EscalationConfig)
    budgets: BudgetConfig = field(default_factory=BudgetConfig)
    local_compute: LocalComputeConfig = field(default_factory=LocalComputeConfig)
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    lake: LakeConfig = field(default_factory=LakeConfig)
    team_budgets: Mapping[str, BudgetConfig] = field(default_factory=dict)  # [budgets.teams."NAME"]
    validators: Mapping[str, str] = field(default_factory=dict)  # [validators] task_type = "json"
    source: str = "defaults"
    # Where each key that is not at its default came from: "section.key" -> a file path or an environment variable.
    origins: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def anthropic_api_key(self) -> str | None:
        """The key is read from the environment only, and never stored on the config."""
        return os.environ.get("ANTHROPIC_API_KEY") or None

    @property
    def ingest_token(self) -> str | None:
        """Optional bearer token that OTLP ingest requires (env ``COSTLINE_INGEST_TOKEN`` only)."""
        return os.environ.get(INGEST_TOKEN_ENV) or None

    @property
    def proxy_token(self) -> str | None:
        """Bearer token the proxy requires (env ``COSTLINE_PROXY_TOKEN`` only)."""
        return os.environ.get(PROXY_TOKEN_ENV) or None

    @property
    def usage_db_shared(self) -> bool:
        """True when ``router.usage_db`` is a PostgreSQL URL, shared by the routers of every machine."""
        return self.router.usage_db.startswith(POSTGRES_SCHEMES)

    @property
    def usage_db_location(self) -> Path | str:
        """The usage store: a PostgreSQL URL as given, or the SQLite file's path."""
        return self.router.usage_db if self.usage_db_shared else self.usage_db_path

    @property
    def usage_db_path(self) -> Path:
        """The local SQLite usage store (the default one, when ``router.usage_db`` is a PostgreSQL URL)."""
        if self.router.usage_db and not self.usage_db_shared:
            return Path(self.router.usage_db).expanduser()
        return _state_dir() / "usage.sqlite"

    @property
    def spool_dir(self) -> Path:
        """Where spans wait until the collector acknowledges them: this machine's own, even with a shared store."""
        if self.telemetry.spool_dir:
            return Path(self.telemetry.spool_dir).expanduser()
        return self.usage_db_path.parent / "spool"

    def is_critical(self, task_type: str) -> bool:
        return task_type in self.escalation.critical_task_types


def _state_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "costline"


SECTIONS: dict[str, type] = {
    "router": RouterConfig,
    "escalation": EscalationConfig,
    "budgets": BudgetConfig,
    "local_compute": LocalComputeConfig,
    "telemetry": TelemetryConfig,
    "collector": CollectorConfig,
    "proxy": ProxyConfig,
    "lake": LakeConfig,
}

# Conventional variables that users already set for these tools.
_WELL_KNOWN_ENV: dict[str, tuple[str, str]] = {
    "OLLAMA_HOST": ("router", "ollama_host"),
    "ANTHROPIC_BASE_URL": ("escalation", "base_url"),
    "COSTLINE_LEDGER": ("collector", "ledger"),
    "COSTLINE_OTLP_ENDPOINT": ("telemetry", "otlp_endpoint"),
    "COSTLINE_USAGE_DB": ("router", "usage_db"),
}


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate the configuration; ``path=None`` falls back to ``$COSTLINE_CONFIG``, then defaults."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    source = "defaults"
    chosen = path if path is not None else env.get(CONFIG_ENV) or None
    if chosen is not None:
        file = Path(chosen).expanduser()
        source = str(file)
        if not file.is_file():
            given_by = "--config" if path is not None else CONFIG_ENV
            fix = "create it, or give another path" if path is not None else f"create it, or unset {CONFIG_ENV}"
            raise ConfigError(
                given_by,
                str(file),
                f"no such file; {fix}",
                source="command line" if path is not None else "environment",
            )
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("<file>", str(file), f"not valid TOML: {exc}", source=source) from None
    return _build(raw, env, source)


def _build(raw: dict[str, Any], env: Mapping[str, str], source: str) -> Config:
    for key in raw:
        if key not in SECTIONS and key not in _TABLES:
            raise ConfigError(
                key, raw[key], f"unknown section; known sections: {', '.join([*SECTIONS, *_TABLES])}", source
            )
    budgets = raw.get("budgets")
    teams = {}
    if isinstance(budgets, dict) and "teams" in budgets:
        raw = {**raw, "budgets": {k: v for k, v in budgets.items() if k != "teams"}}
        teams = budgets["teams"]
    _refuse_unknown_env(env)
    sections: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name, cls in SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(name, table, f"must be a table: [{name}]", source)
        sections[name] = _section(name, cls, table, env, source, origins)
    prices = _prices(raw.get("prices", {}), source)
    config = Config(
        **sections,
        prices=prices,
        team_budgets=_team_budgets(teams, source),
        validators=_validators(raw.get("validators", {}), source),
        source=source,
        origins=origins,
    )
    _validate(config)
    return config


def _refuse_unknown_env(env: Mapping[str, str]) -> None:
    """A ``COSTLINE_<SECTION>_<KEY>`` variable must name a key, as the file's keys must: a typo is not ignored."""
    not_keys = {CONFIG_ENV, INGEST_TOKEN_ENV, PROXY_TOKEN_ENV, *_WELL_KNOWN_ENV}
    for env_name in env:
        if not env_name.startswith("COSTLINE_") or env_name in not_keys:
            continue
        for name, cls in SECTIONS.items():
            prefix = f"COSTLINE_{name}_".upper()
            if env_name.startswith(prefix):
                known = [f.name for f in fields(cls)]
                if env_name[len(prefix) :].lower() not in known:
                    variables = ", ".join(f"{prefix}{key.upper()}" for key in known)
                    raise ConfigError(
                        env_name, env[env_name], f"unknown setting; [{name}] takes {variables}", "environment"
                    )


def _section(
    name: str, cls: type, table: dict[str, Any], env: Mapping[str, str], source: str, origins: dict[str, str]
) -> Any:
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{name}.{key}"
        if _looks_secret(key) and key not in known:
            raise ConfigError(
                dotted,
                value,
                "secrets never go in the config file; remove it and set ANTHROPIC_API_KEY "
                "(or COSTLINE_INGEST_TOKEN for ingest) in the environment",
                source,
            )
        if key not in known:
            raise ConfigError(dotted, value, f"unknown key; known keys in [{name}]: {', '.join(known)}", source)
        values[key] = _coerce(dotted, value, known[key].type, source)
        origins[dotted] = source
    for env_name, (section, key) in _WELL_KNOWN_ENV.items():
        if section == name and env.get(env_name):
            kind = known[key].type
            values[key] = _coerce(f"{name}.{key}", _parse_env(env[env_name], kind), kind, env_name)
            origins[f"{name}.{key}"] = env_name
    for key, f in known.items():
        env_name = f"COSTLINE_{name}_{key}".upper()
        if env_name in env:
            values[key] = _coerce(f"{name}.{key}", _parse_env(env[env_name], f.type), f.type, env_name)
            origins[f"{name}.{key}"] = env_name
    return replace(cls(), **values)


# A key that takes one string or a list of them: in the environment, a list is comma-separated.
_ONE_OR_MORE = "str | tuple[str, ...]"


def _parse_env(text: str, annotation: Any) -> Any:
    kind = str(annotation)
    if kind == _ONE_OR_MORE:
        # Empty parts are kept, so "a,,b" fails validation instead of quietly becoming two entries.
        return [part.strip() for part in text.split(",")] if "," in text else text.strip()
    if "tuple" in kind:
        return [part.strip() for part in text.split(",") if part.strip()]
    if kind == "bool":
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        return text
    if kind in ("int", "float"):
        try:
            return int(text) if kind == "int" else float(text)
        except ValueError:
            return text
    return text


def _coerce(key: str, value: Any, annotation: Any, source: str) -> Any:
    kind = str(annotation)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(key, value, "must be true or false", source)
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, value, "must be a whole number", source)
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, value, "must be a number", source)
        return float(value)
    if kind == _ONE_OR_MORE:
        if isinstance(value, str):
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, value, 'must be a string or a list of strings, e.g. ["a", "b"]', source)
        return tuple(value)
    if "tuple" in kind:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(key, value, 'must be a list of non-empty strings, e.g. ["a", "b"]', source)
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(key, value, "must be a string", source)
    return value


_TABLES = ("prices", "validators")
BUILTIN_VALIDATORS = ("json",)  # [validators] task_type = "json": the answer must parse as JSON


def _team_budgets(table: Any, source: str) -> dict[str, BudgetConfig]:
    if not isinstance(table, dict):
        raise ConfigError("budgets.teams", table, 'must be tables: [budgets.teams."team-name"]', source)
    teams = {}
    for team, entry in table.items():
        if not team.strip() or team == "other":
            # "" is the global budget's label and "other" counts every undeclared team on the metrics.
            raise ConfigError(f'budgets.teams."{team}"', team, 'a team name must be non-empty and not "other"', source)
        if not isinstance(entry, dict):
            raise ConfigError(
                f'budgets.teams."{team}"', entry, "must be a table with daily_usd and/or monthly_usd", source
            )
        # A team's budget is what its table says: absent means no budget, not the global default.
        values = {"daily_usd": 0.0, "monthly_usd": 0.0, **entry}
        teams[team] = _section(f'budgets.teams."{team}"', BudgetConfig, values, {}, source, {})
    return teams


def _validators(table: Any, source: str) -> dict[str, str]:
    if not isinstance(table, dict):
        raise ConfigError("validators", table, 'must be a table: task_type = "json"', source)
    for task_type, name in table.items():
        if name not in BUILTIN_VALIDATORS:
            raise ConfigError(
                f"validators.{task_type}", name, f"unknown validator; built in: {', '.join(BUILTIN_VALIDATORS)}", source
            )
    return dict(table)


_PRICE_KEYS = tuple(f.name for f in fields(ModelPrice))


def _prices(table: Any, source: str) -> dict[str, ModelPrice]:
    if not isinstance(table, dict):
        raise ConfigError("prices", table, 'must be tables: [prices."model-name"]', source)
    prices: dict[str, ModelPrice] = {}
    for model, entry in table.items():
        key = f'prices."{model}"'
        if not isinstance(entry, dict):
            raise ConfigError(key, entry, "must be a table with input and output (USD per million tokens)", source)
        for name, value in entry.items():
            if name not in _PRICE_KEYS:
                raise ConfigError(f"{key}.{name}", value, f"unknown key; known: {', '.join(_PRICE_KEYS)}", source)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{key}.{name}", value, "must be a number >= 0 (USD per million tokens)", source)
        for required in ("input", "output"):
            if required not in entry:
                raise ConfigError(
                    f"{key}.{required}", None, "missing; give input and output in USD per million tokens", source
                )
        prices[model] = ModelPrice(**{k: float(v) for k, v in entry.items()})
    return prices


def _check_postgres_url(key: str, value: str, source: str) -> None:
    url = urlsplit(value)
    _check(
        url.password is None,
        key,
        value.replace(f":{url.password}@", ":<redacted>@"),
        "never put the password in the config: give it in PGPASSWORD or a ~/.pgpass file",
        source,
    )
    _check(bool(url.hostname or url.path.strip("/")), key, value, "name a host and database", source)


def _validate_lake(lake: LakeConfig, s: str) -> None:
    if lake.shared_catalog:
        _check_postgres_url("lake.catalog", lake.catalog, s)
    _check(lake.flush_interval_s > 0, "lake.flush_interval_s", lake.flush_interval_s, "must be > 0 seconds, e.g. 10", s)
    _check(
        not lake.enabled or bool(lake.data_path),
        "lake.data_path",
        lake.data_path,
        "name the shared directory for the lake's data files (every collector of the lake gives the same one)",
        s,
    )


def _check(ok: bool, key: str, value: object, fix: str, source: str) -> None:
    if not ok:
        raise ConfigError(key, value, fix, source)


def _validate(c: Config) -> None:
    s = c.source
    r, e, b, col = c.router, c.escalation, c.budgets, c.collector
    _check(bool(r.models), "router.models", list(r.models), 'list at least one Ollama model, e.g. ["qwen3:8b"]', s)
    _check(len(set(r.models)) == len(r.models), "router.models", list(r.models), "list each model once", s)
    _check(_is_url(r.ollama_host), "router.ollama_host", r.ollama_host, 'use a URL like "http://127.0.0.1:11434"', s)
    _check(r.timeout_s > 0, "router.timeout_s", r.timeout_s, "must be > 0 seconds, e.g. 120", s)
    _check(r.max_retry_wait_s >= 0, "router.max_retry_wait_s", r.max_retry_wait_s, "must be >= 0 seconds", s)
    _check(r.max_retries >= 0, "router.max_retries", r.max_retries, "must be >= 0", s)
    if c.usage_db_shared:
        _check_postgres_url("router.usage_db", r.usage_db, s)
    _validate_lake(c.lake, s)
    _check(e.threshold >= 1, "escalation.threshold", e.threshold, "must be >= 1 (local failures before escalating)", s)
    _check(bool(e.model), "escalation.model", e.model, 'name a Claude model, e.g. "claude-sonnet-4-6"', s)
    _check(
        e.max_calls_per_hour >= 0,
        "escalation.max_calls_per_hour",
        e.max_calls_per_hour,
        "must be >= 0 (0 refuses every escalation)",
        s,
    )
    _check(e.max_tokens >= 1, "escalation.max_tokens", e.max_tokens, "must be >= 1", s)
    _check(e.timeout_s > 0, "escalation.timeout_s", e.timeout_s, "must be > 0 seconds, e.g. 600", s)
    _check(not e.base_url or _is_url(e.base_url), "escalation.base_url", e.base_url, 'use a URL like "https://…"', s)
    _check(b.daily_usd >= 0, "budgets.daily_usd", b.daily_usd, "must be >= 0 (0 means no daily budget)", s)
    _check(b.monthly_usd >= 0, "budgets.monthly_usd", b.monthly_usd, "must be >= 0 (0 means no monthly budget)", s)
    for team, tb in c.team_budgets.items():
        for period in ("daily_usd", "monthly_usd"):
            value = getattr(tb, period)
            _check(value >= 0, f'budgets.teams."{team}".{period}', value, "must be >= 0 (0 means no budget)", s)
    _check(
        c.local_compute.usd_per_hour >= 0,
        "local_compute.usd_per_hour",
        c.local_compute.usd_per_hour,
        "must be >= 0 (USD per hour of local inference)",
        s,
    )
    _validate_otlp_endpoints(c.telemetry.otlp_endpoint, c.origins.get("telemetry.otlp_endpoint", s))
    _check(
        c.telemetry.spool_max_mb >= 1,
        "telemetry.spool_max_mb",
        c.telemetry.spool_max_mb,
        "must be >= 1 (MB of spans that may wait on disk for the collector)",
        s,
    )
    _check(0 <= c.proxy.port <= 65535, "proxy.port", c.proxy.port, "must be a TCP port, 0-65535 (0: a free one)", s)
    for key in ("otlp_port", "metrics_port"):
        port = getattr(col, key)
        _check(0 <= port <= 65535, f"collector.{key}", port, "must be a TCP port, 0-65535 (0 picks a free one)", s)
    _check(
        col.otlp_port == 0 or col.otlp_port != col.metrics_port,
        "collector.metrics_port",
        col.metrics_port,
        "must differ from collector.otlp_port",
        s,
    )
    _check(bool(col.ledger), "collector.ledger", col.ledger, 'name a DuckDB file, e.g. "costline.duckdb"', s)
    _check(col.max_request_bytes > 0, "collector.max_request_bytes", col.max_request_bytes, "must be > 0", s)
    _check(col.max_queued_spans > 0, "collector.max_queued_spans", col.max_queued_spans, "must be > 0", s)
    _check(
        col.ledger_memory_mb >= 16,
        "collector.ledger_memory_mb",
        col.ledger_memory_mb,
        "must be >= 16 (MB of memory DuckDB may use for the ledger)",
        s,
    )
    _check(
        0 <= col.decode_workers <= 64,
        "collector.decode_workers",
        col.decode_workers,
        "must be 0-64 (0 decodes in the collector process)",
        s,
    )
    _check(
        0 <= col.commit_linger_ms <= 1000,
        "collector.commit_linger_ms",
        col.commit_linger_ms,
        "must be 0-1000 (milliseconds a commit may wait for requests still being decoded)",
        s,
    )
    _check(
        0 < col.read_timeout_s <= 3600,
        "collector.read_timeout_s",
        col.read_timeout_s,
        "must be > 0 and <= 3600 (seconds a connection may send nothing before it is closed)",
        s,
    )
    _check(
        0 < col.query_timeout_s <= 86400,
        "collector.query_timeout_s",
        col.query_timeout_s,
        "must be > 0 and <= 86400 (seconds a query through the collector may run)",
        s,
    )
    _check(
        1 <= col.max_query_result_mb <= 65536,
        "collector.max_query_result_mb",
        col.max_query_result_mb,
        "must be 1-65536 (MB a query answer through the collector may take)",
        s,
    )
    _check(
        1 <= col.max_series_per_metric <= 100_000,
        "collector.max_series_per_metric",
        col.max_series_per_metric,
        "must be 1-100000 (label sets each metric keeps before counting under 'other')",
        s,
    )
    _check(
        not col.url or _is_url(col.url),
        "collector.url",
        col.url,
        "must be the http:// or https:// URL of a running collector's metrics port, e.g. http://collector:9464",
        s,
    )


def _validate_otlp_endpoints(endpoint: str | tuple[str, ...], source: str) -> None:
    key = "telemetry.otlp_endpoint"
    if isinstance(endpoint, str):
        _check(_is_url(endpoint), key, endpoint, 'use a URL like "http://127.0.0.1:4318"', source)
        return
    shown = list(endpoint)
    _check(bool(endpoint), key, shown, 'list at least one collector, e.g. ["http://collector-1:4318"]', source)
    for url in endpoint:
        _check(_is_url(url), key, shown, f"{url!r} is not a URL; every entry must look like http://HOST:4318", source)
    # A collector listed twice (a trailing slash aside) would have two senders on one spool and one of them idle.
    _check(len({url.rstrip("/") for url in endpoint}) == len(endpoint), key, shown, "list each collector once", source)


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://")) and len(text) > len("https://")


def with_overrides(config: Config, **sections: Callable[[Any], Any] | Mapping[str, Any]) -> Config:
    """A copy with some keys changed, validated again: ``with_overrides(c, escalation={"threshold": 1})``."""
    changed: dict[str, Any] = {}
    for name, values in sections.items():
        current = getattr(config, name)
        changed[name] = values(current) if callable(values) else replace(current, **values)
    updated = replace(config, **changed)
    _validate(updated)
    return updated
