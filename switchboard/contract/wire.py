"""The WebSocket wire's fixed spellings (DESIGN §2-3), shared by the edge, the Python
client, the CLI and the benchmarks so that each is written once.

- The subprotocol the edge selects, and how a bearer token rides next to it
  (`Sec-WebSocket-Protocol: switchboard.v1, bearer.<JWT>`) or in `Authorization`.
- The paths of the client port.
- Server frames are compact JSON without raw newlines, so the edge may put several
  in one WebSocket frame separated by `\\n` (NDJSON): `join_frames` on the way out,
  `split_frames` on the way in.
"""

from __future__ import annotations

from collections.abc import Sequence

SUBPROTOCOL = "switchboard.v1"
BEARER_PREFIX = "bearer."  # a token offered as a subprotocol: `bearer.<JWT>`
AUTHORIZATION_SCHEME = "Bearer"  # `Authorization: Bearer <JWT>`
WS_PATH = "/v1/ws"
TICKETS_PATH = "/v1/tickets"
FRAME_SEPARATOR = "\n"


def bearer_subprotocol(token: str) -> str:
    """The token as a subprotocol, for clients (browsers) that cannot set headers."""
    return BEARER_PREFIX + token


def bearer_authorization(token: str) -> str:
    """The token as an `Authorization` header value."""
    return f"{AUTHORIZATION_SCHEME} {token}"


def join_frames(frames: Sequence[bytes]) -> bytes:
    """Encoded server frames as one WebSocket frame's payload."""
    return FRAME_SEPARATOR.encode().join(frames)


def split_frames(data: str | bytes) -> list[str]:
    """One WebSocket frame's payload as the server frames it carries (each one JSON text)."""
    text = data if isinstance(data, str) else data.decode()
    return text.split(FRAME_SEPARATOR)
