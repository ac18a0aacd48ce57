"""Channel manifests, their policies, and which Channel governs a channel."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.directory import ChannelDirectory
from switchboard.contract.channel_config import (
    ChannelSpec,
    ManifestError,
    governing,
    load_manifests,
)
from switchboard.contract.settings import ChannelPolicy

ROOT = Path(__file__).resolve().parents[2]
HEAD = "apiVersion: switchboard.dev/v1alpha1\nkind: Channel\n"


def test_example_manifests_load() -> None:
    loaded = dict(load_manifests((ROOT / "deploy/examples/channel-chat.yaml").read_text()))
    assert set(loaded) == {"chat", "news"}
    assert loaded["news"].policy() == ChannelPolicy(
        client_publish=False, subscribe_roles=[], publish_roles=[], max_message_bytes=16384
    )
    assert loaded["chat"].presence


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{{{", "not YAML"),
        ("- a list", "document 1: expected a mapping"),
        ("apiVersion: v1\nkind: ConfigMap\n", "expected apiVersion switchboard.dev/v1alpha1"),
        (HEAD + "metadata: {name: a.b}\n", "metadata.name must be a channel name"),
        (
            HEAD + "metadata: {name: c}\nspec: {maxMessageBytes: 0}\n",
            "document 1 (c): spec.maxMessageBytes: Input should be greater than or equal to 1",
        ),
        (
            HEAD + "metadata: {name: c}\nspec: {publish: {client: false}}\n",
            "spec.publish.client: Extra inputs are not permitted",
        ),
        (HEAD + "metadata: {name: c}\nspec: {history: {ttl: soon}}\n", "spec.history.ttl"),
    ],
)
def test_bad_manifests_name_the_field(text: str, error: str) -> None:
    with pytest.raises(ManifestError, match=error.replace("(", r"\(").replace(")", r"\)")):
        list(load_manifests(text))


def test_spec_round_trips_through_the_kv_encoding() -> None:
    spec = ChannelSpec.model_validate(
        {
            "history": {"size": 5, "ttl": "1h"},
            "publish": {"roles": ["member"]},
            "maxMessageBytes": 99,
        }
    )
    assert b'"maxMessageBytes":99' in spec.to_json()
    assert ChannelSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("channel", "expected"),
    [
        ("chat", "chat"),
        ("chat:lobby", "chat"),
        ("chat:vip:x", "chat:vip"),
        ("chatter", None),
        ("news:eu", None),
    ],
)
def test_nearest_channel_governs(channel: str, expected: str | None) -> None:
    configs = {"chat": "chat", "chat:vip": "chat:vip"}
    assert governing(channel, configs) == expected


def test_directory_applies_and_removes_configs() -> None:
    default = ChannelPolicy()
    directory = ChannelDirectory(default)
    closed = ChannelSpec.model_validate({"publish": {"clients": False}})
    directory.apply("quiet", closed.to_json())
    assert not directory.policy_for("quiet:room").client_publish
    assert directory.policy_for("loud") is default
    directory.apply("quiet", b"{not json")  # ignored: the last good config stays
    assert not directory.policy_for("quiet").client_publish
    directory.apply("quiet", None)
    assert directory.policy_for("quiet:room") is default


def test_presence_keys_survive_any_user_id_and_pod_name() -> None:
    from edge.presence import channel_key, entry_key, user_of

    key = entry_key("room:1", "a@b+c", "edge-7.example")
    assert key.startswith("room.1.")
    assert key.count(".") == 3  # channel segments, user, pod: one token each
    assert user_of(key) == "a@b+c"
    assert channel_key("a:b:c") == "a.b.c"
