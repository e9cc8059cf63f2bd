"""Docker Engine (Debian's ``docker.io``) inside a simulated VM, its files under one directory.

dockerd runs in the VM's network namespace and in a mount namespace of its own (``in_vm``)
in which ``/etc/docker`` and ``/run/docker/plugins`` are directories of this VM, so it reads
none of the machine's configuration and finds exactly this VM's network plugins, at the path
a real VM's dockerd looks in. Its sockets and its exec root (where it keeps each container's
network namespace) live in a short directory under ``/run``: unix socket paths are limited
to about 100 bytes.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from azure_cni_sim.procs import ManagedProcess, stop_owned, wait_for

DOCKER = "/usr/bin/docker"  # the package's CLI, whatever else PATH holds
DOCKERD = "/usr/sbin/dockerd"


def in_vm(netns: str, argv: Sequence[str], *, binds: Sequence[tuple[Path, str]] = (),
          tmpfs: Sequence[str] = ()) -> list[str]:
    """A command line that runs ``argv`` in the VM's network namespace and in a mount
    namespace of its own where ``tmpfs`` paths are empty and each ``(directory, path)`` of
    ``binds`` is mounted at ``path``. Mounts made inside do not reach the machine."""
    script = ["set -e"]
    script += [f"mount -t tmpfs -o size=1m,mode=0755 azcni-sim {shlex.quote(p)}" for p in tmpfs]
    for source, target in binds:
        script += [f"mkdir -p {shlex.quote(target)}",
                   f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}"]
    script.append(f'exec nsenter --net=/run/netns/{shlex.quote(netns)} "$@"')
    return ["unshare", "--mount", "--propagation", "slave", "sh", "-c", "\n".join(script),
            "in-vm", *argv]


class DockerEngine:
    """dockerd of one simulated VM; ``docker()`` runs the CLI against it."""

    def __init__(self, workdir: Path, netns: str, plugin_dir: Path) -> None:
        self.workdir = workdir
        self.netns = netns
        self.plugin_dir = plugin_dir
        self.owner = f"dockerd-{uuid.uuid4().hex[:10]}"
        self.run_dir = Path(tempfile.mkdtemp(prefix="azdk-", dir="/run"))
        self.proc: ManagedProcess | None = None

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    def start(self, bridge_cidr: str | None = None) -> DockerEngine:
        """Start dockerd; without ``bridge_cidr`` it has no default bridge (``--bridge none``)."""
        etc = self.workdir / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "daemon.json").write_text("{}\n")
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        bridge = ["--bip", bridge_cidr] if bridge_cidr else ["--bridge", "none"]
        argv = in_vm(self.netns, [
            DOCKERD, "--data-root", str(self.workdir / "data"),
            "--exec-root", str(self.run_dir / "exec"), "-H", f"unix://{self.socket}",
            "--pidfile", str(self.run_dir / "docker.pid"),
            "--config-file", str(etc / "daemon.json"), *bridge],
            binds=[(etc, "/etc/docker"), (self.plugin_dir, "/run/docker/plugins")])
        self.proc = ManagedProcess("dockerd", argv, self.workdir / "dockerd.log",
                                   self.owner).start()
        wait_for("dockerd to answer", lambda: self.docker("version", check=False).returncode
                 == 0, 60, interval=0.2, alive=self.proc.check_running)
        return self

    def docker(self, *args: str, check: bool = True,
               timeout: float = 180) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
               "DOCKER_CONFIG": str(self.workdir / "cli")}
        result = subprocess.run([DOCKER, "-H", f"unix://{self.socket}", *args],
                                capture_output=True, text=True, check=False, timeout=timeout,
                                env=env)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}): "
                                 f"{result.stderr.strip()}\ndockerd log:\n{self.log_tail()}")
        return result

    def log_tail(self, lines: int = 30) -> str:
        return self.proc.log_tail(lines) if self.proc else ""

    def load(self, archive: Path) -> None:
        self.docker("load", "-i", str(archive))

    def pid_of(self, container: str) -> int:
        return int(self.docker("inspect", "-f", "{{.State.Pid}}", container).stdout.strip())

    def stop(self) -> None:
        if self.proc is not None and self.proc.running():
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
            self.proc.stop(timeout=30)
        stop_owned(self.owner)  # its containerd and the shims carry the marker
        shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.workdir / "data", ignore_errors=True)
