"""docs/protocol.md cannot drift: every JSON example in it is checked against a real
edge and a real nats-server.

- An example exchange (a client frame, then the server's answers) is sent as it is
  written and the answers are compared field by field: the same keys everywhere,
  and the same values except where a value is the edge's to choose (offsets,
  epochs, times, ids: those must have the same JSON type).
- A server frame shown alone is compared the same way with a frame of its type
  that the scenario below makes the edge send.
The channel `chat:lobby` of the examples keeps history and presence here; the
examples that show a channel without them run on `plain:lobby` instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from websockets.asyncio.client import ClientConnection, connect

from edge.protocol import parse_message
from switchboard.cli.natsserver import NatsServer
from switchboard.contract.wire import BEARER_PREFIX, SUBPROTOCOL, split_frames
from tests.conftest import Edge, EdgeFactory, token
from tests.integration.helpers import channel_cli

DOC = Path(__file__).parents[2] / "docs" / "protocol.md"
# Values the edge chooses: a documented example shows one possible value.
CHOSEN = {
    "offset",
    "epoch",
    "ts",
    "session",
    "expires_at",
    "since_ts",
    "until_ts",
    "resume_token",
    "after_ms",
    "node",
    "token",
}
CHANNELS = """\
apiVersion: switchboard.dev/v1alpha1
kind: Channel
metadata: {name: chat}
spec: {history: {size: 1000}, presence: true}
"""


def examples() -> list[tuple[int, list[dict[str, Any]]]]:
    """Every ```json block of docs/protocol.md: (line, frames)."""
    blocks, lines = [], DOC.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if line.strip() == "```json":
            body = []
            for text in lines[number:]:
                if text.strip() == "```":
                    break
                body.append(json.loads(text))
            blocks.append((number, body))
    return blocks


def differences(doc: Any, live: Any, path: str = "", *, values: bool = True) -> list[str]:
    """Where a live frame differs from the documented one (empty: it matches); with
    `values` false only keys and JSON types count (a frame shown as an illustration)."""
    key = path.rsplit(".", 1)[-1]
    if isinstance(doc, dict) and isinstance(live, dict):
        if set(doc) != set(live):
            return [f"{path or 'frame'}: keys {sorted(doc)} documented, {sorted(live)} sent"]
        return [
            d
            for k in doc
            for d in differences(doc[k], live[k], f"{path}.{k}".lstrip("."), values=values)
        ]
    if not values and key not in ("type", "code", "retryable"):
        same = type(doc) is type(live) or key == "data"
        return [] if same else [f"{path}: {doc!r} documented, {live!r} sent"]
    if key in CHOSEN or doc == "…":
        same = type(doc) is type(live) or doc == "…" or (doc is None) == (live is None) is False
        return [] if same else [f"{path}: {doc!r} documented, {live!r} sent"]
    return [] if doc == live else [f"{path}: {doc!r} documented, {live!r} sent"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsServer, Edge]]:
    nats_server = NatsServer(auth=True).start()
    factory = EdgeFactory(nats_server, str(tmp_path_factory.mktemp("protocol-docs")))
    channel_cli(nats_server, "apply", "-f", "-", stdin=CHANNELS)
    try:
        yield nats_server, factory.start("edge-1", rpc_timeout_ms="2000")
    finally:
        factory.stop_all()
        nats_server.stop()


class Peer:
    """A raw WebSocket client: frames exactly as the edge sends them."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws, self.frames = ws, asyncio.Queue[dict[str, Any]]()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, edge: Edge, user: str) -> Peer:
        ws = await connect(
            edge.ws_url,
            subprotocols=[SUBPROTOCOL, f"{BEARER_PREFIX}{token(user)}"],  # type: ignore[list-item]
            compression=None,
        )
        return cls(ws)

    async def _read(self) -> None:
        async for message in self.ws:
            for frame in split_frames(message if isinstance(message, str) else message.decode()):
                await self.frames.put(json.loads(frame))

    async def next(self, kind: str | None = None, timeout: float = 5) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frames.get()
                if kind is None or frame["type"] == kind:
                    return frame

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


CLIENT_TYPES = {"subscribe", "unsubscribe", "publish", "rpc", "presence", "refresh"}


def live_key(frame: dict[str, Any]) -> str:
    """Which kind of live frame a documented one is compared with."""
    kind, payload = frame["type"], frame.get("payload", {})
    if kind == "event":
        if str(payload.get("channel", "")).startswith("#"):
            return "personal event"
        return "stored event" if "offset" in payload else "event"
    if kind == "error":
        return "client error" if payload.get("code") == "bad_request" else "backend error"
    return str(kind)


async def gap_frame() -> dict[str, Any]:
    """A `gap` needs NATS to go away and come back: made by the same hub code in
    process, on the in-memory backbone (tests/edge), not by this module's edge."""
    from edge.memory import MemoryBackbone
    from tests.edge.core import join, link_of, make_node, send

    backbone = MemoryBackbone()
    node = make_node(backbone)
    member = await join(node, "alice")
    await send(member, "subscribe", {"channel": "chat:lobby"})
    backbone.set_connected(False)
    backbone.set_connected(True)
    gap = next(f for f in link_of(member).of_type("gap") if f["payload"]["channel"] == "chat:lobby")
    await member.finish()
    return gap


async def both_present(peer: Peer, users: list[str], bound_s: float = 20.0) -> None:
    """Wait until the presence store shows `users`: entries are written after the
    subscribe's ack, and a busy machine may take more than a moment."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    asked = 0
    while True:
        asked += 1
        request = {"channel": "chat:lobby"}
        await peer.send({"type": "presence", "id": f"wait{asked}", "payload": request})
        present = (await peer.next("ack"))["payload"].get("users")
        if present == users:
            return
        assert loop.time() < deadline, f"presence still {present} after {bound_s} s"
        await asyncio.sleep(0.1)


def _on(channel: str, frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    text = json.dumps(frames).replace('"chat:lobby"', json.dumps(channel))
    return list(json.loads(text))


async def test_every_example_is_what_a_real_edge_sends(world: tuple[NatsServer, Edge]) -> None:
    nats_server, edge = world
    backend = await nats.connect(nats_server.url)  # the backend role's login

    async def orders(msg: Any) -> None:
        await msg.respond(b'{"order":42}')

    async def seats(msg: Any) -> None:
        await backend.publish(msg.reply, b"seat taken", headers={"Sb-Error": "conflict"})

    await backend.subscribe("sb.rpc.orders.create", cb=orders)
    await backend.subscribe("sb.rpc.seats.take", cb=seats)
    await backend.flush()
    alice, bob = await Peer.open(edge, "alice"), await Peer.open(edge, "bob")
    seen: dict[str, dict[str, Any]] = {"welcome": await alice.next("welcome")}
    await bob.next("welcome")
    checked: list[int] = []
    problems: list[str] = []

    async def exchange(line: int, frames: list[dict[str, Any]], peer: Peer) -> None:
        await peer.send(frames[0])
        for documented in frames[1:]:
            live = await peer.next(documented["type"])
            seen.setdefault(live_key(live), live)
            problems.extend(f"protocol.md:{line}: {d}" for d in differences(documented, live))
        checked.append(line)

    # history for `since`: 60 events on chat:lobby, from a backend (no `from`)
    js = backend.jetstream()
    for n in range(60):
        await js.publish("sb.ch.chat.lobby", json.dumps(n).encode())
    await bob.send({"type": "subscribe", "id": "b", "payload": {"channel": "chat:lobby"}})
    epoch = (await bob.next("ack"))["payload"]["epoch"]
    for line, frames in examples():
        first = frames[0]
        kind = first["type"]
        if kind not in CLIENT_TYPES:
            continue
        parse_message(json.dumps(first))  # every client example is a valid frame
        if len(frames) == 1:
            checked.append(line)
            continue
        payload = first["payload"]
        if kind == "subscribe" and "since" in payload:
            frames = json.loads(json.dumps(frames).replace(payload["since"]["epoch"], epoch))
            await exchange(line, frames, alice)
        elif kind == "presence":
            await alice.send({"type": "subscribe", "id": "p", "payload": {"channel": "chat:lobby"}})
            await alice.next("ack")
            await both_present(alice, frames[-1]["payload"]["users"])
            await exchange(line, frames, alice)
        elif kind == "refresh":
            frames[0]["payload"]["token"] = token("alice", ttl_s=7200)
            await exchange(line, frames, alice)
        elif kind in ("subscribe", "unsubscribe", "publish"):
            await exchange(line, _on("plain:lobby", frames), alice)
        else:
            await exchange(line, frames, alice)

    # frames shown alone: make the edge send one of each
    await bob.send({"type": "rpc", "id": "5", "payload": {"method": "seats.take"}})
    seen["backend error"] = await bob.next("error")
    hi = {"channel": "plain:news", "data": {"text": "hi"}}
    await bob.send({"type": "subscribe", "id": "n", "payload": {"channel": "plain:news"}})
    await bob.next("ack")
    await alice.send({"type": "publish", "id": "x", "payload": hi})
    seen["event"] = await bob.next("event")
    await backend.publish("sb.user.alice", b'{"note":"just you"}', headers={"Sb-From": "system"})
    seen["personal event"] = await alice.next("event")
    carol = await Peer.open(edge, "carol")
    await carol.send({"type": "subscribe", "id": "c", "payload": {"channel": "chat:lobby"}})
    seen["join"] = await alice.next("join")
    await carol.close()
    seen["leave"] = await alice.next("leave")
    await alice.send({"type": "subscribe", "id": "12", "payload": {"channel": "no way"}})
    seen["client error"] = await alice.next("error")
    seen["gap"] = await gap_frame()
    stopping = asyncio.create_task(asyncio.to_thread(edge.stop))  # SIGTERM: a drain
    seen["reconnect"] = await alice.next("reconnect", timeout=20)
    await stopping
    for line, frames in examples():
        if frames[0]["type"] in CLIENT_TYPES:
            continue  # a client frame, or an exchange: checked above
        for documented in frames:
            live = seen.get(live_key(documented))
            if live is None:
                problems.append(f"protocol.md:{line}: no live {live_key(documented)} to compare")
                continue
            found = differences(documented, live, values=False)
            problems.extend(f"protocol.md:{line}: {d}" for d in found)
        checked.append(line)
    await backend.close()
    assert not problems, "\n".join(problems)
    assert {line for line, _ in examples()} == set(checked)
