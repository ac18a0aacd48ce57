"""The Python client SDK: one connection (`Client`) and one that never gives up
(`ResilientClient`). Imports neither kopf, the OpenTelemetry SDK nor the
nats-server binary, so an application can depend on it alone."""

from switchboard.client.connection import Client, Closed, SwitchboardError
from switchboard.client.resilient import ResilientClient, Stopped
from switchboard.contract.wire import SUBPROTOCOL

__all__ = ["SUBPROTOCOL", "Client", "Closed", "ResilientClient", "Stopped", "SwitchboardError"]
