"""The chart's alerts (charts/switchboard/rules/switchboard.rules.yaml, shipped as a
PrometheusRule): what the chart renders is a valid Prometheus rule file
(`promtool check rules`), and every alert fires, and does not, where it should
(`promtool test rules` with tests/chart/alerts.test.yaml). promtool is the real
Prometheus rule engine, from Debian's `prometheus` package."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.chart import promtool
from tests.chart.render import CHART, Doc, Values, find, parse, render

RULES = CHART / "rules" / "switchboard.rules.yaml"
CASES = Path(__file__).resolve().parent / "alerts.test.yaml"
ON = {"metrics": {"prometheusRule": {"enabled": True}}}


def _rule(values: Values) -> Doc:
    return find(parse(render(values)), "PrometheusRule")


def _alerts(rule: Doc) -> dict[str, Doc]:
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def _write_rules(rule: Doc, folder: Path) -> Path:
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def test_the_rendered_rules_pass_promtool_check(tmp_path: Path) -> None:
    for values in (ON, {**ON, "operator": {"enabled": False}}):
        rules = _write_rules(_rule(values), tmp_path)
        result = promtool.run("check", "rules", str(rules), cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout, result.stdout


def test_every_alert_fires_and_does_not_fire_where_it_should(tmp_path: Path) -> None:
    _write_rules(_rule(ON), tmp_path)
    shutil.copy(CASES, tmp_path / CASES.name)
    result = promtool.run("test", "rules", CASES.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = yaml.safe_load(CASES.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in cases["tests"]:
        for check in test.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = set(_alerts(_rule(ON)))
    assert firing == alerts, alerts ^ firing
    assert quiet == alerts, alerts ^ quiet


def test_the_rules_file_is_filled_in_from_values() -> None:
    text = RULES.read_text()
    placeholders = set(re.findall(r"@[A-Z_]+@", text))
    assert placeholders == {
        "@NAMESPACE@",
        "@EDGE_POD@",
        "@OPERATOR_POD@",
        "@DRAIN_DEADLINE@",
        "@EVICTIONS_PER_MINUTE@",
        "@REFUSAL_RATIO@",
    }
    values: Values = {
        "metrics": {
            "prometheusRule": {
                "enabled": True,
                "slowConsumerEvictionsPerMinute": 2.5,
                "handshakeRefusalRatio": 0.05,
            }
        },
        "edgePool": {"drain": {"timeoutSeconds": 600}},
        "edge": {"drainGraceMarginSeconds": 15},
    }
    rendered = yaml.safe_dump(_rule(values)["spec"])
    assert "@" not in rendered
    alerts = _alerts(_rule(values))
    assert alerts["SwitchboardDrainOverBudget"]["for"] == "675s"  # 600 + 15 + 60
    assert "> 2.5" in alerts["SwitchboardSlowConsumerEvictions"]["expr"]
    assert "> 0.05" in alerts["SwitchboardHandshakeRefusals"]["expr"]
    # Only this release's pods, in its namespace.
    assert (
        'namespace="switchboard", pod=~"sb-switchboard-edge-[a-z0-9]+-[a-z0-9]+"'
        in (alerts["SwitchboardEdgeDown"]["expr"])
    )


def test_alerts_can_be_labelled_and_left_out() -> None:
    values: Values = {
        "metrics": {
            "prometheusRule": {
                "enabled": True,
                "labels": {"release": "kube-prometheus-stack"},
                "alertLabels": {"team": "realtime", "severity": "page"},
                "disabled": ["SwitchboardHandshakeRefusals"],
            }
        }
    }
    rule = _rule(values)
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = _alerts(rule)
    assert "SwitchboardHandshakeRefusals" not in alerts
    assert len(alerts) == len(_alerts(_rule(ON))) - 1
    for alert in alerts.values():
        assert alert["labels"] == {"team": "realtime", "severity": "page"}
    # Without the operator, no alert about it.
    assert "SwitchboardOperatorDown" not in _alerts(_rule({**ON, "operator": {"enabled": False}}))


def test_an_unknown_alert_name_is_refused() -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError) as refused:
        render({"metrics": {"prometheusRule": {"disabled": ["EdgeDown"]}}})
    assert "/metrics/prometheusRule/disabled/0" in str(refused.value)
