"""The one exception hierarchy of Switchboard.

Everything the project raises on purpose derives from `SwitchboardException`, so
an application (or a test) can tell "Switchboard said no" from a bug with one
`except`. The subclasses group errors by what the caller should do about them:

    SwitchboardException
    ├── InvalidInput (also a ValueError): fix the input; the message names the key
    │   ├── SettingsError     a setting (`SB_EDGE_*`, `SB_OPERATOR_*`, ...)
    │   ├── ManifestError     a Channel manifest
    │   └── MessageError      an edge↔operator message (switchboard.contract.messages)
    ├── TokenError            a JWT, ticket or resume token was refused
    ├── ProtocolError         a client frame the edge cannot act on (an `error` frame)
    ├── Unavailable           NATS cannot take the request now: retry later
    │   └── ReplicasRefused   NATS cannot keep that many copies (until servers are added)
    ├── NoResponders          nobody answers an RPC subject
    ├── RequestTimeout        the RPC responder did not answer in time
    └── (defined where they are raised, on this base)
        switchboard.client: SwitchboardError (an `error` frame), Closed, Stopped
        switchboard_operator.kube: KubeError

`Unavailable` is what the edge and the operator both raise when NATS is away (the
operator's `Unreachable` before: one type now).
"""

from __future__ import annotations

from switchboard.contract.codes import ErrorCode


class SwitchboardException(Exception):
    """Base of every error Switchboard raises on purpose."""


class InvalidInput(SwitchboardException, ValueError):
    """Input that breaks the contract; the message names the offending key or field."""


class SettingsError(InvalidInput):
    """A configuration error whose message names the offending key."""


class ManifestError(InvalidInput):
    """A manifest that is not a valid Channel; the message names the field."""


class MessageError(InvalidInput):
    """An edge↔operator message that cannot be read; the message names the field."""


class TokenError(SwitchboardException):
    """A token was refused; the message is safe to show to the client."""


class TokenRevoked(TokenError):
    """A valid token of a user whose tokens issued before some moment were revoked
    (the server API's `revoke`): 403 at the upgrade, 4003 in band."""


class ProtocolError(SwitchboardException):
    """A client frame that cannot be acted on; becomes an `error` frame."""

    def __init__(self, code: ErrorCode, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


class Unavailable(SwitchboardException):
    """NATS cannot take the request now; nothing was accepted, the caller retries later."""


class ReplicasRefused(Unavailable):
    """NATS cannot keep as many copies as asked (more replicas than servers); retried
    later too, as servers may be added. The message says which and why."""


class NoResponders(SwitchboardException):
    """Nobody listens on the RPC subject."""


class RequestTimeout(SwitchboardException):
    """The RPC responder did not answer in time."""
