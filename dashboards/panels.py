"""Panel and variable builders with the settings the SDK leaves out.

grafana-foundation-sdk leaves ``refId`` and a stat panel's reduce options empty; Grafana then guesses. Every helper
here sets them: queries get refIds A, B, C … in order, stat, gauge and bar gauge panels reduce to the last
non-null value.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import bargauge, stat, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import gauge as gauge_builders
from grafana_foundation_sdk.builders import prometheus as prometheus_builders
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dashboard_models

from dashboards.stack import Stack

DATASOURCE_VAR = "datasource"
PROVIDER_VAR = "provider"
MODEL_VAR = "model"
DATASOURCE = dashboard_models.DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VAR}}}")

# Label matchers for the template variables; "All" sends ".*".
BY_PROVIDER_MODEL = f'provider=~"${PROVIDER_VAR}", model=~"${MODEL_VAR}"'
BY_MODEL = f'model=~"${MODEL_VAR}"'

USD = "currencyUSD"
RATIO = "percentunit"
SECONDS = "s"
PER_SECOND = "ops"
COUNT = "short"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


def _targets(queries: Sequence[Query], *, instant: bool) -> list[prometheus_builders.Dataquery]:
    targets = []
    for ref_id, query in zip(string.ascii_uppercase, queries, strict=False):
        target = prometheus_builders.Dataquery().expr(query.expr).ref_id(ref_id).datasource(DATASOURCE)
        target = target.instant() if instant else target.range()
        if query.legend:
            target = target.legend_format(query.legend)
        targets.append(target)
    if len(targets) != len(queries):
        raise ValueError("at most 26 queries per panel")
    return targets


def _steps(steps: Sequence[tuple[float | None, str]]) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(dashboard_models.ThresholdsMode.ABSOLUTE)
        .steps([dashboard_models.Threshold(value=value, color=color) for value, color in steps])
    )


def _last_value() -> common_builders.ReduceDataOptions:
    return common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False).fields("")


def stat_panel(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    steps: Sequence[tuple[float | None, str]] = ((None, "green"),),
    time_from: str = "",
    no_value: str = "",
    decimals: int | None = None,
    width: int = 4,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(queries, instant=True))
        .unit(unit)
        .reduce_options(_last_value())
        .graph_mode(common_models.BigValueGraphMode.NONE)
        .color_mode(common_models.BigValueColorMode.VALUE)
        .thresholds(_steps(steps))
        .span(width)
        .height(5)
    )
    if time_from:
        panel = panel.time_from(time_from)
    if no_value:
        panel = panel.no_value(no_value)
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def gauge_panel(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    steps: Sequence[tuple[float | None, str]],
    width: int = 6,
) -> gauge_builders.Panel:
    return (
        gauge_builders.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(queries, instant=True))
        .unit(unit)
        .min(0)
        .max(1)
        .reduce_options(_last_value())
        .thresholds(_steps(steps))
        .show_threshold_markers(True)
        .span(width)
        .height(6)
    )


def bar_gauge_panel(
    title: str, description: str, unit: str, queries: Sequence[Query], *, decimals: int | None = None, width: int = 12
) -> bargauge.Panel:
    panel = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(queries, instant=True))
        .unit(unit)
        .reduce_options(_last_value())
        .orientation(common_models.VizOrientation.HORIZONTAL)
        .display_mode(common_models.BarGaugeDisplayMode.GRADIENT)
        .thresholds(_steps(((None, "blue"),)))
        .span(width)
        .height(8)
    )
    return panel if decimals is None else panel.decimals(decimals)


def timeseries_panel(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    stacked: bool = False,
    axis_label: str = "",
    width: int = 12,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(queries, instant=False))
        .unit(unit)
        .min(0)
        .fill_opacity(10 if not stacked else 40)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common_models.LegendDisplayMode.TABLE)
            .placement(common_models.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
        .tooltip(common_builders.VizTooltipOptions().mode(common_models.TooltipDisplayMode.MULTI))
        .span(width)
        .height(8)
    )
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(common_models.StackingMode.NORMAL))
    if axis_label:
        panel = panel.axis_label(axis_label)
    return panel


def variables(stack: Stack) -> list:
    datasource = (
        dashboard_builders.DatasourceVariable(DATASOURCE_VAR)
        .label("Data source")
        .type("prometheus")
        .current(dashboard_models.VariableOption(text=stack.datasource_name, value=stack.datasource_uid))
    )
    provider = _label_variable(PROVIDER_VAR, "Provider", "label_values(costline_attempts_total, provider)")
    model = _label_variable(
        MODEL_VAR, "Model", f'label_values(costline_attempts_total{{provider=~"${PROVIDER_VAR}"}}, model)'
    )
    return [datasource, provider, model]


def _label_variable(name: str, label: str, query: str) -> dashboard_builders.QueryVariable:
    return (
        dashboard_builders.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dashboard_models.VariableOption(text="All", value="$__all"))
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
    )


def row(title: str) -> dashboard_builders.Row:
    return dashboard_builders.Row(title)
