"""values.schema.json and the CRDs are generated, and Helm refuses bad values by name."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import pytest

from edge.settings import EdgeSettings
from switchboard.cli.chart_schema import (
    EDGE_CHART_KEYS,
    OPERATOR_CHART_KEYS,
    render_values_schema,
    values_schema,
)
from switchboard_operator.crds import crd_files
from switchboard_operator.settings import OperatorSettings
from tests.chart.render import CHART, Values, render


def test_values_schema_is_current() -> None:
    assert (CHART / "values.schema.json").read_text() == render_values_schema(), (
        "values.schema.json is stale: switchboard chart-schema --out "
        "charts/switchboard/values.schema.json"
    )


def test_values_schema_rendering_is_stable() -> None:
    text = render_values_schema()
    assert text == render_values_schema()
    assert text.endswith("}\n")
    assert json.loads(text) == values_schema()


def test_crds_are_current() -> None:
    committed = {
        path.name: path.read_text()
        for path in (CHART / "crds").glob("*.yaml")
        if path.name != "kopfpeerings.yaml"
    }
    assert committed == crd_files(), (
        "CRDs are stale: switchboard crds --out charts/switchboard/crds"
    )


@pytest.mark.parametrize(
    ("model", "section", "chart_keys"),
    [(EdgeSettings, "edge", EDGE_CHART_KEYS), (OperatorSettings, "operator", OPERATOR_CHART_KEYS)],
)
def test_every_setting_is_a_value_or_set_by_the_chart(
    model: Any, section: str, chart_keys: tuple[str, ...]
) -> None:
    configurable = set(values_schema()["properties"][section]["properties"]["config"]["properties"])
    assert configurable.isdisjoint(chart_keys)
    assert configurable | set(chart_keys) == set(model.model_fields)


def test_default_values_pass_the_schema() -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.values)


INVALID: list[tuple[str, Values, str]] = [
    ("wrong type", {"edge": {"config": {"rate_per_s": "fast"}}}, "/edge/config/rate_per_s"),
    ("unknown setting", {"edge": {"config": {"rate_limit": 5}}}, "'rate_limit'"),
    ("below a model bound", {"edge": {"config": {"max_connections": 0}}}, "max_connections"),
    ("enum", {"edge": {"config": {"log_level": "LOUD"}}}, "/edge/config/log_level"),
    ("nested model", {"edge": {"config": {"default_channel": {"presense": True}}}}, "presense"),
    ("chart-set setting", {"edge": {"config": {"drain_timeout_s": 5}}}, "'drain_timeout_s'"),
    ("dev tokens", {"edge": {"config": {"dev_tokens": True}}}, "'dev_tokens'"),
    ("operator setting", {"operator": {"config": {"scale_interval_s": 0}}}, "scale_interval_s"),
    ("operator chart-set", {"operator": {"config": {"namespace": "x"}}}, "'namespace'"),
    ("zero min replicas", {"edgePool": {"minReplicas": 0}}, "/edgePool/minReplicas"),
    (
        "min above max",
        {"edgePool": {"minReplicas": 5, "maxReplicas": 2}},
        "edgePool.minReplicas (5) exceeds edgePool.maxReplicas (2)",
    ),
    ("negative drain", {"edgePool": {"drain": {"timeoutSeconds": -1}}}, "drain/timeoutSeconds"),
    ("pool deployment", {"edgePool": {"deployment": "other"}}, "'deployment'"),
    ("zero available", {"edge": {"pdb": {"minAvailable": 0}}}, "/edge/pdb/minAvailable"),
    ("zero percent", {"edge": {"pdb": {"minAvailable": "0%"}}}, "/edge/pdb/minAvailable"),
    ("grace margin", {"edge": {"drainGraceMarginSeconds": 0}}, "/edge/drainGraceMarginSeconds"),
    ("no nats", {"nats": {"enabled": False}}, "nats.url"),
    ("nats twice", {"nats": {"url": "nats://elsewhere:4222"}}, "nats.enabled: false"),
    ("even nats", {"nats": {"replicas": 2}}, "/nats/replicas"),
    ("nats size", {"nats": {"jetstream": {"fileStore": {"size": "10GB"}}}}, "fileStore/size"),
    ("short secret", {"auth": {"jwtSecret": "short"}}, "/auth/jwtSecret"),
    ("no public key", {"auth": {"verification": "publicKey"}}, "auth.jwtPublicKey"),
    (
        "secret and existing",
        {"auth": {"existingSecret": "keys", "resumeSecret": "r" * 40}},
        "auth.existingSecret",
    ),
    ("verification", {"auth": {"verification": "none"}}, "/auth/verification"),
    ("otel endpoint", {"otel": {"enabled": True}}, "otel.endpoint"),
    ("sampler ratio", {"otel": {"samplerArg": 2}}, "/otel/samplerArg"),
    (
        "channel name",
        {"channels": {"extra": {"Chat.Room": {}}}},
        "at '/channels/extra': additional properties 'Chat.Room'",
    ),
    (
        "channel spec",
        {"channels": {"extra": {"orders": {"history": {"ttl": "forever"}}}}},
        "/channels/extra/orders/history/ttl",
    ),
    ("ingress path", {"ingress": {"paths": ["v1"]}}, "/ingress/paths/0"),
    ("service type", {"service": {"type": "External"}}, "/service/type"),
    ("typo at the top", {"edgepool": {"minReplicas": 3}}, "'edgepool'"),
]


@pytest.mark.parametrize(("values", "key"), [pytest.param(v, k, id=name) for name, v, k in INVALID])
def test_invalid_values_are_refused_naming_the_key(values: Values, key: str) -> None:
    with pytest.raises(helm.HelmError) as refused:
        render(values)
    assert key in str(refused.value), str(refused.value)


def test_lint_reports_invalid_values() -> None:
    report = helm.lint(CHART, {"edgePool": {"minReplicas": 0}}, strict=True)
    assert any("/edgePool/minReplicas" in error for error in report["errors"]), report
