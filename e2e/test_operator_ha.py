"""The operator's two replicas on the simulated VNet, through kubectl and helm as an admin
would: the Lease names the leader; deleting it while a pool change is pending hands over
within the Lease duration; a ``helm upgrade`` of the operator while pods come and go loses
no pool change and leaves no duplicate address and no orphaned ipConfiguration."""

from __future__ import annotations

import json
import threading
import time

import pytest

from azure_cni.api.nodeippool import IPCONFIG_PREFIX, ConditionType
from azure_cni_sim import workloads
from azure_cni_sim.procs import wait_for
from azure_cni_sim.world import NAMESPACE, World

pytestmark = pytest.mark.e2e

LEASE = "azure-cni-operator"
#: the chart's default operator.leaseDurationSeconds
LEASE_SECONDS = 15


def operator_pods(world: World) -> list[str]:
    return world.kubectl("-n", NAMESPACE, "get", "pods", "-l",
                         "app.kubernetes.io/component=operator", "-o",
                         "jsonpath={.items[*].metadata.name}").stdout.split()


def leader_pod(world: World) -> str:
    """The operator pod that holds the Lease, as ``kubectl get lease`` shows it."""
    table = world.kubectl("-n", NAMESPACE, "get", "lease", LEASE).stdout.splitlines()
    assert table[0].split()[:2] == ["NAME", "HOLDER"], table
    holder = table[1].split()[1]
    return holder.split("_")[0]


def wait_for_a_leader(world: World, timeout: float = 120) -> str:
    found: list[str] = []

    def leads() -> bool:
        found[:] = [leader_pod(world)]
        return found[0] in operator_pods(world)

    wait_for("an operator pod to hold the Lease", leads, timeout, interval=0.5)
    return found[0]


def settled_pool(world: World, vm: str, allocated: int, timeout: float) -> None:
    def done() -> bool:
        pool = world.pool(vm)
        ready = pool.status.condition(ConditionType.READY)
        return (pool.status.allocated >= allocated and ready is not None and ready.status
                and pool.status.observed_generation == pool.generation)

    wait_for(f"pool {vm} to hold {allocated} addresses and be Ready", done, timeout,
             interval=0.25)


def ours_on_nics(world: World) -> dict[str, dict[str, str]]:
    """Each VM's azure-cni ipConfigurations (name -> address) as ARM has them."""
    assert world.emulator is not None
    out = {}
    for vm in world.vms:
        nic = world.emulator.nic(world.vms[vm].nic_id)
        out[vm] = {c["name"]: c["properties"]["privateIPAddress"]
                   for c in nic["properties"]["ipConfigurations"]
                   if c["name"].startswith(IPCONFIG_PREFIX)}
    return out


def test_the_lease_names_the_leader_and_the_standby_runs(world: World) -> None:
    world.wait_rollout(f"deployment/{LEASE}", NAMESPACE, timeout=240)
    pods = operator_pods(world)
    assert len(pods) == 2, pods
    leader = wait_for_a_leader(world)
    standby = next(p for p in pods if p != leader)
    nodes = json.loads(world.kubectl("-n", NAMESPACE, "get", "pods", *pods, "-o", "json"
                                     ).stdout)["items"]
    assert len({p["spec"]["nodeName"] for p in nodes}) == 2, "both replicas on one node"
    # the standby's process stands by: it never took the Lease, so it watches nothing
    log = world.kubectl("-n", NAMESPACE, "logs", standby).stdout
    assert "event=standby" in log and "event=lease_acquired" not in log, log[-2000:]
    assert "event=lists_taken" not in log, log[-2000:]


def test_deleting_the_leader_while_a_scale_is_pending_hands_over_with_one_nic_write(
        world: World) -> None:
    assert world.emulator is not None
    world.wait_pools_ready()
    vm = sorted(world.vms)[0]
    nic_id = world.vms[vm].nic_id
    target = world.pool(vm).status.allocated + 8
    leader = wait_for_a_leader(world)
    puts = world.emulator.request_count("PUT", nic_id)
    world.kubectl("-n", NAMESPACE, "delete", "pod", leader, "--wait=false")
    deleted = time.monotonic()
    world.kubectl("scale", "nodeippool", vm, f"--replicas={target}")
    settled_pool(world, vm, target, timeout=LEASE_SECONDS + 10)
    took = time.monotonic() - deleted
    assert world.emulator.request_count("PUT", nic_id) == puts + 1, "not one NIC write"
    assert wait_for_a_leader(world) != leader
    print(f"scale applied {took:.1f}s after the leader's deletion (Lease {LEASE_SECONDS} s)")
    world.kubectl("scale", "nodeippool", vm, "--replicas=0")


def test_helm_upgrade_of_the_operator_while_pods_churn_loses_nothing(
        world: World, namespace: str) -> None:
    world.wait_pools_ready()
    workloads.deploy_web(world, namespace, 6, name="churn")
    vm = sorted(world.vms)[1]
    target = world.pool(vm).status.allocated + 8
    stop = threading.Event()
    errors: list[str] = []

    def churn() -> None:
        replicas = 6
        while not stop.is_set():
            replicas = 15 if replicas == 6 else 6
            result = world.kubectl("-n", namespace, "scale", "deployment", "churn",
                                   f"--replicas={replicas}", check=False)
            if result.returncode != 0:
                errors.append(result.stderr)
            stop.wait(4)

    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    try:
        # a change of the operator's pod template: both replicas are replaced, one at a time
        world.upgrade_chart(operatorDeployment={"podAnnotations": {"azurecni.io/upgrade": "1"}})
        world.kubectl("scale", "nodeippool", vm, f"--replicas={target}")
        try:
            world.wait_rollout(f"deployment/{LEASE}", NAMESPACE, timeout=480)
        except Exception:
            print(world.kubectl("-n", NAMESPACE, "get", "pods", "-o", "wide").stdout)
            print(world.kubectl("-n", NAMESPACE, "describe", "deployment", LEASE).stdout)
            raise
    finally:
        stop.set()
        churner.join(30)
    assert not errors, errors
    world.kubectl("-n", namespace, "scale", "deployment", "churn", "--replicas=9")
    pods = workloads.running_pods(world, "app=churn", namespace, 9)
    settled_pool(world, vm, target, timeout=120)
    wait_for_a_leader(world)
    world.wait_pools_ready()

    # no duplicate: every pod on the pod network holds an address of its own
    addresses = [p.ip for p in workloads.pod_network_pods(world)]
    assert len(addresses) == len(set(addresses)), f"an address twice: {sorted(addresses)}"
    assert {p.ip for p in pods} <= set(addresses)
    # no orphan: every azure-cni ipConfiguration on a NIC is in its pool's inventory
    def nics_match_pools() -> bool:
        return all({ip.ip_configuration: ip.address for ip in world.pool(vm).status.ips}
                   == ours for vm, ours in ours_on_nics(world).items())

    wait_for("every NIC to hold exactly its pool's inventory", nics_match_pools, 60,
             interval=1)
    world.kubectl("scale", "nodeippool", vm, "--replicas=0")
