"""Where the generated files will run: the compose stack's names, the datasource uid, the runbook's address."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stack:
    collector_job: str = "costline-collector"  # the Prometheus job that scrapes the collector
    collector_target: str = "collector:9464"  # compose service name and metrics port
    # The compose `scale` profile's collectors, scraped in the same job (prometheus/prometheus-scale.yml).
    scale_collector_targets: tuple[str, ...] = ("collector:9464", "collector-2:9464")
    rules_dir: str = "/etc/prometheus/rules"  # where compose mounts prometheus/rules
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"
    datasource_uid: str = "costline-prometheus"  # fixed, so dashboards find their datasource after provisioning
    datasource_name: str = "Prometheus (costline)"
    prometheus_url: str = "http://prometheus:9090"
    alertmanager_target: str = "alertmanager:9093"  # where Prometheus sends firing alerts
    grafana_dashboards_dir: str = "/var/lib/grafana/dashboards"
    # Alerts link here; point it at your repository host (`make dashboards RUNBOOK_BASE_URL=https://…`).
    runbook_base_url: str = "docs/runbook.md"


DEFAULT = Stack()
