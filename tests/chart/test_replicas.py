"""How many copies of streams and buckets the chart tells edges and operator to keep."""

from __future__ import annotations

import helm_python as helm
import pytest

from tests.chart.render import Values, container, container_env, find, parse, render


def replicas_env(values: Values) -> dict[str, str]:
    docs = parse(render(values))
    found = {}
    for name in ("edge", "operator"):
        deployment = find(docs, "Deployment", f"-{name}")
        env = container_env(docs, container(deployment["spec"]["template"]["spec"], name))
        found[name] = env[f"SB_{name.upper()}_JETSTREAM_REPLICAS"]
    return found


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, "3"),  # the bundled 3-server cluster
        ({"nats": {"replicas": 1}}, "1"),  # one server holds one copy
        ({"nats": {"replicas": 5}}, "3"),  # R3 survives a loss; more is a choice
        ({"nats": {"replicas": 5, "jetstream": {"replicas": 5}}}, "5"),
        ({"nats": {"jetstream": {"replicas": 1}}}, "1"),
        # an external NATS: asked at run time whether it is clustered, unless told
        ({"nats": {"enabled": False, "url": "nats://nats.messaging.svc:4222"}}, "auto"),
        (
            {
                "nats": {
                    "enabled": False,
                    "url": "nats://nats.messaging.svc:4222",
                    "jetstream": {"replicas": 3},
                }
            },
            "3",
        ),
    ],
)
def test_edges_and_operator_get_the_same_replica_count(values: Values, expected: str) -> None:
    assert replicas_env(values) == {"edge": expected, "operator": expected}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"nats": {"jetstream": {"replicas": 2}}}, "/nats/jetstream/replicas"),
        ({"edge": {"config": {"jetstream_replicas": 3}}}, "'jetstream_replicas'"),
        ({"operator": {"config": {"jetstream_replicas": 3}}}, "'jetstream_replicas'"),
        (
            {"nats": {"replicas": 1, "jetstream": {"replicas": 3}}},
            "nats.jetstream.replicas (3) exceeds nats.replicas (1)",
        ),
        (
            {"channels": {"extra": {"orders": {"history": {"replicas": 2}}}}},
            "/channels/extra/orders/history/replicas",
        ),
    ],
)
def test_impossible_replica_counts_are_refused_naming_the_key(values: Values, message: str) -> None:
    with pytest.raises(helm.HelmError) as refused:
        render(values)
    assert message in str(refused.value), str(refused.value)
