"""The frame every costline dashboard shares: variables, time settings, annotations, panel ids."""

from __future__ import annotations

from collections.abc import Sequence

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.cog import builder as cog_builder
from grafana_foundation_sdk.models import dashboard as dashboard_models

from dashboards.panels import variables
from dashboards.stack import Stack

TAGS = ["costline", "llm", "cost"]


def new_dashboard(
    uid: str, title: str, description: str, stack: Stack, items: Sequence[cog_builder.Builder]
) -> dashboard_builders.Dashboard:
    dashboard = (
        dashboard_builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .timezone("utc")  # budgets are UTC days and months; "today" must mean the same day here
        .time("now-24h", "now")
        .refresh("1m")
        .editable()
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .variables(variables(stack))
        .annotation(
            dashboard_builders.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(dashboard_models.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
            .built_in(1)
        )
        .link(
            dashboard_builders.DashboardLink("costline dashboards")
            .type(dashboard_models.DashboardLinkType.DASHBOARDS)
            .tags(["costline"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
    # Stable ids keep the generated JSON identical from run to run and give every panel a permalink.
    for panel_id, item in enumerate(items, start=1):
        item.id(panel_id)  # type: ignore[attr-defined]
        is_row = isinstance(item, dashboard_builders.Row)
        dashboard = dashboard.with_row(item) if is_row else dashboard.with_panel(item)
    return dashboard
