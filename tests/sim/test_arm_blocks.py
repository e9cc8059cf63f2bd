"""ipConfigurations holding a CIDR block on the emulator, through the real SDK and the adapter
(azure-features.md §1): aligned allocation, the ``<address>/<length>`` form, ARM's errors and
the VNet's private-address limit, where a block counts once."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
from tests.sim.test_arm import Arm, secondary

from azure_cni.cloud.azure import AzureAdapter
from azure_cni.cloud.port import NewIPConfiguration, SubnetFull, VnetLimitReached
from azure_cni_sim.arm import ArmConfig, ArmEmulator
from azure_cni_sim.arm.blocks import (
    PREFIX_ON_PRIMARY_CODE,
    UNSUPPORTED_LENGTH_CODE,
    VNET_LIMIT_CODE,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def arm() -> Iterator[Arm]:
    with ArmEmulator(ArmConfig(lro_polls=0)) as emu:
        yield Arm(emu)


def adapter(arm: Arm) -> AzureAdapter:
    return AzureAdapter(arm.emu.azure_settings(polling_interval=0.01),
                        credential=arm.emu.credential())


def block(name: str, length: int = 28) -> NewIPConfiguration:
    return NewIPConfiguration(name, prefix_length=length)


async def test_a_block_is_aligned_reads_as_a_cidr_and_routes_as_one(arm) -> None:
    """vm0 holds .4 and vm1 .5 of the /22: the first free /28 is .16/28 (never over a single
    address or the subnet's reserved .0-.3), the next .32/28; a single address added in the
    same write takes the lowest free address outside both."""
    vm = arm.vms[0]
    async with adapter(arm) as azure:
        nic = await azure.update_ip_configurations(
            vm.nic_id, add=[block("azcni-b1"), NewIPConfiguration("azcni-s"), block("azcni-b2")])
    got = {c.name: (c.address, c.prefix_length) for c in nic.secondary()}
    assert got == {"azcni-b1": ("198.18.0.16", 28), "azcni-s": ("198.18.0.6", None),
                   "azcni-b2": ("198.18.0.32", 28)}
    raw = {c["name"]: c["properties"] for c in arm.nic_body(vm)["properties"]["ipConfigurations"]}
    assert raw["azcni-b1"]["privateIPAddress"] == "198.18.0.16/28"
    assert raw["azcni-b1"]["privateIPAddressPrefixLength"] == 28
    assert "privateIPAddressPrefixLength" not in raw["azcni-s"]
    # the fabric's view: one entry per ipConfiguration, a block as its prefix
    assert arm.emu.nic_addresses(vm.nic_id) == (vm.primary_ip, "198.18.0.16/28", "198.18.0.6",
                                                 "198.18.0.32/28")
    # all 16 addresses of each block are taken in the subnet; the next VM's block goes above
    async with adapter(arm) as azure:
        other = await azure.update_ip_configurations(arm.vms[1].nic_id, add=[block("azcni-c")])
    assert other.secondary()[0].private_ip == "198.18.0.48/28"


async def test_a_block_round_trips_and_leaves_as_a_whole(arm) -> None:
    """The adapter writes the NIC back as read ("<address>/<length>" included): the block is
    kept; removing it frees all 16 addresses at once."""
    vm = arm.vms[0]
    async with adapter(arm) as azure:
        await azure.update_ip_configurations(vm.nic_id, add=[block("azcni-b1")])
        kept = await azure.update_ip_configurations(vm.nic_id,
                                                    add=[NewIPConfiguration("azcni-s")])
        assert {c.name: c.private_ip for c in kept.secondary()} == {
            "azcni-b1": "198.18.0.16/28", "azcni-s": "198.18.0.6"}
        free_before = (await azure.get_subnet(vm.subnet_id)).free_addresses
        await azure.update_ip_configurations(vm.nic_id, remove=["azcni-b1"])
        again = await azure.update_ip_configurations(vm.nic_id, add=[block("azcni-b2")])
    assert again.secondary()[-1].private_ip == "198.18.0.16/28"  # freed and reused whole
    assert free_before is not None
    usage = arm.call("GET", vm.subnet_id.rsplit("/subnets/", 1)[0] + "/usages")[2]
    nodes = next(u for u in usage["value"] if u["id"].endswith("/nodes"))
    assert nodes["currentValue"] == 2 + 1 + 16  # two primaries, one single, one block


@pytest.mark.parametrize(("change", "code"), [
    ("primary", PREFIX_ON_PRIMARY_CODE),
    ("length", UNSUPPORTED_LENGTH_CODE),
])
def test_arm_refuses_a_prefix_on_the_primary_and_unsupported_lengths(arm, change, code) -> None:
    vm = arm.vms[0]
    body = arm.nic_body(vm)
    configs = body["properties"]["ipConfigurations"]
    if change == "primary":
        configs[0]["properties"]["privateIPAddressPrefixLength"] = 28
    else:
        configs.append(secondary("azcni-x", vm.subnet_id, privateIPAddressPrefixLength=24))
    status, _, error = arm.call("PUT", vm.nic_id, body)
    assert status == 400
    assert error["error"]["code"] == code
    assert ("primary" if change == "primary" else "/28") in error["error"]["message"]
    assert arm.emu.nic_addresses(vm.nic_id) == (vm.primary_ip,), "nothing was written"


async def test_a_fragmented_subnet_has_free_addresses_but_no_block(arm) -> None:
    """The /29 "tiny" has 3 usable addresses and no /28 at all; the /24 "other" is cut into
    pieces by single addresses every 16: plenty free, no aligned /28 left."""
    space = arm.emu.add_vnet("frag", ["198.19.0.0/16"], {"s": "198.19.0.0/24"})
    vm = arm.emu.add_vm("fragvm", space.subnet_ids["s"])
    body: dict[str, Any] = arm.nic_body(vm)
    network = ipaddress.IPv4Network("198.19.0.0/24")
    # one Static address inside every /28 above the first (which holds the reserved .0-.3)
    for i, sub in enumerate(list(network.subnets(new_prefix=28))[1:]):
        body["properties"]["ipConfigurations"].append(secondary(
            f"pin{i}", vm.subnet_id, privateIPAllocationMethod="Static",
            privateIPAddress=str(sub.network_address + 8)))
    status, headers, _ = arm.call("PUT", vm.nic_id, body)
    assert status in (200, 201)
    operation = headers["Azure-AsyncOperation"].split(arm.emu.arm_url.rstrip("/"), 1)[1]
    assert arm.call("GET", operation.split("?")[0])[2]["status"] == "Succeeded"
    async with adapter(arm) as azure:
        subnet = await azure.get_subnet(vm.subnet_id)
        assert subnet.free_addresses is not None and subnet.free_addresses > 200
        with pytest.raises(SubnetFull) as refused:
            await azure.update_ip_configurations(vm.nic_id, add=[block("azcni-b")])
    assert refused.value.code == "SubnetIsFull"
    assert "free aligned /28" in str(refused.value)


async def test_the_vnet_limit_counts_a_block_once(arm) -> None:
    """With the limit at 6 private addresses: 2 primaries + 4 blocks (64 addresses) fit;
    one more single address does not, whatever the subnet has left."""
    arm.emu.configure(vnet_private_ip_limit=6)
    async with adapter(arm) as azure:
        nic = await azure.update_ip_configurations(
            arm.vms[0].nic_id, add=[block(f"azcni-b{i}") for i in range(4)])
        assert sum(c.prefix_length == 28 for c in nic.secondary()) == 4
        with pytest.raises(VnetLimitReached) as refused:
            await azure.update_ip_configurations(arm.vms[1].nic_id,
                                                 add=[NewIPConfiguration("azcni-one")])
        # giving back is always allowed, and makes room again
        await azure.update_ip_configurations(arm.vms[0].nic_id, remove=["azcni-b0"])
        await azure.update_ip_configurations(arm.vms[1].nic_id,
                                             add=[NewIPConfiguration("azcni-one")])
    assert refused.value.code == VNET_LIMIT_CODE
    assert "cannot have more than 6 private IP addresses" in str(refused.value)
