"""The cluster checks (pure): providerIDs, --max-pods against maxIPs, the agents' reports."""

from __future__ import annotations

from azure_cni.preflight.cluster import NodeFacts, cluster_findings
from azure_cni.preflight.findings import Check, Result

VM = ("azure:///subscriptions/s/resourceGroups/nodes/providers/Microsoft.Compute/"
      "virtualMachines/vm0")
SERVING = (True, "Serving", "serving pods on /run/azure-cni/agent.sock")


def by_check(node: NodeFacts, default_max_ips: int = 32) -> dict[Check, tuple[Result, str, str]]:
    return {f.check: (f.result, f.message, f.fix)
            for f in cluster_findings([node], default_max_ips)}


def test_a_ready_node() -> None:
    found = by_check(NodeFacts("vm0", VM, 32, 32, SERVING))
    assert {check: r for check, (r, _, _) in found.items()} == {
        Check.PROVIDER_ID: Result.PASS, Check.MAX_PODS: Result.PASS,
        Check.HOST_PYTHON: Result.PASS, Check.PORTMAP: Result.PASS,
        Check.CHAINED_PLUGINS: Result.PASS, Check.CNI_CONFIG_ORDER: Result.PASS}


def test_a_node_without_provider_id() -> None:
    result, message, fix = by_check(NodeFacts("vm0", "", 32))[Check.PROVIDER_ID]
    assert result is Result.FAIL and "no spec.providerID" in message
    assert "--provider-id=azure:///subscriptions/" in fix


def test_a_provider_id_that_is_no_azure_vm() -> None:
    result, message, _ = by_check(NodeFacts("vm0", "kind://docker/kind/vm0", 32))[
        Check.PROVIDER_ID]
    assert result is Result.FAIL and "is not an Azure virtual machine" in message


def test_max_pods_beyond_the_pools_ceiling() -> None:
    result, message, fix = by_check(NodeFacts("vm0", VM, 110, 32, SERVING))[Check.MAX_PODS]
    assert result is Result.FAIL
    assert "kubelet accepts 110 pods (--max-pods) but the node's pool holds at most 32" in message
    assert "--max-pods" in fix and '"maxIPs":110' in fix
    # before the pool exists, the chart's pool.maxIPs is what the node will get
    result, message, _ = by_check(NodeFacts("vm0", VM, 110), default_max_ips=250)[
        Check.MAX_PODS]
    assert result is Result.PASS


def test_what_the_agent_reported() -> None:
    found = by_check(NodeFacts("vm0", VM, 32, 32, (False, "OtherNetworkFirst",
                                                   "05-cilium.conflist sorts before ...")))
    result, message, fix = found[Check.CNI_CONFIG_ORDER]
    assert result is Result.FAIL and "05-cilium.conflist" in message and fix
    skipped = by_check(NodeFacts("vm0", VM, 32))
    assert skipped[Check.HOST_PYTHON][0] is Result.SKIP
    assert "azure-cni preflight node" in skipped[Check.HOST_PYTHON][1]
