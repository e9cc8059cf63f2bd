"""Pod subnets and node groups (issue 24), on the simulated VNet through kubectl.

Every VM has two NICs: ``eth0`` in the node subnet and ``eth1`` in the pod subnet. Two node
groups come from the chart's ``poolClasses``: group A (vm0) takes pod addresses from the node
subnet, group B (vm1, flex2: a standalone VM and a Flexible scale set's VM) from the pod
subnet on each VM's second NIC. The fabric's source check (on in every world) drops what a NIC
sends from an address that is not its own, so a pod whose traffic left the wrong NIC would
not pass silently.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Iterator

import pytest

from azure_cni.api.nodeippool import CLASS_LABEL, ConditionType, PoolMode
from azure_cni.datapath.podnic import NIC_PRIORITY, POD_NIC_TABLE
from azure_cni_sim import workloads
from azure_cni_sim.procs import wait_for
from azure_cni_sim.vnet import INTERNET_HOST, ONPREM_HOST
from azure_cni_sim.world import DEMO_POOL, POD_SUBNET, POD_SUBNET_ID, SUBNET, World

# a world of its own: its start counts against the first test (slow on a loaded machine)
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

AGENTPOOL = "kubernetes.azure.com/agentpool"
A, B, B_FLEX = "vm0", "vm1", "flex2"
NS = "groups"
PORT = workloads.WEB_PORT
WHOAMI = workloads.WHOAMI
CLASSES = [
    {"name": "group-a", "nodeSelector": {"matchLabels": {AGENTPOOL: "a"}}, "pool": {}},
    {"name": "group-b", "nodeSelector": {"matchLabels": {AGENTPOOL: "b"}},
     "pool": {"podSubnetID": POD_SUBNET_ID, "minFreeIPs": 6, "maxFreeIPs": 12}},
]


@pytest.fixture(scope="module")
def groups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("groups"), machines=("standalone", "standalone",
                                                            "flexible"),
              drift_check_seconds=10, pod_nics=True,
              pool_defaults={**DEMO_POOL, "releaseDelaySeconds": 5},
              node_labels={A: {AGENTPOOL: "a"}, B: {AGENTPOOL: "b"}, B_FLEX: {AGENTPOOL: "b"}},
              chart_overrides={"poolClasses": CLASSES})
    w.start()
    try:
        w.kubectl("create", "namespace", NS)
        yield w
    finally:
        w.stop()
        left = w.leftovers()
        assert not any(left.values()), f"the world left things behind: {left}"


def run_pod(world: World, name: str, node: str) -> workloads.RunningPod:
    manifest = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name, "web": "yes"}},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                 "terminationGracePeriodSeconds": 2,
                 "containers": [{"name": "web", "image": world.images["sim-app"].image,
                                 "imagePullPolicy": "IfNotPresent",
                                 "ports": [{"containerPort": PORT}],
                                 "resources": {"requests": {"cpu": "5m", "memory": "8Mi"}}}]}}
    world.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    (pod,) = workloads.running_pods(world, f"app={name}", NS, 1, timeout=120)
    return pod


def service(world: World, name: str, app: str) -> str:
    world.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": PORT}]}}))
    return f"{name}.{NS}.svc.cluster.local"


@pytest.fixture(scope="module")
def pods(groups: World) -> dict[str, workloads.RunningPod]:
    return {"a": run_pod(groups, "pod-a", A), "b": run_pod(groups, "pod-b", B),
            "flex": run_pod(groups, "pod-flex", B_FLEX)}


def table_row(table: str, name: str) -> dict[str, str]:
    """One row of kubectl's table by its header's column positions (empty cells stay empty)."""
    header, *rows = table.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    line = next(r for r in rows if r.startswith(f"{name} "))
    bounds = [*starts[1:], None]
    return {n: line[a:b].strip() for n, a, b in zip(names, starts, bounds, strict=True)}


def in_subnet(address: str, cidr: str) -> bool:
    return ipaddress.IPv4Address(address) in ipaddress.IPv4Network(cidr)


def test_each_group_s_pools_come_from_its_class_and_say_which_nic(groups: World) -> None:
    a, b = groups.pool(A), groups.pool(B)
    assert a.labels[CLASS_LABEL] == "group-a" and b.labels[CLASS_LABEL] == "group-b"
    assert a.spec.pod_subnet_id == "" and b.spec.pod_subnet_id == POD_SUBNET_ID
    assert a.status.nic is not None and b.status.nic is not None
    assert (a.status.nic.name, a.status.nic.primary_nic, a.status.nic.subnet_cidr) == (
        f"{A}-nic", True, SUBNET)
    assert (b.status.nic.name, b.status.nic.primary_nic, b.status.nic.subnet_cidr) == (
        f"{B}-pods", False, POD_SUBNET)
    # the addresses are on the second NIC; the primary NIC holds only its own
    assert groups.nic_addresses(B) == (groups.vms[B].primary_ip,)
    assert len(groups.nic_addresses(B, nic=1)) == 1 + b.status.allocated
    for pool in (b, groups.pool(B_FLEX)):
        condition = pool.status.condition(ConditionType.POOL_CLASS)
        assert condition is not None and condition.status and condition.reason == "Following"
        assert all(in_subnet(ip.address, POD_SUBNET) for ip in pool.status.ips)
    row = table_row(groups.kubectl("get", "nip", "-o", "wide").stdout, B)
    assert (row["NIC"], row["SUBNET"], row["CLASS"]) == (f"{B}-pods", POD_SUBNET, "group-b")
    classes = groups.kubectl("get", "nipc").stdout
    assert "group-b" in classes and POD_SUBNET_ID in classes


def test_b_pods_reach_a_pods_on_prem_and_the_internet_through_their_own_nic(
        groups: World, pods: dict[str, workloads.RunningPod]) -> None:
    a, b, flex = pods["a"], pods["b"], pods["flex"]
    assert in_subnet(a.ip, SUBNET) and in_subnet(b.ip, POD_SUBNET) and in_subnet(
        flex.ip, POD_SUBNET)
    # B -> A and A -> B, no NAT: each sees the other's own address; B's packets cross the
    # fabric on vm1's second NIC
    seen = groups.capture_on_fabric(
        B, f"tcp and host {b.ip} and host {a.ip}",
        lambda: workloads.http_get(groups, b, f"http://{a.ip}:{PORT}{WHOAMI}"), nic=1)
    assert any(b.ip in line for line in seen), seen
    assert workloads.http_get(groups, b, f"http://{a.ip}:{PORT}{WHOAMI}") == {
        "pod": "pod-a", "seen": b.ip}
    assert workloads.http_get(groups, a, f"http://{b.ip}:{PORT}{WHOAMI}") == {
        "pod": "pod-b", "seen": a.ip}
    assert workloads.http_get(groups, b, f"http://{flex.ip}:{PORT}{WHOAMI}") == {
        "pod": "pod-flex", "seen": b.ip}
    # on-premises sees B's pods by their pod-subnet address, both ways
    assert workloads.onprem_get(groups, f"http://{b.ip}:{PORT}{WHOAMI}") == {
        "pod": "pod-b", "seen": ONPREM_HOST}
    assert workloads.http_get(groups, b, f"http://{ONPREM_HOST}/") == {
        "host": "onprem", "seen": b.ip}
    # the internet sees an address of the NIC the pod's traffic left: the pod NIC's own
    pod_nic_primary = groups.vms[B].more_nics[0].primary_ip
    assert workloads.http_get(groups, b, f"http://{INTERNET_HOST}/") == {
        "host": "internet", "seen": pod_nic_primary}
    assert workloads.http_get(groups, flex, f"http://{INTERNET_HOST}/") == {
        "host": "internet", "seen": groups.vms[B_FLEX].more_nics[0].primary_ip}
    assert groups.fabric is not None
    for vm in (B, B_FLEX):
        assert groups.fabric.source_check_drops(vm, 0) == 0, f"{vm} sent from the wrong NIC"


def test_services_and_dns_work_from_and_to_b_pods(
        groups: World, pods: dict[str, workloads.RunningPod]) -> None:
    a, b = pods["a"], pods["b"]
    to_b, to_a = service(groups, "web-b", "pod-b"), service(groups, "web-a", "pod-a")
    cluster_ip_b = groups.get_json("service", "web-b", "-n", NS)["spec"]["clusterIP"]
    wait_for("the services' DNS names", lambda: workloads.resolve(groups, a, to_b) == [
        cluster_ip_b] and bool(workloads.resolve(groups, b, to_a)), 60, interval=1)
    assert workloads.first_answer(groups, a, f"http://{to_b}/{WHOAMI.lstrip('/')}") == {
        "pod": "pod-b", "seen": a.ip}
    assert workloads.first_answer(groups, b, f"http://{to_a}/{WHOAMI.lstrip('/')}") == {
        "pod": "pod-a", "seen": b.ip}
    # a B pod reaching a Service whose endpoint is another B pod
    flex_svc = service(groups, "web-flex", "pod-flex")
    wait_for("web-flex in DNS", lambda: bool(workloads.resolve(groups, b, flex_svc)), 60,
             interval=1)
    assert workloads.first_answer(groups, b, f"http://{flex_svc}/{WHOAMI.lstrip('/')}") == {
        "pod": "pod-flex", "seen": b.ip}


def test_an_nsg_on_the_pod_subnet_blocks_a_port_for_b_pods_only(
        groups: World, pods: dict[str, workloads.RunningPod]) -> None:
    a, b = pods["a"], pods["b"]
    assert groups.emulator is not None
    groups.emulator.add_resource_group("nsgs")
    nsg = workloads.nsg_blocking_onprem(groups, "nsgs", "pods-nsg", PORT)
    with groups.network_client() as client:
        subnet = client.subnets.get("rg1", "vnet", "pods")
        subnet.network_security_group = {"id": nsg}
        client.subnets.begin_create_or_update("rg1", "vnet", "pods", subnet).result()
    try:
        assert workloads.onprem_get(groups, f"http://{b.ip}:{PORT}{WHOAMI}") is None
        assert workloads.onprem_get(groups, f"http://{a.ip}:{PORT}{WHOAMI}") == {
            "pod": "pod-a", "seen": ONPREM_HOST}
        assert groups.onprem("ping", "-c", "1", "-W", "2", b.ip).returncode == 0
        assert workloads.http_get(groups, a, f"http://{b.ip}:{PORT}{WHOAMI}") == {
            "pod": "pod-b", "seen": a.ip}
    finally:
        with groups.network_client() as client:
            subnet = client.subnets.get("rg1", "vnet", "pods")
            subnet.network_security_group = None
            client.subnets.begin_create_or_update("rg1", "vnet", "pods", subnet).result()
    assert workloads.onprem_get(groups, f"http://{b.ip}:{PORT}{WHOAMI}") == {
        "pod": "pod-b", "seen": ONPREM_HOST}


def test_the_source_check_drops_b_traffic_sent_from_the_wrong_nic_until_the_agent_repairs(
        groups: World, pods: dict[str, workloads.RunningPod]) -> None:
    """A routing mistake on the node (the pod NIC's rule gone) sends B's packets out of the
    primary NIC: the fabric drops them, as Azure does; the agent puts the rule back."""
    b = pods["b"]
    assert groups.fabric is not None
    netns = groups.nodes[B].netns
    before = groups.fabric.source_check_drops(B, 0)
    try:
        # the agent repairs the rule within its check period, which can be shorter than a
        # kubectl exec on a loaded machine: the fault is held while it is looked at
        with workloads.agent_paused(groups, B):
            subprocess.run(["ip", "-n", netns, "rule", "del", "priority", str(NIC_PRIORITY)],
                           check=True)
            assert workloads.http_get(groups, b, f"http://{ONPREM_HOST}/", timeout=2) is None
            assert groups.fabric.source_check_drops(B, 0) > before, "nothing was dropped"
    finally:
        wait_for("the agent to route the pod subnet out of its NIC again", lambda: str(
            POD_NIC_TABLE) in subprocess.run(["ip", "-n", netns, "rule"], capture_output=True,
                                              text=True, check=False).stdout, 60, interval=1)
    assert workloads.http_get(groups, b, f"http://{ONPREM_HOST}/") == {
        "host": "onprem", "seen": b.ip}


def test_a_class_change_reaches_its_pools_and_a_mode_change_with_pods_is_refused(
        groups: World, pods: dict[str, workloads.RunningPod]) -> None:
    groups.kubectl("patch", "nipc", "group-b", "--type=merge", "-p", json.dumps(
        {"spec": {"pool": {"maxFreeIPs": 14, "mode": "Blocks"}}}))

    def followed() -> bool:
        pool = groups.pool(B)
        condition = pool.status.condition(ConditionType.POOL_CLASS)
        return pool.spec.max_free_ips == 14 and condition is not None and \
            condition.reason == "ChangeRefused"

    wait_for("vm1's pool to follow what it can of group-b", followed, 60, interval=1)
    pool = groups.pool(B)
    assert pool.spec.mode is PoolMode.ADDRESSES
    condition = pool.status.condition(ConditionType.POOL_CLASS)
    assert condition is not None and "mode cannot change while" in condition.message
    events = groups.get_json("events", "-n", "default", "--field-selector",
                             f"involvedObject.name={B},reason=FollowsPoolClass")["items"]
    assert any("maxFreeIPs=14" in e["message"] for e in events)
    groups.kubectl("patch", "nipc", "group-b", "--type=json", "-p", json.dumps(
        [{"op": "remove", "path": "/spec/pool/mode"}]))
    wait_for("the refusal to clear", lambda: (c := groups.pool(B).status.condition(
        ConditionType.POOL_CLASS)) is not None and c.status, 60, interval=1)


def test_a_node_joining_group_b_gets_its_pool_from_the_class(
        groups: World, pods: dict[str, workloads.RunningPod]) -> None:
    """flex2 leaves the cluster and joins again: its kubelet registers it with group B's
    label, and its pool comes from group-b with no edit by anyone."""
    node = groups.nodes[B_FLEX]
    # every pod leaves it first (its pool goes only once no pod holds an address of it)
    groups.kubectl("drain", B_FLEX, "--ignore-daemonsets", "--delete-emptydir-data",
                   "--force", "--timeout=180s", timeout=200)
    node.kill("kubelet")
    groups.kubectl("delete", "node", B_FLEX)
    wait_for(f"{B_FLEX}'s NodeIPPool to be deleted (its finalizer done)",
             lambda: groups.kubectl("get", "nip", B_FLEX, check=False).returncode != 0, 60)
    pods_nic = groups.vms[B_FLEX].more_nics[0]
    assert groups.nic_addresses(B_FLEX, nic=1) == (pods_nic.primary_ip,)
    node.start_kubelet()
    groups.wait_nodes_ready(timeout=180)
    groups.wait_pools_ready()
    again = groups.pool(B_FLEX)
    assert again.labels[CLASS_LABEL] == "group-b" and again.spec.pod_subnet_id == POD_SUBNET_ID
    assert again.status.nic is not None and again.status.nic.name == f"{B_FLEX}-pods"
    back = run_pod(groups, "pod-flex-again", B_FLEX)
    assert in_subnet(back.ip, POD_SUBNET)
    assert workloads.http_get(groups, pods["a"], f"http://{back.ip}:{PORT}{WHOAMI}") == {
        "pod": "pod-flex-again", "seen": pods["a"].ip}
