"""The real adapter (azure-mgmt-network/compute, aio) against the ARM emulator over HTTPS.

Every assertion is about what a caller observes: typed errors, the NIC's addresses, and the
requests the emulator received. Fault injection stands in for Azure's rarer answers.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from azure.mgmt.network.aio import NetworkManagementClient
from prometheus_client import REGISTRY

from azure_cni.cloud.azure import AzureAdapter, api_operation
from azure_cni.cloud.port import (
    AddressInUse,
    AuthFailed,
    CloudError,
    Conflict,
    NewIPConfiguration,
    NicLimitExceeded,
    NotFound,
    SubnetFull,
    Throttled,
)
from azure_cni.cloud.providerid import parse_provider_id
from azure_cni_sim.armstate import NIC_LIMIT_CODE

pytestmark = pytest.mark.timeout(60)


def new(*names: str) -> list[NewIPConfiguration]:
    return [NewIPConfiguration(n) for n in names]


def names_of(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(count)]


# -- reading --------------------------------------------------------------------------------------


async def test_get_vm_nic_reads_the_vm_then_its_primary_nic(world, adapter):
    vm = world.vms[0]
    nic = await adapter.get_vm_nic(parse_provider_id(vm.provider_id))
    assert nic.id == vm.nic_id
    assert nic.vm_id == vm.vm_id
    assert nic.primary.address == vm.primary_ip
    assert nic.primary.subnet_id == world.subnet_id
    assert nic.etag.startswith('W/"')
    assert world.emu.request_count("GET", vm.vm_id) == 1
    assert world.emu.request_count("GET", vm.nic_id) == 1


async def test_flexible_scale_set_vms_are_ordinary_vms(world, adapter):
    vm = world.emu.add_vm("flex_0a1b2c3d", world.subnet_id, scale_set="flex")
    nic = await adapter.get_vm_nic(parse_provider_id(vm.provider_id))
    assert nic.primary.address == vm.primary_ip


async def test_missing_vm_nic_and_group_are_not_found(world, adapter):
    sub = "00000000-0000-0000-0000-000000000001"
    with pytest.raises(NotFound) as vm_missing:
        await adapter.get_vm_nic(parse_provider_id(
            f"azure:///subscriptions/{sub}/resourceGroups/rg1/providers/"
            "Microsoft.Compute/virtualMachines/nope"))
    assert vm_missing.value.code == "ResourceNotFound"
    with pytest.raises(NotFound):
        await adapter.get_nic(world.vms[0].nic_id.replace("vm0-nic", "gone-nic"))
    with pytest.raises(NotFound) as group_missing:
        await adapter.get_nic(world.vms[0].nic_id.replace("/rg1/", "/rg-nope/"))
    assert group_missing.value.code == "ResourceGroupNotFound"


async def test_get_subnet_counts_free_addresses_and_caches_the_vnet(world, adapter):
    info = await adapter.get_subnet(world.subnet_id)
    assert info.cidr == "198.18.0.0/20"
    assert info.vnet_address_space == ("198.18.0.0/16",)
    assert info.free_addresses == 4096 - 5 - 3  # Azure reserves 5; three VMs hold one each
    await adapter.update_ip_configurations(world.vms[0].nic_id, add=new(*names_of("azcni-", 10)))
    again = await adapter.get_subnet(world.subnet_id)
    assert again.free_addresses == 4096 - 5 - 13
    vnet_id = world.subnet_id.rsplit("/subnets/", 1)[0]
    assert world.emu.request_count("GET", vnet_id) == 1


async def test_free_addresses_are_unknown_when_azure_omits_the_list(world, adapter):
    world.emu.configure(subnet_list_limit=2)
    info = await adapter.get_subnet(world.subnet_id)
    assert info.free_addresses is None


# -- writing --------------------------------------------------------------------------------------


async def test_adding_forty_addresses_is_one_put(world, adapter):
    nic_id = world.vms[0].nic_id
    wanted = names_of("azcni-", 40)
    result = await adapter.update_ip_configurations(nic_id, add=new(*wanted))
    assert world.emu.request_count("PUT") == 1
    assert world.emu.request_count("PUT", nic_id) == 1
    secondary = result.secondary("azcni-")
    assert sorted(c.name for c in secondary) == wanted
    assert all(c.succeeded and not c.primary for c in secondary)
    assert all(c.subnet_id == world.subnet_id for c in secondary)
    addresses = [c.address for c in result.ip_configurations]
    assert len(set(addresses)) == 41
    assert set(world.emu.nic_addresses(nic_id)) == set(addresses)


async def test_a_write_from_a_snapshot_reads_the_nic_no_second_time(world, adapter):
    nic_id = world.vms[0].nic_id
    snapshot = await adapter.get_nic(nic_id)
    world.emu.reset_requests()
    result = await adapter.update_ip_configurations(snapshot, add=new("azcni-a"))
    # the PUT and its operation poll(s), nothing else: no GET of the NIC before the PUT, and
    # none after the operation (the PUT's answer holds every address)
    first = world.emu.requests()[0]
    assert (first.method, first.path.lower()) == ("PUT", nic_id.lower())
    assert world.emu.request_count("GET", nic_id) == 0
    assert world.emu.request_count("GET", "*/operations/*") >= 1
    # what it returns is the NIC as Azure now has it, settled
    settled = await adapter.get_nic(nic_id)
    assert result.ip_configurations == settled.ip_configurations
    assert all(c.succeeded for c in result.ip_configurations)
    assert result.document is None, "a write must never start from the PUT's answer"


def test_the_adapters_own_requests_use_the_sdks_api_version():
    from azure.mgmt.network.operations._operations import build_network_interfaces_list_request

    from azure_cni.cloud.armjson import NETWORK_API_VERSION

    request = build_network_interfaces_list_request("rg", "sub")
    assert f"api-version={NETWORK_API_VERSION}" in request.url


async def test_a_nic_list_of_a_missing_group_is_not_found(world, adapter):
    with pytest.raises(NotFound):
        [n async for n in adapter.list_nics(world.emu.endpoints()["subscription"], "nope")]


async def test_requests_share_one_tls_connection(world, adapter):
    """With a CA bundle, azure-core made a TLS context per request and so a connection per
    request, each left open: about 1 MB of the operator's memory per request in flight."""
    world.emu.reset_requests()
    for vm in world.vms:
        await adapter.update_ip_configurations(vm.nic_id, add=new("azcni-a"))
    peers = {r.peer for r in world.emu.requests()}
    assert len(world.emu.requests()) >= 9 and len(peers) == 1, peers


async def test_nic_lists_cost_one_read_per_page(world, adapter):
    world.emu.configure(list_page_size=2)
    world.emu.reset_requests()
    listed = [nic async for nic in adapter.list_nics(world.emu.endpoints()["subscription"],
                                                     "rg1")]
    assert sorted(n.id for n in listed) == sorted(vm.nic_id for vm in world.vms)
    assert world.emu.request_count("GET") == 2  # three NICs, two per page
    # what a listing tells before parsing is what the parsed NIC says
    for n in listed:
        nic = n.snapshot()
        assert (n.id, n.vm_id, n.etag) == (nic.id, nic.vm_id, nic.etag) and nic.etag
        assert nic.document is not None


async def test_the_256th_ipconfiguration_is_accepted_and_the_257th_refused(world, adapter):
    nic_id = world.vms[1].nic_id
    full = await adapter.update_ip_configurations(nic_id, add=new(*names_of("azcni-", 255)))
    assert len(full.ip_configurations) == 256
    with pytest.raises(NicLimitExceeded, match="256"):
        await adapter.update_ip_configurations(nic_id, add=new("azcni-one-too-many"))
    assert world.emu.request_count("PUT", nic_id) == 1  # refused before writing
    # a swap in the same write stays within the limit
    swapped = await adapter.update_ip_configurations(nic_id, add=new("azcni-swap"),
                                                     remove=["azcni-000"])
    assert len(swapped.ip_configurations) == 256


async def test_writes_are_idempotent_by_name(world, adapter):
    nic_id = world.vms[0].nic_id
    first = await adapter.update_ip_configurations(nic_id, add=new("azcni-a", "azcni-b"))
    again = await adapter.update_ip_configurations(nic_id, add=new("azcni-a", "azcni-b"),
                                                   remove=["azcni-never-existed"])
    assert again.ip_configurations == first.ip_configurations
    assert world.emu.request_count("PUT", nic_id) == 1


async def test_remove_and_add_in_one_write(world, adapter):
    nic_id = world.vms[0].nic_id
    before = await adapter.update_ip_configurations(nic_id, add=new(*names_of("azcni-", 6)))
    gone = {c.address for c in before.ip_configurations if c.name in ("azcni-000", "azcni-001")}
    after = await adapter.update_ip_configurations(
        nic_id, add=new("azcni-new"), remove=["azcni-000", "azcni-001"])
    names = {c.name for c in after.ip_configurations}
    assert {"azcni-000", "azcni-001"}.isdisjoint(names)
    assert "azcni-new" in names
    assert gone.isdisjoint(world.emu.nic_addresses(nic_id))
    assert gone.isdisjoint(world.emu.subnet_usage(world.subnet_id))
    assert world.emu.request_count("PUT", nic_id) == 2


async def test_the_primary_is_never_removed(world, adapter):
    nic = await adapter.get_nic(world.vms[0].nic_id)
    with pytest.raises(CloudError) as refused:
        await adapter.update_ip_configurations(nic.id, remove=[nic.primary.name.upper()])
    assert refused.value.code == "IpConfigDeleteNotSupported"
    assert world.emu.request_count("PUT") == 0


async def test_static_addresses_are_requested_as_given(world, adapter):
    nic_id = world.vms[0].nic_id
    result = await adapter.update_ip_configurations(
        nic_id, add=[NewIPConfiguration("azcni-static", "198.18.3.7")])
    static = next(c for c in result.ip_configurations if c.name == "azcni-static")
    assert static.address == "198.18.3.7"
    assert world.emu.nic(nic_id)["properties"]["ipConfigurations"][1]["properties"][
        "privateIPAllocationMethod"] == "Static"


async def test_an_address_of_another_nic_is_address_in_use(world, adapter):
    with pytest.raises(AddressInUse) as taken:
        await adapter.update_ip_configurations(
            world.vms[0].nic_id, add=[NewIPConfiguration("azcni-x", world.vms[1].primary_ip)])
    assert taken.value.code == "PrivateIPAddressIsAllocated"


async def test_a_full_subnet_is_subnet_full(world, adapter):
    vm = world.emu.add_vm("tinyvm", world.tiny_subnet_id)  # a /29: three usable, one taken
    with pytest.raises(SubnetFull) as full:
        await adapter.update_ip_configurations(vm.nic_id, add=new("azcni-1", "azcni-2",
                                                                   "azcni-3"))
    assert full.value.code == "SubnetIsFull"
    fits = await adapter.update_ip_configurations(vm.nic_id, add=new("azcni-1", "azcni-2"))
    assert {c.address for c in fits.ip_configurations} == {
        "198.18.16.4", "198.18.16.5", "198.18.16.6"}
    assert (await adapter.get_subnet(world.tiny_subnet_id)).free_addresses == 0


async def _set_primary_groups(world, nic_id: str) -> tuple[str, str]:
    """Give the NIC's primary an ASG and a load balancer pool, as an admin would."""
    asg = ("/subscriptions/s/resourceGroups/rg1/providers/Microsoft.Network/"
           "applicationSecurityGroups/web")
    ref = parse_provider_id(world.vms[0].provider_id)
    async with NetworkManagementClient(world.emu.credential(), ref.subscription_id,
                                       base_url=world.emu.arm_url,
                                       connection_verify=str(world.emu.ca_path),
                                       polling_interval=0.01) as client:
        # the pool must exist: Azure refuses a reference to one that does not
        front = await (await client.public_ip_addresses.begin_create_or_update(
            "rg1", "lb-front", {"location": "eastus", "sku": {"name": "Standard"}})).result()
        lb = await (await client.load_balancers.begin_create_or_update("rg1", "lb", {
            "location": "eastus", "sku": {"name": "Standard"}, "properties": {
                "frontendIPConfigurations": [{"name": "fe", "properties": {
                    "publicIPAddress": {"id": front.id}}}],
                "backendAddressPools": [{"name": "pool"}]}})).result()
        pool = lb.backend_address_pools[0].id
        nic = await client.network_interfaces.get("rg1", nic_id.rsplit("/", 1)[1])
        body = nic.as_dict()
        props = body["properties"]["ipConfigurations"][0]["properties"]
        props["applicationSecurityGroups"] = [{"id": asg}]
        props["loadBalancerBackendAddressPools"] = [{"id": pool}]
        poller = await client.network_interfaces.begin_create_or_update(
            "rg1", nic_id.rsplit("/", 1)[1], body)
        await poller.result()
    return asg, pool


@pytest.mark.parametrize(("copy_asgs", "copy_pools"), [(True, False), (False, True)])
async def test_security_groups_and_pools_are_copied_only_when_asked(
        world, make_adapter, copy_asgs, copy_pools):
    nic_id = world.vms[0].nic_id
    asg, pool = await _set_primary_groups(world, nic_id)
    adapter = make_adapter(copy_application_security_groups=copy_asgs,
                           copy_load_balancer_pools=copy_pools)
    await adapter.update_ip_configurations(nic_id, add=new("azcni-a"))
    added = world.emu.nic(nic_id)["properties"]["ipConfigurations"][1]["properties"]
    assert ([g["id"] for g in added.get("applicationSecurityGroups", [])]
            == ([asg] if copy_asgs else []))
    assert ([p["id"] for p in added.get("loadBalancerBackendAddressPools", [])]
            == ([pool] if copy_pools else []))


# -- concurrency ----------------------------------------------------------------------------------


async def test_two_writers_on_one_nic_lose_no_update(world, make_adapter):
    """Two operator replicas (two adapters) race on one NIC; the etag makes the loser retry."""
    nic_id = world.vms[0].nic_id
    first, second = make_adapter(), make_adapter()
    world.emu.set_latency("PUT", 0.2)  # both read the same etag before either write lands
    a_names, b_names = names_of("azcni-a", 5), names_of("azcni-b", 5)
    await asyncio.gather(first.update_ip_configurations(nic_id, add=new(*a_names)),
                         second.update_ip_configurations(nic_id, add=new(*b_names)))
    final = await first.get_nic(nic_id)
    assert set(a_names) | set(b_names) <= {c.name for c in final.ip_configurations}
    assert world.emu.request_count("PUT", nic_id, status=412) >= 1


async def test_concurrent_calls_on_one_adapter_queue_instead_of_conflicting(world, adapter):
    nic_id = world.vms[0].nic_id
    world.emu.set_latency("PUT", 0.1)
    await asyncio.gather(adapter.update_ip_configurations(nic_id, add=new("azcni-a")),
                         adapter.update_ip_configurations(nic_id, add=new("azcni-b")))
    names = {c.name for c in (await adapter.get_nic(nic_id)).ip_configurations}
    assert {"azcni-a", "azcni-b"} <= names
    assert world.emu.request_count("PUT", nic_id) == 2
    assert world.emu.request_count("PUT", nic_id, status=412) == 0


# -- Azure's error catalogue (arm-api.md §2.1), through fault injection ---------------------------


@pytest.mark.parametrize(("status", "code", "expected"), [
    (404, "ResourceNotFound", NotFound),
    (400, "InvalidResourceReference", NotFound),
    (400, "PrivateIPAddressInUse", AddressInUse),
    (400, "PrivateIPAddressIsAllocated", AddressInUse),
    (400, "SubnetIsFull", SubnetFull),
    (400, NIC_LIMIT_CODE, NicLimitExceeded),
    (401, "InvalidAuthenticationToken", AuthFailed),
    (401, "ExpiredAuthenticationToken", AuthFailed),
    (403, "AuthorizationFailed", AuthFailed),
    (403, "LinkedAuthorizationFailed", AuthFailed),
    (400, "IpConfigDeleteNotSupported", CloudError),
    (400, "NoRegisteredProviderFound", CloudError),
    # the SDK tries to register the provider first; the emulator refuses, the 409 stands
    (409, "MissingSubscriptionRegistration", CloudError),
])
async def test_write_errors_become_typed_errors_without_retrying(world, adapter, status, code,
                                                                 expected):
    nic_id = world.vms[0].nic_id
    world.emu.inject_fault("PUT", nic_id, status, code,
                           message=f"injected {code} for namespace 'Microsoft.Network'")
    with pytest.raises(expected) as raised:
        await adapter.update_ip_configurations(nic_id, add=new("azcni-a"))
    assert raised.value.code == code
    assert raised.value.status == status
    assert "injected" in str(raised.value)
    assert world.emu.request_count("PUT", nic_id) == 1
    assert world.emu.nic_addresses(nic_id) == (world.vms[0].primary_ip,)


async def test_another_operation_in_progress_is_retried_from_a_fresh_read(world, adapter):
    nic_id = world.vms[0].nic_id
    world.emu.inject_fault("PUT", nic_id, 409, "AnotherOperationInProgress")
    result = await adapter.update_ip_configurations(nic_id, add=new("azcni-a"))
    assert "azcni-a" in {c.name for c in result.ip_configurations}
    assert world.emu.request_count("PUT", nic_id) == 2
    assert world.emu.request_count("GET", nic_id) == 2  # read, re-read (no read after the LRO)


async def test_another_operation_with_retry_after_is_retried_by_the_sdk(world, adapter):
    nic_id = world.vms[0].nic_id
    world.emu.inject_fault("PUT", nic_id, 409, "AnotherOperationInProgress",
                           headers={"Retry-After": "0.05"})
    await adapter.update_ip_configurations(nic_id, add=new("azcni-a"))
    assert world.emu.request_count("PUT", nic_id) == 2
    # the initial read only: the SDK resent the PUT, and the PUT's answer is the result
    assert world.emu.request_count("GET", nic_id) == 1


async def test_a_nic_that_stays_busy_is_a_conflict_after_bounded_attempts(world, make_adapter):
    nic_id = world.vms[0].nic_id
    adapter = make_adapter(max_write_attempts=3)
    world.emu.inject_fault("PUT", nic_id, 409, "AnotherOperationInProgress", count=100)
    with pytest.raises(Conflict) as busy:
        await adapter.update_ip_configurations(nic_id, add=new("azcni-a"))
    assert busy.value.code == "AnotherOperationInProgress"
    assert world.emu.request_count("PUT", nic_id) == 3


async def test_a_nic_that_keeps_changing_is_a_conflict_after_bounded_attempts(world,
                                                                              make_adapter):
    nic_id = world.vms[0].nic_id
    adapter = make_adapter(max_write_attempts=4)
    world.emu.inject_fault("PUT", nic_id, 412, "PreconditionFailed", count=100)
    with pytest.raises(Conflict) as stale:
        await adapter.update_ip_configurations(nic_id, add=new("azcni-a"))
    assert stale.value.status == 412
    assert world.emu.request_count("PUT", nic_id) == 4


@pytest.mark.parametrize("code", ["RetryableError", "RetryableErrorDueToAnotherOperation"])
async def test_retryable_429_is_retried_by_the_sdk(world, make_adapter, code):
    nic_id = world.vms[0].nic_id
    adapter = make_adapter(write_qps=50.0)  # after a 429 the bucket restarts empty
    world.emu.inject_fault("PUT", nic_id, 429, code, headers={"Retry-After": "0.05"})
    result = await adapter.update_ip_configurations(nic_id, add=new("azcni-a"))
    assert "azcni-a" in {c.name for c in result.ip_configurations}
    assert world.emu.request_count("PUT", nic_id) == 2


@pytest.mark.parametrize("code", ["SubscriptionRequestsThrottled", "TooManyRequests"])
async def test_persistent_throttling_is_throttled_with_the_servers_retry_after(world,
                                                                              make_adapter,
                                                                              code):
    nic_id = world.vms[0].nic_id
    adapter = make_adapter(write_qps=50.0)  # after a 429 the bucket restarts empty
    world.emu.inject_fault("PUT", nic_id, 429, code, headers={"Retry-After": "0.05"},
                           count=100)
    with pytest.raises(Throttled) as throttled:
        await adapter.update_ip_configurations(nic_id, add=new("azcni-a"))
    assert throttled.value.retry_after == pytest.approx(0.05)
    assert throttled.value.code == code
    assert world.emu.request_count("PUT", nic_id) == 4  # the SDK's 3 status retries


async def test_a_write_whose_polls_were_throttled_is_not_written_twice(world, make_adapter):
    """The PUT was accepted but polling it was throttled past the SDK's retries: the caller
    sees Throttled, and asking again finds the name on the NIC, not yet Succeeded."""
    nic_id = world.vms[0].nic_id
    adapter = make_adapter(read_qps=50.0)
    world.emu.inject_fault("GET", "*/operations/*", 429, "SubscriptionRequestsThrottled",
                           headers={"Retry-After": "0.05"}, count=4)
    with pytest.raises(Throttled):
        await adapter.update_ip_configurations(nic_id, add=new("azcni-a"))
    again = await adapter.update_ip_configurations(nic_id, add=new("azcni-a"))
    pending = next(c for c in again.ip_configurations if c.name == "azcni-a")
    assert not pending.succeeded  # the operator counts only Succeeded addresses
    assert world.emu.request_count("PUT", nic_id) == 1


async def test_a_server_error_is_retried(world, adapter):
    nic_id = world.vms[0].nic_id
    world.emu.inject_fault("PUT", nic_id, 500, "InternalServerError")
    await adapter.update_ip_configurations(nic_id, add=new("azcni-a"))
    assert world.emu.request_count("PUT", nic_id) == 2


@pytest.mark.parametrize(("outcome", "code"), [
    ("Canceled", "CanceledAndSupersededDueToAnotherOperation"),
    ("Failed", "AnotherOperationInProgress"),
])
async def test_a_superseded_operation_is_written_again(world, adapter, outcome, code):
    nic_id = world.vms[0].nic_id
    world.emu.fail_next_operation(nic_id, code, outcome=outcome)
    result = await adapter.update_ip_configurations(nic_id, add=new("azcni-a"))
    assert "azcni-a" in {c.name for c in result.ip_configurations}
    assert world.emu.request_count("PUT", nic_id) == 2


async def test_a_failed_operation_is_typed_and_rolled_back(world, adapter):
    nic_id = world.vms[0].nic_id
    world.emu.fail_next_operation(nic_id, "SubnetIsFull", "no room left")
    with pytest.raises(SubnetFull) as failed:
        await adapter.update_ip_configurations(nic_id, add=new("azcni-a", "azcni-b"))
    assert failed.value.status == 200  # a failed LRO arrives on the poll's 200
    assert world.emu.nic_addresses(nic_id) == (world.vms[0].primary_ip,)
    assert world.emu.subnet_usage(world.subnet_id).keys() == {v.primary_ip for v in world.vms}


async def test_a_refused_token_is_auth_failed(world, make_adapter):
    adapter = make_adapter(credential=world.emu.credential("not-a-token-the-emulator-issued"))
    with pytest.raises(AuthFailed) as refused:
        await adapter.get_nic(world.vms[0].nic_id)
    assert refused.value.code == "InvalidAuthenticationToken"
    assert refused.value.status == 401


async def test_an_unsupported_api_version_is_a_cloud_error(world, adapter):
    world.emu.configure(network_api_versions=("2099-01-01",))
    with pytest.raises(CloudError) as refused:
        await adapter.get_nic(world.vms[0].nic_id)
    assert refused.value.code == "NoRegisteredProviderFound"


# -- throttling -----------------------------------------------------------------------------------


async def test_a_throttled_burst_backs_off_without_a_storm(world, make_adapter):
    """The budget's model is larger than ARM's real bucket: the first answers correct it and
    a 429 pauses every caller, so each write is refused at most about once."""
    world.emu.configure(write_burst=3, write_qps=4.0, fractional_retry_after=True)
    vms = world.vms + [world.emu.add_vm(f"burst{i}", world.subnet_id) for i in range(7)]
    adapter = make_adapter(write_qps=4.0, write_burst=10, write_reserve=0)
    results = await asyncio.gather(*(adapter.update_ip_configurations(vm.nic_id, add=new("azcni-a"))
                                     for vm in vms))
    assert all(len(r.ip_configurations) == 2 for r in results)
    throttled = world.emu.request_count("PUT", status=429)
    assert throttled >= 1  # the burst really was throttled
    assert throttled <= len(vms)
    assert world.emu.request_count("PUT") == len(vms) + throttled


async def test_a_burst_twice_the_bucket_is_never_refused(world, make_adapter):
    """With ARM's bucket as the model and no reserve, the budget spends the bucket and then
    paces at its refill: no 429, and no faster than ARM allows."""
    world.emu.configure(write_burst=4, write_qps=4.0)
    vms = world.vms + [world.emu.add_vm(f"pace{i}", world.subnet_id) for i in range(5)]
    adapter = make_adapter(write_qps=4.0, write_burst=4, write_reserve=0)
    started = time.monotonic()
    await asyncio.gather(*(adapter.update_ip_configurations(vm.nic_id, add=new("azcni-a"))
                           for vm in vms))
    assert world.emu.request_count(status=429) == 0
    assert world.emu.request_count("PUT") == len(vms)
    assert time.monotonic() - started >= (len(vms) - 4) / 4.0 * 0.9


async def test_what_another_client_spent_is_learnt_from_the_answers(world, make_adapter):
    """Another client of the same identity used most of the write bucket: the first answer
    says so, and the writes after it wait for the refill instead of being refused."""
    world.emu.configure(write_burst=6, write_qps=2.0)
    other = make_adapter(write_qps=2.0, write_burst=6, write_reserve=0)
    for vm in world.vms[:2]:  # two writes, one at a time: 4 tokens left
        await other.update_ip_configurations(vm.nic_id, add=new("azcni-o"))
    ours = make_adapter(write_qps=2.0, write_burst=6, write_reserve=1)
    # its model says 6; one write learns that 3 are left
    await ours.update_ip_configurations(world.vms[2].nic_id, add=new("azcni-first"))
    # five at once: believing 5 were free would send all five into a bucket of 3
    more = [world.emu.add_vm(f"learn{i}", world.subnet_id) for i in range(5)]
    await asyncio.gather(*(ours.update_ip_configurations(vm.nic_id, add=new("azcni-a"))
                           for vm in more))
    assert world.emu.request_count(status=429) == 0


# -- observability --------------------------------------------------------------------------------


def test_requests_are_labelled_by_resource_type_and_verb():
    base = "https://h/subscriptions/s/resourceGroups/r/providers/Microsoft.Network"
    assert api_operation("PUT", f"{base}/networkInterfaces/n?api-version=1") == \
        "networkInterfaces.put"
    assert api_operation("GET", f"{base}/virtualNetworks/v/subnets/s") == "subnets.get"
    assert api_operation("GET", "https://h/subscriptions/s/providers/Microsoft.Network/"
                                "locations/l/operations/x") == "operations.get"


async def test_every_request_is_counted_timed_and_rate_limited(world, adapter):
    labels = {"operation": "networkInterfaces.put", "status": "200"}

    def sample(name, **extra):
        return REGISTRY.get_sample_value(name, extra or labels) or 0.0

    calls = sample("azure_cni_azure_api_calls_total")
    timed = sample("azure_cni_azure_api_duration_seconds_count")
    waits = sample("azure_cni_azure_api_rate_limit_duration_seconds_count",
                   operation="networkInterfaces.put")
    await adapter.update_ip_configurations(world.vms[0].nic_id, add=new("azcni-a"))
    assert sample("azure_cni_azure_api_calls_total") == calls + 1
    assert sample("azure_cni_azure_api_duration_seconds_count") == timed + 1
    assert sample("azure_cni_azure_api_rate_limit_duration_seconds_count",
                  operation="networkInterfaces.put") == waits + 1
    assert REGISTRY.get_sample_value("azure_cni_azure_api_rate_limit_remaining",
                                     {"kind": "write"}) is not None


async def test_tokens_never_reach_the_logs(world, adapter, caplog):
    caplog.set_level(logging.DEBUG)
    await adapter.update_ip_configurations(world.vms[0].nic_id, add=new("azcni-a"))
    token = world.emu.config.static_tokens[0]
    assert caplog.records  # the adapter did log
    assert all(token not in record.getMessage() for record in caplog.records)


async def test_the_adapter_satisfies_the_port(world):
    from azure_cni.cloud.port import AzureNetwork

    adapter: AzureNetwork = AzureAdapter(world.emu.azure_settings(),
                                         credential=world.emu.credential())
    await adapter.close()
