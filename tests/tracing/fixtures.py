"""pytest fixtures for a real Jaeger; tests/conftest.py imports them.

Jaeger is built during collection (only when a collected test uses ``jaeger``), because
a cold build takes minutes and must not count against a test's timeout.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tracing.build import BuildError, ensure_jaeger
from tests.tracing.jaeger import Jaeger

_build_error: BuildError | None = None


def build_jaeger_if_needed(items: list[pytest.Item]) -> None:
    """Build (or find) Jaeger before any test starts, if a test needs it; a failure is
    raised by the fixture, with the command and its output."""
    global _build_error
    if any("jaeger" in getattr(item, "fixturenames", ()) for item in items):
        try:
            ensure_jaeger()
        except BuildError as e:
            _build_error = e


@pytest.fixture(scope="session")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    """One Jaeger (memory storage) for the session, on free ports."""
    if _build_error is not None:
        raise _build_error
    workdir: Path = tmp_path_factory.mktemp("jaeger")
    server = Jaeger(ensure_jaeger(), workdir).start()
    try:
        yield server
    finally:
        server.stop()
