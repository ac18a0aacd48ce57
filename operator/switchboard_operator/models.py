"""The typed spec and status of the operator's resources (DESIGN §7).

These models are the one source of truth: the CRDs under
`charts/switchboard/crds/` are generated from them (`switchboard crds`), and a
test fails when the committed YAML differs from what they generate.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from switchboard.contract.channel_config import ChannelSpec

GROUP = "switchboard.dev"
VERSION = "v1alpha1"

__all__ = [
    "GROUP",
    "VERSION",
    "ChannelSpec",
    "ChannelStatus",
    "Condition",
    "DrainSpec",
    "EdgePoolSpec",
    "EdgePoolStatus",
    "RebalanceSpec",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DrainSpec(_Model):
    reconnects_per_second: int = Field(
        500,
        ge=1,
        alias="reconnectsPerSecond",
        description="Fleet-wide reconnect budget, split among the pods draining at once.",
    )
    timeout_seconds: int = Field(
        300,
        ge=0,
        alias="timeoutSeconds",
        description="A draining pod closes whatever is left at this deadline.",
    )


class RebalanceSpec(_Model):
    enabled: bool = Field(
        False,
        description="Move live connections from the busiest pods to the others once they "
        "are uneven (after a scale-up); off: only new connections spread.",
    )
    max_imbalance: float = Field(
        0.2,
        gt=0,
        le=10,
        alias="maxImbalance",
        description="Rebalance when the busiest pod carries more than (1 + this) times the "
        "mean; pods above that shed down to the mean.",
    )
    reconnects_per_second: int = Field(
        50,
        ge=1,
        alias="reconnectsPerSecond",
        description="Reconnect budget of all sheds together (never above "
        "drain.reconnectsPerSecond; nothing is shed while a pod drains).",
    )


class EdgePoolSpec(_Model):
    deployment: str = Field(
        ...,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="The edge Deployment (same namespace) this pool scales and drains.",
    )
    min_replicas: int = Field(2, ge=1, alias="minReplicas", description="Never fewer pods.")
    max_replicas: int = Field(50, ge=1, alias="maxReplicas", description="Never more pods.")
    target_connections_per_pod: int = Field(
        5000,
        ge=1,
        alias="targetConnectionsPerPod",
        description="Desired replicas = ceil(total connections / this), clamped to min..max.",
    )
    scale_down_stabilization_seconds: int = Field(
        300,
        ge=0,
        alias="scaleDownStabilizationSeconds",
        description="Scale down only to the highest recommendation of this window.",
    )
    drain: DrainSpec = Field(default_factory=DrainSpec, description="How pods are drained.")
    rebalance: RebalanceSpec = Field(
        default_factory=RebalanceSpec,
        description="Moving connections from hot pods to cold ones (shed).",
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> EdgePoolSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        return self


class Condition(_Model):
    type: str
    status: str = Field(..., description="True, False or Unknown.")
    reason: str
    message: str = ""
    last_transition_time: str = Field(..., alias="lastTransitionTime")


class ChannelStatus(_Model):
    subscribers: int = Field(0, description="Subscriptions to the channel and its sub-channels.")
    messages_per_second: float = Field(0.0, alias="messagesPerSecond")
    last_offset: int | None = Field(None, alias="lastOffset", description="History only.")
    epoch: str | None = Field(None, description="The history stream's epoch.")
    conditions: list[Condition] = Field(default_factory=list)


class EdgePoolStatus(_Model):
    connections: int = Field(0, description="Live connections over the pool's edges.")
    replicas: int = Field(0, description="The Deployment's current replicas.")
    desired_replicas: int = Field(0, alias="desiredReplicas")
    draining: int = Field(0, description="How many pods are draining right now.")
    draining_pods: list[str] = Field(
        default_factory=list, alias="drainingPods", description="Which pods are draining."
    )
    last_scale_time: str | None = Field(None, alias="lastScaleTime")
    imbalance: float = Field(
        0.0,
        description="The busiest pod's connections over the mean, minus 1 (0: even).",
    )
    shedding_pods: list[str] = Field(
        default_factory=list,
        alias="sheddingPods",
        description="Pods moving connections away to rebalance the pool.",
    )
    last_rebalance_time: str | None = Field(None, alias="lastRebalanceTime")
    conditions: list[Condition] = Field(default_factory=list)
