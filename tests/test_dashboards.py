"""The generated Grafana dashboards and provisioning: fresh, complete, and every query well-formed PromQL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from promtools import promtool

from dashboards import generate, metrics, rules
from dashboards.__main__ import main
from dashboards.queries import DEFAULT_VALUES, panels, queries, substitute
from dashboards.stack import DEFAULT as STACK
from dashboards.thresholds import DEFAULT as THRESHOLDS

ROOT = Path(__file__).resolve().parent.parent
OVERVIEW = "costline-overview"
RELIABILITY = "costline-reliability"

# The panels issue 5 asks for, with the unit each must show.
REQUIRED_PANELS = {
    OVERVIEW: {
        "Spend today (UTC)": "currencyUSD",
        "Spend this month (UTC)": "currencyUSD",
        "Spend rate by model": "currencyUSD",
        "Spend rate by provider": "currencyUSD",
        "Projected month-end spend": "currencyUSD",
        "Escalation rate (1h)": "percentunit",
        "Escalation rate": "percentunit",
        "Escalation quota headroom": "percentunit",
        "Budget headroom": "percentunit",
        "Savings from local routing": "currencyUSD",
        "Tokens by type": "short",
        "Calls by outcome per model, and refused escalations": "ops",
        "Attempt latency p50 / p95 per model": "s",
        "Unpriced attempts": "short",
        # Issue 15: cost by team.
        "Spend by team": "currencyUSD",
        "Spend rate by team": "currencyUSD",
        "Team budget headroom": "percentunit",
    },
    RELIABILITY: {
        "Local failures by model and error type": "ops",
        "Escalation reasons": "ops",
        "Attempts per task": "short",
        "Ingested spans by result": "ops",
        "Rejected spans in range": "short",
    },
}


def committed(uid: str) -> dict:
    return json.loads((ROOT / generate.DASHBOARD_DIR / f"{uid}.json").read_text(encoding="utf-8"))


def all_dashboards() -> list[dict]:
    return [committed(OVERVIEW), committed(RELIABILITY)]


def visible_panels(dashboard: dict) -> list[dict]:
    return [panel for panel in panels(dashboard) if panel["type"] != "row"]


def test_committed_files_are_what_the_generator_produces():
    files = generate.render()
    stale = generate.stale(files)
    assert not stale, f"generated files are stale, run `make dashboards`: {stale}"
    assert set(files) == {
        "grafana/dashboards/costline-overview.json",
        "grafana/dashboards/costline-reliability.json",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/costline.yml",
        "prometheus/prometheus.yml",
        "prometheus/prometheus-scale.yml",
        "prometheus/rules/costline-recording.yml",
        "prometheus/rules/costline-alerts.yml",
    }


def test_check_mode_reports_a_hand_edited_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    files = generate.render()
    generate.write(files, tmp_path)
    (tmp_path / generate.ALERT_RULES).write_text("groups: []\n", encoding="utf-8")
    monkeypatch.setattr("dashboards.__main__.stale", lambda f: generate.stale(f, tmp_path))
    assert main(["--check"]) == 1
    assert "stale: prometheus/rules/costline-alerts.yml (run `make dashboards`)" in capsys.readouterr().err
    assert generate.write(files, tmp_path) == [generate.ALERT_RULES]
    assert generate.stale(files, tmp_path) == []


@pytest.mark.parametrize(("uid", "required"), REQUIRED_PANELS.items())
def test_every_panel_the_issue_asks_for_is_there_with_its_unit(uid: str, required: dict[str, str]):
    by_title = {panel["title"]: panel for panel in visible_panels(committed(uid))}
    for title, unit in required.items():
        assert title in by_title, f"{uid}: no panel {title!r}"
        assert by_title[title]["fieldConfig"]["defaults"]["unit"] == unit, title


def test_titles_uids_and_time_settings():
    overview, reliability = all_dashboards()
    assert (overview["title"], overview["uid"]) == ("LLM cost overview", OVERVIEW)
    assert (reliability["title"], reliability["uid"]) == ("Escalations and reliability", RELIABILITY)
    for dashboard in all_dashboards():
        assert dashboard["timezone"] == "utc"  # "today" and "this month" are UTC budget periods
        assert "costline" in dashboard["tags"]


@pytest.mark.parametrize("uid", [OVERVIEW, RELIABILITY])
def test_every_query_has_a_ref_id_and_the_datasource_variable(uid: str):
    for panel in visible_panels(committed(uid)):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        ref_ids = [target.get("refId") for target in panel["targets"]]
        assert ref_ids and all(ref_ids), f"{panel['title']}: a query without refId"
        assert len(set(ref_ids)) == len(ref_ids), f"{panel['title']}: duplicate refId"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"


@pytest.mark.parametrize("uid", [OVERVIEW, RELIABILITY])
def test_every_stat_gauge_and_bar_gauge_sets_reduce_options(uid: str):
    reducing = [p for p in visible_panels(committed(uid)) if p["type"] in ("stat", "gauge", "bargauge")]
    assert reducing
    for panel in reducing:
        reduce_options = panel["options"]["reduceOptions"]
        assert reduce_options["calcs"] == ["lastNotNull"], panel["title"]
        assert reduce_options["values"] is False, panel["title"]
        assert all(target["instant"] for target in panel["targets"]), panel["title"]


@pytest.mark.parametrize("uid", [OVERVIEW, RELIABILITY])
def test_template_variables_datasource_provider_model(uid: str):
    variables = {v["name"]: v for v in committed(uid)["templating"]["list"]}
    assert list(variables) == ["datasource", "provider", "model"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == STACK.datasource_uid
    assert variables["provider"]["query"] == "label_values(costline_attempts_total, provider)"
    assert variables["model"]["query"] == 'label_values(costline_attempts_total{provider=~"$provider"}, model)'
    for name in ("provider", "model"):
        assert variables[name]["includeAll"] and variables[name]["multi"]
        assert variables[name]["allValue"] == ".*"


def test_filtered_queries_use_the_variables():
    exprs = [q.expr for d in all_dashboards() for q in queries(d)]
    assert sum('provider=~"$provider"' in e for e in exprs) >= 6
    assert sum('model=~"$model"' in e for e in exprs) >= 10


def test_panel_ids_are_unique_and_the_grid_is_24_wide():
    for dashboard in all_dashboards():
        ids = [panel["id"] for panel in panels(dashboard)]
        assert len(ids) == len(set(ids)) and 0 not in ids
        for panel in panels(dashboard):
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, panel.get("title")


def test_queries_only_name_exported_metrics_and_recorded_rules():
    exported = {value for name, value in vars(metrics).items() if name.isupper() and value.startswith("costline_")}
    recorded = {rule["record"] for rule in rules.recording_rules(THRESHOLDS)}
    for dashboard in all_dashboards():
        for query in queries(dashboard):
            for name in re.findall(r"\b(costline_[a-z_]+|[a-z_]+:[a-z0-9_]+:[a-z0-9_]+)\b", query.expr):
                assert name in exported | recorded, f"{query.panel}: unknown metric {name}"


def test_every_panel_expression_is_valid_promql(tmp_path: Path):
    """promtool parses each expression (variables substituted) as a recording rule, without a Prometheus."""
    checked = [(q, substitute(q.expr)) for d in all_dashboards() for q in queries(d)]
    document = {
        "groups": [
            {
                "name": "dashboard-queries",
                "rules": [
                    {"record": f"dashboard:query_{i}:check", "expr": expr} for i, (_, expr) in enumerate(checked)
                ],
            }
        ]
    }
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(checked)} rules found" in result.stdout


def test_substitution_leaves_no_grafana_variable_behind():
    for dashboard in all_dashboards():
        for query in queries(dashboard):
            assert "$" not in substitute(query.expr), query.panel
    with pytest.raises(KeyError, match=r"no value for \$cluster"):
        substitute('up{cluster="$cluster"}', DEFAULT_VALUES)


def test_provisioning_points_grafana_at_the_dashboards_and_the_fixed_datasource_uid():
    datasource = yaml.safe_load((ROOT / generate.DATASOURCE_PROVISIONING).read_text(encoding="utf-8"))
    (source,) = datasource["datasources"]
    assert source["uid"] == STACK.datasource_uid
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    provider = yaml.safe_load((ROOT / generate.DASHBOARD_PROVISIONING).read_text(encoding="utf-8"))
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert provider["providers"][0]["type"] == "file"


def test_prometheus_config_scrapes_the_collector_job_the_alerts_watch():
    config = yaml.safe_load((ROOT / generate.PROMETHEUS_CONFIG).read_text(encoding="utf-8"))
    (job,) = config["scrape_configs"]
    assert job["job_name"] == STACK.collector_job
    assert job["static_configs"][0]["targets"] == ["collector:9464"]
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
