"""The simulated VNet with VMs of two NICs in two subnets: each NIC gets only its own
addresses, and Azure's source check drops (and counts) what a NIC sends from an address that
is not one of its ipConfigurations. Real namespaces, the emulator through the real SDK."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from azure_cni.cloud.azure import AzureAdapter
from azure_cni.cloud.port import NewIPConfiguration
from azure_cni_sim.arm import ArmConfig, ArmEmulator, VmInfo
from azure_cni_sim.procs import stop_owned
from azure_cni_sim.vnet import ONPREM_HOST, Fabric

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]


@dataclass
class TwoNics:
    emu: ArmEmulator
    fabric: Fabric
    vm: VmInfo


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=20)


@pytest.fixture
def two_nics(tmp_path: Path) -> Iterator[TwoNics]:
    prefix, owner = f"azn{uuid.uuid4().hex[:4]}", f"nics-{uuid.uuid4().hex[:8]}"
    fabric = Fabric(prefix, "198.18.0.0/22", tmp_path / "fabric", owner).create()
    try:
        with ArmEmulator(ArmConfig(lro_polls=0)) as emu:
            vnet = emu.add_vnet("vnet", "198.18.0.0/17",
                                {"nodes": "198.18.0.0/22", "pods": "198.18.16.0/20"})
            emu.on_nic_change(fabric.on_nic_change)
            vm = emu.add_vm("vm0", vnet.subnet_ids["nodes"],
                            more_nics={"vm0-pods": vnet.subnet_ids["pods"]})
            fabric.add_vm(vm)
            yield TwoNics(emu, fabric, vm)
    finally:
        stop_owned(owner)
        fabric.destroy()


def test_the_second_nic_is_plugged_in_with_its_mac_and_left_for_the_agent(
        two_nics: TwoNics) -> None:
    (pods,) = two_nics.vm.more_nics
    netns = two_nics.fabric.vms["vm0"].netns
    eth1 = sh("ip", "-n", netns, "link", "show", "eth1").stdout
    assert pods.mac.replace("-", ":").lower() in eth1 and "state DOWN" in eth1
    assert "inet " not in sh("ip", "-n", netns, "addr", "show", "eth1").stdout
    assert pods.cidr == "198.18.16.0/20" and pods.primary_ip == "198.18.16.4"


def test_the_source_check_drops_a_packet_sent_from_the_wrong_nic(two_nics: TwoNics) -> None:
    fabric, vm = two_nics.fabric, two_nics.vm
    (pods,) = vm.more_nics
    netns = fabric.vms["vm0"].netns

    async def add_pod_address() -> str:
        async with AzureAdapter(two_nics.emu.azure_settings(polling_interval=0),
                                credential=two_nics.emu.credential()) as adapter:
            nic = await adapter.update_ip_configurations(pods.nic_id,
                                                         [NewIPConfiguration("azcni-a")])
        (address,) = [c.address for c in nic.secondary("azcni-")]
        assert address is not None
        return address

    pod = asyncio.run(add_pod_address())
    # the VM configures its second NIC and holds the pod address, but routes it out of eth0
    sh("ip", "-n", netns, "link", "set", "eth1", "up")
    sh("ip", "-n", netns, "addr", "add", f"{pods.primary_ip}/20", "dev", "eth1")
    sh("ip", "-n", netns, "addr", "add", f"{pod}/32", "dev", "lo")
    # the VM knows its gateway's MAC already (its own traffic), as a running node does
    assert sh("ip", "netns", "exec", netns, "ping", "-c1", "-W1", ONPREM_HOST,
              check=False).returncode == 0
    before = fabric.source_check_drops("vm0", 0)
    wrong = sh("ip", "netns", "exec", netns, "ping", "-c1", "-W1", "-I", pod, ONPREM_HOST,
               check=False)
    assert wrong.returncode != 0
    assert fabric.source_check_drops("vm0", 0) == before + 1, "eth0 sent the pod NIC's address"
    # the same packet from the NIC that owns the address passes
    sh("ip", "-n", netns, "rule", "add", "from", pod, "lookup", "100")
    sh("ip", "-n", netns, "route", "add", "default", "via", "198.18.16.1", "dev", "eth1",
       "table", "100")
    right = sh("ip", "netns", "exec", netns, "ping", "-c1", "-W1", "-I", pod, ONPREM_HOST,
               check=False)
    assert right.returncode == 0, right.stdout
    assert fabric.source_check_drops("vm0", 1) == 0
    assert fabric.routes("vm0") == {vm.primary_ip}
