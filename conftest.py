"""Fixtures shared by every test tier, and the guarantee that tests leave nothing running.

The session puts a marker in its own environment; every process a test starts (directly or
through the simulation) inherits it. At the end of the session any process still carrying the
marker is reported, killed, and fails the run.
"""

from __future__ import annotations

import os
import subprocess
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
