"""Nodes of every kind Azure has: a standalone VM, a Flexible scale set's VM and two instances
of one Uniform scale set, each a real Kubernetes node, azure-cni installed by helm.

A Uniform instance's addresses are written through Compute (one PUT of the instance model)
and read through the Network provider's scale-set NIC API; pods on it must not notice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from azure_cni.cloud.port import NewIPConfiguration
from azure_cni_sim import workloads
from azure_cni_sim.procs import wait_for
from azure_cni_sim.vnet import ONPREM_HOST
from azure_cni_sim.world import DEMO_POOL, World

pytestmark = pytest.mark.e2e

MACHINES = ("standalone", "flexible", "uniform", "uniform")
STANDALONE, FLEXIBLE, UNIFORM, UNIFORM_2 = "vm0", "flex1", "pool000000", "pool000001"
REPLICAS = 8


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("mixed"), machines=MACHINES, drift_check_seconds=10,
              pool_defaults={**DEMO_POOL, "releaseDelaySeconds": 2})
    w.start()
    try:
        w.kubectl("create", "namespace", "mixed")
        yield w
    finally:
        w.stop()
        left = w.leftovers()
        assert not any(left.values()), f"the world left things behind: {left}"


@pytest.fixture(scope="module")
def web(mixed: World) -> list[workloads.RunningPod]:
    return workloads.deploy_web(mixed, "mixed", REPLICAS)


def on(pods: list[workloads.RunningPod], vm: str) -> workloads.RunningPod:
    return next(p for p in pods if p.node == vm)


def instance_puts(world: World, vm: str, status: int | None = None) -> int:
    assert world.emulator is not None
    return world.emulator.request_count("PUT", world.vms[vm].vm_id, status=status)


def test_the_nodes_are_the_three_kinds_of_azure_vm(mixed: World) -> None:
    assert sorted(mixed.vms) == sorted([STANDALONE, FLEXIBLE, UNIFORM, UNIFORM_2])
    assert "/virtualMachineScaleSets/pool/virtualMachines/0" in mixed.vms[UNIFORM].provider_id
    nodes = {n["metadata"]["name"]: n["spec"]["providerID"]
             for n in mixed.get_json("nodes")["items"]}
    assert nodes == {name: vm.provider_id for name, vm in mixed.vms.items()}
    for name in mixed.vms:
        pool = mixed.pool(name)
        assert pool.status.nic is not None and pool.status.nic.id == mixed.vms[name].nic_id
        assert pool.status.allocated >= 4


def test_pods_on_every_kind_get_vnet_addresses_and_reach_each_other_and_on_premises(
        mixed: World, web: list[workloads.RunningPod]) -> None:
    assert {p.node for p in web} == set(mixed.vms)
    for pod in web:
        assert pod.ip in mixed.nic_addresses(pod.node), f"{pod} is not on {pod.node}'s NIC"
    uniform, uniform_2 = on(web, UNIFORM), on(web, UNIFORM_2)
    for source, target in ((uniform, uniform_2), (uniform, on(web, STANDALONE)),
                           (on(web, FLEXIBLE), uniform_2), (on(web, STANDALONE), uniform)):
        assert workloads.ping(mixed, source, target.ip), f"{source} cannot reach {target}"
    for pod in (uniform, uniform_2, on(web, FLEXIBLE)):
        answer = workloads.http_get(mixed, pod, f"http://{ONPREM_HOST}/")
        assert answer == {"seen": pod.ip, "host": "onprem"}
    # the Uniform instances were written through Compute only, never through NRP
    assert mixed.emulator is not None
    assert mixed.emulator.request_count("PUT", "*/Microsoft.Network/networkInterfaces/pool*") == 0
    assert instance_puts(mixed, UNIFORM) >= 1


def test_scaling_a_uniform_pool_is_one_instance_put_per_reconcile(
        mixed: World, web: list[workloads.RunningPod]) -> None:
    wait_for("the pools to settle", lambda: all(
        mixed.pool(n).status.allocated - mixed.pool(n).status.used <= 12 for n in mixed.vms),
        60)
    before, start = mixed.pool(UNIFORM).status.allocated, instance_puts(mixed, UNIFORM)
    mixed.kubectl("scale", "nodeippool", UNIFORM, "--replicas=24")
    wait_for(f"{UNIFORM}'s pool to hold 24 addresses",
             lambda: mixed.pool(UNIFORM).status.allocated >= 24, 60)
    assert instance_puts(mixed, UNIFORM) - start == 1, "scaling up took more than one write"
    assert len(mixed.nic_addresses(UNIFORM)) == 1 + mixed.pool(UNIFORM).status.allocated
    grown = instance_puts(mixed, UNIFORM)
    mixed.kubectl("scale", "nodeippool", UNIFORM, "--replicas=0")
    wait_for(f"{UNIFORM}'s pool to give the excess back",
             lambda: mixed.pool(UNIFORM).status.allocated <= max(before, 16), 90)
    assert instance_puts(mixed, UNIFORM) - grown == 1, "scaling down took more than one write"
    assert instance_puts(mixed, UNIFORM, status=409) == 0
    assert instance_puts(mixed, UNIFORM, status=412) == 0
    # every pod on it kept its address
    for pod in web:
        if pod.node == UNIFORM:
            assert pod.ip in mixed.nic_addresses(UNIFORM)


def test_scale_set_writes_left_the_fabric_consistent(mixed: World) -> None:
    """What the fabric routes to each VM is exactly the addresses of its NIC."""
    assert mixed.fabric is not None
    for name in mixed.vms:
        assert mixed.fabric.routes(name) == set(mixed.nic_addresses(name)), name


def test_deleting_a_uniform_node_removes_only_our_ipconfigs(
        mixed: World, web: list[workloads.RunningPod]) -> None:
    vm, node = mixed.vms[UNIFORM_2], mixed.nodes[UNIFORM_2]

    async def add_admins_own() -> None:
        async with mixed.azure_admin() as admin:
            await admin.update_ip_configurations(vm.nic_id, [NewIPConfiguration("admins-own")])

    asyncio.run(add_admins_own())
    admins = mixed.nic_addresses(UNIFORM_2)[-1]
    mixed.kubectl("drain", UNIFORM_2, "--ignore-daemonsets", "--delete-emptydir-data",
                  "--timeout=180s", timeout=200)
    node.kill("kubelet")
    mixed.kubectl("delete", "node", UNIFORM_2)
    wait_for(f"{UNIFORM_2}'s NodeIPPool to be deleted (its finalizer done)",
             lambda: mixed.kubectl("get", "nip", UNIFORM_2, check=False).returncode != 0, 90)
    wait_for(f"{UNIFORM_2}'s NIC to hold its primary and the admin's address only",
             lambda: mixed.nic_addresses(UNIFORM_2) == (vm.primary_ip, admins), 30)
    assert mixed.emulator is not None
    model = mixed.emulator.instance_model(vm.vm_id)
    names = [c["name"] for c in model["properties"]["networkProfileConfiguration"][
        "networkInterfaceConfigurations"][0]["properties"]["ipConfigurations"]]
    assert names == ["ipconfig1", "admins-own"]
    # the rest of the cluster is untouched
    moved = workloads.running_pods(mixed, "app=web", "mixed", REPLICAS, timeout=120)
    assert UNIFORM_2 not in {p.node for p in moved}
    assert workloads.ping(mixed, on(moved, UNIFORM), on(moved, STANDALONE).ip)
