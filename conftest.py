"""Fixtures shared by every test tier, and the guarantee that tests leave nothing running.

The session puts a marker in its own environment; every process a test starts (directly or
through the simulation) inherits it. At the end of the session any process still carrying the
marker is reported, killed, and fails the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from azure_cni_sim.cluster import ExistingCluster, LocalCluster
from azure_cni_sim.node import LocalNode, apply_crd, simulated_node
from azure_cni_sim.procs import owned_pids, stop_owned

SESSION_ENV = "AZURE_CNI_TEST_SESSION"
_session_token = os.environ.setdefault(SESSION_ENV, uuid.uuid4().hex)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _survivors() -> list[int]:
    mine = {os.getpid()}
    return [p for p in owned_pids(_session_token, SESSION_ENV) if p not in mine]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    survivors = _survivors()
    if not survivors:
        return
    report = "\n".join(f"  pid {p}: {_cmdline(p)}" for p in survivors)
    stop_owned(_session_token, timeout=5)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"processes started by the tests survived the session:\n{report}",
                            red=True, bold=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, iptables, containerd)")
    for item in items:
        if "netns" in item.keywords or "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster | ExistingCluster]:
    """A Kubernetes API server: ``KUBECONFIG``'s cluster if set, else a local control plane."""
    existing = os.environ.get("KUBECONFIG")
    if existing and Path(existing).is_file():
        yield ExistingCluster(Path(existing))
        return
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def nodeippool_crd(kube: LocalCluster | ExistingCluster) -> None:
    """The NodeIPPool CRD, applied and Established."""
    apply_crd(kube.kubectl)


@pytest.fixture
def node(kube: LocalCluster | ExistingCluster, nodeippool_crd: None,
         netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[LocalNode]:
    """A simulated VM whose agent is not started yet: publish its pool, then start it."""
    with simulated_node(kube.kubectl, kube.kubeconfig, netns_factory.create,
                        tmp_path / "node") as local:
        yield local


@pytest.fixture
def netns_factory() -> Iterator[NetnsFactory]:
    """Creates throwaway network namespaces and deletes them after the test."""
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


class NetnsFactory:
    """Named network namespaces (``azcni-t-<random>``) owned by one test."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def create(self, label: str = "ns") -> str:
        name = f"azcni-t-{label[:6]}-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    def cleanup(self) -> None:
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        self.names.clear()


@pytest.fixture
def legacy_iptables(tmp_path: Path) -> Iterator[LegacyIptables]:
    """iptables' legacy backend, which serialises writers on the xtables lock, with a lock
    file of this test's own (nothing else on the machine waits for it)."""
    tables = LegacyIptables(tmp_path / "legacy-iptables")
    try:
        yield tables
    finally:
        tables.release()


class LegacyIptables:
    """An environment whose ``iptables*`` commands are the legacy backend, and its lock."""

    COMMANDS = ("iptables", "iptables-save", "iptables-restore")

    def __init__(self, workdir: Path) -> None:
        bin_dir = workdir / "bin"
        bin_dir.mkdir(parents=True)
        for name in self.COMMANDS:  # xtables-legacy-multi acts on the name it is called by
            (bin_dir / name).symlink_to("/usr/sbin/xtables-legacy-multi")
        self.lock = workdir / "xtables.lock"
        self.lock.touch()
        self.env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}",
                    "XTABLES_LOCKFILE": str(self.lock)}
        self._holder: subprocess.Popen[bytes] | None = None

    def run(self, netns: str, *args: str, check: bool = True,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """An iptables command of this backend inside ``netns``."""
        return subprocess.run(["ip", "netns", "exec", netns, "env", *self._assignments(),
                               *args], input=stdin, capture_output=True, text=True,
                              check=check, timeout=60)

    def _assignments(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.env.items()]

    def hold(self) -> None:
        """Take the xtables lock, as kube-proxy does while it syncs, until ``release``."""
        holder = ("import fcntl, sys\n"
                  "with open(sys.argv[1], 'a') as f:\n"
                  "    fcntl.flock(f, fcntl.LOCK_EX)\n"
                  "    sys.stdin.read()\n")  # holds it until killed or stdin closes
        self._holder = subprocess.Popen([sys.executable, "-c", holder, str(self.lock)],
                                        stdin=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while subprocess.run(["flock", "-n", str(self.lock), "true"],
                             check=False).returncode == 0:
            assert time.monotonic() < deadline, "flock did not take the xtables lock"
            time.sleep(0.02)

    def release(self) -> None:
        if self._holder is not None:
            self._holder.kill()
            self._holder.wait()
            if self._holder.stdin is not None:
                self._holder.stdin.close()
            self._holder = None
