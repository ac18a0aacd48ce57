"""Runs one edge process: connect to NATS, serve WebSockets, shut down on SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from edge import tracing
from edge.backbone import NatsBackbone
from edge.jwks import JwksKeys
from edge.server import EdgeServer
from edge.settings import EdgeSettings
from switchboard import telemetry
from switchboard.contract.natsauth import connect_options
from switchboard.contract.tokens import TokenVerifier

log = logging.getLogger("switchboard.edge")

GC_GEN0_THRESHOLD = 20_000


async def connect_backbone(settings: EdgeSettings) -> NatsBackbone:
    """Connect, retrying until NATS answers: an edge never gives up on its backbone."""
    backbone = NatsBackbone(
        settings.nats_url,
        f"sb-edge:{settings.pod_name}",
        ticket_ttl_s=settings.ticket_ttl_s,
        stats_ttl_s=settings.stats_ttl_s,
        presence_ttl_s=settings.presence_ttl_s,
        revocation_ttl_s=settings.revocation_ttl_s,
        jetstream_replicas=settings.jetstream_replicas,
        options=connect_options(settings),
    )
    delay = 0.2
    while True:
        try:
            await backbone.connect()
            return backbone
        except Exception as exc:  # nats-py raises several unrelated types here
            log.warning("nats not reachable yet (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def make_verifier(settings: EdgeSettings) -> TokenVerifier:
    keys = None
    if settings.jwt_jwks_url is not None:
        keys = JwksKeys(
            str(settings.jwt_jwks_url),
            algorithms=tuple(settings.jwt_algorithms),
            refresh_s=settings.jwt_jwks_refresh_s,
            min_interval_s=settings.jwt_jwks_min_interval_s,
            timeout_s=settings.jwt_jwks_timeout_s,
        )
    return TokenVerifier(
        secret=settings.jwt_secret,
        public_key_file=settings.jwt_public_key_file,
        key_set=keys,
        algorithms=list(settings.jwt_algorithms),
        leeway_s=settings.jwt_leeway_s,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )


def run(settings: EdgeSettings) -> None:
    """Run an edge until SIGTERM on the event loop its settings name."""
    if settings.event_loop == "uvloop":
        import uvloop

        uvloop.run(run_edge(settings))
    else:
        asyncio.run(run_edge(settings))


async def run_edge(settings: EdgeSettings, ready: asyncio.Event | None = None) -> None:
    tracing.configure_from_env(settings.pod_name)
    backbone = await connect_backbone(settings)
    server = EdgeServer(settings, backbone, make_verifier(settings))
    backbone.on_state_change = server.on_backbone_state
    await server.start()
    await server.listen_for_control()
    # Start-up objects never die: keep them out of every future collection, and
    # collect young objects less often (connections allocate many short-lived ones).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    log.info(
        "edge listening",
        extra={
            "pod": settings.pod_name,
            "port": server.port,
            "admin_port": server.admin.port,
            "nats": settings.nats_url,
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("shutting down", extra={"pod": settings.pod_name})
    await server.shutdown()
    await backbone.flush()
    await backbone.close()
    telemetry.shutdown()  # the last spans (the drain's) go out before the process ends
