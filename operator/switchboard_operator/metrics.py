"""The operator's Prometheus metrics, rendered as text exposition format."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OperatorMetrics:
    channel_applies: int = 0
    channel_deletes: int = 0
    scalings: int = 0
    cost_patches: int = 0
    drain_grants: int = 0
    pool_connections: dict[str, int] = field(default_factory=dict)
    pool_desired: dict[str, int] = field(default_factory=dict)
    last_grant: dict[str, float] = field(default_factory=dict)  # pod → reconnects/s

    def render(self) -> str:
        lines = []
        for name, value, doc in (
            ("channel_applies_total", self.channel_applies, "Channel configs written to NATS."),
            ("channel_deletes_total", self.channel_deletes, "Channels cleaned up."),
            ("scalings_total", self.scalings, "Deployment scale changes."),
            ("deletion_cost_patches_total", self.cost_patches, "pod-deletion-cost patches."),
            ("drain_grants_total", self.drain_grants, "Drain pace grants answered."),
        ):
            lines += [
                f"# HELP switchboard_operator_{name} {doc}",
                f"# TYPE switchboard_operator_{name} counter",
                f"switchboard_operator_{name} {value}",
            ]
        for name, label, values, doc in (
            ("pool_connections", "pool", self.pool_connections, "Live connections per EdgePool."),
            ("pool_desired_replicas", "pool", self.pool_desired, "Desired replicas per EdgePool."),
            ("drain_grant", "pod", self.last_grant, "Last pace granted to a draining pod."),
        ):
            lines += [
                f"# HELP switchboard_operator_{name} {doc}",
                f"# TYPE switchboard_operator_{name} gauge",
            ]
            lines += [
                f'switchboard_operator_{name}{{{label}="{key}"}} {value}'
                for key, value in sorted(values.items())
            ]
        return "\n".join(lines) + "\n"
