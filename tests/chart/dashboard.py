"""The Grafana dashboard the chart ships (charts/switchboard/dashboards/switchboard.json),
as PromQL a Prometheus can run: every panel's query with the dashboard's variables
filled in. The test that scrapes real edges with a real Prometheus runs these."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.chart.render import CHART

DASHBOARD = CHART / "dashboards" / "switchboard.json"


def dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def panels(board: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every panel with queries (rows hold none), nested rows included."""
    found: list[dict[str, Any]] = []
    for panel in (board or dashboard())["panels"]:
        found += [p for p in panel.get("panels", []) if p.get("targets")]
        if panel.get("targets"):
            found.append(panel)
    return found


def panel_queries(*, namespace: str = ".*", rate_interval: str = "1m") -> dict[str, str]:
    """ "<panel title> / <refId>" → PromQL, with `$namespace` (a regex: ".*" matches
    series without the label, as a Prometheus outside Kubernetes has) and
    `$__rate_interval` filled in."""
    queries = {}
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", rate_interval)
            expr = expr.replace("$namespace", namespace)
            queries[f"{panel['title']} / {target['refId']}"] = expr
    return queries


_NAME = re.compile(r"\b((?:sb_edge|switchboard_operator)_[a-z_]+)\b")


def series_names(expr: str) -> set[str]:
    """The Switchboard metric names a query reads."""
    return set(_NAME.findall(expr))
