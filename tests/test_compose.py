"""The compose stack, checked for what breaks it (no Docker engine here): it parses, pulled images are pinned, every
mounted path exists, ports stay on loopback, services have health checks and agree with the config defaults."""

from __future__ import annotations

import re
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


def volumes_of(service: str) -> list[tuple[str, str]]:
    """(source, target) pairs from the short `source:target[:mode]` syntax."""
    pairs = []
    for entry in SERVICES[service].get("volumes", []):
        source, target = entry.split(":")[:2]
        pairs.append((source, target))
    return pairs


def bind_mounts() -> list[tuple[str, str, str]]:
    return [
        (name, source, target)
        for name in SERVICES
        for source, target in volumes_of(name)
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
    for name in LONG_RUNNING:
        assert "profiles" not in SERVICES[name], f"{name} would only start with a profile"
        assert "demo" not in SERVICES[name].get("depends_on", {}), f"{name} depends on the optional demo"


def test_every_bind_mounted_path_exists_in_the_repo():
    mounts = bind_mounts()
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
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which is not in the repo"
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
