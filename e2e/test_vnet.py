"""Pods on a simulated Azure VNet: addresses from the VNet, no overlay, SNAT to the internet."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from azure_cni_sim.procs import wait_for
from azure_cni_sim.vnet import INTERNET_HOST, ONPREM_HOST, WIRESERVER
from azure_cni_sim.world import Pod, World

pytestmark = pytest.mark.e2e


def test_pods_get_vnet_addresses_from_their_own_nic(world: World, pods: dict[str, Pod]) -> None:
    for pod in pods.values():
        assert pod.address in world.nic_addresses(pod.vm), f"{pod} is not on {pod.vm}'s NIC"
    assert {p.runtime for p in pods.values() if p.vm == "vm0"} == {"containerd"}
    assert len({p.address for p in pods.values()}) == len(pods)


def test_pod_to_pod_on_one_vm_and_across_vms_without_nat_or_tunnel(
        world: World, pods: dict[str, Pod]) -> None:
    a, same, far = pods["vm0-pod0"], pods["vm0-pod1"], pods["vm2-pod1"]
    assert world.ping(a, same.address)
    seen = world.capture_on_fabric("vm0", f"icmp and host {far.address}",
                                   lambda: world.ping(a, far.address), packets=2)
    # what crossed the VNet is the pods' own addresses in plain ICMP: no NAT, no encapsulation
    assert any(f"IP {a.address} > {far.address}: ICMP echo request" in line for line in seen), seen
    assert any(f"IP {far.address} > {a.address}: ICMP echo reply" in line for line in seen), seen
    # the reverse direction, from a plugin-made pod to a containerd-made one
    assert world.ping(pods["vm1-pod0"], a.address)


def test_on_premises_host_sees_the_pod_address(world: World, pods: dict[str, Pod]) -> None:
    for pod in (pods["vm0-pod0"], pods["vm1-pod1"]):
        answer = world.http_get(pod, f"http://{ONPREM_HOST}/")
        assert answer == {"seen": pod.address, "host": "onprem"}


def test_internet_sees_the_primary_address_and_needs_the_snat_chain(
        world: World, pods: dict[str, Pod]) -> None:
    pod = pods["vm1-pod0"]
    primary = world.vms["vm1"].primary_ip
    assert world.http_get(pod, f"http://{INTERNET_HOST}/") == {"seen": primary,
                                                                "host": "internet"}
    vm_ns = world.fabric.vms["vm1"].netns  # type: ignore[union-attr]
    # remove the SNAT rules on the VM, as a careless admin flushing the nat table would
    subprocess.run(["ip", "netns", "exec", vm_ns, "iptables", "-t", "nat", "-F",
                    "AZURE-CNI-SNAT"], check=True)
    try:
        # leaving with the pod's own address, the internet host does not answer
        assert world.http_get(pod, f"http://{INTERNET_HOST}/", timeout=2) is None
        # while the VNet and on-premises do not need SNAT at all
        assert world.http_get(pod, f"http://{ONPREM_HOST}/") is not None
    finally:
        node = world.nodes["vm1"]
        node.stop_agent()
        node.start_agent()  # the agent rewrites its chains when it starts
        node.wait_ready()
    assert world.http_get(pod, f"http://{INTERNET_HOST}/") == {"seen": primary,
                                                                "host": "internet"}


def test_pods_are_kept_away_from_the_wireserver_but_the_vm_is_not(
        world: World, pods: dict[str, Pod]) -> None:
    pod = pods["vm2-pod0"]
    assert world.http_get(pod, f"http://{WIRESERVER}/", timeout=2) is None
    vm_ns = world.fabric.vms["vm2"].netns  # type: ignore[union-attr]
    host = subprocess.run(["ip", "netns", "exec", vm_ns, "curl", "-s", "-m", "3",
                           f"http://{WIRESERVER}/"], capture_output=True, text=True, check=False)
    assert json.loads(host.stdout)["host"] == "azure-platform"


def test_a_removed_ipconfiguration_stops_traffic_until_the_operator_repairs_it(
        world: World, pods: dict[str, Pod]) -> None:
    victim, peer = pods["vm2-pod0"], pods["vm1-pod1"]
    assert world.ping(peer, victim.address)
    name = world.remove_ipconfig("vm2", victim.address)
    assert victim.address not in world.fabric.routes("vm2")  # type: ignore[union-attr]
    assert not world.ping(peer, victim.address), "the fabric still delivers a removed address"
    started = time.monotonic()
    wait_for("the operator to put the address back on the NIC",
             lambda: victim.address in world.nic_addresses("vm2"), timeout=60)
    nic = world.emulator.nic(world.vms["vm2"].nic_id)  # type: ignore[union-attr]
    restored = {c["name"]: c["properties"]["privateIPAddress"]
                for c in nic["properties"]["ipConfigurations"]}
    assert restored[name] == victim.address, "repaired under another name or address"
    wait_for("traffic to the pod to resume", lambda: world.ping(peer, victim.address),
             timeout=20)
    events = json.loads(world.kubectl("get", "events", "-n", "default", "-o", "json",
                                      "--field-selector", "involvedObject.name=vm2").stdout)
    assert "DriftRepaired" in {e["reason"] for e in events["items"]}
    assert time.monotonic() - started < 60


def test_scaling_a_pool_changes_the_nic_and_pods_use_the_new_addresses(
        world: World, pods: dict[str, Pod]) -> None:
    vm = "vm2"
    world.kubectl("scale", "nodeippool", vm, "--replicas=16")
    primary = world.vms[vm].primary_ip
    wait_for("vm2's NIC to hold 16 secondary addresses",
             lambda: len([a for a in world.nic_addresses(vm) if a != primary]) >= 16, timeout=60)
    secondary = [a for a in world.nic_addresses(vm) if a != primary]
    assert len(secondary) == 16
    wait_for("the pool to list them", lambda: world.pool(vm).status.allocated == 16,
             timeout=30)
    extra = []
    try:
        for i in range(10):  # more than the 8 the warm pool alone had
            extra.append(world.run_pod(vm, f"scaled{i}"))
        for pod in extra:
            assert pod.address in world.nic_addresses(vm)
            assert world.ping(pods["vm0-pod0"], pod.address), pod
    finally:
        for pod in extra:
            world.delete_pod(pod.name)
        world.kubectl("scale", "nodeippool", vm, "--replicas=0")
