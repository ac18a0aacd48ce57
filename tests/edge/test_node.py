"""The edge's core in one process: hub, node, replay and control on the in-memory
backbone (edge.memory), with links that record frames instead of sockets.

The same behaviours run against a real nats-server and real sockets in
tests/integration; these pin down the orderings that are hard to force there.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from edge import replay
from edge.control import Control
from edge.memory import MemoryBackbone
from edge.node import Member, Node
from switchboard.contract.channels import channel_subject
from switchboard.contract.codes import CloseCode
from switchboard.contract.messages import DrainGrant, EdgeStats
from switchboard.contract.resume import read_resume
from tests.edge.core import SECRET, RecordingLink, join, keep_history, link_of, make_node, send


async def settle(predicate: object, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.001)


async def store(backbone: MemoryBackbone, stream: str, subject: str, numbers: range) -> None:
    for n in numbers:
        await backbone.stream_publish(subject, json.dumps(n).encode(), {}, stream)


async def chat_with_history(backbone: MemoryBackbone, stored: range) -> tuple[Node, str, str, str]:
    """A node whose `chat` keeps history with `stored` in it: node, stream, subject, epoch."""
    node = make_node(backbone)
    stream = keep_history(node, backbone, "chat")
    subject = channel_subject(node.settings.subject_prefix, "chat")
    await store(backbone, stream, subject, stored)
    return node, stream, subject, await backbone.stream_epoch(stream)


async def test_a_channel_keeps_its_one_subscription_until_its_last_member_leaves() -> None:
    backbone = MemoryBackbone()
    node = make_node(backbone)
    alice, bob = await join(node, "alice"), await join(node, "bob")
    subject = channel_subject(node.settings.subject_prefix, "news")
    await send(alice, "subscribe", {"channel": "news"})
    await send(bob, "subscribe", {"channel": "news"})
    assert backbone.interest(subject) == 1  # one NATS interest per edge, not per client

    await send(alice, "unsubscribe", {"channel": "news"}, "2")
    assert backbone.interest(subject) == 1
    await backbone.publish(subject, b'{"n": 1}', {})
    assert [f["payload"]["data"] for f in link_of(bob).of_type("event")] == [{"n": 1}]
    assert link_of(alice).of_type("event") == []

    await send(bob, "unsubscribe", {"channel": "news"}, "2")
    assert backbone.interest(subject) == 0
    await alice.finish()
    await bob.finish()
    assert backbone.interest(f"{node.settings.subject_prefix}.>") == 0  # users' subjects too


async def test_a_backbone_return_tells_plain_channels_of_the_gap_and_not_history_ones() -> None:
    backbone = MemoryBackbone()
    node = make_node(backbone)
    keep_history(node, backbone, "chat")
    alice = await join(node, "alice")
    await send(alice, "subscribe", {"channel": "news"})
    await send(alice, "subscribe", {"channel": "chat"}, "2")

    backbone.set_connected(False)
    await send(alice, "publish", {"channel": "news", "data": 1}, "3")
    errors = link_of(alice).of_type("error")
    assert [e["payload"]["code"] for e in errors] == ["unavailable"]  # nothing was accepted
    backbone.set_connected(True)

    gaps = link_of(alice).of_type("gap")
    # the user's personal channel has no history either; `chat` reads on from its stream
    assert sorted(g["payload"]["channel"] for g in gaps) == ["#alice", "news"]
    assert gaps[0]["payload"]["since_ts"] <= gaps[0]["payload"]["until_ts"]
    await alice.finish()


async def history_with_a_live_member(
    stored: range,
) -> tuple[MemoryBackbone, Node, str, str, str, Member]:
    """A node whose `chat` keeps history with `stored` in it, and bob subscribed live,
    so the hub's feed runs ahead of any replay: backbone, node, stream, subject,
    epoch and bob."""
    backbone = MemoryBackbone()
    node, stream, subject, epoch = await chat_with_history(backbone, stored)
    bob = await join(node, "bob")
    await send(bob, "subscribe", {"channel": "chat"})
    return backbone, node, stream, subject, epoch, bob


async def test_a_replay_hands_over_to_live_events_without_a_gap_or_a_repeat() -> None:
    backbone, node, stream, subject, epoch, bob = await history_with_a_live_member(range(1, 51))

    alice = await join(node, "alice")
    since = {"offset": 10, "epoch": epoch}
    subscribing = asyncio.create_task(send(alice, "subscribe", {"channel": "chat", "since": since}))
    for n in range(51, 81):  # live events while the replay reads the stream
        await backbone.stream_publish(subject, json.dumps(n).encode(), {}, stream)
        await asyncio.sleep(0)
    await subscribing
    await settle(lambda: len(link_of(alice).of_type("event")) >= 70)
    await asyncio.sleep(0.05)  # anything repeated would arrive now

    link = link_of(alice)
    ack = link.of_type("ack")[0]["payload"]
    assert ack["recovered"] is True
    offsets = [f["payload"]["offset"] for f in link.of_type("event")]
    assert offsets == list(range(11, 81))
    assert [f["payload"]["data"] for f in link.of_type("event")] == list(range(11, 81))
    assert alice.recovery.replayed_to("chat") is None  # back to live
    await alice.finish()
    await bob.finish()


async def test_a_replay_the_stream_stops_answering_closes_instead_of_skipping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The live feed has handed out events the stream will not give the replay (a
    JetStream too busy to answer, or a replaced stream). Going live would skip them
    without a word; the client is closed with 1013 `recovery interrupted` instead and
    resumes from the last event it got, which is the end of a gap-free prefix."""
    monkeypatch.setattr(replay, "REPLAY_WAIT_S", 0.01)
    backbone, node, stream, subject, epoch, bob = await history_with_a_live_member(range(1, 21))
    opened = backbone.open_cursor

    async def stalling(stream: str, subject: str, start: int) -> Any:
        cursor = await opened(stream, subject, start)
        first = await cursor.fetch(5, 0.01)  # one batch, then the stream stops answering

        class Stalled:
            async def fetch(self, max_msgs: int, wait_s: float) -> list[Any]:
                nonlocal first
                out, first = first, []
                return out

            async def close(self) -> None:
                await cursor.close()

        return Stalled()

    monkeypatch.setattr(backbone, "open_cursor", stalling)
    alice = await join(node, "alice")
    since = {"offset": 10, "epoch": epoch}
    subscribing = asyncio.create_task(send(alice, "subscribe", {"channel": "chat", "since": since}))
    for n in range(21, 31):  # live, handed to bob, left to alice's replay
        await backbone.stream_publish(subject, json.dumps(n).encode(), {}, stream)
        await asyncio.sleep(0)
    await subscribing
    link = link_of(alice)
    await settle(lambda: link.closed is not None)
    assert link.closed == (CloseCode.TRY_AGAIN_LATER, "recovery interrupted")
    offsets = [f["payload"]["offset"] for f in link.of_type("event")]
    assert offsets == list(range(11, 16))  # the one batch, and nothing after a hole
    await bob.finish()


class PublishWhileSubscribing(MemoryBackbone):
    """A publish that lands while the edge's stream consumer is being made, and the
    consumer hands it on before `subscribe_stream` returns: as JetStream may push
    its first messages before the answer to the consumer's creation arrives."""

    landing: tuple[str, str, int] | None = None  # subject, stream, n

    async def subscribe_stream(self, subject: str, stream: str, handler: Any, *, start: int) -> Any:
        if self.landing is not None:
            subject_, stream_, n = self.landing
            self.landing = None
            await self.stream_publish(subject_, json.dumps(n).encode(), {}, stream_)
        handle = await super().subscribe_stream(subject, stream, handler, start=start)
        await asyncio.sleep(0)  # the first pushes come before the answer
        return handle


async def test_an_event_stored_while_the_edge_subscribes_reaches_a_recovering_client() -> None:
    # The first member of a history channel on an edge, up to date with the stream as
    # the edge finds it, and an event stored while the edge's consumer is made: there
    # is nothing to replay, so that event must come live.
    backbone = PublishWhileSubscribing()
    node, stream, subject, epoch = await chat_with_history(backbone, range(1, 11))
    backbone.landing = (subject, stream, 11)
    alice = await join(node, "alice")
    await send(alice, "subscribe", {"channel": "chat", "since": {"offset": 10, "epoch": epoch}})
    await backbone.stream_publish(subject, b"12", {}, stream)  # and live goes on
    await settle(lambda: len(link_of(alice).of_type("event")) >= 2, timeout_s=2)
    await asyncio.sleep(0.05)  # anything repeated would arrive now

    link = link_of(alice)
    assert link.of_type("ack")[0]["payload"] == {
        "channel": "chat",
        "offset": 11,
        "epoch": epoch,
        "recovered": True,
    }
    assert [f["payload"]["data"] for f in link.of_type("event")] == [11, 12]
    await alice.finish()


async def test_a_replay_older_than_the_history_is_told_it_did_not_recover() -> None:
    backbone = MemoryBackbone()
    node, stream, _, epoch = await chat_with_history(backbone, range(1, 21))
    backbone.trim(stream, keep=5)  # offsets 1-15 are gone
    alice = await join(node, "alice")
    await send(alice, "subscribe", {"channel": "chat", "since": {"offset": 3, "epoch": epoch}})
    await asyncio.sleep(0.05)
    ack = link_of(alice).of_type("ack")[0]["payload"]
    assert ack["recovered"] is False and ack["offset"] == 20  # never a silent gap
    await alice.finish()


async def test_a_drain_moves_members_at_the_pace_and_a_re_pace_applies_at_once() -> None:
    backbone = MemoryBackbone()  # no operator answers the grant: the default pace holds
    node = make_node(backbone, drain_reconnects_per_s=5, reconnect_jitter_ms=0)
    control = Control(node)
    members = [await join(node, f"user-{i}") for i in range(6)]
    for member in members:
        await send(member, "subscribe", {"channel": "news"})

    drain = control.start_drain("test")
    assert control.start_drain("again") is drain  # once
    await settle(lambda: sum(link_of(m).closed is not None for m in members) >= 2)
    assert node.accepting is False
    assert control.offer_pace(DrainGrant(1000, seq=1))
    assert not control.offer_pace(DrainGrant(1, seq=0))  # stale: ignored
    await asyncio.wait_for(drain, 2)

    closed_at = sorted(link_of(m).closed_at or 0 for m in members)
    first_gap = closed_at[1] - closed_at[0]
    assert 0.15 <= first_gap <= 0.6, first_gap  # 5 per second
    assert closed_at[-1] - closed_at[2] < 0.15  # the rest at 1000 per second
    for member in members:
        link = link_of(member)
        assert link.closed == (CloseCode.GOING_AWAY, "test")
        reconnect = link.of_type("reconnect")[0]["payload"]
        claims, subscriptions = read_resume(SECRET, reconnect["resume_token"])
        assert claims.sub == member.session.user
        assert [s["channel"] for s in subscriptions] == ["news"]


async def test_control_answers_commands_and_refuses_anything_else() -> None:
    backbone = MemoryBackbone()
    node = make_node(backbone)
    control = Control(node)
    await control.listen()
    subject = f"{node.settings.subject_prefix}.edge.{node.settings.pod_name}.ctl"
    assert backbone.interest(subject) == 1

    async def ask(body: bytes) -> dict[str, object]:
        reply = await backbone.request(subject, body, {}, 1.0)
        return dict(json.loads(reply.data))

    assert (await ask(b"not json"))["ok"] is False
    assert (await ask(b'{"command": "explode"}'))["ok"] is False
    assert node.metrics.control_refused == 2
    assert await ask(b'{"command": "rate", "reconnects_per_second": 50, "seq": 3}') == {"ok": True}
    assert control.rate == 50
    stale = await ask(b'{"command": "rate", "reconnects_per_second": 9, "seq": 2}')
    assert stale["ok"] is False and control.rate == 50
    assert node.metrics.control_refused == 2  # a stale pace is normal, not counted


async def test_stats_name_the_pod_its_load_and_its_state() -> None:
    backbone = MemoryBackbone()
    node = make_node(backbone)
    control = Control(node)
    alice = await join(node, "alice", RecordingLink())
    await send(alice, "subscribe", {"channel": "news"})
    stats = EdgeStats.decode(control.stats().encode())  # as the operator reads it
    assert stats.pod == "edge-0" and stats.connections == 1
    assert stats.subscriptions >= 1 and stats.draining is False
    assert stats.accepting is True
