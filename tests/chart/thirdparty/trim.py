"""Trims a published CRD for tests/chart/thirdparty: only the version the chart renders,
no `description`s (text only: validation is unchanged), sorted keys.

    python -m tests.chart.thirdparty.trim VERSION SOURCE.yaml > tests/chart/thirdparty/NAME.yaml

The files here and where they come from are listed in README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: _strip(value)
            for key, value in node.items()
            # a `description` *property* (a field named description) stays
            if key != "description" or not isinstance(value, str)
        }
    if isinstance(node, list):
        return [_strip(item) for item in node]
    return node


def trim(crd: dict[str, Any], version: str) -> dict[str, Any]:
    versions = [v for v in crd["spec"]["versions"] if v["name"] == version]
    if not versions:
        raise SystemExit(f"{crd['metadata']['name']} has no version {version}")
    kept = {key: crd["metadata"][key] for key in ("name", "annotations") if key in crd["metadata"]}
    return {
        "apiVersion": crd["apiVersion"],
        "kind": crd["kind"],
        "metadata": kept,
        "spec": {**crd["spec"], "versions": [_strip(versions[0])]},
    }


def main(argv: list[str]) -> None:
    version, source = argv
    (crd,) = [doc for doc in yaml.safe_load_all(Path(source).read_text()) if doc]
    sys.stdout.write(yaml.safe_dump(trim(crd, version), sort_keys=True, width=100))


if __name__ == "__main__":
    main(sys.argv[1:])
