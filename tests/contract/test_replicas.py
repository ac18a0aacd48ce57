"""Replica counts of streams and buckets: what is accepted, where from, and `auto`."""

from __future__ import annotations

import pytest

from edge.settings import load_edge_settings
from switchboard.contract.channel_config import ManifestError, load_manifests, resolve_replicas
from switchboard.contract.settings import SettingsError
from switchboard_operator.settings import load_operator_settings

HEAD = "apiVersion: switchboard.dev/v1alpha1\nkind: Channel\nmetadata: {name: c}\n"


@pytest.mark.parametrize("replicas", [1, 3, 5])
def test_history_replicas_nats_can_keep(replicas: int) -> None:
    ((_, spec),) = load_manifests(HEAD + f"spec: {{history: {{replicas: {replicas}}}}}\n")
    assert spec.history is not None
    assert spec.history.replicas == replicas


def test_history_replicas_default_to_the_writer_s_choice() -> None:
    ((_, spec),) = load_manifests(HEAD + "spec: {history: {size: 5}}\n")
    assert spec.history is not None
    assert spec.history.replicas is None
    assert b"replicas" not in spec.to_json()  # the entry edges read stays as it was


@pytest.mark.parametrize("replicas", ["0", "2", "4", "6", "three", "-1"])
def test_other_history_replicas_are_refused_naming_the_field(replicas: str) -> None:
    """NATS keeps 1 to 5 copies; an even count buys nothing (R2 stops when either copy
    is lost, R4 survives no more than R3), so only 1, 3 and 5 are accepted."""
    with pytest.raises(ManifestError, match=r"spec\.history\.replicas: Input should be 1, 3 or 5"):
        list(load_manifests(HEAD + f"spec: {{history: {{replicas: {replicas}}}}}\n"))


def test_auto_is_three_on_a_cluster_and_one_on_a_single_server() -> None:
    assert resolve_replicas("auto", clustered=True) == 3
    assert resolve_replicas("auto", clustered=False) == 1
    assert resolve_replicas(5, clustered=True) == 5
    assert resolve_replicas(1, clustered=True) == 1  # explicit wins, even on a cluster


@pytest.mark.parametrize(("raw", "expected"), [("auto", "auto"), ("1", 1), ("3", 3), ("5", 5)])
def test_replicas_settings_from_the_environment(
    raw: str, expected: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SB_EDGE_JWT_SECRET", "x" * 32)
    monkeypatch.setenv("SB_EDGE_JETSTREAM_REPLICAS", raw)
    monkeypatch.setenv("SB_OPERATOR_JETSTREAM_REPLICAS", raw)
    assert load_edge_settings().jetstream_replicas == expected
    assert load_operator_settings().jetstream_replicas == expected


@pytest.mark.parametrize("raw", ["2", "0", "7", "three", ""])
def test_bad_replicas_settings_name_the_variable(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_EDGE_JWT_SECRET", "x" * 32)
    monkeypatch.setenv("SB_EDGE_JETSTREAM_REPLICAS", raw)
    monkeypatch.setenv("SB_OPERATOR_JETSTREAM_REPLICAS", raw)
    with pytest.raises(SettingsError, match="SB_EDGE_JETSTREAM_REPLICAS: Input should be"):
        load_edge_settings()
    with pytest.raises(SettingsError, match="SB_OPERATOR_JETSTREAM_REPLICAS: Input should be"):
        load_operator_settings()
