"""A pool's pods on a VM's second NIC (a pod subnet): the real adapter finds that NIC through
the VM's (or Uniform instance's) network profile and writes its ipConfigurations, over HTTPS
to the ARM emulator; and the pure choice among a VM's NICs."""

from __future__ import annotations

from typing import Any

import pytest

from azure_cni.cloud.azure import AzureAdapter
from azure_cni.cloud.port import (
    CloudError,
    IPConfiguration,
    NewIPConfiguration,
    NicSnapshot,
    NotFound,
)
from azure_cni.cloud.providerid import parse_provider_id
from azure_cni.cloud.vmnics import choose_nic, serves

pytestmark = pytest.mark.timeout(60)
World = Any


def pod_subnet(world: World) -> str:
    vnet_id = world.subnet_id.rsplit("/subnets/", 1)[0]
    return world.emu.add_subnet(vnet_id, "pods", "198.18.32.0/20")


async def test_a_standalone_vm_s_second_nic_is_found_by_its_subnet_and_written(
        world: World, adapter: AzureAdapter) -> None:
    pods = pod_subnet(world)
    vm = world.emu.add_vm("two", world.subnet_id, more_nics={"two-pods": pods})
    (second,) = vm.more_nics
    world.emu.reset_requests()
    nic = await adapter.get_vm_nic(parse_provider_id(vm.provider_id), pods)
    assert (nic.id, nic.primary_nic, nic.primary.address) == (second.nic_id, False,
                                                              second.primary_ip)
    assert nic.mac_address == second.mac and nic.primary.subnet_id == pods
    # one VM read, then each of its NICs (the subnet is in the NIC, not in the VM)
    assert [r.method for r in world.emu.requests()] == ["GET", "GET", "GET"]
    # the primary NIC is still what a pool without podSubnetID gets
    primary = await adapter.get_vm_nic(parse_provider_id(vm.provider_id))
    assert (primary.id, primary.primary_nic) == (vm.nic_id, True)
    written = await adapter.update_ip_configurations(nic, [NewIPConfiguration("azcni-a"),
                                                           NewIPConfiguration("azcni-b")])
    added = [c for c in written.secondary("azcni-")]
    assert {c.subnet_id for c in added} == {pods}
    assert all(c.address and c.address.startswith("198.18.3") for c in added)
    assert world.emu.nic_addresses(vm.nic_id) == (vm.primary_ip,)


async def test_a_flexible_vm_s_second_nic_takes_address_blocks(
        world: World, adapter: AzureAdapter) -> None:
    pods = pod_subnet(world)
    vm = world.emu.add_vm("flex_1", world.subnet_id, scale_set="flex",
                          more_nics={"flex_1-pods": pods})
    nic = await adapter.get_vm_nic(parse_provider_id(vm.provider_id), pods)
    written = await adapter.update_ip_configurations(
        nic, [NewIPConfiguration("azcni-blk", prefix_length=28)])
    (block,) = written.secondary("azcni-")
    assert block.prefix_length == 28 and block.subnet_id == pods


async def test_a_uniform_instance_s_second_nic_is_written_through_its_model(
        world: World, adapter: AzureAdapter) -> None:
    pods = pod_subnet(world)
    scale_set = world.emu.add_scale_set("pool", world.subnet_id, more_nics={"pool-pods": pods})
    instance = world.emu.add_instance(scale_set)
    (second,) = instance.more_nics
    world.emu.reset_requests()
    nic = await adapter.get_vm_nic(parse_provider_id(instance.provider_id), pods)
    assert (nic.id, nic.primary_nic) == (second.nic_id, False)
    assert [(r.method, r.path) for r in world.emu.requests()] == [
        ("GET", f"{instance.vm_id}/networkInterfaces")]
    written = await adapter.update_ip_configurations(nic, [NewIPConfiguration("azcni-a")])
    assert [c.subnet_id for c in written.secondary("azcni-")] == [pods]
    model = world.emu.instance_model(instance.vm_id)
    configs = {c["name"]: [i["name"] for i in c["properties"]["ipConfigurations"]]
               for c in model["properties"]["networkProfileConfiguration"][
                   "networkInterfaceConfigurations"]}
    assert configs == {"pool-nic": ["ipconfig1"], "pool-pods": ["ipconfig1", "azcni-a"]}
    assert world.emu.nic_addresses(instance.nic_id) == (instance.primary_ip,)


async def test_a_vm_without_a_nic_in_the_pod_subnet_says_so(
        world: World, adapter: AzureAdapter) -> None:
    pods = pod_subnet(world)
    with pytest.raises(NotFound) as missing:
        await adapter.get_vm_nic(parse_provider_id(world.vms[0].provider_id), pods)
    assert missing.value.code == "NoNicInPodSubnet"
    assert "vm0-nic in nodes" in str(missing.value)


def _nic(name: str, subnet: str, *, primary: bool) -> NicSnapshot:
    return NicSnapshot(f"/nics/{name}", name, "", "eastus", "/vm",
                       (IPConfiguration("ipconfig1", "198.18.0.4", True, "Succeeded", subnet),),
                       primary_nic=primary)


@pytest.mark.parametrize(("nics", "subnet", "chosen"), [
    ([("a", "S1", True), ("b", "S2", False)], "", "a"),
    ([("a", "S1", True), ("b", "S2", False)], "s2", "b"),   # IDs compare case-insensitively
    ([("a", "S1", True), ("b", "S1", False)], "S1", "a"),   # the primary wins its subnet
    ([("a", "S1", True), ("b", "S2", False), ("c", "S2", False)], "S2", "SeveralNicsInPodSubnet"),
    ([("a", "S1", True)], "S2", "NoNicInPodSubnet"),
    ([], "", "NoNetworkInterface"),
])
def test_choose_nic(nics: list[tuple[str, str, bool]], subnet: str, chosen: str) -> None:
    snapshots = [_nic(n, s, primary=p) for n, s, p in nics]
    try:
        got = choose_nic("/vm", snapshots, subnet).name
    except CloudError as e:
        got = e.code
    assert got == chosen
    if got in {n for n, _, _ in nics}:
        assert serves(next(s for s in snapshots if s.name == got), subnet)
