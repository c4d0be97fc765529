"""The compose stack, checked for what breaks it (no Docker engine here): it parses, pulled images are pinned, every
mounted path exists, ports stay on loopback, services have health checks and agree with the config defaults."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from costline.config import Config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES = COMPOSE["services"]
DEFAULTS = Config()
# Services that are restarted when they stop: the stack itself, as opposed to one-shot and opt-in jobs.
LONG_RUNNING = [name for name, service in SERVICES.items() if service.get("restart", "no") != "no"]
SCALE = [name for name, service in SERVICES.items() if "scale" in service.get("profiles", [])]
SCALE_ENV_FILE = "deploy/scale.env"
_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def env_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines, as compose's --env-file reads them (comments and blank lines skipped)."""
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def interpolate(text: str, env: dict[str, str]) -> str:
    """`${VAR}` and `${VAR:-default}` as compose substitutes them."""
    return _VARIABLE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text)


def volumes_of(service: str, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(source, target) pairs from the short `source:target[:mode]` syntax, after interpolation."""
    pairs = []
    for entry in SERVICES[service].get("volumes", []):
        source, target = interpolate(entry, env or {}).split(":")[:2]
        pairs.append((source, target))
    return pairs


def bind_mounts(env: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    return [
        (name, source, target)
        for name in SERVICES
        for source, target in volumes_of(name, env)
        if source.startswith((".", "/"))
    ]


def published(service: str) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) for each published port."""
    result = []
    for entry in SERVICES[service].get("ports", []):
        address, host_port, container_port = str(entry).split(":")
        result.append((address, int(host_port), int(container_port)))
    return result


def mount_target(service: str, repo_path: str) -> str:
    return next(target for source, target in volumes_of(service) if source == repo_path)


def test_every_pulled_image_is_pinned_to_a_version():
    for name, service in SERVICES.items():
        if "build" in service:
            continue  # built from this repo's Dockerfile
        image = service.get("image", "")
        repository, _, tag = image.rpartition(":")
        assert repository and tag and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: image {image!r} is not pinned to a version"


def test_the_demo_is_optional_and_the_stack_runs_without_it():
    assert SERVICES["demo"]["profiles"] == ["demo"]
    assert {"collector", "prometheus", "grafana"} <= set(LONG_RUNNING)
    for name in set(LONG_RUNNING) - set(SCALE):
        assert "profiles" not in SERVICES[name], f"{name} would only start with a profile"
        assert "demo" not in SERVICES[name].get("depends_on", {}), f"{name} depends on the optional demo"


@pytest.mark.parametrize("env", [{}, env_file(SCALE_ENV_FILE)], ids=["default", "scale"])
def test_every_bind_mounted_path_exists_in_the_repo(env):
    mounts = bind_mounts(env)
    assert mounts  # Prometheus and Grafana read the repo's rules, dashboards and provisioning
    missing = [f"{name}: {source}" for name, source, _ in mounts if not (ROOT / source).exists()]
    assert missing == []
    assert any((ROOT / "prometheus" / "rules").glob("*.y*ml"))
    assert any((ROOT / "grafana" / "dashboards").rglob("*.json"))


def test_named_volumes_are_declared_and_the_ledger_lives_on_one():
    declared = set(COMPOSE.get("volumes") or {})
    used = {source for name in SERVICES for source, _ in volumes_of(name) if not source.startswith((".", "/"))}
    assert used <= declared, f"volumes used but not declared: {used - declared}"
    ledger = SERVICES["collector"]["environment"]["COSTLINE_LEDGER"]
    assert any(ledger.startswith(target + "/") and source in declared for source, target in volumes_of("collector")), (
        f"the ledger {ledger} is not on a named volume: it would not survive the container"
    )


def test_collector_ports_agree_with_the_config_defaults():
    container_ports = {container for _, _, container in published("collector")}
    assert container_ports == {DEFAULTS.collector.otlp_port, DEFAULTS.collector.metrics_port} == {4318, 9464}
    assert all(host == container for _, host, container in published("collector"))
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^EXPOSE 4318 9464$", dockerfile, re.MULTILINE)
    assert f":{DEFAULTS.collector.metrics_port}/readyz" in " ".join(SERVICES["collector"]["healthcheck"]["test"])
    # Ollama's published port is the one the router's default ollama_host points at.
    assert published("ollama")[0][1] == int(DEFAULTS.router.ollama_host.rsplit(":", 1)[1])


def test_ports_are_published_on_loopback_only():
    for name in SERVICES:
        for address, host_port, _ in published(name):
            assert address == "127.0.0.1", f"{name} publishes port {host_port} beyond loopback"


def test_long_running_services_have_health_checks_and_start_in_order():
    for name in LONG_RUNNING:
        check = SERVICES[name].get("healthcheck")
        assert check, f"{name} has no health check"
        assert check["test"][0] == "CMD"
        assert check["interval"] and check["retries"] >= 3
    assert SERVICES["ollama-pull"]["depends_on"] == {"ollama": {"condition": "service_healthy"}}
    assert SERVICES["ollama-pull"]["restart"] == "no"
    assert SERVICES["prometheus"]["depends_on"]["collector"]["condition"] == "service_healthy"
    assert SERVICES["prometheus"]["depends_on"]["alertmanager"]["condition"] == "service_healthy"
    assert SERVICES["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert SERVICES["demo"]["depends_on"]["collector"]["condition"] == "service_healthy"


def test_the_collector_is_healthy_when_ready_not_when_it_merely_answers():
    """/metrics runs ledger queries and answers while the writer is broken; /readyz tells whether ingest works."""
    (check,) = [arg for arg in SERVICES["collector"]["healthcheck"]["test"] if "urlopen" in arg]
    assert f"127.0.0.1:{DEFAULTS.collector.metrics_port}/readyz" in check
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "/readyz" in dockerfile and "/metrics" not in dockerfile


def test_nothing_large_is_pulled_and_no_password_is_defaulted_unless_asked():
    assert SERVICES["ollama-pull"]["profiles"] == ["pull"]  # `docker compose up` pulls no model
    password = SERVICES["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?.+\}", password), password  # compose refuses to start without it


def test_the_collector_reads_a_mounted_config_that_loads():
    from costline.config import load_config

    target = mount_target("collector", "./deploy/costline.toml")
    assert SERVICES["collector"]["environment"]["COSTLINE_CONFIG"] == target
    config = load_config(ROOT / "deploy" / "costline.toml", env={})
    assert config.budgets.daily_usd > 0 and config.escalation.max_calls_per_hour > 0


def test_the_collector_has_a_memory_limit_above_its_own_bounds():
    from costline.config import load_config

    limit = SERVICES["collector"]["mem_limit"]
    number, unit = re.fullmatch(r"(\d+)([mg])", limit).groups()
    limit_mb = int(number) * (1024 if unit == "g" else 1)
    col = load_config(ROOT / "deploy" / "costline.toml", env={}).collector
    rss_target_mb = 400  # the process and its decode worker over 10M spans (bench/README.md)
    assert limit_mb >= rss_target_mb + col.ledger_memory_mb + 2 * col.max_query_result_mb  # an answer built and sent


def test_prometheus_sends_alerts_to_an_alertmanager_whose_route_has_a_receiver():
    prometheus = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    (alertmanagers,) = prometheus["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert published("alertmanager") == [("127.0.0.1", 9093, 9093)]
    target = mount_target("alertmanager", "./deploy/alertmanager.yml")
    assert f"--config.file={target}" in SERVICES["alertmanager"]["command"]
    config = yaml.safe_load((ROOT / "deploy" / "alertmanager.yml").read_text(encoding="utf-8"))
    assert config["route"]["receiver"] in {receiver["name"] for receiver in config["receivers"]}


def test_the_model_pull_covers_the_default_model_chain():
    models = SERVICES["ollama-pull"]["environment"]["MODELS"]
    default = re.fullmatch(r"\$\{COSTLINE_PULL_MODELS:-(.*)\}", models).group(1).split()
    assert tuple(default) == DEFAULTS.router.models
    assert SERVICES["ollama-pull"]["environment"]["OLLAMA_HOST"] == "http://ollama:11434"


def test_collector_and_demo_are_built_from_the_repo_dockerfile():
    assert SERVICES["collector"]["build"] == "." == SERVICES["demo"]["build"]
    assert SERVICES["collector"]["command"] == ["serve"]
    assert SERVICES["demo"]["command"][:3] == ["demo", "--otlp-endpoint", "http://collector:4318"]
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    copied = set()
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which is not in the repo"
            copied.add(path)
    # Every package the wheel is built from must be in the build context, or the image lacks it (pip builds quietly).
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]
    for pattern in packages["find"]["include"]:
        assert pattern.rstrip("*") in copied, f"Dockerfile does not copy the {pattern.rstrip('*')} package"
    assert 'ENTRYPOINT ["costline"]' in dockerfile
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", ".git", "*.duckdb"} <= set(ignored)


def test_prometheus_scrapes_the_collector_and_loads_the_mounted_rules():
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static.get("targets", [])
    }
    assert f"collector:{DEFAULTS.collector.metrics_port}" in targets
    rules_dir = mount_target("prometheus", "./prometheus/rules")
    assert config["rule_files"]
    assert all(pattern.startswith(rules_dir + "/") for pattern in config["rule_files"])
    assert mount_target("prometheus", "./prometheus/prometheus.yml") == "/etc/prometheus/prometheus.yml"


def _provisioning(kind: str) -> list[dict]:
    files = sorted((ROOT / "grafana" / "provisioning" / kind).glob("*.y*ml"))
    if not files:
        pytest.fail(f"no Grafana {kind} provisioning under grafana/provisioning/{kind}/")
    return [yaml.safe_load(f.read_text(encoding="utf-8")) for f in files]


def test_grafana_datasource_points_at_the_prometheus_service():
    urls = [ds["url"] for doc in _provisioning("datasources") for ds in doc.get("datasources", [])]
    assert "http://prometheus:9090" in urls
    assert mount_target("grafana", "./grafana/provisioning") == "/etc/grafana/provisioning"


def test_grafana_dashboard_provider_reads_the_mounted_dashboards():
    paths = [p["options"]["path"] for doc in _provisioning("dashboards") for p in doc.get("providers", [])]
    target = mount_target("grafana", "./grafana/dashboards")
    assert paths
    assert all(path == target or path.startswith(target + "/") for path in paths)


# -- the scale profile: two collectors, PostgreSQL, the lake on a volume, Prometheus scraping both ----------------

COLLECTORS = ("collector", "collector-2")


def test_the_scale_profile_adds_a_second_collector_and_postgres_and_nothing_else_needs_it():
    assert set(SCALE) == {"collector-2", "postgres"}
    for name in SCALE:
        assert SERVICES[name]["profiles"] == ["scale"]
    for name in set(SERVICES) - set(SCALE):
        assert not set(SCALE) & set(SERVICES[name].get("depends_on", {})), f"{name} would need the scale profile"


def test_each_collector_keeps_its_own_ledger_on_its_own_volume_and_both_share_the_lake_volume():
    declared = set(COMPOSE["volumes"])
    ledger_volumes = []
    for name in COLLECTORS:
        service = SERVICES[name]
        assert service["build"] == "." and service["command"] == ["serve"] and service["image"] == "costline:local"
        ledger = service["environment"]["COSTLINE_LEDGER"]
        (volume,) = [source for source, target in volumes_of(name) if ledger.startswith(target + "/")]
        assert volume in declared
        ledger_volumes.append(volume)
        lake_target = dict(volumes_of(name)).get("lake")
        assert lake_target and env_file(SCALE_ENV_FILE)["COSTLINE_LAKE_DATA_PATH"].startswith(lake_target + "/")
    assert len(set(ledger_volumes)) == 2  # a DuckDB file has one writer: two collectors never share one


def test_the_second_collector_is_run_like_the_first():
    first, second = SERVICES["collector"], SERVICES["collector-2"]
    for key in ("healthcheck", "mem_limit", "stop_grace_period", "restart"):
        assert second[key] == first[key], key
    assert second["environment"] == first["environment"]  # one config, one token, one lake for both
    assert mount_target("collector-2", "./deploy/costline.toml") == second["environment"]["COSTLINE_CONFIG"]
    assert second["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert {container for _, _, container in published("collector-2")} == {4318, 9464}
    host_ports = [host for name in SERVICES for _, host, _ in published(name)]
    assert len(host_ports) == len(set(host_ports)), "two services publish the same host port"


def test_postgres_is_pinned_and_its_password_comes_from_pgpassword_with_no_default():
    postgres = SERVICES["postgres"]
    assert re.fullmatch(r"postgres:\d+\.\d+", postgres["image"])
    # Empty when PGPASSWORD is unset, and the image then refuses to create the database: never a known password.
    assert postgres["environment"]["POSTGRES_PASSWORD"] == "${PGPASSWORD:-}"
    for name in COLLECTORS:
        assert SERVICES[name]["environment"]["PGPASSWORD"] == "${PGPASSWORD:-}"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert any(target == "/var/lib/postgresql/data" for _, target in volumes_of("postgres"))


def test_the_scale_env_file_puts_the_lake_catalog_in_the_postgres_service():
    from urllib.parse import urlsplit

    scale = env_file(SCALE_ENV_FILE)
    catalog = urlsplit(scale["COSTLINE_LAKE_CATALOG"])
    postgres = SERVICES["postgres"]["environment"]
    assert catalog.scheme == "postgresql" and catalog.password is None  # the password comes from PGPASSWORD
    assert (catalog.username, catalog.hostname, catalog.port) == (postgres["POSTGRES_USER"], "postgres", 5432)
    assert catalog.path == "/" + postgres["POSTGRES_DB"]
    for name in COLLECTORS:
        environment = SERVICES[name]["environment"]
        assert interpolate(environment["COSTLINE_LAKE_CATALOG"], scale) == scale["COSTLINE_LAKE_CATALOG"]
        assert interpolate(environment["COSTLINE_LAKE_DATA_PATH"], scale) == scale["COSTLINE_LAKE_DATA_PATH"]
        assert interpolate(environment["COSTLINE_LAKE_CATALOG"], {}) == ""  # the default stack has no lake


def test_host_routers_of_the_scale_profile_reach_both_collectors_and_the_shared_usage_store():
    from costline.config import load_config

    router_env = env_file("deploy/router-scale.env")
    config = load_config(ROOT / router_env.pop("COSTLINE_CONFIG"), env=router_env)
    published_otlp = [f"http://127.0.0.1:{host}" for name in COLLECTORS for _, host, c in published(name) if c == 4318]
    assert config.telemetry.otlp_endpoints == tuple(published_otlp)
    assert config.usage_db_shared
    postgres = SERVICES["postgres"]["environment"]
    ((_, pg_port, _),) = published("postgres")
    expected = f"postgresql://{postgres['POSTGRES_USER']}@127.0.0.1:{pg_port}/{postgres['POSTGRES_DB']}"
    assert config.router.usage_db == expected


def test_prometheus_scrapes_only_the_collector_by_default_and_both_in_the_scale_profile():
    def scraped(env: dict[str, str]) -> tuple[str, set[str]]:
        (source,) = [s for s, target in volumes_of("prometheus", env) if target == "/etc/prometheus/prometheus.yml"]
        config = yaml.safe_load((ROOT / source).read_text(encoding="utf-8"))
        (job,) = config["scrape_configs"]
        return job["job_name"], {t for static in job["static_configs"] for t in static["targets"]}

    default_job, default_targets = scraped({})
    scale_job, scale_targets = scraped(env_file(SCALE_ENV_FILE))
    port = DEFAULTS.collector.metrics_port
    assert default_targets == {f"collector:{port}"}
    assert scale_targets == {f"{name}:{port}" for name in COLLECTORS}
    # One job: the CollectorDown alert, which watches up{job=...} per instance, covers both collectors.
    assert default_job == scale_job
