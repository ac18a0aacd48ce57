"""What every component's settings share: loading with errors that name the
environment variable, the fields of every process on the backbone
(`ComponentSettings`), the replicas setting, and the default channel policy.

Each component keeps its own typed settings object (`edge.settings`,
`switchboard_operator.settings`) built on `ComponentSettings` and loaded with
`load_settings`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings

from switchboard.contract.errors import SettingsError as SettingsError  # its home before errors.py
from switchboard.contract.natsauth import NatsCredentials

Algorithm = Literal["HS256", "RS256", "ES256"]
ALGORITHMS: tuple[Algorithm, ...] = ("HS256", "RS256", "ES256")


def _digits_to_int(value: Any) -> Any:
    """`SB_EDGE_JETSTREAM_REPLICAS=3` arrives as the string "3"."""
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


# Copies JetStream keeps of each stream and KV bucket. NATS allows 1 to 5; even counts
# are refused here: R2 stops on the loss of either copy, R4 survives no more than R3.
Replicas = Literal[1, 3, 5]
# "auto": 3 when the NATS server says it belongs to a cluster, else 1.
ReplicasSetting = Annotated[Literal["auto", 1, 3, 5], BeforeValidator(_digits_to_int)]


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class ComponentSettings(BaseSettings, NatsCredentials):
    """The settings of every process on the backbone, the same keys under each one's
    prefix (`SB_EDGE_*`, `SB_OPERATOR_*`): how it logs in to NATS (the
    `NatsCredentials` fields), where NATS is, the prefix of every subject, and how
    many copies JetStream keeps of what it creates (each component says of what, in
    its own description of `jetstream_replicas`). A component adds its own fields,
    a `model_config` with its prefix, and its `log_level: LogLevel` (last, where its
    docs and the chart schema list it)."""

    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server URL(s), comma-sep.")
    subject_prefix: str = Field("sb", pattern=r"^[A-Za-z0-9_-]+$", description="NATS prefix.")
    jetstream_replicas: ReplicasSetting = Field(
        "auto",
        description="Copies JetStream keeps of what this process creates: 1, 3, 5, or auto "
        "(3 on a clustered NATS, else 1).",
    )


class ChannelPolicy(BaseModel):
    """Policy for channels that no Channel resource governs."""

    model_config = {"extra": "forbid"}

    client_publish: bool = Field(True, description="Clients may publish (else server only).")
    subscribe_roles: list[str] = Field(
        default_factory=list, description="Roles allowed to subscribe (empty: any user)."
    )
    publish_roles: list[str] = Field(
        default_factory=list, description="Roles allowed to publish (empty: any user)."
    )
    max_message_bytes: int = Field(16384, ge=1, description="Largest publish `data`, encoded.")
    presence: bool = Field(False, description="Track who is subscribed (join/leave, query).")


S = TypeVar("S", bound=BaseSettings)


def load_settings(model: type[S], prefix: str, overrides: dict[str, Any]) -> S:
    """Build settings from the environment plus explicit overrides (e.g. CLI flags);
    a bad value raises SettingsError naming its environment variable."""
    try:
        return model(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = "_".join(str(part) for part in err["loc"]).upper()
            name = f"{prefix}{key}" if key else "settings"
            message = str(err["msg"])
            for field_name in model.model_fields:  # a check across fields names them too
                message = re.sub(rf"\b{field_name}\b", f"{prefix}{field_name.upper()}", message)
            lines.append(f"{name}: {message}")
        raise SettingsError("; ".join(lines)) from None
