"""A real containerd (Debian's 1.6) in a bare simulated node's network namespace.

For the tiers that run the agent as a process (``node.LocalNode``): containerd runs in the
node's network namespace but in the machine's mount namespace, so that agent can open the pod
netns files it creates under ``/run/netns``. Without a node it runs in the machine's network
namespace, for host-network containers only (``chartrun``: a chart's container as a node runs
it, reaching a loopback API server and ARM emulator). The pause image comes from
``hack/build-images.sh`` (no registry). The real nodes of ``kubenode`` use the same config.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from azure_cni_sim.node import LocalNode
from azure_cni_sim.procs import ManagedProcess, stop_owned, wait_for
from azure_cni_sim.tools import find_tool


def containerd_config(*, root: Path, state: str, socket: str, cni_bin_dir: str | Path,
                      cni_conf_dir: str | Path, sandbox_image: str | None,
                      runc_root: Path | None = None) -> str:
    """containerd 1.6's config.toml for a runtime of the simulation (a VM's, or a test's);
    without ``sandbox_image`` the CRI keeps its default (only ``ctr run`` is used then)."""
    runc_options = f"""
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = "{runc_root}"
""" if runc_root else ""
    return f"""version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  {f'sandbox_image = "{sandbox_image}"' if sandbox_image else ""}
  disable_apparmor = true
  # this machine forbids lowering oom_score_adj (runc would fail with EACCES)
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin_dir}"
    conf_dir = "{cni_conf_dir}"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"{runc_options}
"""


class Containerd:
    """Debian's containerd 1.6 in a host namespace, with everything under one directory:
    ``node``'s network namespace, or the machine's when there is no node."""

    def __init__(self, workdir: Path, node: LocalNode | None = None) -> None:
        self.workdir = workdir
        self.node = node
        self.owner = f"containerd-{uuid.uuid4().hex[:10]}"
        # containerd refuses socket paths over 104 bytes; test work directories are longer
        self.socket_dir = Path(tempfile.mkdtemp(prefix="azcd-", dir="/run"))
        self.socket = self.socket_dir / "c.sock"
        self.cgroup_parent = f"azcni-test-{uuid.uuid4().hex[:8]}"
        self.proc: ManagedProcess | None = None

    @property
    def cni_conf_dir(self) -> Path:
        return self.node.conf_dir if self.node is not None else self.workdir / "cni" / "net.d"

    def config(self, sandbox_image: str | None) -> str:
        d = self.workdir
        bin_dir = self.node.bin_dir if self.node is not None else d / "cni" / "bin"
        return containerd_config(root=d / "root", state=str(d / "state"),
                                 socket=str(self.socket), cni_bin_dir=bin_dir,
                                 cni_conf_dir=self.cni_conf_dir, sandbox_image=sandbox_image,
                                 runc_root=d / "runc")

    def start(self, *archives: Path, sandbox_image: str | None = None) -> None:
        """Start containerd and import the OCI ``archives`` (the pod sandbox's among them
        when pods are run through the CRI)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "config.toml"
        path.write_text(self.config(sandbox_image))
        # nsenter --net, not "ip netns exec": containerd must stay in the machine's mount
        # namespace so the agent can open the pod netns files it creates under /run/netns
        in_netns = [] if self.node is None else ["nsenter", f"--net=/run/netns/{self.node.netns}"]
        self.proc = ManagedProcess(
            "containerd", [*in_netns, "containerd", "--config", str(path)],
            self.workdir / "containerd.log", self.owner).start()
        wait_for("containerd to answer", lambda: self.ctr("version", check=False).returncode
                 == 0, 60, interval=0.2, alive=self.proc.check_running)
        for archive in archives:
            self.ctr("images", "import", str(archive))

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ctr", "-a", str(self.socket), "-n", "k8s.io", *args],
                              capture_output=True, text=True, check=check, timeout=120)

    def crictl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        endpoint = f"unix://{self.socket}"
        result = subprocess.run(
            [str(find_tool("crictl")), "--runtime-endpoint", endpoint, "--image-endpoint",
             endpoint, "--timeout", "120s", *args],
            capture_output=True, text=True, check=False, timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"crictl {' '.join(args)} failed: {result.stderr}\n"
                                 f"containerd log:\n{self.proc.log_tail(30) if self.proc else ''}")
        return result

    def network_ready(self) -> bool:
        info = json.loads(self.crictl("info").stdout)
        return any(c["type"] == "NetworkReady" and c["status"]
                   for c in info["status"]["conditions"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.running():
            try:
                self.crictl("rmp", "--all", "--force", check=False)
            finally:  # containerd stops even when crictl cannot be run
                self.proc.stop()
        stop_owned(self.owner)  # containerd-shim-runc-v2 processes carry the marker
        for mountpoint in reversed(_mountpoints_under(self.workdir)):
            subprocess.run(["umount", "-l", mountpoint], check=False)
        for controller in Path("/sys/fs/cgroup").iterdir():
            leftover = controller / self.cgroup_parent
            if leftover.is_dir():
                for child in sorted(leftover.rglob("*"), reverse=True):
                    if child.is_dir():
                        child.rmdir()
                leftover.rmdir()
        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def _mountpoints_under(directory: Path) -> list[str]:
    prefix = str(directory.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return sorted(p for p in points if p.startswith(prefix))
