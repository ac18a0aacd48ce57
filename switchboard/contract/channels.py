"""Channel and RPC method names, their NATS subjects, and claim patterns.

A channel is `[A-Za-z0-9_-]` segments joined by `:`; `chat:lobby` travels on
`<prefix>.ch.chat.lobby`. Because segments never contain a dot, the mapping is
reversible and can never escape into another subject.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase

MAX_NAME_LENGTH = 200
_SEGMENT = r"[A-Za-z0-9_-]+"
_CHANNEL_RE = re.compile(rf"{_SEGMENT}(?::{_SEGMENT})*")
_METHOD_RE = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
_USER_RE = re.compile(r"[A-Za-z0-9_@=+-]{1,128}")

PERSONAL_PREFIX = "#"


def is_valid_channel(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and _CHANNEL_RE.fullmatch(name) is not None


def is_valid_method(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and _METHOD_RE.fullmatch(name) is not None


def is_valid_user_id(user_id: str) -> bool:
    """User ids become one NATS subject token, so dots and wildcards are out."""
    return _USER_RE.fullmatch(user_id) is not None


def channel_subject(prefix: str, channel: str) -> str:
    return f"{prefix}.ch.{channel.replace(':', '.')}"


def user_subject(prefix: str, user_id: str) -> str:
    return f"{prefix}.user.{user_id}"


def personal_channel(user_id: str) -> str:
    """The `channel` of events sent to one user (never a valid channel name)."""
    return f"{PERSONAL_PREFIX}{user_id}"


def rpc_subject(prefix: str, method: str) -> str:
    return f"{prefix}.rpc.{method}"


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """Glob match (`*` any run of characters, `?` one) against token claim patterns."""
    return any(fnmatchcase(name, pattern) for pattern in patterns)
