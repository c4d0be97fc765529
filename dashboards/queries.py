"""The PromQL a generated dashboard runs, with Grafana's variables substituted, for checking against Prometheus."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# What Grafana sends for the dashboards' variables when "All" is selected, and sensible stand-ins for the
# built-in interval variables.
DEFAULT_VALUES: Mapping[str, str] = {
    "provider": ".*",
    "model": ".*",
    "__range": "1h",
    "__rate_interval": "1m",
    "__interval": "15s",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    instant: bool


def panels(dashboard: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: Mapping[str, Any]) -> Iterator[PanelQuery]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield PanelQuery(
                dashboard=dashboard["title"],
                panel=panel.get("title", ""),
                ref_id=target.get("refId", ""),
                expr=target["expr"],
                instant=bool(target.get("instant")),
            )


def substitute(expr: str, values: Mapping[str, str] = DEFAULT_VALUES) -> str:
    """Replace ``$name`` / ``${name}`` like Grafana does; an unknown variable is an error, not left in place."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(value, expr)
