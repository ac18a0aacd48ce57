"""Which edge pod to replace because it has gone silent while its peers report (pure).

An edge cut off from NATS keeps its clients' sockets open but can deliver nothing
to them; a hung edge the same. Neither can say so: its stats stop arriving in
`sb_edges`. The edge cannot tell a cut of its own from an outage of all of NATS,
and closing every client in an outage would only turn it into a reconnect storm
when NATS returns. The operator sees both sides: when one pod has been silent for
`after_s` while another pod of the same pool reported within `fresh_s`, NATS works
and that pod does not, so the pod is deleted. Its edge drains like any other
(`reconnect` + 1001, at the pace it can get) and the Deployment replaces it. When
no pod reports, nothing happens: that is NATS (or this operator's view of it), and
the edges' own recovery (`gap` on reconnect) is the cheaper answer.

A pod this operator has not heard from, though it was running before this operator
began to watch, is silent since that watch began (`report_of`): an edge cut off
before the operator restarted, whose stats have expired from `sb_edges`, is still
replaced. One that started later and never reported never reached NATS, so it was
never Ready and holds no clients: the Deployment's progress deadline is its judge.
A pod not heard from proves nothing about NATS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PodReport:
    """What the operator knows of one pod of the pool."""

    terminating: bool  # deletion already under way
    silent_s: float | None  # since its last stats (or `report_of`); None: not judged
    heard: bool = True  # stats of it arrived: a recent report proves NATS works


@dataclass(frozen=True)
class CutOffPolicy:
    after_s: float  # silent this long while a peer reports: replace (0: never)
    fresh_s: float  # a peer that reported within this long proves NATS works
    pause_s: float  # at least this long between two replacements in one pool


@dataclass(frozen=True)
class CutOff:
    replace: str | None  # the pod to delete now, if any
    reason: str  # replace, none, backbone-silent, pausing, disabled
    silent: tuple[str, ...]  # every pod silent past `after_s` (sorted)


def decide_cut_off(
    pods: Mapping[str, PodReport], policy: CutOffPolicy, since_last_replace_s: float | None
) -> CutOff:
    """The pod to replace now (the longest silent, one at a time), or why none."""
    if policy.after_s <= 0:
        return CutOff(None, "disabled", ())
    live = {name: pod for name, pod in pods.items() if not pod.terminating}
    silent = sorted(
        (name for name, pod in live.items() if _past(pod.silent_s, policy.after_s)),
        key=lambda name: (-(live[name].silent_s or 0.0), name),
    )
    if not silent:
        return CutOff(None, "none", ())
    listed = tuple(sorted(silent))
    fresh = [
        name
        for name, pod in live.items()
        if pod.heard and pod.silent_s is not None and pod.silent_s <= policy.fresh_s
    ]
    if not fresh:
        return CutOff(None, "backbone-silent", listed)
    if since_last_replace_s is not None and since_last_replace_s < policy.pause_s:
        return CutOff(None, "pausing", listed)
    return CutOff(silent[0], "replace", listed)


def _past(silent_s: float | None, after_s: float) -> bool:
    return silent_s is not None and silent_s >= after_s


def report_of(
    terminating: bool,
    since_report_s: float | None,
    since_start_s: float | None,
    watching_s: float,
) -> PodReport:
    """What is known of a pod: seconds since its last report (None: none seen), since
    its containers started (None: not all running), and since this operator began
    to watch the reports."""
    if since_report_s is not None:
        return PodReport(terminating, since_report_s)
    if since_start_s is None or since_start_s < watching_s:
        return PodReport(terminating, None, heard=False)  # not judged
    return PodReport(terminating, watching_s, heard=False)
