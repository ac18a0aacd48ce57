"""Building blocks for the in-process tests of the edge's core: a Node on the
in-memory backbone, and members whose link records frames instead of writing
to a socket (the socket adapter is what tests/integration exercises for real)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine
from typing import Any

from edge.memory import MemoryBackbone
from edge.node import Member, Node
from edge.server import limits_of
from edge.session import Session
from edge.settings import load_edge_settings
from switchboard.contract.channel_config import (
    ChannelSpec,
    HistorySpec,
    stream_name,
    stream_subjects,
)
from switchboard.contract.tokens import Claims, TokenError

SECRET = "test-secret-that-is-long-enough-for-hs256"


class RecordingLink:
    """Stands in for the socket adapter: keeps every frame, and how it was closed."""

    def __init__(self, room_yields: bool = True) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.closed_at: float | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.log = logging.LoggerAdapter(logging.getLogger("tests.edge"), {})
        self._room_yields = room_yields

    @property
    def closing(self) -> bool:
        return self.closed is not None

    def deliver(self, frame: bytes) -> None:
        if self.closed is None:
            self.frames.append(json.loads(frame))

    async def room_for(self, size: int) -> None:
        if self._room_yields:  # let live traffic interleave with a replay, frame by frame
            await asyncio.sleep(0)

    def abandon(self, code: int, reason: str) -> None:
        self._close(code, reason)

    async def close(self, code: int, reason: str) -> None:
        self._close(code, reason)

    def _close(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed, self.closed_at = (code, reason), time.monotonic()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]


def make_node(backbone: MemoryBackbone, **settings: Any) -> Node:
    node = Node(load_edge_settings(jwt_secret=SECRET, pod_name="edge-0", **settings), backbone)
    backbone.on_state_change = node.on_backbone_state
    return node


def keep_history(node: Node, backbone: MemoryBackbone, channel: str, size: int = 1000) -> str:
    """Configure `channel` with history, as the operator's Channel would."""
    spec = ChannelSpec(history=HistorySpec(size=size))
    stream = stream_name(channel)
    backbone.add_stream(stream, stream_subjects(node.settings.subject_prefix, channel))
    node.directory.apply(channel, spec.to_json())
    return stream


def _no_refresh(token: str) -> Claims:
    raise TokenError("no refresh in these tests")


async def join(node: Node, user: str, link: RecordingLink | None = None) -> Member:
    link = link or RecordingLink()
    session = Session(
        Claims(sub=user, exp=time.time() + 3600),
        limits=limits_of(node.settings),
        policy_for=node.policy_for,
        verify=_no_refresh,
        now=asyncio.get_running_loop().time(),
    )
    member = Member(node, link, session, f"conn-{user}")
    node.members.add(member)
    await member.start([])
    return member


async def send(member: Member, kind: str, payload: dict[str, Any], request_id: str = "1") -> None:
    """One client frame through the member's Session, as the socket adapter feeds it."""
    text = json.dumps({"type": kind, "id": request_id, "payload": payload})
    now = asyncio.get_running_loop().time()
    await member.execute(member.session.receive(text, now))


def link_of(member: Member) -> RecordingLink:
    assert isinstance(member.link, RecordingLink)
    return member.link
