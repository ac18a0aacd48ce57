"""`switchboard operator`: kopf with this project's handlers, NATS and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator

import kopf
from aiohttp import web

from switchboard import telemetry
from switchboard.contract.natsauth import connect_options
from switchboard_operator import tracing
from switchboard_operator.backbone import OperatorBackbone
from switchboard_operator.drains import DrainLedger
from switchboard_operator.handlers import Context, register
from switchboard_operator.kube import KubeApi
from switchboard_operator.kube import preload as preload_kube
from switchboard_operator.metrics import exposition, registry_for
from switchboard_operator.settings import PEERING_PRIORITY_MAX, OperatorSettings

log = logging.getLogger("switchboard.operator")

FINALIZER = "switchboard.dev/cleanup"
STATS_STALE_S = 10.0  # an edge report older than this is a dead edge's


def peering_priority(settings: OperatorSettings, rng: random.Random | None = None) -> int:
    """kopf pauses *every* replica when two live ones share a priority, so the replicas
    of one Deployment (same settings) each draw their own: the highest acts, and
    when it goes a standby takes over. A tie among 2**31 values is not a concern."""
    if settings.peering_priority is not None:
        return settings.peering_priority
    return (rng or random.SystemRandom()).randint(1, PEERING_PRIORITY_MAX)


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    config = kopf.OperatorSettings()
    config.persistence.finalizer = FINALIZER
    config.posting.level = logging.INFO
    config.peering.name = settings.peering
    config.peering.standalone = settings.standalone
    config.peering.mandatory = not settings.standalone
    config.peering.priority = peering_priority(settings)
    config.watching.server_timeout = 300
    # The watched namespace is given, and the CRDs come with the chart: no need to list
    # namespaces or watch CRDs, which would need cluster-wide read permissions.
    config.scanning.disabled = True
    config.queueing.error_delays = (1, 2, 5, 10)
    return config


@contextlib.asynccontextmanager
async def metrics_server(ctx: Context) -> AsyncIterator[None]:
    if not ctx.settings.metrics_port:
        yield
        return

    registry = registry_for(ctx.metrics)

    async def metrics(request: web.Request) -> web.Response:
        body, content_type = exposition(registry, request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", ctx.settings.metrics_port).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def serve(settings: OperatorSettings, stop: asyncio.Event | None = None) -> None:
    backbone = OperatorBackbone(
        settings.nats_url,
        settings.subject_prefix,
        STATS_STALE_S,
        replicas=settings.jetstream_replicas,
        options=connect_options(settings),
    )
    # A replica paused by peering stops refreshing pools, so after this it answers nothing.
    ctx = Context(settings, backbone, KubeApi(), DrainLedger(3 * settings.scale_interval_s + 1))
    registry = kopf.OperatorRegistry()
    register(registry, ctx)

    async def stop_sheds(pod: str) -> None:
        """Drains keep the reconnect budget: the pool's running sheds stop first."""
        owner = ctx.ledger.pool_of(pod)
        if owner is None:
            return
        pool, pods = owner
        stats = backbone.edge_stats()
        running = {p for p in pods if p in stats and stats[p].shed_pending} | ctx.sheds.take(pool)
        for other in sorted(running - {pod}):
            await backbone.send_shed(other, 0, 1.0)
            log.info("shed stopped for a drain", extra={"pod": other, "draining": pod})

    async def grant(pod: str, connections: int) -> float | None:
        decision = ctx.ledger.grant(pod, time.monotonic())
        if decision is None:
            return None
        tracing.granted(decision.rate, len(decision.repaced))
        await stop_sheds(pod)
        for other, rate in decision.repaced.items():  # slow the others before it starts
            await backbone.send_rate(other, rate)
            ctx.metrics.last_grant[other] = rate
            log.info("drain re-paced", extra={"pod": other, "rate": rate})
        ctx.metrics.drain_grants += 1
        ctx.metrics.last_grant[pod] = decision.rate
        log.info(
            "drain granted",
            extra={"pod": pod, "rate": decision.rate, "connections": connections},
        )
        return decision.rate

    await backbone.connect()
    await backbone.serve_drain_grants(grant)
    stop_flag: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    if stop is not None:
        watcher = asyncio.create_task(stop.wait())

        def stop_operator(_: object) -> None:
            if not stop_flag.done():
                stop_flag.set_result(None)

        watcher.add_done_callback(stop_operator)
    try:
        async with metrics_server(ctx):
            await kopf.operator(
                registry=registry,
                settings=kopf_settings(settings),
                standalone=settings.standalone,
                # kopf makes peering mandatory when a name is passed explicitly.
                peering_name=None if settings.standalone else settings.peering,
                clusterwide=settings.namespace is None,
                namespaces=[settings.namespace] if settings.namespace else [],
                liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
                stop_flag=stop_flag,
            )
    finally:
        await ctx.kube.close()
        await backbone.close()


def run_operator(settings: OperatorSettings) -> int:
    preload_kube()
    tracing.configure_from_env()
    try:
        asyncio.run(serve(settings))
    finally:
        telemetry.shutdown()
    return 0
