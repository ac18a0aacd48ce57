"""The operator's one typed settings object (`SB_OPERATOR_*`).

Like the edge's, a bad value fails at start-up with an error naming the
variable, and the Helm chart's `values.schema.json` is generated from it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from switchboard.contract.settings import (
    ComponentSettings,
    LogLevel,
    ReplicasSetting,
    load_settings,
)

ENV_PREFIX = "SB_OPERATOR_"


PEERING_PRIORITY_MAX = 2**31 - 1


class OperatorSettings(ComponentSettings):
    """Everything the operator process can be told."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    jetstream_replicas: ReplicasSetting = Field(
        "auto",
        description="Copies of history streams (unless a Channel sets `history.replicas`) "
        "and of `sb_channels`: 1, 3, 5, or auto (3 on a clustered NATS, else 1). Existing "
        "ones are changed to it on the next reconcile.",
    )
    namespace: str | None = Field(
        None, description="Namespace to watch (unset: all namespaces, needs a ClusterRole)."
    )
    peering: str = Field(
        "switchboard",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="kopf peering name: replicas with the same name elect one active operator.",
    )
    standalone: bool = Field(False, description="No peering (one replica, or tests).")
    peering_priority: int | None = Field(
        None,
        ge=0,
        le=PEERING_PRIORITY_MAX,
        description="kopf peering priority: the highest live replica acts. Unset: random, "
        "so replicas of one Deployment differ (kopf pauses every replica on a tie).",
    )
    health_port: int = Field(8081, ge=0, le=65535, description="Liveness endpoint `/healthz`.")
    metrics_port: int = Field(9090, ge=0, le=65535, description="Prometheus `/metrics` (0: off).")
    scale_interval_s: float = Field(
        2.0, gt=0, description="How often each EdgePool is re-evaluated (scale, costs, drains)."
    )
    status_interval_s: float = Field(5.0, gt=0, description="How often Channel status refreshes.")
    deletion_cost_min_change: int = Field(
        10, ge=0, description="A pod's deletion cost is patched only past this many connections…"
    )
    deletion_cost_min_change_ratio: float = Field(
        0.1, ge=0, description="…or past this fraction of its current value."
    )
    deletion_cost_min_interval_s: float = Field(
        10.0, ge=0, description="At most one deletion-cost patch per pod per this interval."
    )
    cut_off_after_s: float = Field(
        30.0,
        ge=0,
        description="An edge pod whose stats have not arrived for this long, while another "
        "pod of its pool reports, is cut off from NATS (or hung): it is deleted so its "
        "clients move and the Deployment replaces it; one per pool per this interval "
        "(0: never).",
    )
    log_level: LogLevel = "INFO"

    @model_validator(mode="after")
    def _ports_differ(self) -> OperatorSettings:
        if self.metrics_port and self.metrics_port == self.health_port:
            raise ValueError(f"{ENV_PREFIX}METRICS_PORT equals {ENV_PREFIX}HEALTH_PORT")
        return self


def load_operator_settings(**overrides: Any) -> OperatorSettings:
    return load_settings(OperatorSettings, ENV_PREFIX, overrides)
