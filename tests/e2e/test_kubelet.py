"""The stand-in kubelet reads the pod spec as a kubelet would: each declared edge
port gets a loopback port of its own, and readiness is asked where the chart's
readiness probe points (the admin port), not where a fake would guess."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.chart.render import Values, container, container_env, find, parse, render
from tests.e2e.kubelet import UnsupportedPodSpec, edge_ports, readiness_url


def _edge(values: Values) -> tuple[dict[str, Any], dict[str, str]]:
    docs = parse(render(values))
    spec = find(docs, "Deployment", "-edge")["spec"]["template"]["spec"]
    edge = container(spec, "edge")
    return edge, container_env(docs, edge)


@pytest.mark.parametrize("admin_port", [9090, 9200])
def test_readiness_is_asked_on_the_port_the_probe_names(admin_port: int) -> None:
    edge, env = _edge({"edge": {"adminPort": admin_port}})
    ports = edge_ports(edge, env)
    assert set(ports) == {"SB_EDGE_PORT", "SB_EDGE_ADMIN_PORT"}
    assert ports["SB_EDGE_PORT"] != ports["SB_EDGE_ADMIN_PORT"]
    url = urlsplit(readiness_url(edge, env, ports))
    assert (url.port, url.path) == (ports["SB_EDGE_ADMIN_PORT"], "/readyz")
    # A probe pointed elsewhere (by name or number) is followed there.
    probe: dict[str, Any] = {"httpGet": {"path": "/v1/x", "port": "http"}, "periodSeconds": 1}
    edge, env = _edge({"edge": {"readinessProbe": probe}})
    url = urlsplit(readiness_url(edge, env, ports))
    assert (url.port, url.path) == (ports["SB_EDGE_PORT"], "/v1/x")
    probe["httpGet"]["port"] = admin_port
    edge, env = _edge({"edge": {"readinessProbe": probe, "adminPort": admin_port}})
    assert urlsplit(readiness_url(edge, env, ports)).port == ports["SB_EDGE_ADMIN_PORT"]


def test_what_it_cannot_run_is_refused_by_name() -> None:
    edge, env = _edge({"edge": {"readinessProbe": {"tcpSocket": {"port": "admin"}}}})
    with pytest.raises(UnsupportedPodSpec, match="only httpGet"):
        readiness_url(edge, env, edge_ports(edge, env))
    edge, env = _edge({"edge": {"readinessProbe": {"httpGet": {"path": "/", "port": 1234}}}})
    with pytest.raises(UnsupportedPodSpec, match="1234"):
        readiness_url(edge, env, edge_ports(edge, env))
    edge, env = _edge({})
    with pytest.raises(UnsupportedPodSpec, match="no edge port"):
        edge_ports({"ports": [*edge["ports"], {"containerPort": 7000}]}, env)
    with pytest.raises(UnsupportedPodSpec, match="SB_EDGE_ADMIN_PORT"):
        edge_ports({"ports": [edge["ports"][0]]}, env)
