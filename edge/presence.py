"""Who is in a presence channel, across all edges (DESIGN §3, §6).

Each edge keeps one `sb_presence` entry per (channel, user) it has connections
for, re-written well within the bucket's TTL, so a dead edge's users vanish
within `presence_ttl_s`. `join`/`leave` frames go out on
`<prefix>.presence.<channel>` when a user's first connection anywhere arrives
or their last one leaves; a user with several connections counts once.
"""

from __future__ import annotations

import asyncio
import logging

from edge import protocol
from edge.ports import Backbone, Unavailable
from switchboard.contract.names import presence_feed_prefix

log = logging.getLogger("switchboard.edge.presence")


def _token(text: str) -> str:
    """User ids and pod names may hold characters KV keys do not allow: hex them."""
    return text.encode().hex()


def channel_key(channel: str) -> str:
    return channel.replace(":", ".")


def entry_key(channel: str, user: str, pod: str) -> str:
    return f"{channel_key(channel)}.{_token(user)}.{_token(pod)}"


def user_of(key: str) -> str:
    return bytes.fromhex(key.split(".")[-2]).decode()


def feed_subject(prefix: str, channel: str) -> str:
    return f"{presence_feed_prefix(prefix)}.{channel_key(channel)}"


class Presence:
    def __init__(self, backbone: Backbone, prefix: str, pod: str, ttl_s: float) -> None:
        self._backbone = backbone
        self._prefix = prefix
        self._pod = pod
        self._ttl_s = ttl_s
        self._local: dict[str, dict[str, int]] = {}  # channel -> user -> connections here

    async def enter(self, channel: str, user: str) -> None:
        users = self._local.setdefault(channel, {})
        users[user] = users.get(user, 0) + 1
        if users[user] > 1:
            return
        try:
            elsewhere = await self._elsewhere(channel, user)
            await self._backbone.presence_put(entry_key(channel, user, self._pod))
            if not elsewhere:
                await self._announce("join", channel, user)
        except Unavailable as exc:
            log.warning("presence not recorded: %s", exc, extra={"channel": channel})

    async def leave(self, channel: str, user: str) -> None:
        users = self._local.get(channel, {})
        if user not in users:
            return
        users[user] -= 1
        if users[user] > 0:
            return
        del users[user]
        if not users:
            self._local.pop(channel, None)
        try:
            await self._backbone.presence_delete(entry_key(channel, user, self._pod))
            if not await self._elsewhere(channel, user):
                await self._announce("leave", channel, user)
        except Unavailable as exc:
            log.warning("presence not cleared: %s", exc, extra={"channel": channel})

    async def users(self, channel: str) -> list[str]:
        keys = await self._backbone.presence_keys(f"{channel_key(channel)}.*.*")
        return sorted({user_of(key) for key in keys})

    async def refresh_forever(self) -> None:
        """Re-write this edge's entries three times per TTL, so live ones never expire."""
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            for channel, users in tuple(self._local.items()):
                for user in tuple(users):
                    try:
                        await self._backbone.presence_put(entry_key(channel, user, self._pod))
                    except Unavailable:
                        break

    async def _elsewhere(self, channel: str, user: str) -> bool:
        """The user has connections on another edge (their entry exists there)."""
        mine = entry_key(channel, user, self._pod)
        pattern = f"{channel_key(channel)}.{_token(user)}.*"
        return any(key != mine for key in await self._backbone.presence_keys(pattern))

    async def _announce(self, kind: str, channel: str, user: str) -> None:
        frame = protocol.frame(kind, {"channel": channel, "user": user}).encode()
        await self._backbone.publish(feed_subject(self._prefix, channel), frame, {})
