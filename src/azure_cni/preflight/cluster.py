"""The cluster's part of the preflight (pure): what the Nodes and NodeIPPools say.

- every Node has a ``spec.providerID`` naming an Azure VM or scale-set instance: the operator
  finds the node's NIC from it;
- kubelet's ``--max-pods`` (the Node's ``status.capacity.pods``) is no more than the addresses
  its pool may hold (``maxIPs``): otherwise pods beyond them are scheduled there and fail with
  "the pool is exhausted" (host-network pods count against ``--max-pods`` without using an
  address, so equal is safe);
- what each node's agent found on the node (``preflight.node``), from its pool's AgentReady.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from azure_cni.cloud.port import InvalidProviderID, VMRef
from azure_cni.cloud.providerid import parse_provider_id
from azure_cni.preflight.findings import Check, Finding, Result
from azure_cni.preflight.node import AGENT_REASONS

NODE_CHECKS = (Check.HOST_PYTHON, Check.PORTMAP, Check.CHAINED_PLUGINS, Check.CNI_CONFIG_ORDER)
PROVIDER_ID_FIX = ("run the node's kubelet with the Azure cloud provider (AKS nodes have it), or "
                   "with --provider-id=azure:///subscriptions/<subscription>/resourceGroups/"
                   "<group>/providers/Microsoft.Compute/virtualMachines/<vm>")


@dataclass(frozen=True)
class NodeFacts:
    """What the preflight needs of one Node and its NodeIPPool."""

    name: str
    provider_id: str
    #: kubelet's --max-pods, as the Node's capacity says (None: not reported)
    max_pods: int | None
    #: the pool's spec.maxIPs (None: no pool yet)
    pool_max_ips: int | None = None
    #: the pool's AgentReady condition: (status, reason, message); None: not reported
    agent_ready: tuple[bool, str, str] | None = None

    @classmethod
    def from_objects(cls, node: Mapping[str, Any], pool: Mapping[str, Any] | None
                     ) -> NodeFacts:
        pods = ((node.get("status") or {}).get("capacity") or {}).get("pods")
        agent = None
        max_ips = None
        if pool is not None:
            max_ips = (pool.get("spec") or {}).get("maxIPs")
            for condition in (pool.get("status") or {}).get("conditions") or ():
                if condition.get("type") == "AgentReady":
                    agent = (condition.get("status") == "True", str(condition.get("reason", "")),
                             str(condition.get("message", "")))
        return cls(str(node["metadata"]["name"]),
                   str((node.get("spec") or {}).get("providerID") or ""),
                   int(pods) if pods is not None else None,
                   int(max_ips) if max_ips is not None else None, agent)


def vm_of(node: NodeFacts) -> VMRef | None:
    """The VM the node's providerID names, if it names one."""
    try:
        return parse_provider_id(node.provider_id) if node.provider_id else None
    except InvalidProviderID:
        return None


def cluster_findings(nodes: Sequence[NodeFacts], default_max_ips: int) -> list[Finding]:
    findings: list[Finding] = []
    for node in nodes:
        findings.append(_provider_id(node))
        findings.append(_max_pods(node, default_max_ips))
        findings += _agent_report(node)
    return findings


def _provider_id(node: NodeFacts) -> Finding:
    if not node.provider_id:
        return Finding(Check.PROVIDER_ID, node.name, Result.FAIL,
                       "the Node has no spec.providerID, so the operator cannot find its VM "
                       "and NIC", PROVIDER_ID_FIX)
    try:
        vm = parse_provider_id(node.provider_id)
    except InvalidProviderID as e:
        return Finding(Check.PROVIDER_ID, node.name, Result.FAIL, str(e), PROVIDER_ID_FIX)
    kind = "Uniform scale-set instance" if vm.scale_set else "VM"
    return Finding(Check.PROVIDER_ID, node.name, Result.PASS, f"names {kind} {vm.id}")


def _max_pods(node: NodeFacts, default_max_ips: int) -> Finding:
    max_ips = node.pool_max_ips if node.pool_max_ips is not None else default_max_ips
    source = "its NodeIPPool's maxIPs" if node.pool_max_ips is not None else "pool.maxIPs"
    if node.max_pods is None:
        return Finding(Check.MAX_PODS, node.name, Result.SKIP,
                       "the Node reports no pod capacity yet (its kubelet has not started)")
    if node.max_pods > max_ips:
        return Finding(
            Check.MAX_PODS, node.name, Result.FAIL,
            f"kubelet accepts {node.max_pods} pods (--max-pods) but the node's pool holds at "
            f"most {max_ips} addresses ({source}): pods past {max_ips} would be scheduled "
            "there and fail with 'the pool is exhausted'",
            f"set the kubelet's --max-pods (maxPods) to {max_ips} or less (AKS: --max-pods of "
            f"the node pool), or raise maxIPs to {min(node.max_pods, 255)} (kubectl patch "
            f"nodeippool {node.name} --type=merge -p '{{\"spec\":{{\"maxIPs\":"
            f"{min(node.max_pods, 255)}}}}}'; pool.maxIPs for new nodes; at most 255)")
    return Finding(Check.MAX_PODS, node.name, Result.PASS,
                   f"kubelet accepts {node.max_pods} pods, the pool holds up to {max_ips}")


_BY_REASON = {reason.reason: check for check, reason in AGENT_REASONS.items()}


def _agent_report(node: NodeFacts) -> list[Finding]:
    """The node checks as the node's agent reported them."""
    if node.agent_ready is None:
        return [Finding(check, node.name, Result.SKIP,
                        "no agent has reported on this node yet: run `azure-cni preflight "
                        "node` on it (kubectl debug node/<node>, see docs/install-azure.md)")
                for check in (Check.HOST_PYTHON, Check.PORTMAP, Check.CNI_CONFIG_ORDER)]
    ready, reason, message = node.agent_ready
    failing = _BY_REASON.get(reason)
    if failing is not None:
        return [Finding(failing, node.name, Result.FAIL, f"the agent reports: {message}",
                        AGENT_REASONS[failing].fix)]
    if ready:
        return [Finding(check, node.name, Result.PASS, "the agent found it in order")
                for check in NODE_CHECKS]
    return [Finding(Check.HOST_PYTHON, node.name, Result.SKIP,
                    f"the agent has not checked the node: it reports {reason}: {message}")]
