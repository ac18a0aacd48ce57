"""The backbone's core subscriptions against a real nats-server and the installed nats-py.

`NatsBackbone.subscribe` registers its subscriptions with nats-py itself (no queue,
no task per subscription: edge.backbone._DirectSubscription) and so relies on
nats-py's internals; these tests hold it to what the edge needs from them: one SUB
per subject on the server, messages in order, handler errors contained, UNSUB,
resubscription after the server restarts, and a drain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator

import nats
import pytest

from edge.backbone import NatsBackbone
from edge.ports import Delivery
from switchboard.cli.natsserver import NatsServer


@pytest.fixture
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(store_dir=str(tmp_path_factory.mktemp("nats-backbone"))).start()
    yield server
    server.stop()


@pytest.fixture
async def backbone(own_nats: NatsServer) -> AsyncIterator[NatsBackbone]:
    backbone = NatsBackbone(
        own_nats.address, "test-backbone", ticket_ttl_s=60, stats_ttl_s=10, presence_ttl_s=10
    )
    await backbone.connect()
    yield backbone
    if backbone.connected:
        await backbone.close()


def server_subjects(server: NatsServer, name: str) -> list[str]:
    """The subjects the server holds for the client connection called `name`."""
    conns = server.monitor("connz?subs=1")["connections"] or []
    return sorted(
        s for c in conns if c.get("name") == name for s in c.get("subscriptions_list", [])
    )


async def wait_until(check: object, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_subscriptions_are_handled_without_a_task_each(
    backbone: NatsBackbone, own_nats: NatsServer
) -> None:
    got: dict[str, list[Delivery]] = {}
    tasks_before = len(asyncio.all_tasks())
    handles = []
    for i in range(200):
        subject = f"sb.user.u{i}"
        got[subject] = []
        handles.append(await backbone.subscribe(subject, got[subject].append, confirm=False))
    await backbone.flush()
    assert len(asyncio.all_tasks()) == tasks_before  # nats-py would have made 200 tasks
    assert server_subjects(own_nats, "test-backbone").count("sb.user.u7") == 1

    publisher = await nats.connect(own_nats.address)
    try:
        for n in range(50):
            await publisher.publish("sb.user.u7", str(n).encode(), headers={"H": str(n)})
        await publisher.publish("sb.user.u8", b"x", reply="inbox.1")
        await publisher.flush()
        await wait_until(lambda: len(got["sb.user.u7"]) == 50 and got["sb.user.u8"])
        assert [d.data for d in got["sb.user.u7"]] == [str(n).encode() for n in range(50)]
        assert got["sb.user.u7"][3].headers == {"H": "3"}
        assert got["sb.user.u7"][3].reply is None
        assert got["sb.user.u8"][0].reply == "inbox.1"
        assert all(not got[s] for s in got if s not in ("sb.user.u7", "sb.user.u8"))

        await handles[7].unsubscribe()
        await backbone.flush()
        assert "sb.user.u7" not in server_subjects(own_nats, "test-backbone")
        await publisher.publish("sb.user.u7", b"late")
        await publisher.publish("sb.user.u9", b"marker")
        await publisher.flush()
        await wait_until(lambda: got["sb.user.u9"])
        assert len(got["sb.user.u7"]) == 50
        await handles[7].unsubscribe()  # twice: nothing happens
    finally:
        await publisher.close()


async def test_a_failing_handler_is_logged_and_the_connection_stays(
    backbone: NatsBackbone, own_nats: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[bytes] = []

    def handler(delivery: Delivery) -> None:
        seen.append(delivery.data)
        if delivery.data == b"boom":
            raise RuntimeError("handler bug")

    await backbone.subscribe("sb.ch.x", handler)
    publisher = await nats.connect(own_nats.address)
    try:
        with caplog.at_level(logging.ERROR, logger="switchboard.edge.backbone"):
            for data in (b"a", b"boom", b"b"):
                await publisher.publish("sb.ch.x", data)
            await publisher.flush()
            await wait_until(lambda: len(seen) == 3)
        assert seen == [b"a", b"boom", b"b"]
        assert "handler failed" in caplog.text
        assert backbone.connected
    finally:
        await publisher.close()


@pytest.mark.parametrize(
    "subject",
    ["", "sb.user.a b", "sb.user.a\r\nPUB x 1", "sb..x", "sb.x.", ".sb", "sb.>.x", "sb.a>"],
)
async def test_a_malformed_subject_is_refused(backbone: NatsBackbone, subject: str) -> None:
    with pytest.raises(nats.errors.BadSubjectError):
        await backbone.subscribe(subject, lambda d: None)


async def test_subscriptions_come_back_after_the_server_restarts(
    backbone: NatsBackbone, own_nats: NatsServer
) -> None:
    got: list[bytes] = []
    await backbone.subscribe("sb.user.back", lambda d: got.append(d.data))
    own_nats.stop(keep_store=True)
    await wait_until(lambda: not backbone.connected)
    own_nats.start()  # same port
    await wait_until(lambda: backbone.connected, 20)
    await backbone.flush()
    assert server_subjects(own_nats, "test-backbone").count("sb.user.back") == 1
    publisher = await nats.connect(own_nats.address)
    try:
        await publisher.publish("sb.user.back", b"again")
        await publisher.flush()
        await wait_until(lambda: got == [b"again"])
    finally:
        await publisher.close()


async def test_close_drains_direct_subscriptions(backbone: NatsBackbone) -> None:
    await backbone.subscribe("sb.user.drained", lambda d: None)
    await asyncio.wait_for(backbone.close(), 10)
    assert not backbone.connected


async def test_subscribe_now_sends_sub_and_unsub_without_awaiting(
    backbone: NatsBackbone, own_nats: NatsServer
) -> None:
    """What every handshake does for its user's subject: no task, no future, no round
    trip; the SUBs of one event-loop turn leave together and reach the server."""
    got: dict[str, list[bytes]] = {f"sb.user.now{i}": [] for i in range(300)}
    tasks_before = len(asyncio.all_tasks())

    def keep(subject: str) -> Callable[[Delivery], None]:
        return lambda delivery: got[subject].append(delivery.data)

    interests = {subject: backbone.subscribe_now(subject, keep(subject)) for subject in got}
    assert len(asyncio.all_tasks()) == tasks_before
    await wait_until(lambda: len(server_subjects(own_nats, "test-backbone")) >= 300)
    assert server_subjects(own_nats, "test-backbone").count("sb.user.now5") == 1

    publisher = await nats.connect(own_nats.address)
    try:
        await publisher.publish("sb.user.now5", b"hello")
        await publisher.flush()
        await wait_until(lambda: got["sb.user.now5"] == [b"hello"])

        for subject in list(got)[:200]:
            interests[subject].drop()
        interests["sb.user.now5"].drop()  # twice: nothing more happens
        await wait_until(lambda: len(server_subjects(own_nats, "test-backbone")) == 100)
        assert "sb.user.now5" not in server_subjects(own_nats, "test-backbone")
        await publisher.publish("sb.user.now5", b"late")
        await publisher.publish("sb.user.now250", b"marker")
        await publisher.flush()
        await wait_until(lambda: got["sb.user.now250"] == [b"marker"])
        assert got["sb.user.now5"] == [b"hello"]
    finally:
        await publisher.close()


async def test_subscribe_now_while_disconnected_holds_after_the_reconnect(
    backbone: NatsBackbone, own_nats: NatsServer
) -> None:
    """An interest made or dropped while the backbone is away is what the server has
    once it is back: made ones subscribed once, dropped ones not at all."""
    kept = backbone.subscribe_now("sb.user.before", lambda d: None)
    gone = backbone.subscribe_now("sb.user.dropped", lambda d: None)
    own_nats.stop(keep_store=True)
    await wait_until(lambda: not backbone.connected)
    got: list[bytes] = []
    backbone.subscribe_now("sb.user.during", lambda d: got.append(d.data))
    gone.drop()
    own_nats.start()  # same port
    await wait_until(lambda: backbone.connected, 20)
    await backbone.flush()
    subjects = server_subjects(own_nats, "test-backbone")
    assert subjects.count("sb.user.during") == 1
    assert subjects.count("sb.user.before") == 1
    assert "sb.user.dropped" not in subjects
    publisher = await nats.connect(own_nats.address)
    try:
        await publisher.publish("sb.user.during", b"after")
        await publisher.flush()
        await wait_until(lambda: got == [b"after"])
    finally:
        await publisher.close()
    kept.drop()
    await backbone.flush()
    assert "sb.user.before" not in server_subjects(own_nats, "test-backbone")
