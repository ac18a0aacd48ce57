"""The chart's README is inside the chart, so `helm show readme` (and any chart
index) prints it, and its values table is generated from values.schema.json and
values.yaml, so it cannot drift. Links in it and in the repository README stay
where readers can follow them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from switchboard.cli.chart_readme import TABLE_END, TABLE_START, render_readme, values_rows
from tests.chart.render import CHART, ROOT

README = CHART / "README.md"


def _schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return loaded


def _values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


def test_the_values_table_is_current() -> None:
    text = README.read_text()
    assert render_readme(text, _schema(), _values()) == text, (
        "charts/switchboard/README.md is stale: python -m switchboard.cli.chart_readme"
    )


def test_every_key_of_values_yaml_has_a_row() -> None:
    keys = {row[0] for row in values_rows(_schema(), _values())}

    def leaves(node: Any, path: str) -> set[str]:
        if isinstance(node, dict) and node and path not in keys:
            return set().union(*(leaves(v, f"{path}.{k}" if path else k) for k, v in node.items()))
        return {path}

    def covered(key: str) -> bool:
        return any(r == key or r.startswith(f"{key}.") or key.startswith(f"{r}.") for r in keys)

    missing = {k for k in leaves(_values(), "") if not covered(k)}
    assert missing == set()
    table = README.read_text().split(TABLE_START)[1].split(TABLE_END)[0]
    for key in ("edge.config.max_connections", "metrics.serviceMonitor.enabled", "httpRoute"):
        assert f"`{key}" in table, key


def test_helm_show_readme_prints_it_from_the_chart_and_the_package(tmp_path: Path) -> None:
    assert helm.show(str(CHART), output_format="readme").strip() == README.read_text().strip()
    archive = helm.package(CHART, destination=tmp_path)
    assert helm.show(archive, output_format="readme").strip() == README.read_text().strip()


def _relative_links(text: str) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not t.startswith(("http://", "https://", "#", "mailto:"))]


def test_the_chart_readme_links_nothing_outside_the_chart() -> None:
    """`helm show readme` and chart indexes have the chart alone: no relative links
    to the repository (its files are named as paths instead)."""
    for target in _relative_links(README.read_text()):
        assert (CHART / target.split("#")[0]).resolve().is_relative_to(CHART), target


def test_readme_links_stay_inside_the_repository() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in _relative_links(doc.read_text()):
            path = (doc.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(ROOT), f"{doc.relative_to(ROOT)}: {target}"
            assert path.exists(), f"{doc.relative_to(ROOT)}: {target}"
