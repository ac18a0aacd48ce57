"""pytest fixtures of the real-node tier; tests/conftest.py imports the collection hook.

Images (and, for the cluster, the node's binaries) are built during collection, only when
a collected test uses them, because a cold build takes minutes and must not count against
a test's timeout. A failed build is kept and raised by the fixture, so it shows as the
tests' error with the full command and output: never as a skip.
"""

from __future__ import annotations

import pytest

from tests.realnode.images import ImageError, Images, Podman, ensure_images

_build_error: ImageError | None = None


def build_images_if_needed(items: list[pytest.Item]) -> None:
    """Build (or find) the images before any test starts, if a test needs them."""
    global _build_error
    if any("images" in getattr(item, "fixturenames", ()) for item in items):
        try:
            ensure_images()
        except ImageError as e:
            _build_error = e


@pytest.fixture(scope="session")
def images() -> Images:
    """The switchboard, nats and pause images, in podman's storage under the cache."""
    if _build_error is not None:
        raise _build_error
    return ensure_images()


@pytest.fixture(scope="session")
def podman() -> Podman:
    """podman on the tier's own storage and configuration (runc, settable ulimits)."""
    return Podman()
