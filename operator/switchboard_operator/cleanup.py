"""`switchboard cleanup`: the chart's pre-delete hook.

The operator's timers make kopf put a finalizer on every Channel and EdgePool.
`helm uninstall` deletes custom resources last, after the operator's Deployment,
Role and ServiceAccount, so the operator could never release them: they would
stay Terminating and block deleting the namespace. This runs first, while the
operator still does: it deletes the release's own Channels and EdgePools (by the
chart's labels) and waits until the operator has cleaned up after each (Channel
streams and configs removed from NATS) and they are gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from switchboard_operator.kube import KubeApi, KubeError, NoCredentials, load_configuration

log = logging.getLogger("switchboard.operator.cleanup")

KINDS = ("edgepools", "channels")
POLL_S = 0.5


async def cleanup(namespace: str, labels: Mapping[str, str], timeout_s: float) -> int:
    """Delete the labelled objects and wait for them to go: 0 when all went, else 1."""
    try:
        configuration = await asyncio.to_thread(load_configuration)
    except NoCredentials as exc:
        log.error("%s", exc)
        return 1
    api = KubeApi()
    await api.use(configuration)
    try:
        return await _delete_and_wait(api, namespace, labels, timeout_s)
    except KubeError as exc:
        log.error("cleanup failed: %s", exc, extra={"namespace": namespace})
        return 1
    finally:
        await api.close()


async def _delete_and_wait(
    api: KubeApi, namespace: str, labels: Mapping[str, str], timeout_s: float
) -> int:
    for plural in KINDS:
        for name in await api.names(namespace, plural, labels):
            await api.delete(namespace, plural, name)
            log.info("deleted", extra={"kind": plural, "object": name, "namespace": namespace})
    deadline = time.monotonic() + timeout_s
    while True:
        left = {plural: await api.names(namespace, plural, labels) for plural in KINDS}
        if not any(left.values()):
            return 0
        if time.monotonic() > deadline:
            log.error(
                "still there after %.0f s (is the operator running?): %s",
                timeout_s,
                {plural: names for plural, names in left.items() if names},
                extra={"namespace": namespace},
            )
            return 1
        await asyncio.sleep(POLL_S)
