"""One edge's shared state (`Node`) and each client on it (`Member`).

A `Member` carries out its Session's actions — subscribe with recovery,
publish, RPC, presence — against the node's hub, backbone and presence, and
hands frames to its socket adapter (a `Link`). Nothing here touches a socket:
the in-process tests drive it with the in-memory backbone (`edge.memory`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from opentelemetry.trace import Span

from edge import protocol, tracing
from edge.directory import ChannelDirectory
from edge.hub import HEADER_FROM, Hub, decode_data, stamp_headers
from edge.jwks import JwksKeys
from edge.metrics import ERROR_CODES, EdgeCollector, EdgeMetrics, Live, registry_for
from edge.ports import Backbone, NoResponders, RequestTimeout, Unavailable
from edge.presence import Presence
from edge.replay import Recovery, Sink
from edge.revocation import Revocations
from edge.session import (
    Action,
    Close,
    PresenceQuery,
    Publish,
    Rpc,
    Send,
    Session,
    Subscribe,
    Unsubscribe,
)
from edge.settings import EdgeSettings
from switchboard.contract.channels import channel_subject, rpc_subject
from switchboard.contract.codes import CloseCode, ErrorCode
from switchboard.contract.resume import mint_resume
from switchboard.contract.settings import ChannelPolicy

log = logging.getLogger("switchboard.edge.node")


class Link(Sink, Protocol):
    """What a member needs from its socket adapter (`edge.connection`)."""

    async def close(self, code: int, reason: str) -> None:
        """Flush what is pending, then close with `code`."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as long as the connection lives."""
        ...


class Node:
    """What all connections of one edge share, and the registry of its members."""

    def __init__(self, settings: EdgeSettings, backbone: Backbone) -> None:
        self.settings = settings
        self.backbone = backbone
        self.directory = ChannelDirectory(settings.default_channel)
        self.metrics = EdgeMetrics(ERROR_CODES | frozenset(settings.metrics_error_codes))
        self.registry = registry_for(EdgeCollector(self.metrics, self._live))
        self.hub = Hub(
            backbone,
            settings.subject_prefix,
            expose_publisher=settings.expose_publisher,
            pod=settings.pod_name,
            stream_for=self.directory.stream_for,
            on_latency=self.metrics.observe_latency,
        )
        self.presence = Presence(
            backbone, settings.subject_prefix, settings.pod_name, settings.presence_ttl_s
        )
        self.members: set[Member] = set()
        self.revocations = Revocations(settings.revocation_ttl_s, self._close_revoked)
        self.accepting = True
        # a shed runs or just ran (edge.control): clients moved by any pod's shed are
        # refused here, so they land on pods that are not shedding
        self.shedding = False
        self.jwks: JwksKeys | None = None  # token keys from an IdP, when configured
        self._down_since_ms: int | None = None
        self._resuming: asyncio.Task[None] | None = None  # history consumers after a return

    def policy_for(self, channel: str) -> ChannelPolicy:
        return self.directory.policy_for(channel)

    def _close_revoked(self, user: str) -> None:
        """A revocation arrived: the user's connections whose token it covers close."""
        for member in tuple(self.members):
            claims = member.session.claims
            if claims.sub == user and self.revocations.revoked(claims):
                member.disconnect(CloseCode.FORBIDDEN, "token revoked")

    @property
    def ready(self) -> bool:
        """For `/readyz`: accepting, on NATS, able to verify tokens (a JWKS, when
        configured, was read once), and the Channels and revocations were read once
        (before, a channel may get the default policy, a revoked token pass)."""
        keys_ready = self.jwks is None or self.jwks.loaded
        read = self.directory.complete and self.revocations.complete
        return self.accepting and self.backbone.connected and keys_ready and read

    def record_error(self, code: str) -> None:
        self.metrics.count_error(code)

    def _live(self) -> Live:
        """What the metrics read at scrape time from elsewhere."""
        return Live(
            connections=len(self.members),
            subscriptions=self.hub.subscription_count,
            deliveries=self.hub.delivered,
            dropped=self.hub.dropped,
            nats_connected=self.backbone.connected,
            accepting=self.accepting,
        )

    def on_backbone_state(self, connected: bool) -> None:
        """NATS went away or came back; on return, report the gap to clients."""
        now_ms = int(time.time() * 1000)
        if not connected:
            self._down_since_ms = self._down_since_ms or now_ms
            log.warning("backbone lost: publishes and RPCs answer 'unavailable'")
        elif self._down_since_ms is not None:
            self.hub.notify_gap(self._down_since_ms, now_ms)
            self._resuming = asyncio.create_task(self.hub.resume_streams(self._down_since_ms))
            log.info("backbone back after %d ms", now_ms - self._down_since_ms)
            self._down_since_ms = None

    @property
    def resume_secret(self) -> str | None:
        return self.settings.resume_secret or self.settings.jwt_secret

    def resume_token(self, member: Member, *, shed: bool = False) -> str | None:
        """Claims plus, per subscription, the last offset this edge handed it (`shed`:
        moved by a shed, see `shedding`)."""
        secret = self.resume_secret
        if secret is None:
            return None
        subscriptions = [
            {"channel": channel, **member.position(channel)}
            for channel in sorted(member.session.subscriptions)
        ]
        return mint_resume(
            secret,
            member.session.claims,
            subscriptions,
            ttl_s=self.settings.resume_ttl_s,
            shed=shed,
        )

    def channel_usage(self) -> dict[str, dict[str, int]]:
        return self.directory.usage(
            channel for member in self.members for channel in member.session.subscriptions
        )


class Member:
    """One client on this node: its Session's actions carried out, the hub's
    deliveries handed to its link."""

    __slots__ = (
        "_joined_user",
        "_present",
        "_recovery",
        "id",
        "joined",
        "link",
        "node",
        "session",
    )

    def __init__(self, node: Node, link: Link, session: Session, cid: str) -> None:
        self.node = node
        self.link = link
        self.session = session
        self.id = cid
        self.joined = time.monotonic()  # a shed moves the newest first
        self._recovery: Recovery | None = None  # made by the first subscribe that needs it
        self._joined_user = False
        self._present: set[str] | None = None  # presence channels this member is in

    @property
    def recovery(self) -> Recovery:
        """This member's replays (most members never replay: made when first needed)."""
        recovery = self._recovery
        if recovery is None:
            node = self.node
            recovery = Recovery(node.hub, node.backbone, node.settings.subject_prefix)
            self._recovery = recovery
        return recovery

    # -- what the hub hands over ------------------------------------------------

    def deliver(self, frame: bytes) -> None:
        self.link.deliver(frame)

    def deliver_stored(self, channel: str, offset: int, frame: bytes) -> None:
        if self._recovery is None or self._recovery.takes_live(channel, offset):
            self.link.deliver(frame)

    def disconnect(self, code: int, reason: str) -> None:
        self.link.spawn(self.link.close(code, reason))

    def position(self, channel: str) -> dict[str, Any]:
        """`{offset, epoch}` of the newest event of `channel` handed to this member."""
        position = self.node.hub.position(channel)
        replayed = None if self._recovery is None else self._recovery.replayed_to(channel)
        if replayed is not None:
            position["offset"] = replayed
        return position

    def send(self, text: str) -> None:
        """Queue a frame made for this client only (acks, errors, welcome)."""
        self.link.deliver(text.encode())

    # -- lifecycle ------------------------------------------------------------

    def join(self) -> None:
        """Join the user's personal subject (at once: `Hub.join_user`)."""
        self.node.hub.join_user(self.session.user, self)
        self._joined_user = True

    async def start(self, resume: list[dict[str, Any]]) -> None:
        """Join the user's personal subject, then restore what a resume token lists."""
        self.join()
        await self._restore(resume)

    async def _restore(self, subscriptions: list[dict[str, Any]]) -> None:
        """Each goes through the same checks as a client's own `subscribe`; the
        answers are acks (or errors) with id `resume:<channel>`."""
        loop = asyncio.get_running_loop()
        for sub in subscriptions:
            payload: dict[str, Any] = {"channel": sub.get("channel")}
            if sub.get("offset") is not None:
                payload["since"] = {"offset": sub["offset"], "epoch": sub.get("epoch")}
            request = protocol.Request("subscribe", f"resume:{sub.get('channel')}", payload)
            await self.execute(self.session.handle(request, loop.time()))

    async def finish(self) -> None:
        """The connection is gone: leave every channel and the user's subject."""
        if self._recovery is not None:
            self._recovery.cancel_all()
        for channel in tuple(self.session.subscriptions):
            await self._leave_channel(channel)
        self.session.subscriptions.clear()
        self._leave_user()

    def finish_now(self) -> bool:
        """`finish` without awaiting, possible when no channel is left to leave (a
        connection that only came and went); False if `finish` must run."""
        if self.session.subscriptions:
            return False
        if self._recovery is not None:
            self._recovery.cancel_all()
        self._leave_user()
        return True

    def _leave_user(self) -> None:
        if self._joined_user:
            self._joined_user = False
            self.node.hub.leave_user(self.session.user, self)

    # -- actions --------------------------------------------------------------

    async def execute(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Send(text):
                    self.send(text)
                case Close(code, reason):
                    await self.link.close(code, reason)
                case Subscribe():
                    await self._subscribe(action)
                case Unsubscribe(request_id, channel):
                    await self._leave_channel(channel)
                    self.send(protocol.ack(request_id, {"channel": channel}))
                case PresenceQuery(request_id, channel):
                    await self._presence_query(request_id, channel)
                case Publish():
                    await self._publish(action)
                case Rpc():
                    self.link.spawn(self._rpc(action))

    def _error(self, request_id: str | None, code: ErrorCode, message: str) -> None:
        now = asyncio.get_running_loop().time()
        for action in self.session.refuse(request_id, code, message, now):
            if isinstance(action, Send):
                self.send(action.text)

    async def _subscribe(self, action: Subscribe) -> None:
        hub, channel = self.node.hub, action.channel
        stream = self.node.directory.stream_for(channel)
        if stream is not None and action.since is not None:
            self.recovery.begin(channel, action.since.offset)
        try:
            epoch = await hub.join_channel(channel, self)
            payload: dict[str, Any] = {
                "channel": channel,
                "offset": None,
                "epoch": epoch,
                "recovered": False,
            }
            start: int | None = None
            if stream is not None and epoch is not None:
                start = await self._recover(stream, channel, action, payload)
        except Unavailable as exc:
            self.recovery.stop(channel, None)
            self.session.subscribe_failed(channel)
            await hub.leave_channel(channel, self)
            self._error(action.request_id, ErrorCode.UNAVAILABLE, str(exc))
            return
        if payload["offset"] is not None:
            hub.note_offset(channel, payload["offset"])
        self.send(protocol.ack(action.request_id, payload))
        if start is not None and stream is not None:
            size = self.node.policy_for(channel).max_message_bytes
            self.recovery.start(channel, stream, start, payload["epoch"], size, self.link)
        if self.node.policy_for(channel).presence:
            await self._enter_presence(channel)

    async def _recover(
        self, stream: str, channel: str, action: Subscribe, payload: dict[str, Any]
    ) -> int | None:
        """Fill in the ack's position; the offset to replay from, if the client asked
        for what it missed.

        `recovered` is true only when everything after `since` is still stored
        under the same epoch; otherwise the client is told (never a silent gap)
        and goes on from the newest offset.
        """
        backbone = self.node.backbone
        subject = channel_subject(self.node.settings.subject_prefix, channel)
        epoch = await self.node.hub.refresh_epoch(stream)  # recreated since? ask now
        payload["epoch"] = epoch
        last = await backbone.stream_last_offset(stream, subject)
        payload["offset"] = last
        since = action.since
        if since is None:
            return None
        if since.epoch == epoch and since.offset + 1 >= await backbone.stream_first_offset(stream):
            payload["recovered"] = True
            return since.offset + 1
        return last + 1  # what arrived since the ack's offset is still owed

    async def _enter_presence(self, channel: str) -> None:
        if self._present is None:
            self._present = set()
        if channel in self._present:
            return
        self._present.add(channel)
        await self.node.hub.join_presence_feed(channel, self)
        await self.node.presence.enter(channel, self.session.user)

    async def _leave_channel(self, channel: str) -> None:
        if self._recovery is not None:
            self._recovery.cancel(channel)
        await self.node.hub.leave_channel(channel, self)
        if self._present and channel in self._present:
            self._present.discard(channel)
            await self.node.hub.leave_presence_feed(channel, self)
            await self.node.presence.leave(channel, self.session.user)

    async def _presence_query(self, request_id: str | None, channel: str) -> None:
        try:
            users = await self.node.presence.users(channel)
        except Unavailable as exc:
            self._error(request_id, ErrorCode.UNAVAILABLE, str(exc))
            return
        self.send(protocol.ack(request_id, {"channel": channel, "users": users}))

    async def _publish(self, action: Publish) -> None:
        node = self.node
        headers = {HEADER_FROM: self.session.user, **stamp_headers()}
        if action.msg_id is not None:
            headers["Nats-Msg-Id"] = action.msg_id
        subject = channel_subject(node.settings.subject_prefix, action.channel)
        pod = node.settings.pod_name
        with tracing.publish_span(
            subject, len(action.body), self.session.user, self.id, pod
        ) as span:
            tracing.inject(headers, span)
            ack: dict[str, Any] = {"channel": action.channel}
            stream = node.directory.stream_for(action.channel)
            try:
                if stream is None:
                    await node.backbone.publish(subject, action.body, headers)
                else:  # stored; a repeated msg_id is acked with the original offset
                    ack["offset"] = await node.backbone.stream_publish(
                        subject, action.body, headers, stream
                    )
                    ack["epoch"] = await node.hub.epoch(stream)
            except Unavailable as exc:
                tracing.failed(span, ErrorCode.UNAVAILABLE)
                self._error(action.request_id, ErrorCode.UNAVAILABLE, f"not accepted: {exc}")
                return
        node.metrics.publishes += 1
        node.directory.count_publish(action.channel)
        self.send(protocol.ack(action.request_id, ack))

    async def _rpc(self, action: Rpc) -> None:
        subject = rpc_subject(self.node.settings.subject_prefix, action.method)
        headers = {HEADER_FROM: self.session.user, "Sb-Conn": self.id}
        settings = self.node.settings
        with tracing.rpc_span(
            subject, action.method, len(action.body), self.session.user, self.id, settings.pod_name
        ) as span:
            tracing.inject(headers, span)
            await self._rpc_request(action, subject, headers, span)

    async def _rpc_request(
        self, action: Rpc, subject: str, headers: dict[str, str], span: Span | None
    ) -> None:
        try:
            reply = await self.node.backbone.request(
                subject, action.body, headers, action.timeout_s
            )
            error_code = (reply.headers or {}).get("Sb-Error")
            if error_code:
                self.node.record_error(error_code)
                tracing.failed(span, error_code)
                message = reply.data.decode(errors="replace")
                self.send(protocol.backend_error(action.request_id, error_code, message))
            else:
                data = decode_data(reply.data) if reply.data else None
                self.send(protocol.frame("rpc_response", {"data": data}, action.request_id))
        except NoResponders:
            tracing.failed(span, ErrorCode.NOT_FOUND)
            self._error(action.request_id, ErrorCode.NOT_FOUND, f"no backend for '{action.method}'")
        except RequestTimeout:
            tracing.failed(span, ErrorCode.TIMEOUT)
            self._error(action.request_id, ErrorCode.TIMEOUT, f"'{action.method}' timed out")
        except Unavailable as exc:
            tracing.failed(span, ErrorCode.UNAVAILABLE)
            self._error(action.request_id, ErrorCode.UNAVAILABLE, str(exc))
        except UnicodeDecodeError:
            tracing.failed(span, ErrorCode.INTERNAL)
            self._error(action.request_id, ErrorCode.INTERNAL, "backend reply is not UTF-8")
        finally:
            self.session.rpc_finished()
