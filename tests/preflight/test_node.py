"""The node checks, on a node's files laid out under a temporary root."""

from __future__ import annotations

from pathlib import Path

import pytest

from azure_cni.api.settings import AgentSettings
from azure_cni.preflight.findings import Check, Result
from azure_cni.preflight.node import agent_report, node_findings

BANDWIDTH = {"type": "bandwidth", "capabilities": {"bandwidth": True}}


def node(root: Path, *, python: bool = True, plugins: tuple[str, ...] = ("portmap",),
         configs: tuple[str, ...] = ()) -> Path:
    (root / "usr/bin").mkdir(parents=True)
    if python:
        (root / "usr/bin/python3").write_text("#!/bin/sh\n")
        (root / "usr/bin/python3").chmod(0o755)
    (root / "opt/cni/bin").mkdir(parents=True)
    for plugin in plugins:
        (root / "opt/cni/bin" / plugin).write_text("")
    (root / "etc/cni/net.d").mkdir(parents=True)
    for name in configs:
        (root / "etc/cni/net.d" / name).write_text("{}")
    return root


def results(root: Path, agent: AgentSettings | None = None) -> dict[Check, Result]:
    return {f.check: f.result for f in node_findings(agent or AgentSettings(), "vm0",
                                                     host_root=root)}


def test_a_ready_node_passes_every_check(tmp_path: Path) -> None:
    root = node(tmp_path, configs=("10-azure.conflist", "99-loopback.conf"))
    assert results(root) == {Check.HOST_PYTHON: Result.PASS, Check.PORTMAP: Result.PASS,
                             Check.CNI_CONFIG_ORDER: Result.PASS}
    assert agent_report(node_findings(AgentSettings(), "vm0", host_root=root)) is None


@pytest.mark.parametrize(("layout", "check", "reason", "serving"), [
    ({"python": False}, Check.HOST_PYTHON, "HostPythonMissing", False),
    ({"plugins": ()}, Check.PORTMAP, "PortmapMissing", True),
    ({"configs": ("05-cilium.conflist",)}, Check.CNI_CONFIG_ORDER, "OtherNetworkFirst", False),
])
def test_each_missing_piece_fails_its_check_and_says_what_to_do(
        tmp_path: Path, layout: dict, check: Check, reason: str, serving: bool) -> None:
    findings = node_findings(AgentSettings(), "vm0", host_root=node(tmp_path, **layout))
    (bad,) = [f for f in findings if f.result is Result.FAIL]
    assert bad.check is check and bad.fix
    assert agent_report(findings) == (serving, reason, bad.message)


def test_an_extra_plugin_must_be_on_the_node(tmp_path: Path) -> None:
    agent = AgentSettings(extra_plugins=(BANDWIDTH,))
    root = node(tmp_path)
    assert results(root, agent)[Check.CHAINED_PLUGINS] is Result.FAIL
    (root / "opt/cni/bin/bandwidth").write_text("")
    assert results(root, agent)[Check.CHAINED_PLUGINS] is Result.PASS


def test_pods_kept_from_azure_cni_outrank_a_missing_feature(tmp_path: Path) -> None:
    root = node(tmp_path, plugins=(), configs=("00-other.conf",))
    serving, reason, message = agent_report(
        node_findings(AgentSettings(), "vm0", host_root=root)) or (True, "", "")
    assert (serving, reason) == (False, "OtherNetworkFirst")
    assert "portmap is not in /opt/cni/bin" in message and "00-other.conf" in message


def test_the_agent_reads_the_cni_directories_at_their_own_paths(tmp_path: Path) -> None:
    """In the agent's pod the host's files are under --host-root, but its CNI directories are
    mounted where they are on the host."""
    host = node(tmp_path / "host")
    cni = node(tmp_path / "cni", configs=("05-other.conflist",))
    findings = node_findings(AgentSettings(), "vm0", host_root=host, cni_root=cni)
    assert {f.check: f.result for f in findings}[Check.CNI_CONFIG_ORDER] is Result.FAIL
