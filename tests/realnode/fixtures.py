"""pytest fixtures of the real-node tier; tests/conftest.py imports the collection hook.

Images (and, for the cluster, the node's binaries) are built during collection, only when
a collected test uses them, because a cold build takes minutes and must not count against
a test's timeout. A failed build is kept and raised by the fixture, so it shows as the
tests' error with the full command and output: never as a skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.controlplane.build import BuildError, ensure_binaries
from tests.realnode.build import ensure_node_binaries
from tests.realnode.images import ImageError, Images, Podman, ensure_images
from tests.realnode.node import Node, running_node

_build_error: ImageError | BuildError | None = None


def build_images_if_needed(items: list[pytest.Item]) -> None:
    """Build (or find) the images, and the node's binaries, if a collected test needs them."""
    global _build_error
    names = [set(getattr(item, "fixturenames", ())) for item in items]
    try:
        if any("node" in n for n in names):
            ensure_binaries()
            ensure_node_binaries()
        if any("images" in n or "node" in n for n in names):
            ensure_images()
    except (ImageError, BuildError) as e:
        _build_error = e


@pytest.fixture(scope="session")
def images() -> Images:
    """The switchboard, nats and pause images, in podman's storage under the cache."""
    if _build_error is not None:
        raise _build_error
    return ensure_images()


@pytest.fixture(scope="session")
def node(images: Images) -> Iterator[Node]:
    """One real node for the session (tests/realnode/node.py); its teardown fails if a
    host change it made is left behind. SB_REALNODE_KEEP=<dir> keeps its logs there."""
    if _build_error is not None:
        raise _build_error
    with running_node(ensure_binaries(), ensure_node_binaries(), images) as started:
        try:
            yield started
        finally:
            print(f"\nreal node timings: {started.timings}")
            keep = os.environ.get("SB_REALNODE_KEEP")
            if keep and started.workdir is not None:
                started.keep_logs(Path(keep))


@pytest.fixture(scope="session")
def podman() -> Podman:
    """podman on the tier's own storage and configuration (runc, settable ulimits)."""
    return Podman()
