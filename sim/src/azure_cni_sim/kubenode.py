"""A simulated VM as a real Kubernetes node: containerd, kubelet and kube-proxy in the VM.

Each VM is three namespaces of its own:

- its network namespace (``vnet.Fabric``): ``eth0`` with the NIC's primary address;
- a UTS namespace with the VM's name as its hostname (what hostNetwork pods see);
- a mount namespace in which the paths a node keeps on disk are the VM's own: ``/etc``,
  ``/opt`` and ``/var`` are overlays of the machine's (the VM sees the machine's files and
  keeps its changes in its work directory, so ``/etc/cni/net.d``, ``/opt/cni/bin``,
  ``/var/lib/kubelet``, ``/var/lib/azure-cni`` and ``/var/log/pods`` are per VM) and ``/run``
  is a directory of the VM (``/run/netns``, ``/run/containerd``, ``/run/azure-cni``,
  ``/run/xtables.lock``). ``/usr`` is the machine's, so the VM's ``python3`` (the CNI shim's
  interpreter) is the machine's.

containerd, kubelet and kube-proxy run in all three, at the paths a real node uses, so the azure-cni
chart's hostPath mounts resolve to that VM's own directories, exactly as on a node, and the
agent pod installs the shim and the conflist there. The machine itself is never changed: no
directory is created outside the work directory, no iptables rule is written outside the
VM's network namespace, and the kernel settings the kubelet insists on are shown to it, in its
mount namespace only, with the values it wants (see ``_KERNEL_TUNABLES``).

``stop()`` removes everything: the processes (found by the owner marker, and by the node's
cgroups for container processes, which do not inherit it), the mount namespace (and with it
every mount made inside it, pod network namespaces included) and the node's cgroups.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from azure_cni_sim.cluster import LocalCluster
from azure_cni_sim.containerd import containerd_config
from azure_cni_sim.procs import ManagedProcess, stop_owned, wait_for
from azure_cni_sim.tools import find_tool

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: the machine directories a VM sees as overlays (its changes stay in its work directory)
_OVERLAID = ("/etc", "/opt", "/var")
#: the reference plugins a node image ships next to the runtime (Debian's)
_REFERENCE_PLUGINS = ("loopback", "portmap", "host-local", "bandwidth")
#: kernel settings kubelet requires and would otherwise write into the shared machine's kernel
#: (kubelet's setupKernelTunables: it changes them, or refuses to start with
#: protectKernelDefaults); each VM's kubelet reads them from files in its mount namespace
_KERNEL_TUNABLES = {"vm/overcommit_memory": 1, "vm/panic_on_oom": 0, "kernel/panic": 10,
                    "kernel/panic_on_oops": 1, "kernel/keys/root_maxkeys": 1000000,
                    "kernel/keys/root_maxbytes": 25000000}
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
#: names the node in the environment of each of its processes (they carry the owner too)
NODE_ENV = "AZURE_CNI_SIM_NODE"


def vm_command(workdir: Path, netns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run in a VM: its mount and UTS namespaces (pinned under its work directory)
    and its network namespace (``ip netns`` name)."""
    pins = workdir / "ns"
    return ["nsenter", f"--mount={pins / 'mnt'}", f"--uts={pins / 'uts'}",
            f"--net=/run/netns/{netns}", "--", *argv]


def ctr_command(*args: str) -> list[str]:
    """containerd's ``ctr`` on a VM's runtime, in the namespace the CRI (kubelet) uses."""
    return ["ctr", "-a", CONTAINERD_SOCKET, "-n", "k8s.io", *args]


class NodeError(RuntimeError):
    """A node could not be provisioned or did not come up; the message says which part."""


def _run(argv: Sequence[str], *, input: str | None = None, timeout: float = 120,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                            timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed ({result.returncode}): "
                        f"{result.stderr.strip() or result.stdout.strip()}")
    return result


def _cgroup_hierarchies() -> list[Path]:
    """Every cgroup hierarchy of the machine: kubelet's cgroupfs driver needs its cgroup root
    in each v1 hierarchy, and also makes it in the v2 one of a hybrid layout."""
    found = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            _, target, fstype, *_ = line.split()
            if fstype in ("cgroup", "cgroup2") and target.startswith(f"{CGROUP_ROOT}/"):
                found.append(Path(target))
    return sorted(found)


@dataclass
class KubeNode:
    """One VM's node: its mount namespace, containerd, kubelet and kube-proxy."""

    name: str
    #: the VM's network namespace (``ip netns`` name)
    netns: str
    #: the NIC's primary address: the node's InternalIP
    address: str
    provider_id: str
    workdir: Path
    owner: str
    cluster_dns: str
    #: names this node's cgroup root; unique on the machine
    prefix: str
    #: the pod sandbox image (imported with the others)
    sandbox_image: str
    #: the labels kubelet registers the Node with (``--node-labels``), e.g. its node group
    labels: Mapping[str, str] = field(default_factory=dict)
    #: kubelet's maxPods: no more than the node's pool may hold (azure-cni preflight checks it)
    max_pods: int = 110
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    _runs: dict[str, int] = field(default_factory=dict)

    # -- paths -----------------------------------------------------------------------------

    @property
    def fs(self) -> Path:
        """Where the VM's own files live on the machine (overlay layers, /run)."""
        return self.workdir / "fs"

    @property
    def mount_ns(self) -> Path:
        """The pin of the VM's mount namespace."""
        return self.workdir / "ns" / "mnt"

    @property
    def uts_ns(self) -> Path:
        """The pin of the VM's UTS namespace (its hostname)."""
        return self.workdir / "ns" / "uts"

    @property
    def cgroup_root(self) -> str:
        """kubelet's ``cgroupRoot``: every pod of this node lives below it."""
        return f"/{self.prefix}-{self.name}"

    # -- running things in the VM ----------------------------------------------------------

    def enter(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run in the VM: its mount, UTS and network namespaces."""
        return vm_command(self.workdir, self.netns, argv)

    def exec(self, *argv: str, timeout: float = 120, check: bool = True,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command on the VM (as root on the node would) and return it."""
        return _run(self.enter(argv), timeout=timeout, check=check, input=input)

    def crictl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        endpoint = f"unix://{CONTAINERD_SOCKET}"
        return self.exec(str(find_tool("crictl")), "--runtime-endpoint", endpoint,
                         "--image-endpoint", endpoint, "--timeout", "60s", *args, check=check)

    def ctr(self, *args: str, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.exec(*ctr_command(*args), check=check, timeout=timeout)

    # -- provisioning ----------------------------------------------------------------------

    def provision(self, cluster: LocalCluster) -> None:
        """Lay out the VM's disk, its mount namespace, cgroups and credentials, as a VM image
        and its provisioning would: nothing runs yet."""
        for top in ("/etc", "/opt", "/var", "/run", "/proc"):
            if self.workdir.resolve().is_relative_to(top):
                raise NodeError(f"{self.workdir} is under {top}, which each VM overlays; "
                                "use a work directory elsewhere (e.g. under /tmp)")
        for top in _OVERLAID:
            for layer in ("upper", "work"):
                (self.fs / top.strip("/") / layer).mkdir(parents=True, exist_ok=True)
        for directory in ("run/netns", "run/containerd", "run/azure-cni", "kernel"):
            (self.fs / directory).mkdir(parents=True, exist_ok=True)
        (self.fs / "run" / "xtables.lock").touch()
        etc, opt = self.fs / "etc" / "upper", self.fs / "opt" / "upper"
        (etc / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
        (opt / "cni" / "bin").mkdir(parents=True, exist_ok=True)
        for plugin in _REFERENCE_PLUGINS:
            # copies, not links: the agent's container sees this directory (its hostPath) but
            # not the machine's /usr/lib/cni, and nothing the VM does may change the machine's
            shutil.copy2(Path("/usr/lib/cni") / plugin, opt / "cni" / "bin" / plugin)
        self._write_configs(cluster)
        self._create_mount_namespace()
        self._create_cgroups()

    def _write_configs(self, cluster: LocalCluster) -> None:
        d = self.workdir
        cluster.node_kubeconfig(d / "kubelet.kubeconfig", self.name)
        cluster.client_kubeconfig(d / "kube-proxy.kubeconfig", "system:kube-proxy")
        (d / "resolv.conf").write_text("# Azure DNS, as on a VM of a VNet with default DNS\n"
                                       "nameserver 168.63.129.16\n")
        (d / "containerd.toml").write_text(containerd_config(
            root=d / "containerd", state="/run/containerd", socket=CONTAINERD_SOCKET,
            cni_bin_dir="/opt/cni/bin", cni_conf_dir="/etc/cni/net.d",
            sandbox_image=self.sandbox_image))
        kubelet = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # 1.36 refuses cgroup v1 hosts unless told otherwise
            "cgroupDriver": "cgroupfs",  # PID 1 is not systemd
            "cgroupRoot": self.cgroup_root,
            "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
            "providerID": self.provider_id,
            "maxPods": self.max_pods,
            "clusterDomain": "cluster.local",
            "clusterDNS": [self.cluster_dns],
            "resolvConf": str(d / "resolv.conf"),
            "authentication": {"anonymous": {"enabled": False},
                               "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(cluster.ca_path)}},
            "authorization": {"mode": "Webhook"},
            "readOnlyPort": 0,
            "failSwapOn": False,
            "serializeImagePulls": False,
            # the disk and memory are the machine's, shared with everything else on it: a
            # VM must not evict pods or delete images (there is no registry to pull them
            # back from) because of what others use
            "enforceNodeAllocatable": [],
            # but it reports the disk as its ephemeral-storage (a pod that asks for some is
            # schedulable, as on any node) and holds each pod to its own limit
            "localStorageCapacityIsolation": True,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                             "nodefs.inodesFree": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
        }
        (d / "kubelet.yaml").write_text(yaml.safe_dump(kubelet, sort_keys=False))
        proxy = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "hostnameOverride": self.name,
            "clientConnection": {"kubeconfig": str(d / "kube-proxy.kubeconfig")},
            # nf_conntrack_max is the machine's, not the VM's: leave it alone
            "conntrack": {"maxPerCore": 0},
            "metricsBindAddress": "127.0.0.1:10249",
        }
        (d / "kube-proxy.yaml").write_text(yaml.safe_dump(proxy, sort_keys=False))

    def _create_mount_namespace(self) -> None:
        pin_dir = self.mount_ns.parent
        pin_dir.mkdir(parents=True, exist_ok=True)
        # a namespace pin must sit on a private mount (else the bind would propagate)
        _run(["mount", "--bind", str(pin_dir), str(pin_dir)])
        _run(["mount", "--make-private", str(pin_dir)])
        self.mount_ns.touch()
        self.uts_ns.touch()
        _run(["unshare", f"--mount={self.mount_ns}", f"--uts={self.uts_ns}", "--propagation",
              "private", "hostname", self.name])
        script = ["set -e"]
        for top in _OVERLAID:
            layers = self.fs / top.strip("/")
            script.append(f"mount -t overlay overlay -o lowerdir={top},"
                          f"upperdir={layers / 'upper'},workdir={layers / 'work'} {top}")
        script.append(f"mount --bind {self.fs / 'run'} /run")
        for name, wanted in _KERNEL_TUNABLES.items():
            current = Path("/proc/sys", name).read_text().strip()
            if current != str(wanted):
                shown = self.fs / "kernel" / name.replace("/", ".")
                shown.write_text(f"{wanted}\n")
                script.append(f"mount --bind -o ro {shown} /proc/sys/{name}")
        # as on a systemd host: mounts made below (pod network namespaces, volumes) propagate
        # into the containers that asked for it (the agent's /var/run/netns)
        script.append("mount --make-rshared /")
        _run(["nsenter", f"--mount={self.mount_ns}", "--", "sh", "-c", "\n".join(script)])

    def _create_cgroups(self) -> None:
        for hierarchy in _cgroup_hierarchies():
            path = hierarchy / self.cgroup_root.strip("/")
            path.mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":  # a new cpuset is empty: give it its parent's
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (path / knob).write_text((hierarchy / knob).read_text())

    # -- running the node ------------------------------------------------------------------

    @property
    def marker(self) -> str:
        """``NODE_ENV``'s value in every process of this node (besides the owner marker)."""
        return f"{self.owner}/{self.name}"

    def _start(self, name: str, argv: Sequence[str]) -> ManagedProcess:
        run = self._runs[name] = self._runs.get(name, 0) + 1
        proc = ManagedProcess(name, self.enter(argv),
                              self.workdir / "logs" / f"{name}-{run}.log", self.owner,
                              env={NODE_ENV: self.marker}).start()
        self.processes[name] = proc
        return proc

    def start_containerd(self) -> None:
        proc = self._start("containerd", ["containerd", "--config",
                                          str(self.workdir / "containerd.toml")])
        wait_for(f"containerd on {self.name} to answer",
                 lambda: self.ctr("version", check=False).returncode == 0, 60, interval=0.2,
                 alive=proc.check_running)

    def import_images(self, archives: Iterable[Path]) -> None:
        """Import OCI archives into the node's containerd, as a node image would have them."""
        for archive in archives:
            self.ctr("images", "import", str(archive))

    def start_kubelet(self) -> None:
        self._start("kubelet", [
            str(find_tool("kubelet")), f"--config={self.workdir / 'kubelet.yaml'}",
            f"--kubeconfig={self.workdir / 'kubelet.kubeconfig'}",
            f"--hostname-override={self.name}", f"--node-ip={self.address}", "--v=1",
            *([f"--node-labels={','.join(f'{k}={v}' for k, v in sorted(self.labels.items()))}"]
              if self.labels else [])])

    def start_kube_proxy(self) -> None:
        self._start("kube-proxy", [str(find_tool("kube-proxy")),
                                   f"--config={self.workdir / 'kube-proxy.yaml'}", "--v=1"])

    def start(self, images: Iterable[Path]) -> None:
        """containerd (with the images), then kubelet and kube-proxy."""
        self.start_containerd()
        self.import_images(images)
        self.start_kubelet()
        self.start_kube_proxy()

    def kill(self, name: str) -> None:
        """SIGKILL one of the node's processes (``kubelet``, ``containerd``, ``kube-proxy``),
        as a crash would; its children (containerd's shims) stay."""
        proc = self.processes[name]
        assert proc.popen is not None
        # nsenter execs the command, so the managed pid is the process itself
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait(10)

    def check_running(self) -> None:
        for proc in self.processes.values():
            proc.check_running()

    # -- teardown --------------------------------------------------------------------------

    def stop(self) -> None:
        """The VM powers off: every process of it is killed, its mount namespace (with every
        mount made in it, pod network namespaces included) and its cgroups are removed.

        Pods are not deleted one by one through the runtime: their network namespaces, veths
        and rules go with the VM's.
        """
        stop_owned(self.marker, timeout=0, variable=NODE_ENV)  # containerd's shims too
        for proc in self.processes.values():
            proc.stop(timeout=5)  # reaps them
        self._kill_cgroup_members()
        self._remove_mount_namespace()
        self._remove_cgroups()

    def _kill_cgroup_members(self) -> None:
        remove_cgroups(self.cgroup_root.strip("/"), kill=True, remove=False)

    def _remove_cgroups(self) -> None:
        remove_cgroups(self.cgroup_root.strip("/"), kill=False, remove=True)

    def _remove_mount_namespace(self) -> None:
        unmount_under(self.workdir)

    def remove_disk(self) -> None:
        """Delete what the VM kept on disk (after ``stop``); its logs stay."""
        shutil.rmtree(self.fs, ignore_errors=True)
        shutil.rmtree(self.workdir / "containerd", ignore_errors=True)


# -- sweeping up after nodes, also when whoever ran them is gone ------------------------------


def _cgroup_tree(hierarchy: Path, name: str) -> list[Path]:
    """``name`` and everything below it in one hierarchy, deepest first."""
    root = hierarchy / name
    if not root.is_dir():
        return []
    below = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                   reverse=True)
    return [*below, root]


def remove_cgroups(pattern: str, *, kill: bool = True, remove: bool = True) -> list[str]:
    """SIGKILL every process in the top-level cgroups matching ``pattern`` (a glob, e.g. a
    node's cgroup root or ``<prefix>-*``) and remove them; return the names found.

    Containers' processes do not carry the owner marker (runc gives them the image's
    environment): their cgroups are how they are found.
    """
    names: set[str] = set()
    for hierarchy in _cgroup_hierarchies():
        names.update(p.name for p in hierarchy.glob(pattern) if p.is_dir())
    trees = [d for h in _cgroup_hierarchies() for n in sorted(names) for d in _cgroup_tree(h, n)]

    def members() -> set[int]:
        pids: set[int] = set()
        for directory in trees:
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        return pids

    if kill:
        deadline = time.monotonic() + 15
        while (alive := members()) and time.monotonic() < deadline:
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        if alive:
            log.warning("event=cgroup_processes_survived cgroups=%s pids=%s", sorted(names),
                        sorted(alive))
    if remove:
        for directory in trees:
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while the last processes are being reaped
                    time.sleep(0.1)
    return sorted(names)


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory`` in this mount namespace, in mount order."""
    prefix = str(directory.resolve())
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def unmount_under(directory: Path) -> None:
    """Unmount everything mounted at or below ``directory`` (a node's namespace pin and the
    private mount it sits on)."""
    for point in reversed(mounts_under(directory)):
        _run(["umount", point], check=False)
