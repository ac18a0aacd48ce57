"""Channel configuration: the `Channel` resource's spec (DESIGN §7), as data.

The same YAML a user `kubectl apply`s is what `switchboard channel apply -f`
writes to the NATS KV bucket `sb_channels` in dev mode (the operator writes the
same entry in a cluster), and what every edge reads to enforce policy. A
Channel named `chat` governs `chat` and every `chat:*` below it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from switchboard.contract.channels import channel_subject, is_valid_channel
from switchboard.contract.errors import ManifestError as ManifestError  # its home before errors.py
from switchboard.contract.names import CHANNELS_BUCKET, STREAM_PREFIX
from switchboard.contract.settings import ChannelPolicy, Replicas, ReplicasSetting

API_VERSION = "switchboard.dev/v1alpha1"
KIND = "Channel"
BUCKET = CHANNELS_BUCKET

T = TypeVar("T")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class HistorySpec(_Spec):
    size: int = Field(100, ge=1, description="Messages kept.")
    ttl: str = Field("10m", pattern=r"^\d+[smhd]$", description="How long messages are kept.")
    replicas: Replicas | None = Field(
        None,
        description="Copies JetStream keeps of the history: 1, 3 or 5 (unset: 3 on a "
        "clustered NATS, else 1).",
    )

    @property
    def ttl_seconds(self) -> int:
        return int(self.ttl[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[self.ttl[-1]]


def resolve_replicas(setting: ReplicasSetting, clustered: bool) -> int:
    """The replica count to create with: explicit, or `auto` from whether the NATS server
    announces a cluster. That is the cluster as configured, not as reachable now, so a
    node down at creation time does not turn a 3-node cluster's R3 into R1."""
    if setting == "auto":
        return 3 if clustered else 1
    return setting


def stream_name(channel_config: str) -> str:
    """The JetStream stream holding the history of a Channel (and of its sub-channels)."""
    return f"{STREAM_PREFIX}{channel_config}"


def stream_subjects(prefix: str, channel_config: str) -> list[str]:
    base = channel_subject(prefix, channel_config)
    return [base, f"{base}.>"]


class PublishSpec(_Spec):
    clients: bool = Field(True, description="Clients may publish (else backends only).")
    roles: list[str] = Field(default_factory=list, description="Roles allowed (empty: any).")


class SubscribeSpec(_Spec):
    roles: list[str] = Field(default_factory=list, description="Roles allowed (empty: any).")


class ChannelSpec(_Spec):
    history: HistorySpec | None = Field(None, description="Omit for fire-and-forget.")
    presence: bool = Field(False, description="Track who is subscribed.")
    publish: PublishSpec = Field(default_factory=PublishSpec, description="Who may publish.")
    subscribe: SubscribeSpec = Field(
        default_factory=SubscribeSpec, description="Who may subscribe."
    )
    max_message_bytes: int = Field(
        16384, ge=1, alias="maxMessageBytes", description="Largest publish `data`, encoded."
    )

    def policy(self) -> ChannelPolicy:
        return ChannelPolicy(
            client_publish=self.publish.clients,
            subscribe_roles=list(self.subscribe.roles),
            publish_roles=list(self.publish.roles),
            max_message_bytes=self.max_message_bytes,
            presence=self.presence,
        )

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ChannelSpec:
        return cls.model_validate_json(data)


def load_manifests(text: str) -> Iterator[tuple[str, ChannelSpec]]:
    """(name, spec) of every Channel document in a YAML stream."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError(f"not YAML: {exc}") from None
    for index, doc in enumerate(documents):
        yield _manifest(doc, index)


def _manifest(doc: Any, index: int) -> tuple[str, ChannelSpec]:
    where = f"document {index + 1}"
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: expected a mapping")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise ManifestError(f"{where}: expected apiVersion {API_VERSION}, kind {KIND}")
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not is_valid_channel(name):
        raise ManifestError(f"{where}: metadata.name must be a channel name ([A-Za-z0-9_-])")
    try:
        spec = ChannelSpec.model_validate(doc.get("spec") or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        raise ManifestError(f"{where} ({name}): spec.{path}: {first['msg']}") from None
    return name, spec


def governing_name(channel: str, configs: Mapping[str, object]) -> str | None:
    """The nearest Channel at or above `channel` (`a:b:c`, then `a:b`, then `a`)."""
    name = channel
    while True:
        if name in configs:
            return name
        head, sep, _ = name.rpartition(":")
        if not sep:
            return None
        name = head


def governing(channel: str, configs: Mapping[str, T]) -> T | None:
    """The config of the nearest Channel at or above `channel`."""
    name = governing_name(channel, configs)
    return None if name is None else configs[name]
