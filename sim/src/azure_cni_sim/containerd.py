"""A real containerd (Debian's 1.6) inside a simulated VM, and a pause image built locally.

There is no registry here: the pause image is compiled from ``hack/images/pause/pause.c`` and
imported as an OCI archive. containerd runs in the VM's network namespace but in the machine's
mount namespace, so the agent can open the pod netns files it creates under ``/run/netns``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from pathlib import Path

from azure_cni_sim.node import LocalNode
from azure_cni_sim.procs import ManagedProcess, stop_owned, wait_for
from azure_cni_sim.tools import find_tool, source_root

PAUSE_IMAGE = "localhost/azure-cni-pause:sim"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build_pause_image(workdir: Path) -> Path:
    """Compile hack/images/pause/pause.c statically and package it as an OCI image archive."""
    root = source_root()
    if root is None:
        raise FileNotFoundError("hack/images/pause/pause.c is only in a source checkout")
    workdir.mkdir(parents=True, exist_ok=True)
    binary = workdir / "pause"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(binary),
                    str(root / "hack" / "images" / "pause" / "pause.c")], check=True, timeout=120)
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w", format=tarfile.PAX_FORMAT) as layer_tar:
        data = binary.read_bytes()
        entry = tarfile.TarInfo("pause")
        entry.size, entry.mode = len(data), 0o755
        layer_tar.addfile(entry, io.BytesIO(data))
    layer = layer_buffer.getvalue()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Entrypoint": ["/pause"]},
                         "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": _digest(layer), "size": len(layer)}]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": _digest(manifest), "size": len(manifest),
        "annotations": {"io.containerd.image.name": PAUSE_IMAGE,
                        "org.opencontainers.image.ref.name": "test"}}]}).encode()
    archive = workdir / "pause.tar"
    with tarfile.open(archive, "w") as out:
        for name, data in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                           ("index.json", index),
                           *((f"blobs/sha256/{_digest(d)[7:]}", d)
                             for d in (layer, config, manifest))]:
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            out.addfile(entry, io.BytesIO(data))
    return archive


class Containerd:
    """Debian's containerd 1.6 in a host namespace, with everything under one directory."""

    def __init__(self, workdir: Path, node: LocalNode) -> None:
        self.workdir = workdir
        self.node = node
        self.owner = f"containerd-{uuid.uuid4().hex[:10]}"
        # containerd refuses socket paths over 104 bytes; test work directories are longer
        self.socket_dir = Path(tempfile.mkdtemp(prefix="azcd-", dir="/run"))
        self.socket = self.socket_dir / "c.sock"
        self.cgroup_parent = f"azcni-test-{uuid.uuid4().hex[:8]}"
        self.proc: ManagedProcess | None = None

    def config(self) -> str:
        d = self.workdir
        return f"""version = 2
root = "{d / 'root'}"
state = "{d / 'state'}"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  # this VM forbids lowering oom_score_adj (runc would fail with EACCES)
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{self.node.bin_dir}"
    conf_dir = "{self.node.conf_dir}"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = "{d / 'runc'}"
"""

    def start(self, image: Path) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.node.conf_dir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "config.toml"
        path.write_text(self.config())
        # nsenter --net, not "ip netns exec": containerd must stay in the machine's mount
        # namespace so the agent can open the pod netns files it creates under /run/netns
        self.proc = ManagedProcess(
            "containerd", ["nsenter", f"--net=/run/netns/{self.node.netns}", "containerd",
                           "--config", str(path)],
            self.workdir / "containerd.log", self.owner).start()
        wait_for("containerd to answer", lambda: self.ctr("version", check=False).returncode
                 == 0, 60, interval=0.2, alive=self.proc.check_running)
        self.ctr("images", "import", str(image))

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
            self.crictl("rmp", "--all", "--force", check=False)
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
