"""The simulated SDN enforces public IPs (1:1 NAT), load balancers and NSGs, as programmed
through the emulator by the real SDK: checked with real connections between namespaces."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.sim.test_arm import Arm
from tests.sim.test_arm_netfeatures import RG, arm_adapter, make_lb, make_public_ip

from azure_cni.cloud.port import FeatureEdit, NewIPConfiguration
from azure_cni_sim.arm import ArmConfig, ArmEmulator, VmInfo
from azure_cni_sim.procs import ManagedProcess, stop_owned, wait_for
from azure_cni_sim.sdn import rule_lines
from azure_cni_sim.vnet import INTERNET_HOST, ONPREM_HOST, Fabric

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]


@dataclass
class Net:
    arm: Arm
    fabric: Fabric
    #: vm name -> its secondary address (the "pod" address, on the VM's eth0)
    pods: dict[str, str]

    def vm(self, i: int) -> VmInfo:
        return self.arm.vms[i]

    def get(self, netns: str, url: str, source: str = "") -> dict[str, Any] | None:
        argv = ["ip", "netns", "exec", netns, "curl", "-s", "-m", "3", url]
        if source:
            argv[5:5] = ["--interface", source]
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout else None

    def from_internet(self, url: str) -> dict[str, Any] | None:
        return self.get(self.fabric.internet_ns, url)

    def from_onprem(self, url: str) -> dict[str, Any] | None:
        return self.get(self.fabric.onprem_ns, url)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    workdir: Path = tmp_path_factory.mktemp("sdn")
    prefix, owner = f"azs{uuid.uuid4().hex[:4]}", f"sdn-{uuid.uuid4().hex[:8]}"
    fabric = Fabric(prefix, "198.18.0.0/22", workdir / "fabric", owner).create()
    try:
        with ArmEmulator(ArmConfig(lro_polls=1)) as emu:
            emu.add_resource_group(RG)
            arm = Arm(emu)
            emu.on_nic_change(fabric.on_nic_change)
            emu.on_network_policy(fabric.on_policy)
            pods = {}
            for info in arm.vms:
                fvm = fabric.add_vm(info)
                pods[info.name] = asyncio.run(_add_pod_address(arm, info))
                subprocess.run(["ip", "-n", fvm.netns, "addr", "add",
                                f"{pods[info.name]}/32", "dev", "eth0"], check=True)
                proc = ManagedProcess(
                    f"echo-{info.name}", ["ip", "netns", "exec", fvm.netns, sys.executable, "-m",
                                          "azure_cni_sim.echo", "--name", info.name,
                                          "--port", "80", "--port", "8080"],
                    workdir / f"echo-{info.name}.log", owner).start()
                wait_for(f"{info.name}'s echo server",
                         lambda p=proc: "echo_listening" in p.log_path.read_text(), 20,
                         alive=proc.check_running)
            yield Net(arm, fabric, pods)
    finally:
        stop_owned(owner)
        fabric.destroy()


async def _add_pod_address(arm: Arm, vm: VmInfo) -> str:
    async with arm_adapter(arm) as adapter:
        nic = await adapter.update_ip_configurations(vm.nic_id, [NewIPConfiguration("azcni-p")])
    address = nic.secondary()[0].address
    assert address is not None
    return address


def set_features(net: Net, vm: int, features: FeatureEdit) -> None:
    async def write() -> None:
        async with arm_adapter(net.arm) as adapter:
            await adapter.update_ip_configurations(net.vm(vm).nic_id,
                                                   features={"azcni-p": features})

    asyncio.run(write())


def test_a_public_ip_is_1_to_1_nat_both_ways(net: Net) -> None:
    pip = make_public_ip(net.arm, "pod0")
    assert net.from_internet(f"http://{pip.ip_address}/") is None  # not attached yet
    set_features(net, 0, FeatureEdit(public_ip=pip.id))
    try:
        # inbound to the public IP reaches the private address, from the client's address
        assert net.from_internet(f"http://{pip.ip_address}/") == {
            "seen": INTERNET_HOST, "host": "vm0"}
        # outbound from the private address leaves with the public IP ...
        answer = net.get(net.fabric.vms["vm0"].netns, f"http://{INTERNET_HOST}/", net.pods["vm0"])
        assert answer == {"seen": pip.ip_address, "host": "internet"}
        # ... while on-premises (the VNet side) sees the private address
        answer = net.get(net.fabric.vms["vm0"].netns, f"http://{ONPREM_HOST}/", net.pods["vm0"])
        assert answer == {"seen": net.pods["vm0"], "host": "onprem"}
    finally:
        set_features(net, 0, FeatureEdit(reset=True))
    assert net.from_internet(f"http://{pip.ip_address}/") is None
    # without it, the internet host does not answer the private address at all
    assert net.get(net.fabric.vms["vm0"].netns, f"http://{INTERNET_HOST}/",
                   net.pods["vm0"]) is None


def test_a_load_balancer_frontend_spreads_connections_over_the_pool(net: Net) -> None:
    front = make_public_ip(net.arm, "front")
    lb = make_lb(net.arm, "lb", front.id)
    pool = lb.backend_address_pools[0].id
    for vm in (0, 1):
        set_features(net, vm, FeatureEdit(add_pools=(pool,)))
    try:
        seen: set[str] = set()
        for _ in range(40):
            answer = net.from_internet(f"http://{front.ip_address}/")
            assert answer is not None and answer["seen"] == INTERNET_HOST
            seen.add(answer["host"])
            if seen == {"vm0", "vm1"}:
                break
        assert seen == {"vm0", "vm1"}
        # only the rule's port is balanced
        assert net.from_internet(f"http://{front.ip_address}:8080/") is None
    finally:
        for vm in (0, 1):
            set_features(net, vm, FeatureEdit(reset=True))


def test_an_nsg_rule_on_a_nic_drops_what_it_denies_and_only_that(net: Net) -> None:
    sdk = net.arm.sdk()
    deny = {"priority": 100, "direction": "Inbound", "access": "Deny", "protocol": "Tcp",
            "sourceAddressPrefix": "198.19.0.0/16", "sourcePortRange": "*",
            "destinationAddressPrefix": "*", "destinationPortRange": "8080"}
    nsg = sdk.network_security_groups.begin_create_or_update(RG, "vm0", {
        "location": "eastus", "properties": {"securityRules": [
            {"name": "no-onprem-8080", "properties": deny}]}}).result()
    body = net.arm.nic_body(net.vm(0))
    body["properties"]["networkSecurityGroup"] = {"id": nsg.id}
    sdk.network_interfaces.begin_create_or_update("rg1", "vm0-nic", body).result()
    pod0, pod1 = net.pods["vm0"], net.pods["vm1"]
    try:
        assert net.from_onprem(f"http://{pod0}:8080/") is None
        assert net.from_onprem(f"http://{net.vm(0).primary_ip}:8080/") is None  # every address
        assert net.from_onprem(f"http://{pod0}/") == {"seen": ONPREM_HOST, "host": "vm0"}
        assert net.from_onprem(f"http://{pod1}:8080/") == {"seen": ONPREM_HOST, "host": "vm1"}
        # VNet to VNet: allowed by AllowVnetInBound; the internet: DenyAllInBound
        assert net.get(net.fabric.vms["vm1"].netns, f"http://{pod0}:8080/", pod1) == {
            "seen": pod1, "host": "vm0"}
        # outbound is stateful: vm0 still reaches on-premises and gets its answers
        assert net.get(net.fabric.vms["vm0"].netns, f"http://{ONPREM_HOST}/", pod0) == {
            "seen": pod0, "host": "onprem"}
        sdk.security_rules.begin_delete(RG, "vm0", "no-onprem-8080").result()
        assert net.from_onprem(f"http://{pod0}:8080/") == {"seen": ONPREM_HOST, "host": "vm0"}
        # an NSG on the subnet applies to every NIC in it, before the NIC's
        subnet = sdk.subnets.get("rg1", "vnet1", "nodes")
        sdk.security_rules.begin_create_or_update(RG, "vm0", "no-onprem-8080",
                                                  {"properties": deny}).result()
        deny_80 = sdk.network_security_groups.begin_create_or_update(RG, "subnet", {
            "location": "eastus", "properties": {"securityRules": [{
                "name": "deny-80", "properties": {**deny, "destinationPortRange": "80"}}]}}
        ).result()
        subnet.network_security_group = {"id": deny_80.id}
        sdk.subnets.begin_create_or_update("rg1", "vnet1", "nodes", subnet).result()
        assert net.from_onprem(f"http://{pod1}/") is None
        assert net.from_onprem(f"http://{pod1}:8080/") == {"seen": ONPREM_HOST, "host": "vm1"}
        assert net.from_onprem(f"http://{pod0}:8080/") is None
        subnet.network_security_group = None
        sdk.subnets.begin_create_or_update("rg1", "vnet1", "nodes", subnet).result()
        assert net.from_onprem(f"http://{pod1}/") == {"seen": ONPREM_HOST, "host": "vm1"}
    finally:
        body = net.arm.nic_body(net.vm(0))
        body["properties"].pop("networkSecurityGroup", None)
        sdk.network_interfaces.begin_create_or_update("rg1", "vm0-nic", body).result()
    assert net.from_onprem(f"http://{pod0}:8080/") == {"seen": ONPREM_HOST, "host": "vm0"}


def test_rule_rendering_keeps_azures_matching() -> None:
    from azure_cni_sim.arm.netfeatures import SecurityRule

    rule = SecurityRule("r", 200, "Inbound", "Allow", "*", ("Internet", "10.0.0.0/8"), ("*",),
                        ("*",), ("80", "8000-8100"))
    lines = rule_lines(rule)
    # a port range on "*" protocol means TCP and UDP; one line per source prefix
    assert len(lines) == 4 and all(line.endswith("-j RETURN") for line in lines)
    assert any("-p udp -m mark --mark 0x0/0x100000" in line and
               "--dports 80,8000:8100" in line for line in lines)
