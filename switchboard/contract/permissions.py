"""Who may do what on NATS (DESIGN §6): each role's allow and deny lists.

Derived here, once, from the contract's names (`switchboard.contract.channels`,
`switchboard.contract.names`); the chart's NATS configuration, dev mode and the
tests all render these lists, never a hand-written copy.

- edge: client traffic (channels, RPC requests, presence frames), its KV buckets
  (tickets, stats, presence; channel config read-only), reading history streams.
- operator: channel config and history streams, edge stats (read), control of
  edges, answering drain requests. Never tickets or presence.
- backend (apps): publish to channels and users, answer RPCs, listen on channels.
  No JetStream API, no KV, no control subject.

The uninstall hook talks only to the Kubernetes API: it gets no NATS user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from switchboard.contract.names import (
    BUCKETS,
    CHANNELS_BUCKET,
    EDGES_BUCKET,
    PRESENCE_BUCKET,
    REVOKED_BUCKET,
    TICKETS_BUCKET,
    control_subject,
    drain_subject,
    kv_stream,
    presence_feed_prefix,
)

Role = Literal["edge", "operator", "backend"]
ROLES: tuple[Role, ...] = ("edge", "operator", "backend")
INBOX = "_INBOX.>"
JS = "$JS.API"


@dataclass(frozen=True)
class Permissions:
    """A NATS user's permissions; deny wins over allow (nats-server semantics)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    deny_publish: tuple[str, ...] = ()
    deny_subscribe: tuple[str, ...] = ()
    responses: bool = False  # may answer requests it received (allow_responses)
    notes: dict[str, str] = field(default_factory=dict, compare=False)


def _stream_read(stream: str) -> list[str]:
    """Read a stream (`*`: any) as nats-py does: info, last message, consumers
    (ordered, which check themselves and take flow control, and pull)."""
    return [
        f"{JS}.STREAM.INFO.{stream}",
        f"{JS}.STREAM.MSG.GET.{stream}",
        f"{JS}.CONSUMER.CREATE.{stream}",
        f"{JS}.CONSUMER.CREATE.{stream}.>",
        f"{JS}.CONSUMER.INFO.{stream}.>",
        f"{JS}.CONSUMER.MSG.NEXT.{stream}.>",
        f"{JS}.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _kv_read(bucket: str) -> list[str]:
    """Get entries and watch a bucket (direct get, or a consumer)."""
    stream = kv_stream(bucket)
    return [f"{JS}.DIRECT.GET.{stream}.>", *_stream_read(stream)]


def _kv_own(bucket: str) -> list[str]:
    """Create the bucket (or raise its replicas), read it, and write its keys."""
    stream = kv_stream(bucket)
    return [
        f"{JS}.STREAM.CREATE.{stream}",
        f"{JS}.STREAM.UPDATE.{stream}",
        f"$KV.{bucket}.>",
        *_kv_read(bucket),
    ]


def _not_buckets(*buckets: str) -> list[str]:
    """Every JetStream API call on these buckets' streams, and their keys."""
    denied: list[str] = []
    for bucket in buckets:
        stream = kv_stream(bucket)
        denied += [f"{JS}.*.{stream}", f"{JS}.*.{stream}.>", f"{JS}.*.*.{stream}"]
        denied += [f"{JS}.*.*.{stream}.>", f"$KV.{bucket}.>"]
    return denied


def role_permissions(prefix: str = "sb") -> dict[Role, Permissions]:
    """The permissions of every role for the subject prefix `prefix`."""
    channels, users, rpc = f"{prefix}.ch.>", f"{prefix}.user.>", f"{prefix}.rpc.>"
    presence = f"{presence_feed_prefix(prefix)}.>"
    history = _stream_read("*")  # any stream: SB_CH_<name> is known only at run time
    edge = Permissions(
        publish=(
            channels,
            users,  # the server API: messages to a user, disconnects (`Sb-Disconnect`)
            rpc,
            presence,
            drain_subject(prefix),
            *_kv_own(TICKETS_BUCKET),
            *_kv_own(EDGES_BUCKET),
            *_kv_own(PRESENCE_BUCKET),
            *_kv_own(REVOKED_BUCKET),  # the server API's revocations; every edge reads them
            f"{JS}.STREAM.CREATE.{kv_stream(CHANNELS_BUCKET)}",  # dev mode: first user
            *_kv_read(CHANNELS_BUCKET),
            *history,
        ),
        subscribe=(channels, users, presence, control_subject(prefix, "*"), INBOX),
        # channel config is the operator's: read it, never write it
        deny_publish=(
            f"$KV.{CHANNELS_BUCKET}.>",
            f"{JS}.STREAM.UPDATE.{kv_stream(CHANNELS_BUCKET)}",
        ),
        responses=True,  # answers control commands sent as requests
    )
    operator = Permissions(
        publish=(
            control_subject(prefix, "*"),
            f"{JS}.INFO",
            f"{JS}.STREAM.NAMES",
            f"{JS}.STREAM.LIST",
            f"{JS}.STREAM.CREATE.*",
            f"{JS}.STREAM.UPDATE.*",
            f"{JS}.STREAM.DELETE.*",
            f"{JS}.STREAM.INFO.*",
            *_kv_own(CHANNELS_BUCKET),
            *_kv_own(EDGES_BUCKET),
        ),
        subscribe=(drain_subject(prefix), INBOX),
        # its stream rights must not reach the edges' buckets (e.g. a republish
        # added to sb_tickets would hand it every ticket; a purge of sb_revoked would
        # let revoked tokens in again)
        deny_publish=tuple(_not_buckets(TICKETS_BUCKET, PRESENCE_BUCKET, REVOKED_BUCKET)),
        responses=True,  # drain grants
    )
    backend = Permissions(
        publish=(channels, users),
        subscribe=(rpc, channels, INBOX),
        deny_publish=(f"{JS}.>", "$KV.>", "$JS.>", control_subject(prefix, "*")),
        deny_subscribe=(control_subject(prefix, "*"), drain_subject(prefix)),
        responses=True,  # RPC answers
    )
    assert set(BUCKETS) == {
        TICKETS_BUCKET,
        EDGES_BUCKET,
        CHANNELS_BUCKET,
        PRESENCE_BUCKET,
        REVOKED_BUCKET,
    }
    return {"edge": edge, "operator": operator, "backend": backend}


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` one token, `>` one or more trailing tokens."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def allows(permissions: Permissions, action: Literal["publish", "subscribe"], subject: str) -> bool:
    """Whether nats-server lets a user with `permissions` do `action` on `subject`."""
    if action == "publish":
        allow, deny = permissions.publish, permissions.deny_publish
    else:
        allow, deny = permissions.subscribe, permissions.deny_subscribe
    if any(subject_matches(p, subject) for p in deny):
        return False
    return any(subject_matches(p, subject) for p in allow)


def user_name(role: Role) -> str:
    """The NATS user of a role in configurations Switchboard renders."""
    return f"sb-{role}"


def _conf_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def nats_user_block(user: str, password_ref: str, permissions: Permissions) -> str:
    """One `authorization.users` entry in nats-server's configuration syntax.

    `password_ref` is either a quoted literal or a `$VARIABLE` the server reads
    from its environment (so the chart's ConfigMap never holds a secret).
    """
    lines = [f'{{user: "{user}", password: {password_ref}, permissions: {{']
    lines.append(
        f"  publish: {{allow: {_conf_list(permissions.publish)}, "
        f"deny: {_conf_list(permissions.deny_publish)}}},"
    )
    lines.append(
        f"  subscribe: {{allow: {_conf_list(permissions.subscribe)}, "
        f"deny: {_conf_list(permissions.deny_subscribe)}}},"
    )
    if permissions.responses:
        lines.append("  allow_responses: true,")
    lines.append("}}")
    return "\n".join(lines)


def authorization_block(
    passwords: dict[Role, str], prefix: str = "sb", users: dict[Role, str] | None = None
) -> str:
    """nats-server's `authorization { users: [...] }` for every role.

    `passwords` maps each role to a password reference (`"literal"` quoted or
    `$ENV_VAR`); `users` to the user names (default `sb-<role>`).
    """
    permissions = role_permissions(prefix)
    entries = [
        nats_user_block(
            (users or {}).get(role, user_name(role)), passwords[role], permissions[role]
        )
        for role in ROLES
    ]
    body = "\n".join(entries)
    return "authorization {\n  users: [\n" + body + "\n  ]\n}\n"
