"""Load-generator processes (multiprocessing, spawn) and the Pipe protocol between them
and the parent: the child sends ("ready", info) once, then answers each command (a
tuple whose first item is its name) with one reply; ("close",) ends it."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from _config import Cleanup
from _machine import proc_cpu_s, raise_nofile

if TYPE_CHECKING:
    from _targets import Target


def _worker_entry(target: Callable[[Any, dict[str, Any]], Any], conn: Any, spec: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    raise_nofile()
    try:
        asyncio.run(target(conn, spec))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


async def pipe_recv(conn: Any) -> Any:
    """Await the next command from the parent without blocking the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, conn.recv)


class Workers:
    """Load-generator processes running `target(conn, spec)` (an async function)."""

    def __init__(self, target: Callable[[Any, dict[str, Any]], Any], specs: list[Any]) -> None:
        ctx = mp.get_context("spawn")
        self.parts: list[tuple[Any, Any]] = []
        for spec in specs:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_entry, args=(target, child, spec), daemon=True)
            p.start()
            self.parts.append((p, parent))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self.parts if p.pid is not None]

    def _answer(self, proc: Any, conn: Any, timeout: float, want: str) -> Any:
        deadline = time.monotonic() + timeout
        while not conn.poll(0.1):
            if not proc.is_alive():
                raise RuntimeError(f"load generator died (exit {proc.exitcode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"load generator did not answer {want!r} in {timeout}s")
        kind, value = conn.recv()
        if kind == "error":
            raise RuntimeError(f"load generator failed: {value}")
        if kind != want:
            raise RuntimeError(f"load generator said {kind!r}, expected {want!r}")
        return value

    def wait(self, want: str, timeout: float) -> list[Any]:
        """One reply `want` from every worker (their replies may come in any order)."""
        return [self._answer(p, c, timeout, want) for p, c in self.parts]

    def send(self, *cmd: Any) -> None:
        for _, c in self.parts:
            c.send(cmd)

    def ask(self, cmd: tuple[Any, ...], want: str, timeout: float) -> list[Any]:
        self.send(*cmd)
        return self.wait(want, timeout)

    def cpu_s(self) -> float:
        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                total += proc_cpu_s(pid)
        return total

    def close(self) -> None:
        for p, c in self.parts:
            if p.is_alive():
                with contextlib.suppress(Exception):
                    c.send(("close",))
        for p, c in self.parts:
            with contextlib.suppress(Exception):
                if c.poll(15):
                    c.recv()
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
        self.parts = []


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def client_specs(
    target: Target, clients: int, procs: int, concurrency: int = 1, **extra: Any
) -> list[dict[str, Any]]:
    """One worker spec per process: `clients` spread over `procs`, for `open_clients`."""
    return [
        {
            "mode": target.mode,
            "url": target.ws_url,
            "clients": n,
            "index": i,
            "concurrency": concurrency,
            **extra,
        }
        for i, n in enumerate(split(clients, procs))
    ]


def start_workers(
    target: Callable[[Any, dict[str, Any]], Any],
    specs: list[Any],
    cleanup: Cleanup,
) -> Workers:
    workers = Workers(target, specs)
    cleanup.append(workers.close)
    return workers


def percentile(sorted_values: Any, q: float) -> Any:
    """The q-th percentile (nearest rank) of an ascending sequence; None if it is empty."""
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]
