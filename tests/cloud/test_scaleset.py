"""Uniform scale-set instances: the pure model edit, and the real adapter (azure-mgmt-compute
and azure-mgmt-network, aio) writing instances of the emulator's scale sets over HTTPS."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from azure_cni.cloud.azure import AzureAdapter
from azure_cni.cloud.port import (
    AttachmentRefused,
    CloudError,
    Conflict,
    FeatureEdit,
    NewIPConfiguration,
    NotFound,
    Throttled,
    Unsupported,
)
from azure_cni.cloud.providerid import parse_provider_id
from azure_cni.cloud.scaleset import edit_instance_ip_configurations, is_instance_nic_id
from azure_cni_sim.arm import VmInfo

AdapterFactory = Any
World = Any

pytestmark = pytest.mark.timeout(60)

SUBNET = ("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/"
          "subnets/n")
MODEL: dict[str, Any] = {
    "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/"
          "virtualMachineScaleSets/pool/virtualMachines/3",
    "etag": '"7"',
    "properties": {
        "storageProfile": {"imageReference": {"id": "/subscriptions/s/resourceGroups/img/"
                                              "providers/Microsoft.Compute/galleries/g/images/"
                                              "u/versions/1"},
                           "osDisk": {"createOption": "FromImage"}},
        "networkProfileConfiguration": {"networkInterfaceConfigurations": [{
            "name": "pool-nic", "properties": {"primary": True, "ipConfigurations": [
                {"name": "ipconfig1", "properties": {"primary": True, "subnet": {"id": SUBNET},
                                                     "privateIPAddressVersion": "IPv4"}},
                {"name": "admins-own", "properties": {"primary": False,
                                                      "subnet": {"id": SUBNET}}}]}}]}}}


def ipconfigs(body: dict[str, Any]) -> list[dict[str, Any]]:
    nic_configs = body["properties"]["networkProfileConfiguration"][
        "networkInterfaceConfigurations"]
    return list(nic_configs[0]["properties"]["ipConfigurations"])


def edit(add: list[NewIPConfiguration], remove: list[str] = (), *,  # type: ignore[assignment]
         reapply: bool = False) -> Any:
    return edit_instance_ip_configurations(
        MODEL, "pool-nic", add, remove, reapply=reapply,
        copy_application_security_groups=False, copy_load_balancer_pools=False)


# -- the pure edit ------------------------------------------------------------------------------


def test_added_ipconfigs_join_the_primarys_subnet_without_an_address_member() -> None:
    result = edit([NewIPConfiguration("azcni-a"), NewIPConfiguration("azcni-b", "198.18.0.9")])
    assert result.added == ("azcni-a", "azcni-b")
    configs = ipconfigs(result.body)
    assert [c["name"] for c in configs] == ["ipconfig1", "admins-own", "azcni-a", "azcni-b"]
    for new in configs[2:]:
        # the scale-set model has neither member; its addresses are always Dynamic
        assert new["properties"] == {"subnet": {"id": SUBNET}, "primary": False,
                                     "privateIPAddressVersion": "IPv4"}


def test_the_gallery_image_is_left_out_of_the_body_and_the_model_is_untouched() -> None:
    before = copy.deepcopy(MODEL)
    result = edit([NewIPConfiguration("azcni-a")])
    assert "imageReference" not in result.body["properties"]["storageProfile"]
    assert result.body["properties"]["storageProfile"]["osDisk"] == {"createOption": "FromImage"}
    assert before == MODEL


def test_only_named_ipconfigs_go_and_never_the_primary() -> None:
    result = edit([], ["admins-own", "gone-already"])
    assert result.removed == ("admins-own",)
    assert [c["name"] for c in ipconfigs(result.body)] == ["ipconfig1"]
    with pytest.raises(CloudError, match="primary"):
        edit([], ["ipconfig1"])


def test_nothing_to_do_is_none_unless_reapplied() -> None:
    assert edit([NewIPConfiguration("admins-own")], ["not-there"]) is None
    again = edit([], reapply=True)
    assert again is not None and again.added == () and again.removed == ()
    assert "imageReference" not in again.body["properties"]["storageProfile"]


def test_an_address_block_is_refused_for_an_instance_not_turned_into_an_address() -> None:
    """A Blocks pool on a Uniform node: the model cannot hold a prefix, and dropping it would
    give the pool single addresses where it counts 16."""
    with pytest.raises(Unsupported, match="Uniform scale-set instance"):
        edit([NewIPConfiguration("azcni-a", prefix_length=28)])


def test_a_model_without_the_nic_configuration_is_not_found() -> None:
    with pytest.raises(NotFound):
        edit_instance_ip_configurations(MODEL, "other-nic", [NewIPConfiguration("a")], [],
                                        reapply=False, copy_application_security_groups=False,
                                        copy_load_balancer_pools=False)


def test_instance_nic_ids_are_told_from_network_nic_ids() -> None:
    assert is_instance_nic_id(f"{MODEL['id']}/networkInterfaces/pool-nic")
    assert not is_instance_nic_id("/subscriptions/s/resourceGroups/rg/providers/"
                                  "Microsoft.Network/networkInterfaces/vm0-nic")
    assert not is_instance_nic_id("not an id")


# -- the adapter on the emulator ----------------------------------------------------------------


def instances(world: World, count: int = 2) -> list[VmInfo]:
    scale_set = world.emu.add_scale_set("pool", world.subnet_id)
    return [world.emu.add_instance(scale_set) for _ in range(count)]


def ours(nic: Any) -> dict[str, str | None]:
    return {c.name: c.address for c in nic.secondary("azcni-")}


async def test_a_uniform_instance_nic_is_found_with_one_read(world: World,
                                                             adapter: AzureAdapter) -> None:
    first, _ = instances(world)
    world.emu.reset_requests()
    nic = await adapter.get_vm_nic(parse_provider_id(first.provider_id))
    assert nic.id == first.nic_id
    assert nic.vm_id.lower() == first.vm_id.lower()
    assert nic.primary.address == first.primary_ip
    assert [(r.method, r.path) for r in world.emu.requests()] == [
        ("GET", f"{first.vm_id}/networkInterfaces")]
    again = await adapter.get_nic(first.nic_id)
    assert again.primary.address == first.primary_ip


async def test_an_instance_write_is_one_compute_put_and_the_nic_reads_back(
        world: World, adapter: AzureAdapter) -> None:
    first, second = instances(world)
    world.emu.reset_requests()
    nic = await adapter.update_ip_configurations(
        first.nic_id, [NewIPConfiguration(f"azcni-{i}") for i in range(5)])
    assert len(ours(nic)) == 5 and all(ours(nic).values())
    assert all(c.succeeded for c in nic.ip_configurations)
    assert world.emu.request_count("PUT") == 1
    assert world.emu.request_count("PUT", first.vm_id) == 1
    # the model carried no gallery image (the emulator refuses it with 403 otherwise)
    assert world.emu.request_count(status=403) == 0
    assert world.emu.nic_addresses(second.nic_id) == (second.primary_ip,)
    kept = ours(nic)
    nic = await adapter.update_ip_configurations(nic, remove=["azcni-0", "azcni-1"])
    assert ours(nic) == {k: v for k, v in kept.items() if k not in ("azcni-0", "azcni-1")}
    assert world.emu.request_count("PUT") == 2
    # nothing to change: no write
    await adapter.update_ip_configurations(nic, [NewIPConfiguration("azcni-2")], ["azcni-0"])
    assert world.emu.request_count("PUT") == 2


async def test_a_public_ip_for_an_instance_is_refused_and_nothing_is_written(
        world: World, adapter: AzureAdapter) -> None:
    """Per-pod features go on Network-provider NICs only: for a Uniform instance the request
    is refused by name (the pod gets an Event), never dropped silently."""
    first, _ = instances(world)
    nic = await adapter.update_ip_configurations(first.nic_id, [NewIPConfiguration("azcni-a")])
    world.emu.reset_requests()
    pip = "/subscriptions/s/resourceGroups/pips/providers/Microsoft.Network/publicIPAddresses/web"
    with pytest.raises(AttachmentRefused) as refused:
        await adapter.update_ip_configurations(nic,
                                               features={"azcni-a": FeatureEdit(public_ip=pip)})
    assert refused.value.resources == (pip,)
    assert refused.value.code == "UnsupportedOnScaleSetInstance"
    assert world.emu.request_count("PUT") == 0
    # taking nothing off is no request for anything
    await adapter.update_ip_configurations(nic,
                                           features={"azcni-a": FeatureEdit(drop_public_ip=pip)})


async def test_ipconfigs_of_others_on_the_instance_are_kept(world: World,
                                                            adapter: AzureAdapter) -> None:
    first, _ = instances(world)
    await adapter.update_ip_configurations(first.nic_id, [NewIPConfiguration("admins-own")])
    admins = world.emu.nic_addresses(first.nic_id)[1]
    nic = await adapter.update_ip_configurations(first.nic_id, [NewIPConfiguration("azcni-a")])
    nic = await adapter.update_ip_configurations(nic, remove=["azcni-a"])
    assert [(c.name, c.address) for c in nic.ip_configurations] == [
        ("ipconfig1", first.primary_ip), ("admins-own", admins)]


async def test_a_stale_instance_etag_is_read_again_and_written_once_more(
        world: World, adapter: AzureAdapter) -> None:
    first, _ = instances(world)
    world.emu.inject_fault("PUT", first.vm_id, 412, "PreconditionFailed")
    nic = await adapter.update_ip_configurations(first.nic_id, [NewIPConfiguration("azcni-a")])
    assert set(ours(nic)) == {"azcni-a"}
    assert world.emu.request_count("PUT", first.vm_id, status=412) == 1
    # a model read per attempt, and the SDK's read of the result once the operation succeeded
    assert world.emu.request_count("GET", first.vm_id) == 3


async def test_an_instance_busy_with_another_operation_is_a_conflict(
        world: World, make_adapter: AdapterFactory) -> None:
    first, _ = instances(world)
    world.emu.configure(lro_polls=1000, lro_timeout=60)
    slow = make_adapter(polling_interval=0.5)
    busy = make_adapter(max_write_attempts=3)
    started = asyncio.create_task(
        slow.update_ip_configurations(first.nic_id, [NewIPConfiguration("azcni-a")]))
    while world.emu.instance_model(first.vm_id)["properties"]["provisioningState"] != "Updating":
        await asyncio.sleep(0.01)
    with pytest.raises(Conflict) as raised:
        await busy.update_ip_configurations(first.nic_id, [NewIPConfiguration("azcni-b")])
    assert raised.value.code == "Conflict" and raised.value.status == 409
    assert world.emu.request_count("PUT", first.vm_id, status=409) == 3
    started.cancel()


async def test_a_failed_instance_operation_is_typed_and_cleared_by_a_reapply(
        world: World, adapter: AzureAdapter) -> None:
    first, _ = instances(world)
    world.emu.fail_next_operation(first.vm_id, "InternalExecutionError", "it broke")
    with pytest.raises(CloudError) as raised:
        await adapter.update_ip_configurations(first.nic_id, [NewIPConfiguration("azcni-a")])
    assert raised.value.code == "InternalExecutionError"
    nic = await adapter.get_nic(first.nic_id)
    assert nic.failed and ours(nic) == {}
    nic = await adapter.update_ip_configurations(nic, reapply=True)
    assert not nic.failed
    assert world.emu.instance_model(first.vm_id)["properties"]["provisioningState"] == \
        "Succeeded"


async def test_the_per_instance_update_limit_is_throttled_with_its_retry_after(
        world: World, make_adapter: AdapterFactory) -> None:
    first, second = instances(world)
    world.emu.configure(compute_vm_updates_per_minute=1)
    adapter = make_adapter()  # the SDK's own retries on: they must not sleep out the minute
    await adapter.update_ip_configurations(first.nic_id, [NewIPConfiguration("azcni-a")])
    with pytest.raises(Throttled) as raised:
        await adapter.update_ip_configurations(first.nic_id, [NewIPConfiguration("azcni-b")])
    assert raised.value.code == "OperationNotAllowed"
    assert raised.value.retry_after >= 1
    assert set(ours(await adapter.get_nic(first.nic_id))) == {"azcni-a"}
    # until the Retry-After is over, writes of the instance wait without asking Compute
    with pytest.raises(Throttled) as again:
        await adapter.update_ip_configurations(first.nic_id, [NewIPConfiguration("azcni-b")])
    assert 0 < again.value.retry_after <= raised.value.retry_after
    assert world.emu.request_count("PUT", first.vm_id, status=429) == 1
    # the limit is the instance's own
    nic = await adapter.update_ip_configurations(second.nic_id, [NewIPConfiguration("azcni-c")])
    assert set(ours(nic)) == {"azcni-c"}


async def test_scale_set_nics_are_listed_a_page_at_a_time(world: World,
                                                          adapter: AzureAdapter) -> None:
    made = instances(world, 3)
    world.emu.configure(list_page_size=2)
    world.emu.reset_requests()
    listed = [n async for n in adapter.list_scale_set_nics(
        "00000000-0000-0000-0000-000000000001", "rg1", "pool")]
    assert [n.id for n in listed] == [i.nic_id for i in made]
    assert world.emu.request_count("GET") == 2
    # they are not the resource group's Network NICs
    group = [n.id async for n in adapter.list_nics("00000000-0000-0000-0000-000000000001",
                                                   "rg1")]
    assert not set(group) & {i.nic_id for i in made}


async def test_a_deleted_instance_is_not_found(world: World, adapter: AzureAdapter) -> None:
    first, _ = instances(world)
    world.emu.delete_instance(first.vm_id)
    with pytest.raises(NotFound):
        await adapter.get_vm_nic(parse_provider_id(first.provider_id))
    with pytest.raises(NotFound):
        await adapter.update_ip_configurations(first.nic_id, [NewIPConfiguration("azcni-a")])
