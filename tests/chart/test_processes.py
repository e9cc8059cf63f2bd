"""The real operator process and the agent's real API client, on the chart's own tokens."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from tests.chart.conftest import Release, agent_kubeconfig
from tests.chart.tokens import service_account_kubeconfig

from azure_cni.agent.kube import KubeApiError, KubePoolApi
from azure_cni.api.nodeippool import (
    AGENT_FIELD_MANAGER,
    ConditionType,
    NodeIPPool,
    status_apply_body,
)
from azure_cni_sim.arm import ArmConfig, ArmEmulator
from azure_cni_sim.cluster import run_kubectl
from azure_cni_sim.launch import operator_settings, start_operator
from azure_cni_sim.node import (
    LocalNode,
    api_port_of,
    pool_addresses,
    publish_pool,
    setup_host_nic,
)
from azure_cni_sim.procs import wait_for

pytestmark = pytest.mark.cluster

#: what the operator or the Kubernetes client log when RBAC refuses them something
PERMISSION_PROBLEM = re.compile(r"[Ff]orbidden|Not enough permissions|\(403\)|status=403")



def pool_of(release: Release, node: str) -> NodeIPPool | None:
    out = release.kube.kubectl("get", "nodeippool", node, "-o", "json", check=False)
    return NodeIPPool.from_object(json.loads(out.stdout)) if out.returncode == 0 else None


def test_operator_process_runs_on_its_chart_token(release: Release, tmp_path: Path) -> None:
    """The operator needs nothing the chart does not grant: the pool of a new node is created
    and filled, follows the agent's usage, and goes with its node once nothing is in use."""
    emulator = ArmEmulator(ArmConfig(lro_polls=1, put_retry_after=0)).start()
    operator = None
    try:
        vnet = emulator.add_vnet("vnet", "198.18.0.0/16", {"nodes": "198.18.0.0/20"})
        node = f"azcni-chart-op-{uuid.uuid4().hex[:6]}"
        vm = emulator.add_vm(node, vnet.subnet_ids["nodes"])
        release.kube.kubectl("create", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
            "spec": {"providerID": vm.provider_id}}))
        release.nodes.append(node)

        kubeconfig = service_account_kubeconfig(release.kube.kubeconfig, release.namespace,
                                                release.service_account("operator"),
                                                tmp_path / "operator.kubeconfig")
        settings = operator_settings(emulator, pool={"batchSize": 4, "minFreeIPs": 4,
                                                     "maxFreeIPs": 8, "maxIPs": 64})
        operator = start_operator(tmp_path / "operator", kubeconfig, emulator, settings,
                                  owner=uuid.uuid4().hex, identity_vm=vm.name,
                                  pod_namespace=release.namespace)

        def wait_allocated(count: int, why: str) -> None:
            wait_for(f"pool {node} to hold {count} addresses ({why})",
                     lambda: (p := pool_of(release, node)) is not None
                     and p.status.allocated == count,
                     timeout=60, interval=0.25, alive=operator.check_running)

        wait_allocated(4, "the first batch for a new node")
        # the agent's token reports 1 used: 3 free is below the warm pool, one more batch
        run_kubectl(agent_kubeconfig(release, tmp_path, node), "apply", "--server-side",
                    f"--field-manager={AGENT_FIELD_MANAGER}", "--subresource=status",
                    "-f", "-", input=json.dumps(status_apply_body(node, {"used": 1})))
        wait_allocated(8, "the agent's usage left too few free")

        release.kube.kubectl("delete", "node", node)
        # the pool gives back only what the agent acknowledges as unused (its node's token
        # went with the node, so the admin speaks for the agent here)
        marked: list[str] = []

        def all_releasing() -> bool:
            pool = pool_of(release, node)
            if pool is None or {ip.state for ip in pool.status.ips} != {"Releasing"}:
                return False
            marked[:] = [ip.ip_configuration for ip in pool.status.ips]
            return True

        wait_for(f"pool {node} to mark every address Releasing", all_releasing, timeout=60,
                 interval=0.25, alive=operator.check_running)
        release.kube.kubectl(
            "apply", "--server-side", f"--field-manager={AGENT_FIELD_MANAGER}",
            "--subresource=status", "--force-conflicts", "-f", "-",
            input=json.dumps(status_apply_body(node, {"used": 0, "releaseAcks": marked})))
        release.kube.kubectl("wait", "--for=delete", f"nodeippool/{node}", "--timeout=60s")
        nic = emulator.nic(vm.nic_id)
        assert not [c for c in nic["properties"]["ipConfigurations"]
                    if c["name"].startswith("azcni-")], "the operator emptied the NIC"
    finally:
        if operator is not None:
            operator.stop()
        emulator.stop()
    log = operator.log_path.read_text() if operator is not None else ""
    assert not PERMISSION_PROBLEM.search(log), operator.log_tail(40) if operator else ""


async def test_agent_client_works_on_its_chart_token(release: Release, tmp_path: Path) -> None:
    """The agent's own Kubernetes client (list, watch, apply status) with a pod-bound token."""
    own, other = release.nodes[0], release.nodes[1]
    api = await KubePoolApi.connect(agent_kubeconfig(release, tmp_path, own))
    try:
        pool, version = await api.list_pool(own)
        assert pool is not None and pool["metadata"]["name"] == own
        async for _kind, _obj in api.watch_pool(own, version, timeout_seconds=1):
            pass  # nothing changes; the server ends the watch after a second
        await api.apply_status(own, status_apply_body(own, {
            "used": 3, "releaseAcks": [],
            "conditions": [{"type": "AgentReady", "status": "True", "reason": "Serving",
                            "message": "test"}]}))
        written = pool_of(release, own)
        assert written is not None and written.status.used == 3

        with pytest.raises(KubeApiError) as refused:
            await api.apply_status(other, status_apply_body(other, {"used": 3}))
        assert refused.value.status == 403
        assert f"may not write the NodeIPPool of node {other}" in str(refused.value.body)
    finally:
        await api.close()


@pytest.mark.netns
def test_agent_process_serves_pods_on_its_chart_token(release: Release, netns_factory,
                                                      tmp_path: Path) -> None:
    """The whole agent (watch, status, readiness) with nothing but the chart's grant."""
    own = release.nodes[0]
    publish_pool(release.kube.kubectl, own, pool_addresses("198.18.0", 40, 4))
    kubeconfig = agent_kubeconfig(release, tmp_path, own)
    hostns = netns_factory.create("host")
    setup_host_nic(hostns, primary_cidr="198.18.0.4/24", gateway="198.18.0.1")
    node = LocalNode(name=own, netns=hostns, workdir=tmp_path / "node", kubeconfig=kubeconfig,
                     api_port=api_port_of(kubeconfig))
    node.link_reference_plugins()
    node.start_portal()
    try:
        node.start_agent()
        node.wait_ready()
        pod = netns_factory.create("pod")
        added = node.run_shim("ADD", uuid.uuid4().hex, pod)
        assert added.returncode == 0, added.stdout + added.stderr
        assert added.address() in pool_addresses("198.18.0", 40, 4)

        def reported() -> bool:
            pool = pool_of(release, own)
            agent = pool.status.condition(ConditionType.AGENT_READY) if pool else None
            return bool(pool and pool.status.used == 1 and agent and agent.status)

        wait_for("the agent to report its usage and readiness", reported, timeout=30)
        assert not PERMISSION_PROBLEM.search(node.agent_log()), node.agent_log()
    finally:
        node.stop()
