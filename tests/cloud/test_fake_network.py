"""The operator's unit tests run on a fake of the Azure port: hold the fake to the real adapter.

Each scenario runs twice, on ``FakeAzure`` and on the real ``AzureAdapter`` talking to the ARM
emulator over HTTPS, and must observe the same things.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from azure.mgmt.network import NetworkManagementClient
from tests.cloud.fake_network import RG, SUB, FakeAzure

from azure_cni.cloud.azure import AzureAdapter
from azure_cni.cloud.port import (
    AddressInUse,
    AttachmentRefused,
    AzureNetwork,
    FeatureEdit,
    IPConfigFeatures,
    NewIPConfiguration,
    NicLimitExceeded,
    NotFound,
    SubnetFull,
)
from azure_cni.cloud.providerid import parse_provider_id
from azure_cni_sim.arm import ArmConfig, ArmEmulator


@dataclass
class Backend:
    """One implementation of the port, and how to arrange its world."""

    port: AzureNetwork
    subnet_id: str
    tiny_subnet_id: str
    vm: Any
    make_vm: Any
    fail_nic: Any
    rg: tuple[str, str]
    #: (scale set, subnet id) -> (providerID, NIC id) of a new Uniform instance
    instance: Any = None
    #: name -> resource ID of a new Standard public IP
    make_public_ip: Any = None
    #: scope -> None: the operator's identity may not join anything under it from now on
    deny_join: Any = None
    #: (load balancer, pool) -> resource ID of a backend pool of a new Standard load balancer
    make_pool: Any = None


@pytest.fixture(params=["fake", "adapter"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "fake":
        fake = FakeAzure()
        subnet = fake.add_subnet("198.18.0.0/24")
        tiny = fake.add_subnet("198.18.1.0/29", name="tiny")

        async def fail_fake(nic_id: str) -> None:
            fake.fail(nic_id)

        counts: dict[str, int] = {}

        def fake_instance(scale_set: str, subnet_id: str) -> tuple[str, str]:
            counts[scale_set] = counts.get(scale_set, -1) + 1
            return fake.add_instance(scale_set, str(counts[scale_set]), subnet_id)

        yield Backend(fake, subnet, tiny, fake.add_vm, fake.add_vm, fail_fake, (SUB, RG),
                      fake_instance, fake.add_public_ip, fake.deny_join,
                      fake.add_backend_pool)
        return
    emu = ArmEmulator(ArmConfig(lro_polls=0)).start()
    try:
        vnet = emu.add_vnet("vnet", "198.18.0.0/16",
                            {"nodes": "198.18.0.0/24", "tiny": "198.18.1.0/29"})
        adapter = AzureAdapter(emu.azure_settings(polling_interval=0.01),
                               credential=emu.credential())

        def make_vm(name: str, subnet_id: str) -> tuple[str, str]:
            vm = emu.add_vm(name, subnet_id)
            return vm.provider_id, vm.nic_id

        async def fail_emulated(nic_id: str) -> None:
            emu.fail_next_operation(nic_id, "InternalServerError")
            with pytest.raises(Exception, match="InternalServerError"):
                await adapter.update_ip_configurations(nic_id, reapply=True)

        def sdk() -> NetworkManagementClient:
            emu.add_resource_group("pips")
            return emu.network_client()

        def make_public_ip(name: str, tags: dict[str, str] | None = None) -> str:
            with sdk() as client:
                return str(client.public_ip_addresses.begin_create_or_update(
                    "pips", name, {"location": "eastus", "sku": {"name": "Standard"},
                                   "tags": tags or {}}).result().id)

        def make_pool(lb: str, pool: str, tags: dict[str, str] | None = None) -> str:
            with sdk() as client:
                return str(client.load_balancers.begin_create_or_update(
                    "pips", lb, {"location": "eastus", "sku": {"name": "Standard"},
                                 "tags": tags or {},
                                 "properties": {"backendAddressPools": [{"name": pool}]}}
                ).result().backend_address_pools[0].id)

        scale_sets: dict[str, str] = {}

        def make_instance(scale_set: str, subnet_id: str) -> tuple[str, str]:
            if scale_set not in scale_sets:
                scale_sets[scale_set] = emu.add_scale_set(scale_set, subnet_id)
            vm = emu.add_instance(scale_sets[scale_set])
            return vm.provider_id, vm.nic_id

        yield Backend(adapter, vnet.subnet_ids["nodes"], vnet.subnet_ids["tiny"], make_vm,
                      make_vm, fail_emulated, (emu.endpoints()["subscription"], "rg1"),
                      make_instance, make_public_ip, emu.deny_join, make_pool)
        await adapter.close()
    finally:
        emu.stop()


def ours(nic: Any) -> dict[str, str]:
    return {c.name: c.address for c in nic.secondary("azcni-")}


async def test_dynamic_adds_take_the_lowest_free_addresses_once(backend) -> None:
    provider_id, nic_id = backend.vm("a", backend.subnet_id)
    nic = await backend.port.get_vm_nic(parse_provider_id(provider_id))
    assert nic.id.lower() == nic_id.lower() and nic.primary.address == "198.18.0.4"
    written = await backend.port.update_ip_configurations(
        nic, [NewIPConfiguration("azcni-a"), NewIPConfiguration("azcni-b")])
    assert ours(written) == {"azcni-a": "198.18.0.5", "azcni-b": "198.18.0.6"}
    again = await backend.port.update_ip_configurations(nic_id, [NewIPConfiguration("azcni-a")])
    assert again.etag == written.etag, "an add of an existing name wrote the NIC"
    free = (await backend.port.get_subnet(backend.subnet_id)).free_addresses
    assert free == 256 - 5 - 3


async def test_removals_by_name_and_nothing_written_when_nothing_changes(backend) -> None:
    _, nic_id = backend.vm("a", backend.subnet_id)
    await backend.port.update_ip_configurations(
        nic_id, [NewIPConfiguration("azcni-a"), NewIPConfiguration("azcni-b")])
    after = await backend.port.update_ip_configurations(nic_id, remove=["azcni-a", "azcni-x"])
    assert list(ours(after)) == ["azcni-b"]
    same = await backend.port.update_ip_configurations(nic_id, remove=["azcni-a"])
    assert same.etag == after.etag


async def test_a_stale_snapshot_is_written_on_the_current_nic(backend) -> None:
    _, nic_id = backend.vm("a", backend.subnet_id)
    stale = await backend.port.get_nic(nic_id)
    await backend.port.update_ip_configurations(nic_id, [NewIPConfiguration("azcni-a")])
    written = await backend.port.update_ip_configurations(stale, [NewIPConfiguration("azcni-b")])
    assert sorted(ours(written)) == ["azcni-a", "azcni-b"], "a write lost another one"


async def test_a_static_address_someone_holds_is_address_in_use_naming_it(backend) -> None:
    _, first = backend.vm("a", backend.subnet_id)
    _, second = backend.vm("b", backend.subnet_id)
    held = (await backend.port.get_nic(second)).primary.address
    with pytest.raises(AddressInUse) as raised:
        await backend.port.update_ip_configurations(
            first, [NewIPConfiguration("azcni-a", "198.18.0.50"),
                    NewIPConfiguration("azcni-b", held)])
    assert raised.value.addresses == (held,)
    assert ours(await backend.port.get_nic(first)) == {}, "half a write happened"


async def test_a_full_subnet_is_subnet_full(backend) -> None:
    _, nic_id = backend.vm("t", backend.tiny_subnet_id)  # a /29: 3 usable, 1 is primary
    with pytest.raises(SubnetFull):
        await backend.port.update_ip_configurations(
            nic_id, [NewIPConfiguration(f"azcni-{i}") for i in range(3)])


async def test_the_257th_ipconfiguration_is_refused(backend) -> None:
    big = backend.subnet_id
    _, nic_id = backend.vm("a", big)
    await backend.port.update_ip_configurations(
        nic_id, [NewIPConfiguration(f"azcni-{i:03d}") for i in range(240)])
    with pytest.raises(NicLimitExceeded):
        await backend.port.update_ip_configurations(
            nic_id, [NewIPConfiguration(f"azcni-x{i:03d}") for i in range(16)])


async def test_a_failed_nic_is_cleared_only_by_a_new_write(backend) -> None:
    _, nic_id = backend.vm("a", backend.subnet_id)
    await backend.fail_nic(nic_id)
    failed = await backend.port.get_nic(nic_id)
    assert failed.failed
    unchanged = await backend.port.update_ip_configurations(failed)
    assert unchanged.failed, "nothing to change must write nothing"
    cleared = await backend.port.update_ip_configurations(failed, reapply=True)
    assert not cleared.failed and cleared.etag != failed.etag


async def test_nics_are_listed_with_their_vms(backend) -> None:
    vms = [backend.vm(f"l{i}", backend.subnet_id) for i in range(3)]
    listed = [nic async for nic in backend.port.list_nics(*backend.rg)]
    by_vm = {nic.vm_id.lower(): nic.id.lower() for nic in listed}
    for provider_id, nic_id in vms:
        assert by_vm[parse_provider_id(provider_id).id.lower()] == nic_id.lower()
    assert all(nic.snapshot().primary_nic for nic in listed)


async def test_a_missing_nic_is_not_found(backend) -> None:
    _, nic_id = backend.vm("a", backend.subnet_id)
    with pytest.raises(NotFound):
        await backend.port.get_nic(nic_id.replace("a-nic", "gone-nic"))
    snapshot = await backend.port.get_nic(nic_id)
    assert replace(snapshot, document=None) == snapshot  # the document never compares


async def test_uniform_instances_are_written_dynamically_and_listed_with_their_set(
        backend) -> None:
    provider_id, nic_id = backend.instance("pool", backend.subnet_id)
    _, other = backend.instance("pool", backend.subnet_id)
    nic = await backend.port.get_vm_nic(parse_provider_id(provider_id))
    assert nic.id.lower() == nic_id.lower() and nic.primary.address == "198.18.0.4"
    assert nic.vm_id.lower() == parse_provider_id(provider_id).id.lower()
    # the instance model cannot ask for an address: a requested one is taken dynamically
    written = await backend.port.update_ip_configurations(
        nic, [NewIPConfiguration("azcni-a"), NewIPConfiguration("azcni-b", "198.18.0.77")])
    assert ours(written) == {"azcni-a": "198.18.0.6", "azcni-b": "198.18.0.7"}
    stale = nic
    written = await backend.port.update_ip_configurations(stale, remove=["azcni-a"])
    assert ours(written) == {"azcni-b": "198.18.0.7"}, "a write lost another one"
    listed = [n.id.lower() async for n in backend.port.list_scale_set_nics(*backend.rg, "pool")]
    assert listed == [nic_id.lower(), other.lower()]
    grouped = [n.id.lower() async for n in backend.port.list_nics(*backend.rg)]
    assert nic_id.lower() not in grouped


async def test_blocks_are_aligned_whole_and_refused_when_no_aligned_space_is_left(
        backend) -> None:
    """A /28 block goes to the lowest aligned free space (.16/28: .0-.15 holds the reserved
    and the primary), leaves whole, and a /29 subnet never has one."""
    _, nic_id = backend.vm("a", backend.subnet_id)
    written = await backend.port.update_ip_configurations(
        nic_id, [NewIPConfiguration("azcni-b", prefix_length=28), NewIPConfiguration("azcni-s")])
    got = {c.name: c.private_ip for c in written.secondary("azcni-")}
    assert got == {"azcni-b": "198.18.0.16/28", "azcni-s": "198.18.0.5"}
    after = await backend.port.update_ip_configurations(nic_id, remove=["azcni-b"])
    again = await backend.port.update_ip_configurations(
        after, [NewIPConfiguration("azcni-c", prefix_length=28)])
    assert {c.name: c.private_ip for c in again.secondary("azcni-")}["azcni-c"] == \
        "198.18.0.16/28"
    _, tiny_nic = backend.vm("t", backend.tiny_subnet_id)
    with pytest.raises(SubnetFull):
        await backend.port.update_ip_configurations(
            tiny_nic, [NewIPConfiguration("azcni-x", prefix_length=28)])


@pytest.mark.parametrize("name", ["web", "web.prod"])  # issue 22: a dot cut the name
async def test_a_public_ip_goes_on_one_ipconfiguration_and_comes_off(backend, name) -> None:
    pip = backend.make_public_ip(name)
    _, nic_a = backend.vm("a", backend.subnet_id)
    _, nic_b = backend.vm("b", backend.subnet_id)
    await backend.port.update_ip_configurations(nic_a, [NewIPConfiguration("azcni-a")])
    await backend.port.update_ip_configurations(nic_b, [NewIPConfiguration("azcni-b")])
    on = await backend.port.update_ip_configurations(
        nic_a, features={"azcni-a": FeatureEdit(public_ip=pip),
                         "azcni-gone": FeatureEdit(public_ip=pip)})
    assert on.secondary("azcni-")[0].public_ip_id.lower() == pip.lower()
    same = await backend.port.update_ip_configurations(
        nic_a, features={"azcni-a": FeatureEdit(public_ip=pip.upper())})
    assert same.etag == on.etag, "an unchanged public IP wrote the NIC"
    with pytest.raises(AttachmentRefused) as refused:
        await backend.port.update_ip_configurations(
            nic_b, features={"azcni-b": FeatureEdit(public_ip=pip)})
    assert refused.value.code == "PublicIPAddressInUse"
    assert [r.lower() for r in refused.value.resources] == [pip.lower()]
    assert refused.value.concerns(pip) and not refused.value.concerns(pip[:-1])
    off = await backend.port.update_ip_configurations(
        nic_a, features={"azcni-a": FeatureEdit(drop_public_ip=pip)})
    assert off.secondary("azcni-")[0].public_ip_id == ""
    moved = await backend.port.update_ip_configurations(
        nic_b, features={"azcni-b": FeatureEdit(public_ip=pip)})
    assert moved.secondary("azcni-")[0].public_ip_id.lower() == pip.lower()


async def refused_attach(backend: Backend, resource: str) -> tuple[AttachmentRefused, Any]:
    """Attach public IP ``resource`` to a new VM's new ipConfiguration: the refusal, and the
    NIC as it was before the refused write."""
    _, nic_id = backend.vm("a", backend.subnet_id)
    added = await backend.port.update_ip_configurations(nic_id, [NewIPConfiguration("azcni-a")])
    with pytest.raises(AttachmentRefused) as refused:
        await backend.port.update_ip_configurations(
            added, features={"azcni-a": FeatureEdit(public_ip=resource)})
    assert (refused.value.code, refused.value.status) == ("LinkedAuthorizationFailed", 403)
    assert refused.value.concerns(resource)
    return refused.value, added


async def test_a_resource_the_operator_may_not_join_is_a_refusal_naming_it(backend) -> None:
    """ARM checks the join permission on what a NIC write references (a 403
    LinkedAuthorizationFailed, arm-api.md §2.1): a refusal of that resource, not of the node."""
    pip = backend.make_public_ip("guarded")
    backend.deny_join(pip)
    refused, added = await refused_attach(backend, pip)
    assert "publicIPAddresses/join/action" in str(refused)
    after = await backend.port.get_nic(added.id)
    assert after.etag == added.etag and after.secondary("azcni-")[0].public_ip_id == ""
    # the node's own writes go on
    more = await backend.port.update_ip_configurations(after, [NewIPConfiguration("azcni-b")])
    assert sorted(ours(more)) == ["azcni-a", "azcni-b"]


async def test_a_resource_of_another_tenants_subscription_is_refused_naming_it(backend) -> None:
    foreign = ("/subscriptions/6c24bcdf-0c47-4359-b40b-6f82b12d83ca/resourceGroups/pips/"
               "providers/Microsoft.Network/publicIPAddresses/web")
    refused, _ = await refused_attach(backend, foreign)
    assert not refused.concerns(foreign.replace("6c24bcdf", "00000000"))


async def test_edits_land_on_the_nic_as_it_is_and_keep_what_another_writer_did(backend) -> None:
    """Issue 22 row 10: an edit from an old read (the adapter retries it after a 412) adds and
    takes off only what it names; another writer's change to the same ipConfiguration stays."""
    pip = backend.make_public_ip("web")
    theirs = backend.make_public_ip("theirs")
    pool = backend.make_pool("lb", "web")
    _, nic_id = backend.vm("a", backend.subnet_id)
    old = await backend.port.update_ip_configurations(nic_id, [NewIPConfiguration("azcni-a")])
    # another writer puts its public IP on the ipConfiguration meanwhile
    await backend.port.update_ip_configurations(
        nic_id, features={"azcni-a": FeatureEdit(public_ip=theirs)})
    await backend.port.update_ip_configurations(
        old, features={"azcni-a": FeatureEdit(drop_public_ip=pip, add_pools=(pool,))})
    (config,) = (await backend.port.get_nic(nic_id)).secondary("azcni-")
    assert config.public_ip_id.lower() == theirs.lower()
    assert [p.lower() for p in config.backend_pool_ids] == [pool.lower()]
    # a reset takes everything off but the pools of the primary (it is in none here)
    reset = await backend.port.update_ip_configurations(
        nic_id, features={"azcni-a": FeatureEdit(reset=True)})
    assert reset.secondary("azcni-")[0].features.same(IPConfigFeatures())


async def test_the_tags_of_a_public_ip_and_of_a_load_balancer_are_read(backend) -> None:
    """What a resource says about who may use it (issue 22 row 12) is in its tags."""
    pip = backend.make_public_ip("web", {"azurecni-namespaces": "web, api"})
    plain = backend.make_public_ip("plain")
    pool = backend.make_pool("lb", "web", {"AzureCNI-Namespaces": "web"})
    lb = pool.rsplit("/backendAddressPools/", 1)[0]
    assert await backend.port.get_tags(pip) == {"azurecni-namespaces": "web, api"}
    assert await backend.port.get_tags(plain) == {}
    assert await backend.port.get_tags(lb) == {"AzureCNI-Namespaces": "web"}
    with pytest.raises(NotFound):
        await backend.port.get_tags(pip[:-len("web")] + "gone")
    with pytest.raises(NotFound):
        await backend.port.get_tags(lb[:-len("lb")] + "gone")
