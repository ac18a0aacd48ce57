"""Every role gets exactly its subjects on NATS (DESIGN §6), checked twice: against
the permission lists (every subject the contract names, for the role that uses it)
and against a real nats-server running the rendered configuration (forbidden ones
refused by the server itself, seen through nats-py's error callback)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import nats
import pytest

from switchboard.cli.natsserver import (
    NatsServer,
    find_binary,
    free_port,
    stop_process,
    wait_for_port,
)
from switchboard.contract.channels import channel_subject, rpc_subject, user_subject
from switchboard.contract.names import (
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
from switchboard.contract.natsauth import NatsCredentials, connect_options
from switchboard.contract.permissions import Role, allows, role_permissions

Action = Literal["publish", "subscribe"]
P = "sb"
JS = "$JS.API"
HISTORY = "SB_CH_chat"


def kv_calls(bucket: str, key: str) -> list[str]:
    stream = kv_stream(bucket)
    return [
        f"$KV.{bucket}.{key}",
        f"{JS}.STREAM.INFO.{stream}",
        f"{JS}.DIRECT.GET.{stream}.$KV.{bucket}.{key}",
        f"{JS}.STREAM.MSG.GET.{stream}",
        f"{JS}.CONSUMER.CREATE.{stream}",
        f"{JS}.CONSUMER.INFO.{stream}.abc",
    ]


def history_reads(stream: str) -> list[str]:
    return [
        f"{JS}.STREAM.INFO.{stream}",
        f"{JS}.STREAM.MSG.GET.{stream}",
        f"{JS}.CONSUMER.CREATE.{stream}",
        f"{JS}.CONSUMER.CREATE.{stream}.abc.{channel_subject(P, 'chat:lobby')}",
        f"{JS}.CONSUMER.MSG.NEXT.{stream}.abc",
        f"{JS}.CONSUMER.DELETE.{stream}.abc",
        f"$JS.FC.{stream}.abc.1",
    ]


# What each role's code does on NATS: every one must be allowed.
USES: dict[Role, dict[Action, list[str]]] = {
    "edge": {
        "publish": [
            channel_subject(P, "chat:lobby"),
            user_subject(P, "alice"),  # the server API: messages to a user, disconnects
            rpc_subject(P, "orders.create"),
            drain_subject(P),
            f"{presence_feed_prefix(P)}.chat.lobby",
            *kv_calls(TICKETS_BUCKET, "t0k3n"),
            *kv_calls(EDGES_BUCKET, "edge-1"),
            *kv_calls(PRESENCE_BUCKET, "chat.lobby.alice.edge-1"),
            *kv_calls(REVOKED_BUCKET, "616c696365"),
            f"{JS}.STREAM.CREATE.{kv_stream(TICKETS_BUCKET)}",
            f"{JS}.STREAM.CREATE.{kv_stream(REVOKED_BUCKET)}",
            f"{JS}.STREAM.CREATE.{kv_stream(CHANNELS_BUCKET)}",
            f"{JS}.CONSUMER.CREATE.{kv_stream(CHANNELS_BUCKET)}",
            *history_reads(HISTORY),
        ],
        "subscribe": [
            channel_subject(P, "chat:lobby"),
            user_subject(P, "alice"),
            f"{presence_feed_prefix(P)}.chat.lobby",
            control_subject(P, "edge-1"),
            "_INBOX.abc",
        ],
    },
    "operator": {
        "publish": [
            control_subject(P, "edge-1"),
            f"$KV.{CHANNELS_BUCKET}.chat",
            f"{JS}.STREAM.CREATE.{HISTORY}",
            f"{JS}.STREAM.UPDATE.{HISTORY}",
            f"{JS}.STREAM.DELETE.{HISTORY}",
            f"{JS}.STREAM.INFO.{HISTORY}",
            f"{JS}.STREAM.CREATE.{kv_stream(CHANNELS_BUCKET)}",
            f"{JS}.STREAM.UPDATE.{kv_stream(CHANNELS_BUCKET)}",
            *kv_calls(EDGES_BUCKET, "edge-1"),
        ],
        "subscribe": [drain_subject(P), "_INBOX.abc"],
    },
    "backend": {
        "publish": [channel_subject(P, "chat:lobby"), user_subject(P, "alice")],
        "subscribe": [rpc_subject(P, "orders.create"), channel_subject(P, "chat:lobby")],
    },
}

# What must be refused to each role (DESIGN §6 and issue 14's list).
FORBIDDEN: dict[Role, dict[Action, list[str]]] = {
    "edge": {
        "publish": [
            control_subject(P, "edge-2"),  # draining another edge
            f"$KV.{CHANNELS_BUCKET}.chat",  # channel config is the operator's
            f"{JS}.STREAM.DELETE.{HISTORY}",
            f"{JS}.STREAM.CREATE.{HISTORY}",
        ],
        "subscribe": [rpc_subject(P, "orders.create"), drain_subject(P)],
    },
    "operator": {
        "publish": [
            *kv_calls(TICKETS_BUCKET, "t0k3n"),  # tickets are raw JWTs: edges only
            f"{JS}.STREAM.UPDATE.{kv_stream(TICKETS_BUCKET)}",  # e.g. adding a republish
            f"{JS}.STREAM.DELETE.{kv_stream(TICKETS_BUCKET)}",
            *kv_calls(PRESENCE_BUCKET, "chat.lobby.alice.edge-1"),
            *kv_calls(REVOKED_BUCKET, "616c696365"),  # revocations are the edges'
            f"{JS}.STREAM.PURGE.{kv_stream(REVOKED_BUCKET)}",
            user_subject(P, "bob"),
            channel_subject(P, "chat:lobby"),
            rpc_subject(P, "orders.create"),
        ],
        "subscribe": [user_subject(P, "bob"), channel_subject(P, "chat:lobby")],
    },
    "backend": {
        "publish": [
            control_subject(P, "edge-1"),
            drain_subject(P),
            *kv_calls(TICKETS_BUCKET, "t0k3n"),
            *kv_calls(CHANNELS_BUCKET, "chat"),
            *kv_calls(EDGES_BUCKET, "edge-1"),
            *kv_calls(REVOKED_BUCKET, "616c696365"),  # revokes go through the server API
            f"{JS}.STREAM.CREATE.{HISTORY}",
            f"{JS}.STREAM.DELETE.{HISTORY}",
            *history_reads(HISTORY),
        ],
        "subscribe": [
            control_subject(P, "edge-1"),
            drain_subject(P),
            user_subject(P, "bob"),
            f"$KV.{TICKETS_BUCKET}.>",
        ],
    },
}


def cases(table: dict[Role, dict[Action, list[str]]]) -> list[tuple[Role, Action, str]]:
    return [(r, a, s) for r, by in table.items() for a, subjects in by.items() for s in subjects]


@pytest.mark.parametrize(("role", "action", "subject"), cases(USES))
def test_every_subject_a_role_uses_is_allowed(role: Role, action: Action, subject: str) -> None:
    assert allows(role_permissions(P)[role], action, subject)


@pytest.mark.parametrize(("role", "action", "subject"), cases(FORBIDDEN))
def test_forbidden_subjects_are_denied(role: Role, action: Action, subject: str) -> None:
    assert not allows(role_permissions(P)[role], action, subject)


@pytest.fixture(scope="module")
def secured() -> Iterator[NatsServer]:
    with NatsServer(auth=True) as server:
        yield server


async def server_refuses(server: NatsServer, role: Role, action: Action, subject: str) -> bool:
    """Try it as `role` on the real server: True if the server refused it."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(server.url_for(role), error_cb=on_error, allow_reconnect=False)
    try:
        if action == "publish":
            await nc.publish(subject, b"{}")
        else:
            await nc.subscribe(subject)
        for _ in range(2):  # the server's -ERR arrives before the PONG
            await nc.flush()
        await asyncio.sleep(0.05)
    finally:
        await nc.close()
    return any("permissions violation" in e.lower() for e in errors)


async def test_the_server_enforces_the_lists(secured: NatsServer) -> None:
    refused = [c for c in cases(FORBIDDEN) if not await server_refuses(secured, *c)]
    assert refused == [], "allowed by nats-server although forbidden"
    wrongly = [c for c in cases(USES) if await server_refuses(secured, *c)]
    assert wrongly == [], "refused by nats-server although the role needs it"


async def test_anonymous_and_wrong_passwords_are_refused(secured: NatsServer) -> None:
    for url in (secured.address, secured.url_for("edge").replace("@", "x@")):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(url, allow_reconnect=False)


async def test_an_external_nats_with_a_token_takes_the_token_setting(tmp_path: Path) -> None:
    """Settings other than user/password work against a real server too (token here;
    TLS in tests/chart/test_nats_tls.py)."""
    port = free_port()
    server = start_token_server(port, "s3cret-token", tmp_path)
    try:
        good = NatsCredentials(nats_token="s3cret-token")
        nc = await nats.connect(f"nats://127.0.0.1:{port}", **connect_options(good))
        await nc.close()
        bad = NatsCredentials(nats_token="guess")
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(
                f"nats://127.0.0.1:{port}",
                allow_reconnect=False,
                **connect_options(bad),
            )
    finally:
        stop_process(server)


def start_token_server(port: int, token: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [find_binary(), "-a", "127.0.0.1", "-p", str(port), "--auth", token],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    wait_for_port(port)
    return server
