"""What a node needs for azure-cni, read from its files only (no Azure credential, no API).

Run on a node (``azure-cni preflight node``, e.g. in ``kubectl debug node/<node>`` where the
node's files are under ``/host``) and by the agent, which reports a failure in its pool's
AgentReady condition: the reason names the check (``AGENT_REASONS``) and the message what was
found, so ``azure-cni preflight`` can say what to do from the cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from azure_cni.agent.install import CONFLIST_NAME, PORTMAP, shadowing_configs
from azure_cni.api.settings import AgentSettings
from azure_cni.preflight.findings import Check, Finding, Result


@dataclass(frozen=True)
class AgentReason:
    """How the agent reports a failed node check in its AgentReady condition."""

    reason: str
    #: False: pods cannot use azure-cni on the node; True: they can, without some feature
    serving: bool
    fix: str


#: the check behind each AgentReady reason the agent uses for a node problem
AGENT_REASONS: dict[Check, AgentReason] = {
    Check.HOST_PYTHON: AgentReason(
        "HostPythonMissing", False,
        "install python3 (3.8 or later) on the node image, or set agent.hostPython to where "
        "it is"),
    Check.CNI_CONFIG_ORDER: AgentReason(
        "OtherNetworkFirst", False,
        "remove the other network plugin's configuration from the node (uninstall that "
        f"plugin), or rename it to sort after {CONFLIST_NAME}: the runtime uses the first one"),
    Check.PORTMAP: AgentReason(
        "PortmapMissing", True,
        "install the CNI reference plugins (containernetworking-plugins) into agent.cniBinDir; "
        "until then pods with a hostPort cannot start there"),
    Check.CHAINED_PLUGINS: AgentReason(
        "ChainedPluginMissing", True,
        "install the plugin into agent.cniBinDir, or remove it from agent.extraPlugins"),
}


def _on(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def node_findings(agent: AgentSettings, node: str, *, host_root: Path = Path("/"),
                  cni_root: Path | None = None) -> list[Finding]:
    """Every node check, as a finding each. ``host_root`` is where the node's files are (the
    agent's ``--host-root``); ``cni_root`` where its CNI directories are (the agent mounts
    them at their own paths: ``/``), by default ``host_root``."""
    cni_root = host_root if cni_root is None else cni_root
    findings = [_python(agent, node, host_root)]
    bin_dir = _on(cni_root, agent.cni_bin_dir)
    for plugin in (PORTMAP, *agent.extra_plugins):
        name = str(plugin["type"])
        check = Check.PORTMAP if plugin is PORTMAP else Check.CHAINED_PLUGINS
        if (bin_dir / name).exists():
            findings.append(Finding(check, node, Result.PASS,
                                    f"{name} is in {agent.cni_bin_dir}"))
        else:
            what = ("the conflist chains it for hostPorts" if plugin is PORTMAP
                    else "agent.extraPlugins chains it")
            findings.append(Finding(check, node, Result.FAIL,
                                    f"{name} is not in {agent.cni_bin_dir} ({what})",
                                    AGENT_REASONS[check].fix))
    earlier = shadowing_configs(_on(cni_root, agent.cni_conf_dir))
    if earlier:
        findings.append(Finding(
            Check.CNI_CONFIG_ORDER, node, Result.FAIL,
            f"{', '.join(earlier)} in {agent.cni_conf_dir} "
            f"{'sorts' if len(earlier) == 1 else 'sort'} before {CONFLIST_NAME}, so the "
            "container runtime uses it and not azure-cni",
            AGENT_REASONS[Check.CNI_CONFIG_ORDER].fix))
    else:
        findings.append(Finding(Check.CNI_CONFIG_ORDER, node, Result.PASS,
                                f"no network configuration in {agent.cni_conf_dir} sorts "
                                f"before {CONFLIST_NAME}"))
    return findings


def _python(agent: AgentSettings, node: str, host_root: Path) -> Finding:
    python = _on(host_root, agent.host_python)
    if python.exists() and os.access(python, os.X_OK):
        return Finding(Check.HOST_PYTHON, node, Result.PASS,
                       f"{agent.host_python} is there for the CNI plugin")
    found = "is not executable" if python.exists() else "does not exist"
    return Finding(Check.HOST_PYTHON, node, Result.FAIL,
                   f"{agent.host_python} {found} on the node; the azure-vnet CNI plugin runs "
                   "with it", AGENT_REASONS[Check.HOST_PYTHON].fix)


def agent_report(findings: list[Finding]) -> tuple[bool, str, str] | None:
    """What the agent puts in AgentReady for failed node checks: (still serving, reason,
    message); None when every check passed. A check that keeps pods from using azure-cni
    outranks one that only costs a feature."""
    bad = [f for f in findings if f.result is Result.FAIL and f.check in AGENT_REASONS]
    if not bad:
        return None
    bad.sort(key=lambda f: AGENT_REASONS[f.check].serving)
    first = AGENT_REASONS[bad[0].check]
    return first.serving, first.reason, "; ".join(f.message for f in bad)
