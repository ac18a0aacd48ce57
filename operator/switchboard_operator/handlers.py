"""Thin kopf handlers: read the resource, ask the pure decisions, carry out the result.

Channel: config and stream into NATS, a finalizer to clean up, status from live
edge stats. EdgePool: every `scale_interval_s`, scale on connections, keep pod
deletion costs current, re-pace drains, rebalance hot pods, and report status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import BaseModel, ValidationError

from switchboard.contract.errors import ReplicasRefused, Unavailable
from switchboard.contract.messages import EdgeStats
from switchboard_operator import tracing
from switchboard_operator.backbone import OperatorBackbone
from switchboard_operator.cutoff import CutOffPolicy, decide_cut_off, report_of
from switchboard_operator.drains import DrainLedger
from switchboard_operator.kube import (
    KubeApi,
    KubeError,
    NoCredentials,
    connection_info,
    load_configuration,
)
from switchboard_operator.metrics import OperatorMetrics
from switchboard_operator.models import (
    GROUP,
    VERSION,
    ChannelSpec,
    ChannelStatus,
    Condition,
    EdgePoolSpec,
    EdgePoolStatus,
)
from switchboard_operator.pacing import (
    DELETION_COST,
    CostPolicy,
    deletion_cost_patches,
    parse_cost,
)
from switchboard_operator.rebalance import PodLoad, Policy, ShedLedger, plan
from switchboard_operator.scaling import Limits, decide
from switchboard_operator.settings import OperatorSettings

log = logging.getLogger("switchboard.operator")

RETRY_S = 5.0


@dataclass
class Context:
    """What the handlers share: the two I/O modules, the drain ledger, metrics."""

    settings: OperatorSettings
    backbone: OperatorBackbone
    kube: KubeApi
    ledger: DrainLedger
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    sheds: ShedLedger = field(default_factory=ShedLedger)


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ready(status: str, reason: str, message: str, old: Any) -> dict[str, Any]:
    """A Ready condition; its transition time moves only when its status does."""
    previous = next((c for c in (old or []) if c.get("type") == "Ready"), None)
    since = previous["lastTransitionTime"] if previous and previous["status"] == status else None
    condition = Condition(
        type="Ready",
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since or _now_iso(),
    )
    return condition.model_dump(by_alias=True)


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(by_alias=True, exclude_none=True)


def _spec(model: type[ChannelSpec] | type[EdgePoolSpec], spec: Any) -> Any:
    """The API server validated the spec already; this catches what it cannot
    (or a server without the CRD's schema) with an error naming the field."""
    try:
        return model.model_validate(dict(spec))
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        raise kopf.PermanentError(f"spec.{path}: {first['msg']}") from None


def register(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    """Attach every handler to `registry`, closed over `ctx` (no module globals)."""
    channels = (GROUP, VERSION, "channels")
    pools = (GROUP, VERSION, "edgepools")

    @kopf.on.login(registry=registry)
    async def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
        """kopf and our own calls log in with the same configuration (kube.py)."""
        try:
            configuration = await asyncio.to_thread(load_configuration)
        except NoCredentials as exc:
            log.error("%s", exc)
            return None
        await ctx.kube.use(configuration)
        return await asyncio.to_thread(connection_info, configuration, settings)

    # -- Channel -----------------------------------------------------------

    @kopf.on.resume(*channels, registry=registry)
    @kopf.on.create(*channels, registry=registry)
    @kopf.on.update(*channels, registry=registry, field="spec")
    @tracing.reconciling("Channel")
    async def apply_channel(
        name: str, spec: Any, status: Any, body: Any, patch: kopf.Patch, **_: Any
    ) -> None:
        try:
            parsed: ChannelSpec = _spec(ChannelSpec, spec)
        except kopf.PermanentError as exc:
            patch.status["conditions"] = [
                _ready("False", "InvalidSpec", str(exc), status.get("conditions"))
            ]
            kopf.warn(body, reason="InvalidSpec", message=str(exc))
            raise
        try:
            await ctx.backbone.apply_channel(name, parsed)
        except Unavailable as exc:
            reason = "ReplicasRefused" if isinstance(exc, ReplicasRefused) else "NatsUnavailable"
            patch.status["conditions"] = [
                _ready("False", reason, str(exc), status.get("conditions"))
            ]
            raise kopf.TemporaryError(str(exc), delay=RETRY_S) from None
        ctx.metrics.channel_applies += 1
        what = (
            f"history {parsed.history.size} for {parsed.history.ttl}"
            if parsed.history
            else ("no history")
        )
        message = f"config written to sb_channels ({what})"
        patch.status["conditions"] = [_ready("True", "Applied", message, status.get("conditions"))]
        kopf.info(body, reason="Applied", message=message)

    @kopf.on.delete(*channels, registry=registry)
    @tracing.reconciling("Channel")
    async def delete_channel(name: str, body: Any, **_: Any) -> None:
        try:
            await ctx.backbone.remove_channel(name)
        except Unavailable as exc:
            raise kopf.TemporaryError(str(exc), delay=RETRY_S) from None
        ctx.metrics.channel_deletes += 1
        kopf.info(body, reason="Deleted", message="config and history removed from NATS")

    @kopf.timer(
        *channels, registry=registry, interval=ctx.settings.status_interval_s, initial_delay=1
    )
    async def channel_status(
        name: str, spec: Any, status: Any, memo: kopf.Memo, patch: kopf.Patch, **_: Any
    ) -> None:
        edges = ctx.backbone.edge_stats().values()
        subscribers = sum(e.usage(name).subscribers for e in edges)
        published = sum(e.usage(name).published for e in edges)
        try:
            stream = await ctx.backbone.stream_state(name) if spec.get("history") else None
        except Unavailable as exc:
            log.warning("channel status without stream: %s", exc, extra={"channel": name})
            stream = None
        counter = stream.last_offset if stream is not None else published
        now = time.monotonic()
        rate = 0.0
        last = memo.get("counter")
        if last is not None and now > last[0] and counter >= last[1]:
            rate = round((counter - last[1]) / (now - last[0]), 2)
        memo["counter"] = (now, counter)
        new = ChannelStatus(
            subscribers=subscribers,
            messages_per_second=rate,
            last_offset=stream.last_offset if stream else None,
            epoch=stream.epoch if stream else None,
        )
        fresh = _dump(new)
        fresh.pop("conditions")
        if any(status.get(k) != v for k, v in fresh.items()):
            patch.status.update(fresh)

    # -- EdgePool ----------------------------------------------------------

    @kopf.on.delete(*pools, registry=registry, optional=True)
    async def forget_pool(namespace: str | None, name: str, **_: Any) -> None:
        ctx.ledger.forget(f"{namespace}/{name}")
        ctx.sheds.forget(f"{namespace}/{name}")
        ctx.metrics.forget_pool(f"{namespace}/{name}")

    @kopf.timer(*pools, registry=registry, interval=ctx.settings.scale_interval_s)
    @tracing.reconciling("EdgePool")
    async def reconcile_pool(
        namespace: str | None,
        name: str,
        spec: Any,
        status: Any,
        body: Any,
        memo: kopf.Memo,
        patch: kopf.Patch,
        **_: Any,
    ) -> None:
        pool: EdgePoolSpec = _spec(EdgePoolSpec, spec)
        assert namespace is not None  # EdgePool is namespaced
        key = f"{namespace}/{name}"
        try:
            deployment = await ctx.kube.deployment(namespace, pool.deployment)
            labels = deployment["spec"]["selector"].get("matchLabels") or {}
            pods = await ctx.kube.pods(namespace, labels)
        except (KubeError, KeyError) as exc:
            patch.status["conditions"] = [
                _ready("False", "DeploymentUnavailable", str(exc), status.get("conditions"))
            ]
            raise kopf.TemporaryError(str(exc), delay=RETRY_S) from None
        replicas = int(deployment["spec"].get("replicas", 1))
        names = {p["metadata"]["name"] for p in pods}
        live = {n: s for n, s in ctx.backbone.edge_stats().items() if n in names}
        terminating = {
            p["metadata"]["name"] for p in pods if p["metadata"].get("deletionTimestamp")
        }
        connections = sum(s.connections for s in live.values())
        now = time.monotonic()

        draining_now = {n for n, s in live.items() if s.draining} | (terminating & set(live))
        ctx.ledger.observe(key, names, pool.drain.reconnects_per_second, draining_now, now)
        for pod, rate in ctx.ledger.rate_changes(key).items():
            await ctx.backbone.send_rate(pod, rate)
            ctx.metrics.last_grant[pod] = rate
            log.info("drain re-paced", extra={"pod": pod, "rate": rate, "pool": key})
        draining = ctx.ledger.draining(key)

        limits = Limits(
            pool.min_replicas,
            pool.max_replicas,
            pool.target_connections_per_pod,
            pool.scale_down_stabilization_seconds,
        )
        decision = decide(now, connections, replicas, limits, memo.get("history"), len(draining))
        memo["history"] = decision.history
        tracing.scaling_decision(
            key,
            connections=connections,
            replicas=replicas,
            desired=decision.replicas,
            reason=decision.reason,
            draining=len(draining),
            limits=limits_attributes(limits),
        )
        last_scale = status.get("lastScaleTime")
        if decision.changes(replicas):
            await ctx.kube.scale(namespace, pool.deployment, decision.replicas)
            last_scale = _now_iso()
            ctx.metrics.scalings += 1
            message = (
                f"{pool.deployment}: {replicas} → {decision.replicas} replicas "
                f"({decision.reason}, {connections} connections)"
            )
            kopf.info(body, reason="Scaled", message=message)
            log.info("scaled", extra={"pool": key, "from": replicas, "to": decision.replicas})

        await _update_costs(ctx, namespace, pods, terminating, live, memo, now)
        await _replace_cut_off(ctx, namespace, key, pods, terminating, memo, body, now)
        ready = {p["metadata"]["name"] for p in pods if _pod_ready(p)} - terminating
        balance = await _rebalance(ctx, key, pool, ready, live, draining, decision.replicas, body)
        last_rebalance = _now_iso() if balance.sheds else status.get("lastRebalanceTime")

        ctx.metrics.observe_pool(key, names, connections, decision.replicas)
        ctx.metrics.pool_imbalance[key] = balance.imbalance
        new = EdgePoolStatus(
            connections=connections,
            replicas=replicas if not decision.changes(replicas) else decision.replicas,
            desired_replicas=decision.replicas,
            draining=len(draining),
            draining_pods=sorted(draining),
            last_scale_time=last_scale,
            imbalance=balance.imbalance,
            shedding_pods=sorted(ctx.sheds.shedding(key, balance.shedding, now)),
            last_rebalance_time=last_rebalance,
        )
        fresh = _dump(new)
        fresh.pop("conditions")
        condition = _ready("True", decision.reason, "", status.get("conditions"))
        if any(status.get(k) != v for k, v in fresh.items()) or not _same_ready(status, condition):
            patch.status.update(fresh)
            patch.status["conditions"] = [condition]


def limits_attributes(limits: Limits) -> dict[str, float]:
    return {
        "min_replicas": limits.min_replicas,
        "max_replicas": limits.max_replicas,
        "target_connections_per_pod": limits.target_per_pod,
        "stabilization_seconds": limits.stabilization_s,
    }


def _same_ready(status: Any, ready: dict[str, Any]) -> bool:
    old = next((c for c in (status.get("conditions") or []) if c.get("type") == "Ready"), None)
    return old is not None and all(old.get(k) == ready[k] for k in ("status", "reason"))


async def _update_costs(
    ctx: Context,
    namespace: str,
    pods: list[dict[str, Any]],
    terminating: set[str],
    live: dict[str, EdgeStats],
    memo: kopf.Memo,
    now: float,
) -> None:
    """pod-deletion-cost = live connections, patched only on meaningful change."""
    current = {
        p["metadata"]["name"]: parse_cost(
            (p["metadata"].get("annotations") or {}).get(DELETION_COST)
        )
        for p in pods
        if p["metadata"]["name"] not in terminating
    }
    last_patched: dict[str, float] = memo.setdefault("cost_patched", {})
    policy = CostPolicy(
        ctx.settings.deletion_cost_min_change,
        ctx.settings.deletion_cost_min_change_ratio,
        ctx.settings.deletion_cost_min_interval_s,
    )
    connections = {pod: stats.connections for pod, stats in live.items()}
    for pod, cost in deletion_cost_patches(now, current, connections, last_patched, policy).items():
        try:
            await ctx.kube.annotate_pod(namespace, pod, {DELETION_COST: str(cost)})
        except KubeError as exc:
            log.warning("deletion cost not patched: %s", exc, extra={"pod": pod})
            continue
        last_patched[pod] = now
        ctx.metrics.cost_patches += 1


async def _replace_cut_off(
    ctx: Context,
    namespace: str,
    key: str,
    pods: list[dict[str, Any]],
    terminating: set[str],
    memo: kopf.Memo,
    body: Any,
    now: float,
) -> None:
    """Delete a pod that went silent while its peers report (cutoff.py decides)."""
    silence = ctx.backbone.edge_silence()
    watching_s = ctx.backbone.watching_s
    wall = time.time()
    reports = {
        name: report_of(name in terminating, silence.get(name), _running_s(p, wall), watching_s)
        for p in pods
        for name in (p["metadata"]["name"],)
    }
    after = ctx.settings.cut_off_after_s
    policy = CutOffPolicy(after, ctx.backbone.stale_after_s, after)
    last: float | None = memo.get("cut_off_at")
    decided = decide_cut_off(reports, policy, None if last is None else now - last)
    if decided.reason in ("backbone-silent", "pausing") and memo.get("cut_off_seen") != (
        decided.reason,
        decided.silent,
    ):
        log.warning(
            "edge pods silent, not replaced (%s)",
            decided.reason,
            extra={"pool": key, "silent": list(decided.silent)},
        )
    memo["cut_off_seen"] = (decided.reason, decided.silent)
    pod = decided.replace
    if pod is None:
        return
    uid = next(p["metadata"].get("uid", "") for p in pods if p["metadata"]["name"] == pod)
    silent_s = reports[pod].silent_s or 0.0
    try:
        await ctx.kube.delete_pod(namespace, pod, uid)
    except KubeError as exc:
        log.warning("silent edge pod not deleted: %s", exc, extra={"pod": pod, "pool": key})
        return
    memo["cut_off_at"] = now
    ctx.metrics.cut_off_replacements += 1
    tracing.replaced_silent_pod(key, pod, silent_s, decided.silent)
    message = (
        f"deleted {pod}: no stats for {silent_s:.0f} s while other pods of the pool report "
        "(cut off from NATS, or hung); its clients move and the Deployment replaces it"
    )
    kopf.warn(body, reason="ReplacedSilentPod", message=message)
    log.warning("silent edge pod replaced", extra={"pod": pod, "pool": key, "silent_s": silent_s})


def _running_s(pod: dict[str, Any], wall: float) -> float | None:
    """Seconds since the pod's most recently started container started (None: none
    is running): before that, its edge could not have reported."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    started = [((s.get("state") or {}).get("running") or {}).get("startedAt") for s in statuses]
    times = [_parse_iso(t) for t in started if isinstance(t, str)]
    valid = [t for t in times if t is not None]
    if not valid or len(valid) < len(statuses):
        return None
    return max(0.0, wall - max(valid))


def _parse_iso(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


@dataclass(frozen=True)
class Balance:
    imbalance: float
    sheds: dict[str, int]
    shedding: frozenset[str]  # pods whose stats say they shed


async def _rebalance(
    ctx: Context,
    key: str,
    pool: EdgePoolSpec,
    ready: set[str],
    live: dict[str, EdgeStats],
    draining: frozenset[str],
    expected: int,
    body: Any,
) -> Balance:
    """Ask the hot pods to shed (rebalance.py decides), or stop their sheds for a drain."""
    now = time.monotonic()
    reported = frozenset(n for n, s in live.items() if s.shedding)
    shedding = ctx.sheds.shedding(key, reported, now)
    loads = {
        name: PodLoad(stats.connections, name in shedding)
        for name, stats in live.items()
        if name in ready and name not in draining
    }
    spec = pool.rebalance
    budget = min(spec.reconnects_per_second, pool.drain.reconnects_per_second)
    steady = ctx.sheds.steady(key, sum(p.connections for p in loads.values()), now)
    policy = Policy(spec.enabled, spec.max_imbalance, budget)
    decided = plan(loads, expected, len(draining), policy, steady=steady)
    if decided.reason == "drain-in-progress":  # drains keep the budget: stop running sheds
        running = {n for n in reported if live[n].shed_pending} | ctx.sheds.take(key)
        for pod in sorted(running - draining):
            await ctx.backbone.send_shed(pod, 0, budget)
            log.info("shed stopped for a drain", extra={"pod": pod, "pool": key})
    if decided.sheds:
        rate = next(iter(decided.rates.values()))
        with tracing.rebalance_span(
            key, decided.sheds, rate, decided.imbalance, spec.max_imbalance
        ):
            for pod, count in decided.sheds.items():
                await ctx.backbone.send_shed(pod, count, decided.rates[pod])
        ctx.sheds.asked(key, decided.sheds, now)
        ctx.metrics.shed_requests += len(decided.sheds)
        ctx.metrics.shed_connections += decided.moves
        moves = ", ".join(f"{n} from {pod}" for pod, n in decided.sheds.items())
        message = (
            f"moving {decided.moves} connections ({moves}) at {rate:g}/s each: the busiest "
            f"pod carries {decided.imbalance:.0%} more than the mean {decided.mean:.0f} "
            f"(maxImbalance {spec.max_imbalance:.0%})"
        )
        kopf.info(body, reason="Rebalancing", message=message)
        log.info("rebalancing", extra={"pool": key, "sheds": decided.sheds})
        ctx.sheds.rebalancing.add(key)
    elif decided.reason == "balanced" and key in ctx.sheds.rebalancing:
        ctx.sheds.rebalancing.discard(key)
        message = (
            f"within maxImbalance {spec.max_imbalance:.0%}: the busiest pod carries "
            f"{decided.imbalance:.0%} more than the mean {decided.mean:.0f}"
        )
        kopf.info(body, reason="Rebalanced", message=message)
    return Balance(decided.imbalance, decided.sheds, reported)
