"""What the benchmarks measure about the machine and its processes: CPU and memory from
/proc, how busy the machine is, Prometheus text, and what the run ran on."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _config  # noqa: F401  (the project on sys.path)

from switchboard.cli.natsserver import find_binary

CLK_TCK = os.sysconf("SC_CLK_TCK")
LOADGEN_NOTE = (
    "load generators are separate processes on the same machine: they share the "
    f"{os.cpu_count()} cores with the server under test"
)


# --------------------------------------------------------------------------- limits


def raise_nofile(want: int = 1 << 20) -> int:
    """Raise RLIMIT_NOFILE's soft limit as far as allowed; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return int(soft) if soft != resource.RLIM_INFINITY else want
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


# --------------------------------------------------------------------------- process stats


def proc_times_s(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, in seconds (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu_s(pid: int) -> float:
    return sum(proc_times_s(pid))


def proc_rss_kib(pid: int) -> int:
    """VmRSS of a process, KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def system_busy_s() -> float:
    """CPU time the whole machine spent busy (all cores, all processes), seconds."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def system_softirq_s() -> float:
    """Machine-wide softirq time (loopback packet processing lands here), seconds."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    return (int(parts[6]) + int(parts[7])) / CLK_TCK  # irq + softirq


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores the machine kept busy over the last `seconds` (before we start)."""
    b0 = system_busy_s()
    time.sleep(seconds)
    return round((system_busy_s() - b0) / seconds, 2)


def wait_quiet(max_busy: float = 0.3, max_wait_s: float = 30.0) -> float:
    """Wait (up to `max_wait_s`) for the machine to be nearly idle; the last busy figure.

    Other jobs on a small machine (a test run, another benchmark) skew every number here.
    """
    deadline = time.monotonic() + max_wait_s
    busy = busy_cores(1.0)
    while busy > max_busy and time.monotonic() < deadline:
        busy = busy_cores(1.0)
    return busy


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds used since a `CpuMeter` started, and the wall time since then."""

    user: float  # the server under test
    kernel: float
    extra: dict[str, float]  # other processes of the run, by name (e.g. the backbone)
    machine: float  # the whole machine (all cores, all processes)
    softirq: float  # machine-wide irq + softirq
    wall: float

    @property
    def server(self) -> float:
        return self.user + self.kernel

    @property
    def extra_total(self) -> float:
        return sum(self.extra.values())

    def machine_cores(self, loadgen_cores: float) -> dict[str, float]:
        """Where the machine's CPU went in the window, in cores (JSON fields; MACHINE_ROWS)."""
        return {
            "machine_busy_cores": round(self.machine / self.wall, 3),
            # loopback TCP work is mostly irq/softirq time, charged to no process
            "irq_softirq_cores": round(self.softirq / self.wall, 3),
            # CPU used in the window by processes that are not part of this run
            "other_processes_cores": round(
                (self.machine - self.softirq - self.server - self.extra_total) / self.wall
                - loadgen_cores,
                3,
            ),
        }


class CpuMeter:
    """CPU of the server under test, other processes of the run and the whole machine."""

    def __init__(self, pid: int, extra_pids: dict[str, int]) -> None:
        self.pid = pid
        self.extra_pids = extra_pids
        self.start = self._sample()

    def _sample(self) -> tuple[tuple[float, float], dict[str, float], float, float, float]:
        return (
            proc_times_s(self.pid),
            {k: proc_cpu_s(p) for k, p in self.extra_pids.items()},
            system_busy_s(),
            system_softirq_s(),
            time.monotonic(),
        )

    def read(self) -> CpuUse:
        (u0, k0), extra0, busy0, irq0, t0 = self.start
        (u1, k1), extra1, busy1, irq1, t1 = self._sample()
        return CpuUse(
            user=u1 - u0,
            kernel=k1 - k0,
            extra={k: extra1[k] - extra0[k] for k in extra0},
            machine=busy1 - busy0,
            softirq=irq1 - irq0,
            wall=max(t1 - t0, 1e-9),
        )


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def prom_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


# --------------------------------------------------------------------------- the run's setting


def nats_server_version() -> str:
    try:
        return subprocess.run(
            [find_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception as exc:
        return f"unknown ({exc})"


def machine_info(keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """What the run ran on; only `keys` (in this order) when given."""
    import websockets

    info = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "websockets": websockets.__version__,
        "platform": platform.platform(),
        "nats_server": nats_server_version(),
        "nofile_soft_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }
    return info if keys is None else {k: info[k] for k in keys}
