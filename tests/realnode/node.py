"""A real single-node Kubernetes cluster on this machine: containerd, kubelet and friends.

What runs (all real, no stand-in):

- the control plane of tests/controlplane (etcd, kube-apiserver, kube-controller-manager
  with, in addition, the StatefulSet, PersistentVolume binder and node lifecycle
  controllers) with the apiserver on the pod bridge's gateway address, so pods reach it
  through the ``kubernetes`` Service;
- kube-scheduler; kubelet (cgroupfs driver, cgroup v1 allowed) on containerd 1.6 (Debian)
  with runc; kube-proxy (iptables mode); CoreDNS (a host process on the gateway address,
  serving ``cluster.local`` from the apiserver) as the pods' DNS server;
- CNI: the ``bridge`` + ``host-local`` + ``portmap`` + ``loopback`` plugins of
  containernetworking-plugins, on a bridge of its own (``BRIDGE``, ``POD_CIDR``);
- local PersistentVolumes pre-created in a scratch directory (there is no provisioner),
  bound by the PV binder.

This kind of machine (cgroup v1 hybrid, no systemd, root without CAP_SYS_RESOURCE) needs:
``failCgroupV1: false``, ``restrict_oom_score_adj = true`` in containerd's CRI plugin, a
pause image built here (tests/realnode/images.py), and images imported from podman into
containerd (``podman save`` | ``ctr images import``): pods use them with
``imagePullPolicy: IfNotPresent``, no registry is reachable.

Host changes, and how ``stop()`` undoes every one (also at exit if a test run is torn
down by an exception, via ``atexit``): the bridge is deleted; iptables chains and rules
that were not there before are removed (kube-proxy's, the CNI plugins', kubelet's);
``net.ipv4.ip_forward`` is put back; the ``kubepods`` cgroups are removed; mounts under
the scratch directory are unmounted; host paths the components write outside their
configured directories (``/run/containerd``, ``/var/lib/cni``, ``/var/log/containers``...)
are removed if they did not exist before. One node runs at a time on a machine (a lock
file): the bridge and its addresses are fixed.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from tests.controlplane.cluster import CONTROLLERS, ControlPlane, ControlPlaneError, free_port
from tests.realnode.images import Images, Podman, cache_root

NODE_NAME = "sb-realnode"
BRIDGE = "sb-realnode0"
POD_CIDR = "10.244.0.0/24"
GATEWAY = "10.244.0.1"
CLUSTER_DOMAIN = "cluster.local"
CNI_BIN_DIR = "/usr/lib/cni"

# The control plane's controllers, and what pods on a node need besides.
NODE_CONTROLLERS = (
    *CONTROLLERS,
    "statefulset-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
    "node-lifecycle-controller",
    "pod-garbage-collector-controller",
    "endpoints-controller",
    "ttl-after-finished-controller",
)

# Paths the node's components write outside the directories they are given; removed
# on stop() when they did not exist before start().
HOST_PATHS = (
    "/run/containerd",
    "/var/lib/cni",
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/kubelet",
    "/etc/kubernetes",
    "/run/kubernetes",
    "/var/run/kubernetes",
)

CGROUP_ROOT = Path("/sys/fs/cgroup")
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw")


class NodeError(RuntimeError):
    """A node component failed; the message holds the command or the log tail."""


def _run(cmd: Sequence[str], *, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(
        list(cmd), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise NodeError(f"exit {proc.returncode}: {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def _iptables_rules(table: str) -> list[str]:
    """``iptables -S`` of a table: ``-N chain`` and ``-A chain ...`` lines."""
    return _run(["iptables", "-w", "-t", table, "-S"], check=False).splitlines()


def _ip4_sysctl(name: str) -> Path:
    return Path("/proc/sys/net/ipv4") / name


class HostState:
    """What the node may change on the host, recorded before it starts, put back after."""

    def __init__(self) -> None:
        self.existing_paths = {p for p in HOST_PATHS if os.path.lexists(p)}
        self.rules = {table: set(_iptables_rules(table)) for table in IPTABLES_TABLES}
        self.ip_forward = _ip4_sysctl("ip_forward").read_text().strip()
        self.cgroups = {c for c in CGROUP_ROOT.glob("*/kubepods*") if c.is_dir()}

    def restore(self, scratch: Path | None) -> list[str]:
        """Undo every change; returns what could not be undone (empty when all went)."""
        problems: list[str] = []
        if scratch is not None:
            problems += _unmount_under(scratch)
        problems += _remove_cgroups(self.cgroups)
        with contextlib.suppress(NodeError):
            _run(["ip", "link", "delete", BRIDGE], check=False)
        for table in IPTABLES_TABLES:
            problems += _restore_iptables(table, self.rules[table])
        _ip4_sysctl("ip_forward").write_text(self.ip_forward)
        for path in HOST_PATHS:
            if path not in self.existing_paths and os.path.lexists(path):
                problems += _unmount_under(Path(path))
                shutil.rmtree(path, ignore_errors=True)
                if os.path.lexists(path):
                    problems.append(f"could not remove {path}")
        return problems

    def leftovers(self) -> list[str]:
        """Host changes still present (what a test asserts is empty after stop())."""
        found = [p for p in HOST_PATHS if p not in self.existing_paths and os.path.lexists(p)]
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            found.append(f"bridge {BRIDGE}")
        for table in IPTABLES_TABLES:
            extra = set(_iptables_rules(table)) - self.rules[table]
            found += [f"iptables -t {table} {rule}" for rule in sorted(extra)]
        cgroups = {c for c in CGROUP_ROOT.glob("*/kubepods*") if c.is_dir()} - self.cgroups
        found += [str(c) for c in sorted(cgroups)]
        if _ip4_sysctl("ip_forward").read_text().strip() != self.ip_forward:
            found.append("net.ipv4.ip_forward")
        return found


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()).rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix) or point == prefix.rstrip("/"):
                points.append(point)
    return points


def _unmount_under(root: Path) -> list[str]:
    """Lazily unmount everything mounted at or below ``root``, deepest first."""
    problems = []
    for point in sorted(_mounts_under(root), key=len, reverse=True):
        proc = subprocess.run(["umount", "-l", point], capture_output=True, text=True)
        if proc.returncode != 0 and point in _mounts_under(root):
            problems.append(f"umount {point}: {proc.stderr.strip()}")
    return problems


def _remove_cgroups(before: set[Path]) -> list[str]:
    """rmdir the kubepods cgroups the kubelet made (deepest first, once empty)."""
    problems = []
    for top in CGROUP_ROOT.glob("*/kubepods*"):
        if top in before or not top.is_dir():
            continue
        dirs = sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts))
        for d in [*dirs, top]:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                problems.append(f"could not remove cgroup {d}")
    return problems


def _restore_iptables(table: str, before: set[str]) -> list[str]:
    """Delete the rules, then the chains, that were not in ``table`` before."""
    now = _iptables_rules(table)
    problems = []
    # Rules first (a chain must be empty and unreferenced to go), jumps into new chains too.
    for rule in now:
        if rule.startswith("-A ") and rule not in before:
            args = shlex.split(rule)
            args[0] = "-D"
            proc = subprocess.run(
                ["iptables", "-w", "-t", table, *args], capture_output=True, text=True
            )
            if proc.returncode != 0:
                problems.append(f"iptables -t {table} {' '.join(args)}: {proc.stderr.strip()}")
    for rule in now:
        if rule.startswith("-N ") and rule not in before:
            chain = rule.split()[1]
            subprocess.run(["iptables", "-w", "-t", table, "-F", chain], capture_output=True)
            proc = subprocess.run(
                ["iptables", "-w", "-t", table, "-X", chain], capture_output=True, text=True
            )
            if proc.returncode != 0:
                problems.append(f"iptables -t {table} -X {chain}: {proc.stderr.strip()}")
    return problems


def clean_stale() -> None:
    """Undo what a node killed with SIGKILL left (no ``stop()`` ran): its containers
    (runc), shims, mounts and scratch directories, the bridge, the Kubernetes and CNI
    iptables chains and the kubepods cgroups. Only this tier runs a node here (the
    node lock), so those names are its own."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if b"/sb-realnode-" in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
    runc_root = Path("/run/containerd/runc/k8s.io")
    if runc_root.is_dir() and shutil.which("runc"):
        for container in runc_root.iterdir():
            subprocess.run(
                ["runc", "--root", str(runc_root), "delete", "--force", container.name],
                capture_output=True,
                check=False,
            )
    for scratch in Path(tempfile.gettempdir()).glob("sb-realnode-*"):
        _unmount_under(scratch)
        shutil.rmtree(scratch, ignore_errors=True)
    for path in HOST_PATHS:
        if path.startswith("/run/") and os.path.isdir(path):
            _unmount_under(Path(path))
            shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
    for table in IPTABLES_TABLES:
        ours = {
            rule
            for rule in _iptables_rules(table)
            if any(f"{mark}" in rule for mark in (" KUBE-", " CNI-", "-N KUBE-", "-N CNI-"))
        }
        _restore_iptables(table, set(_iptables_rules(table)) - ours)
    _remove_cgroups(set())


def _die_with_parent() -> None:
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Node:
    """A control plane and one node on this machine; ``start()``, then ``stop()``."""

    def __init__(
        self,
        control_plane_binaries: Mapping[str, Path],
        node_binaries: Mapping[str, Path],
        images: Images,
        *,
        persistent_volumes: int = 6,
        volume_size: str = "10Gi",
    ) -> None:
        self.cp_binaries = dict(control_plane_binaries)
        self.binaries = dict(node_binaries)
        self.images = images
        self.persistent_volumes = persistent_volumes
        self.volume_size = volume_size
        self.workdir: Path | None = None
        self.control_plane: ControlPlane | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.host: HostState | None = None
        self._lock: IO[str] | None = None
        self.timings: dict[str, float] = {}

    # -- paths ---------------------------------------------------------------------

    def path(self, name: str) -> Path:
        if self.workdir is None:
            raise NodeError("the node is not started")
        return self.workdir / name

    @property
    def containerd_socket(self) -> Path:
        return self.path("containerd/containerd.sock")

    @property
    def api(self) -> ControlPlane:
        if self.control_plane is None:
            raise NodeError("the node is not started")
        return self.control_plane

    def kubeconfig(self) -> Path:
        """The admin kubeconfig (system:masters), for Helm and the tests."""
        return self.api.admin_kubeconfig()

    # -- lifecycle -----------------------------------------------------------------

    def start(self, timeout_s: float = 120) -> Node:
        """Start everything and wait for the node to be Ready; on failure undo it all."""
        cache_root().mkdir(parents=True, exist_ok=True)
        self._lock = open(cache_root() / "node.lock", "w")  # noqa: SIM115 (held until stop)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        atexit.register(self.stop)
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout_s: float) -> None:
        began = time.monotonic()
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            clean_stale()
        self.host = HostState()
        self.workdir = Path(tempfile.mkdtemp(prefix="sb-realnode-"))
        self._network()
        self.control_plane = ControlPlane(
            self.cp_binaries,
            controllers=NODE_CONTROLLERS,
            address=GATEWAY,
            # Logs and exec go to the kubelet at its node's address (no DNS for nodes).
            apiserver_args=("--kubelet-preferred-address-types=InternalIP",),
        )
        self.control_plane.start()
        self._start_containerd()
        self._import_images()
        self._start_coredns()
        self._start_scheduler()
        self._start_kube_proxy()
        self._start_kubelet()
        self.control_plane.wait_ready()
        self._create_volumes()
        self._wait_node_ready(timeout_s)
        self.timings["start"] = time.monotonic() - began

    def stop(self) -> list[str]:
        """Delete the pods (so CNI tears their networks down), stop every process, and undo
        every host change. Returns what could not be undone."""
        atexit.unregister(self.stop)
        began = time.monotonic()
        problems: list[str] = []
        # No scheduler: the pods controllers recreate stay Pending, off the node.
        self._stop_process("kube-scheduler")
        if self.control_plane is not None and "kubelet" in self.processes:
            with contextlib.suppress(Exception):
                self._delete_all_pods(timeout_s=60)
        for name in ("kubelet", "kube-proxy", "coredns"):
            self._stop_process(name)
        if "containerd" in self.processes:
            self._remove_all_containers()
        self._stop_process("containerd")
        self._kill_shims()
        if "kube-proxy" in self.binaries and self.workdir is not None:
            # kube-proxy's own clean-up of its iptables chains, then ours for the rest.
            subprocess.run(
                [str(self.binaries["kube-proxy"]), "--cleanup"],
                capture_output=True,
                timeout=60,
                check=False,
            )
        if self.control_plane is not None:
            self.control_plane.stop()
            self.control_plane = None
        if self.host is not None:
            problems = self.host.restore(self.workdir)
        if self.workdir is not None:
            _unmount_under(self.workdir)
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        self.timings["stop"] = time.monotonic() - began
        return problems

    # -- components ----------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> None:
        with open(self.path(f"{name}.log"), "ab") as log:
            self.processes[name] = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=dict(env) if env is not None else None,
                preexec_fn=_die_with_parent,
            )

    def _stop_process(self, name: str, grace_s: float = 10) -> None:
        proc = self.processes.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def log_tail(self, name: str, lines: int = 40) -> str:
        try:
            text = self.path(f"{name}.log").read_text(errors="replace")
        except (OSError, NodeError):
            return f"({name}: no log)"
        return f"--- last lines of {name}.log ---\n" + "\n".join(text.splitlines()[-lines:])

    def keep_logs(self, directory: Path) -> None:
        """Copy every component's log to ``directory`` (post-mortems)."""
        directory.mkdir(parents=True, exist_ok=True)
        for log in self.path(".").glob("*.log"):
            shutil.copy2(log, directory / log.name)
        if self.control_plane is not None and self.control_plane.workdir is not None:
            for log in self.control_plane.workdir.glob("*.log"):
                shutil.copy2(log, directory / log.name)
        pod_logs = self.path("pod-logs")
        if pod_logs.is_dir():
            shutil.copytree(pod_logs, directory / "pods", dirs_exist_ok=True)

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            code = proc.poll()
            if code is not None:
                raise NodeError(f"{name} exited with {code}\n{self.log_tail(name)}")

    def _network(self) -> None:
        """The pod bridge, up with the gateway address before anything binds to it."""
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])
        _ip4_sysctl("ip_forward").write_text("1")
        cni = self.path("cni")
        cni.mkdir()
        conflist = {
            "cniVersion": "0.4.0",
            "name": "sb-realnode",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.path("cni-ipam")),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (cni / "10-sb-realnode.conflist").write_text(json.dumps(conflist, indent=2))

    def _start_containerd(self) -> None:
        root = self.path("containerd")
        root.mkdir()
        config = f"""\
version = 2
root = "{cache_root() / "containerd"}"
state = "{root / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{root / "containerd.sock.ttrpc"}"

[debug]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.images.pause}"
  # Root without CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below its own.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{self.path("cni")}"
"""
        (root / "config.toml").write_text(config)
        containerd = shutil.which("containerd")
        if containerd is None:
            raise NodeError("`containerd` is not on PATH: apt-get install containerd (.ci/run)")
        self._spawn("containerd", [containerd, "--config", str(root / "config.toml")])
        self._wait(lambda: self.containerd_socket.exists(), 30, "containerd's socket")

    def ctr(self, *args: str, timeout: float = 120) -> str:
        ctr = shutil.which("ctr")
        if ctr is None:
            raise NodeError("`ctr` is not on PATH: apt-get install containerd (.ci/run)")
        return _run(
            [ctr, "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args],
            timeout=timeout,
        )

    def _import_images(self) -> None:
        """podman's images into containerd's k8s.io namespace (the kubelet's).

        containerd's root (images, unpacked layers) is kept in the cache between runs,
        so only images it does not hold yet are imported.
        """
        started = time.monotonic()
        held = set(self.ctr("images", "list", "--quiet").split())
        stale = [
            ref
            for ref in held - set(self.images.all)
            if ref.startswith(("localhost/switchboard:", "localhost/sb-"))
        ]
        if stale:  # earlier builds: the cache would only grow
            self.ctr("images", "remove", *stale)
        missing = [ref for ref in self.images.all if ref not in held]
        if not missing:
            return
        archive = self.path("images.tar")
        Podman().run(
            "save", "--multi-image-archive", "--output", str(archive), *missing, timeout=300
        )
        self.ctr("images", "import", "--no-unpack", str(archive), timeout=300)
        archive.unlink()
        self.timings["import_images"] = time.monotonic() - started

    def _start_coredns(self) -> None:
        kubeconfig = self.api.admin_kubeconfig()
        health, ready = free_port(), free_port()
        self.coredns_ready_port = ready
        corefile = f"""\
.:53 {{
    bind {GATEWAY}
    errors
    health 127.0.0.1:{health}
    ready 127.0.0.1:{ready}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
"""
        self.path("Corefile").write_text(corefile)
        self._spawn("coredns", [str(self.binaries["coredns"]), "-conf", str(self.path("Corefile"))])

    def _start_scheduler(self) -> None:
        kubeconfig = self.api.client_kubeconfig(
            "kube-scheduler.kubeconfig", "system:kube-scheduler"
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.binaries["kube-scheduler"]),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
            ],
        )

    def _start_kube_proxy(self) -> None:
        kubeconfig = self.api.client_kubeconfig("kube-proxy.kubeconfig", "system:kube-proxy")
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            # No CAP_SYS_RESOURCE; and leave the host's conntrack table size alone.
            "oomScoreAdj": 0,
            "conntrack": {"maxPerCore": 0, "min": 0},
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
        }
        self.path("kube-proxy.json").write_text(json.dumps(config, indent=2))
        self._spawn(
            "kube-proxy",
            [str(self.binaries["kube-proxy"]), f"--config={self.path('kube-proxy.json')}"],
        )

    def _start_kubelet(self) -> None:
        kubeconfig = self.api.client_kubeconfig(
            "kubelet.kubeconfig", f"system:node:{NODE_NAME}", ("system:nodes",)
        )
        self.path("resolv.conf").write_text("")
        self.path("pod-logs").mkdir()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # Kubernetes 1.36 refuses cgroup v1 unless told; this machine has no v2.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": GATEWAY,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzPort": 0,
            "authentication": {
                "anonymous": {"enabled": True},
                "webhook": {"enabled": False},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "clusterDNS": [GATEWAY],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(self.path("resolv.conf")),
            "podLogsDir": str(self.path("pod-logs")),
            "failSwapOn": False,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "hairpinMode": "hairpin-veth",
            "syncFrequency": "5s",
            "fileCheckFrequency": "5s",
        }
        self.path("kubelet.json").write_text(json.dumps(config, indent=2))
        self.path("kubelet").mkdir()
        self._spawn(
            "kubelet",
            [
                str(self.binaries["kubelet"]),
                f"--config={self.path('kubelet.json')}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.path('kubelet')}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={GATEWAY}",
                f"--cert-dir={self.path('kubelet-pki')}",
            ],
        )

    def _create_volumes(self) -> None:
        """Local PersistentVolumes on the node (no provisioner): one directory each."""
        for i in range(self.persistent_volumes):
            directory = self.path(f"volumes/pv-{i}")
            directory.mkdir(parents=True)
            self.api.request(
                "POST",
                "/api/v1/persistentvolumes",
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": f"sb-realnode-pv-{i}"},
                    "spec": {
                        "capacity": {"storage": self.volume_size},
                        "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Delete",
                        "storageClassName": "",
                        "local": {"path": str(directory)},
                        "nodeAffinity": {
                            "required": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {
                                                "key": "kubernetes.io/hostname",
                                                "operator": "In",
                                                "values": [NODE_NAME],
                                            }
                                        ]
                                    }
                                ]
                            }
                        },
                    },
                },
            )

    # -- waiting -------------------------------------------------------------------

    def _wait(self, done: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            self.check_alive()
            if time.monotonic() > deadline:
                raise NodeError(f"no {what} within {timeout_s}s")
            time.sleep(0.1)

    def node_ready(self) -> bool:
        try:
            node = self.api.request("GET", f"/api/v1/nodes/{NODE_NAME}")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False
            raise
        conditions = node.get("status", {}).get("conditions", [])
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        taints = node.get("spec", {}).get("taints") or []
        return ready and not taints

    def _wait_node_ready(self, timeout_s: float) -> None:
        try:
            self._wait(self.node_ready, timeout_s, f"Ready, untainted node {NODE_NAME}")
        except NodeError as e:
            raise NodeError(f"{e}\n{self.log_tail('kubelet')}") from e

    def _delete_all_pods(self, timeout_s: float) -> None:
        """Every pod on the node deleted through the API, and gone, so the kubelet tears
        down its sandbox (CNI DEL: veth, IP, portmap rules) while everything still runs."""
        on_node = f"/api/v1/pods?fieldSelector=spec.nodeName={NODE_NAME}"
        for pod in self.api.request("GET", on_node)["items"]:
            meta = pod["metadata"]
            with contextlib.suppress(urllib.error.HTTPError):
                self.api.request(
                    "DELETE",
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                    {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0},
                )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.api.request("GET", on_node)["items"] and not self._tasks(True):
                return
            time.sleep(0.2)

    def _tasks(self, running_only: bool = False) -> list[str]:
        """containerd's tasks (containers' processes), or only the running ones: a pod's
        sandbox stops once its network is torn down (the kubelet removes the rest later)."""
        try:
            out = self.ctr("tasks", "list", timeout=10)
        except NodeError:
            return []
        rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
        return [row[0] for row in rows if not running_only or row[-1] == "RUNNING"]

    def _remove_all_containers(self) -> None:
        """Whatever the kubelet left: kill and delete every task and container."""
        with contextlib.suppress(NodeError, subprocess.TimeoutExpired):
            for task in self._tasks():
                self.ctr("tasks", "kill", "--signal", "SIGKILL", task, timeout=10)
            time.sleep(0.2)
            for task in self._tasks():
                self.ctr("tasks", "delete", "--force", task, timeout=10)
            for container in self.ctr("containers", "list", "--quiet", timeout=10).split():
                self.ctr("containers", "delete", container, timeout=10)

    def _kill_shims(self) -> None:
        """containerd-shim processes outlive containerd; ours name our socket."""
        if self.workdir is None:
            return
        marker = str(self.workdir).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and marker in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)


@contextlib.contextmanager
def running_node(
    control_plane_binaries: Mapping[str, Path],
    node_binaries: Mapping[str, Path],
    images: Images,
) -> Iterator[Node]:
    """A started node; afterwards, every host change it made must be gone."""
    node = Node(control_plane_binaries, node_binaries, images)
    host = None
    try:
        node.start()
        host = node.host
        yield node
    finally:
        problems = node.stop()
        if host is not None:
            problems += host.leftovers()
        if problems:
            raise NodeError("the node's host changes were not all undone:\n" + "\n".join(problems))


__all__ = ["ControlPlaneError", "Node", "NodeError", "running_node"]
