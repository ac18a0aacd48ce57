"""pytest fixtures for the real control plane; import them into a conftest.py to use them.

    from tests.controlplane.fixtures import control_plane, build_control_plane_if_needed

The binaries are built during collection (only when a collected test uses
``control_plane``) because a cold build takes minutes and must not count against a
test's timeout.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.controlplane.build import BuildError, ensure_binaries
from tests.controlplane.cluster import ControlPlane

_build_error: BuildError | None = None


def build_control_plane_if_needed(items: list[pytest.Item]) -> None:
    """Build (or find) the binaries before any test starts, if a test needs them.

    A failure is kept and raised by the fixture, so it shows as the tests' error with the
    full command and output rather than as an internal error of pytest.
    """
    global _build_error
    if any("control_plane" in getattr(item, "fixturenames", ()) for item in items):
        try:
            ensure_binaries()
        except BuildError as e:
            _build_error = e


def _binaries() -> dict[str, Path]:
    if _build_error is not None:
        raise _build_error
    return ensure_binaries()


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """One etcd + kube-apiserver + kube-controller-manager for the whole session.

    Set SB_K8S_KEEP=<dir> to keep the components' logs and state there after the run.
    """
    keep = os.environ.get("SB_K8S_KEEP")
    plane = ControlPlane(_binaries(), keep_under=Path(keep) if keep else None)
    plane.start()
    try:
        plane.wait_ready()
        yield plane
    finally:
        plane.stop()
