"""Pods on a simulated Azure VNet: addresses from the VNet, no overlay, SNAT to the internet."""

from __future__ import annotations

import json
import time

import pytest

from azure_cni_sim import workloads
from azure_cni_sim.procs import wait_for
from azure_cni_sim.vnet import INTERNET_HOST, ONPREM_HOST, WIRESERVER
from azure_cni_sim.world import World

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def web(world: World, namespace: str) -> list[workloads.RunningPod]:
    return workloads.deploy_web(world, namespace, 6)


def on(pods: list[workloads.RunningPod], vm: str, index: int = 0) -> workloads.RunningPod:
    return [p for p in pods if p.node == vm][index]


def test_pods_get_vnet_addresses_from_their_own_nic(world: World,
                                                    web: list[workloads.RunningPod]) -> None:
    for pod in web:
        assert pod.ip in world.nic_addresses(pod.node), f"{pod} is not on {pod.node}'s NIC"
    assert len({p.ip for p in web}) == len(web)
    assert {p.node for p in web} == set(world.vms)


def test_pod_to_pod_on_one_vm_and_across_vms_without_nat_or_tunnel(
        world: World, web: list[workloads.RunningPod]) -> None:
    a, same, far = on(web, "vm0"), on(web, "vm0", 1), on(web, "vm2")
    assert workloads.ping(world, a, same.ip)
    seen = world.capture_on_fabric("vm0", f"icmp and host {far.ip}",
                                   lambda: workloads.ping(world, a, far.ip), packets=2)
    # what crossed the VNet is the pods' own addresses in plain ICMP: no NAT, no encapsulation
    assert any(f"IP {a.ip} > {far.ip}: ICMP echo request" in line for line in seen), seen
    assert any(f"IP {far.ip} > {a.ip}: ICMP echo reply" in line for line in seen), seen
    assert workloads.ping(world, on(web, "vm1"), a.ip)


def test_on_premises_host_sees_the_pod_address(world: World,
                                               web: list[workloads.RunningPod]) -> None:
    for pod in (on(web, "vm0"), on(web, "vm1", 1)):
        answer = workloads.http_get(world, pod, f"http://{ONPREM_HOST}/")
        assert answer == {"seen": pod.ip, "host": "onprem"}


def test_internet_sees_the_primary_address_and_needs_the_snat_chain(
        world: World, web: list[workloads.RunningPod]) -> None:
    pod = on(web, "vm1")
    primary = world.vms["vm1"].primary_ip
    internet = f"http://{INTERNET_HOST}/"
    assert workloads.http_get(world, pod, internet) == {"seen": primary, "host": "internet"}
    node = world.nodes["vm1"]
    # remove the SNAT rules on the VM, as a careless admin flushing the nat table would
    node.exec("iptables", "-t", "nat", "-F", "AZURE-CNI-SNAT")
    # leaving with the pod's own address, the internet host does not answer
    assert workloads.http_get(world, pod, internet, timeout=2) is None
    # while the VNet and on-premises do not need SNAT at all
    assert workloads.http_get(world, pod, f"http://{ONPREM_HOST}/") is not None
    # the agent rewrites its chains when it starts: restart its pod, as an admin would
    agent = workloads.agent_pod(world, "vm1")
    world.kubectl("delete", "pod", "-n", "kube-system", agent)
    world.wait_rollout("daemonset/azure-cni-agent", "kube-system")
    wait_for("the internet to see vm1's primary address again",
             lambda: workloads.http_get(world, pod, internet, timeout=2) is not None, 60,
             interval=1)
    assert workloads.http_get(world, pod, internet) == {"seen": primary, "host": "internet"}


def test_pods_are_kept_away_from_the_wireserver_but_the_vm_is_not(
        world: World, web: list[workloads.RunningPod]) -> None:
    assert workloads.http_get(world, on(web, "vm2"), f"http://{WIRESERVER}/", timeout=2) is None
    host = world.nodes["vm2"].exec("curl", "-s", "-m", "3", f"http://{WIRESERVER}/")
    assert json.loads(host.stdout)["host"] == "azure-platform"


def test_a_removed_ipconfiguration_stops_traffic_until_the_operator_repairs_it(
        world: World, web: list[workloads.RunningPod]) -> None:
    victim, peer = on(web, "vm2"), on(web, "vm1")
    assert workloads.ping(world, peer, victim.ip)
    name = world.remove_ipconfig("vm2", victim.ip)
    assert world.fabric is not None
    assert victim.ip not in world.fabric.routes("vm2")
    assert not workloads.ping(world, peer, victim.ip), "the fabric still delivers it"
    started = time.monotonic()
    wait_for("the operator to put the address back on the NIC",
             lambda: victim.ip in world.nic_addresses("vm2"), timeout=60)
    assert world.emulator is not None
    nic = world.emulator.nic(world.vms["vm2"].nic_id)
    restored = {c["name"]: c["properties"]["privateIPAddress"]
                for c in nic["properties"]["ipConfigurations"]}
    assert restored[name] == victim.ip, "repaired under another name or address"
    wait_for("traffic to the pod to resume", lambda: workloads.ping(world, peer, victim.ip),
             timeout=20)
    events = world.get_json("events", "-n", "default", "--field-selector",
                            "involvedObject.name=vm2")
    assert "DriftRepaired" in {e["reason"] for e in events["items"]}
    assert time.monotonic() - started < 60


def test_scaling_a_pool_changes_the_nic_and_pods_use_the_new_addresses(
        world: World, namespace: str, web: list[workloads.RunningPod]) -> None:
    vm = "vm2"
    world.kubectl("scale", "nodeippool", vm, "--replicas=16")
    primary = world.vms[vm].primary_ip
    wait_for("vm2's NIC to hold at least 16 secondary addresses",
             lambda: len([a for a in world.nic_addresses(vm) if a != primary]) >= 16,
             timeout=60)
    wait_for("the pool to list them", lambda: world.pool(vm).status.allocated >= 16,
             timeout=30)
    try:
        # more pods on vm2 than its warm pool alone had
        extra = workloads.deploy_web(world, namespace, 10, name="more", node=vm)
        for pod in extra:
            assert pod.ip in world.nic_addresses(vm)
        assert all(workloads.ping(world, on(web, "vm0"), pod.ip) for pod in extra[:3])
    finally:
        world.kubectl("delete", "deployment", "more", "-n", namespace)
        world.kubectl("scale", "nodeippool", vm, "--replicas=0")
