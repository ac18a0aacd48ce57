"""The Gateway API HTTPRoute next to the Ingress: off by default, routes the same
paths to the client Service (never the admin port), and does not time a
WebSocket out. The API server's own checks (CEL rules included) run in
tests/chart/test_thirdparty_apis.py."""

from __future__ import annotations

import helm_python as helm
import pytest

from tests.chart.render import VALUE_SETS, docs_of, find, find_all, parse, render, rendered_set


def test_off_by_default() -> None:
    assert find_all(docs_of("default"), "HTTPRoute") == []


def test_routes_the_websocket_and_tickets_to_the_client_service() -> None:
    docs = docs_of("gateway")
    route = find(docs, "HTTPRoute")
    spec = route["spec"]
    assert spec["parentRefs"] == VALUE_SETS["gateway"]["httpRoute"]["parentRefs"]
    assert spec["hostnames"] == ["ws.example.com"]
    (rule,) = spec["rules"]
    assert [m["path"] for m in rule["matches"]] == [
        {"type": "PathPrefix", "value": "/v1/ws"},
        {"type": "PathPrefix", "value": "/v1/tickets"},
    ]
    service = find(docs, "Service", "-edge")
    assert rule["backendRefs"] == [
        {"name": service["metadata"]["name"], "port": service["spec"]["ports"][0]["port"]}
    ]
    assert service["spec"]["ports"][0]["name"] == "http"
    # A WebSocket is one request for its whole life: no request timeout.
    assert rule["timeouts"] == {"request": "0s", "backendRequest": "0s"}


def test_timeouts_can_be_left_unset() -> None:
    values = {
        "httpRoute": {
            "enabled": True,
            "parentRefs": [{"name": "public"}],
            "timeouts": {"request": None},
        }
    }
    (rule,) = find(parse(render(values)), "HTTPRoute")["spec"]["rules"]
    assert "timeouts" not in rule
    assert "hostnames" not in find(parse(render(values)), "HTTPRoute")["spec"]


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"httpRoute": {"enabled": True}}, "httpRoute.parentRefs"),
        ({"httpRoute": {"parentRefs": [{"kind": "Gateway"}]}}, "/httpRoute/parentRefs/0"),
        ({"httpRoute": {"timeouts": {"request": "1 hour"}}}, "/httpRoute/timeouts/request"),
        ({"httpRoute": {"paths": ["v1/ws"]}}, "/httpRoute/paths/0"),
    ],
)
def test_bad_route_values_are_refused_naming_the_key(values: dict[str, object], key: str) -> None:
    with pytest.raises(helm.HelmError) as refused:
        render(values)
    assert key in str(refused.value), str(refused.value)


def test_the_notes_name_the_routes_url() -> None:
    notes = rendered_set("gateway")["switchboard/templates/NOTES.txt"]
    assert "wscat -c wss://ws.example.com/v1/ws" in notes
