"""Switchboard: a Kubernetes-operated WebSocket connection tier with a NATS backbone."""

__version__ = "0.1.0"
