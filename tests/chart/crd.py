"""Validates custom objects the way the API server would: the CRD's
openAPIV3Schema, then its CEL rules (the few shapes the CRDs use; an unknown
rule fails loudly rather than passing unchecked).

Objects of APIs the chart does not define (ServiceMonitor, PodMonitor,
PrometheusRule, HTTPRoute) are checked against their published CRDs in
tests/chart/thirdparty: the OpenAPI schema here, offline; their CEL rules (the
HTTPRoute has 178) only by the real API server in test_thirdparty_apis.py."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
import yaml

from tests.chart.render import CHART, Doc

THIRDPARTY = Path(__file__).resolve().parent / "thirdparty"

_MATCHES = re.compile(r"^self((?:\.\w+)+)\.matches\('(.+)'\)$")
_COMPARE = re.compile(r"^self\.(\w+) (<=|<|>=|>|==) self\.(\w+)$")


def _by_kind(folder: Path) -> dict[tuple[str, str], Doc]:
    found: dict[tuple[str, str], Doc] = {}
    for path in sorted(folder.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            group = crd["spec"]["group"]
            for version in crd["spec"]["versions"]:
                found[(f"{group}/{version['name']}", crd["spec"]["names"]["kind"])] = crd
    return found


@functools.cache
def crds() -> dict[tuple[str, str], Doc]:
    """(apiVersion, kind) → CRD, from the chart's crds/."""
    return _by_kind(CHART / "crds")


@functools.cache
def thirdparty_crds() -> dict[tuple[str, str], Doc]:
    """(apiVersion, kind) → published CRD of an API the chart uses but does not define."""
    return _by_kind(THIRDPARTY)


def is_custom(doc: Doc) -> bool:
    key = (doc["apiVersion"], doc["kind"])
    return key in crds() or key in thirdparty_crds()


def _schema(doc: Doc) -> Doc:
    key = (doc["apiVersion"], doc["kind"])
    crd = crds().get(key) or thirdparty_crds()[key]
    version = doc["apiVersion"].rsplit("/", 1)[1]
    entry = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    schema: Doc = entry["schema"]["openAPIV3Schema"]
    return schema


def _path(obj: Any, dotted: str) -> Any:
    for part in dotted.strip(".").split("."):
        obj = obj[part]
    return obj


def _rule_holds(rule: str, obj: Any) -> bool:
    if match := _MATCHES.match(rule):
        return re.search(match.group(2), _path(obj, match.group(1))) is not None
    if match := _COMPARE.match(rule):
        left, op, right = obj[match.group(1)], match.group(2), obj[match.group(3)]
        holds = {
            "<=": left <= right,
            "<": left < right,
            ">=": left >= right,
            ">": left > right,
            "==": left == right,
        }[op]
        return bool(holds)
    raise AssertionError(f"teach tests/chart/crd.py the CEL rule {rule!r}")


def _cel_errors(schema: Doc, obj: Any, where: str) -> list[str]:
    errors: list[str] = []
    if obj is None:
        return errors
    for rule in schema.get("x-kubernetes-validations", []):
        if not _rule_holds(rule["rule"], obj):
            errors.append(f"{where or '.'}: {rule.get('message', rule['rule'])}")
    if isinstance(obj, dict):
        for name, sub in schema.get("properties", {}).items():
            errors += _cel_errors(sub, obj.get(name), f"{where}.{name}")
    return errors


def custom_object_errors(doc: Doc) -> list[str]:
    """Why the API server would refuse this custom object (empty: it accepts it)."""
    schema = _schema(doc)
    # OpenAPI v3.0 schemas use draft-4 style (boolean exclusiveMinimum); x-* are ignored.
    validator = jsonschema.Draft4Validator(schema)
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '.'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]
    name = doc.get("metadata", {}).get("name", "")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) or len(name) > 253:
        errors.append(f"metadata.name: {name!r} is not a DNS subdomain")
    if (doc["apiVersion"], doc["kind"]) in crds():
        errors += _cel_errors(schema, doc, "")
    return errors
