"""Public IPs, load balancers and NSGs in the ARM emulator, as the real SDK clients see them;
and the operator's adapter putting them on ipConfigurations."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from tests.sim.test_arm import Arm, error_code

from azure_cni.cloud.port import AttachmentRefused, FeatureEdit, NewIPConfiguration
from azure_cni_sim.arm import ArmConfig, ArmEmulator
from azure_cni_sim.arm.netfeatures import FabricPolicy
from azure_cni_sim.armstate import DEFAULT_SUBSCRIPTION

pytestmark = pytest.mark.timeout(60)
RG = "pips"


@pytest.fixture
def arm() -> Iterator[Arm]:
    with ArmEmulator(ArmConfig(lro_polls=1)) as emu:
        emu.add_resource_group(RG)
        yield Arm(emu)


def rid(kind: str, name: str, rg: str = RG) -> str:
    return (f"/subscriptions/{DEFAULT_SUBSCRIPTION}/resourceGroups/{rg}/providers/"
            f"Microsoft.Network/{kind}/{name}")


def make_public_ip(arm: Arm, name: str, sku: str = "Standard") -> Any:
    return arm.sdk().public_ip_addresses.begin_create_or_update(
        RG, name, {"location": "eastus", "sku": {"name": sku},
                   "properties": {"publicIPAllocationMethod": "Static"}}).result()


def make_lb(arm: Arm, name: str, pip: str, sku: str = "Standard") -> Any:
    lb_id = rid("loadBalancers", name)
    return arm.sdk().load_balancers.begin_create_or_update(RG, name, {
        "location": "eastus", "sku": {"name": sku},
        "properties": {
            "frontendIPConfigurations": [{"name": "fe", "properties": {
                "publicIPAddress": {"id": pip}}}],
            "backendAddressPools": [{"name": "web"}],
            "loadBalancingRules": [{"name": "http", "properties": {
                "frontendIPConfiguration": {"id": f"{lb_id}/frontendIPConfigurations/fe"},
                "backendAddressPool": {"id": f"{lb_id}/backendAddressPools/web"},
                "protocol": "Tcp", "frontendPort": 80, "backendPort": 8080}}]}}).result()


async def add_secondary(arm: Arm, vm: int, name: str, features: FeatureEdit | None = None
                        ) -> Any:
    async with arm_adapter(arm) as adapter:
        nic = await adapter.update_ip_configurations(arm.vms[vm].nic_id,
                                                     [NewIPConfiguration(name)])
        if features is not None:
            nic = await adapter.update_ip_configurations(nic.id, features={name: features})
        return nic


def arm_adapter(arm: Arm) -> Any:
    from azure_cni.cloud.azure import AzureAdapter
    from azure_cni_sim.arm import StaticTokenCredential

    return AzureAdapter(arm.emu.azure_settings(), credential=StaticTokenCredential(arm.token),
                        client_options={"retry_total": 0})


def test_a_public_ip_is_standard_static_and_from_the_internet_range(arm):
    pip = make_public_ip(arm, "web")
    assert pip.sku.name == "Standard"
    assert pip.public_ip_allocation_method == "Static"
    assert pip.ip_address.startswith("203.0.113.")
    assert arm.sdk().public_ip_addresses.get(RG, "web").ip_address == pip.ip_address
    with pytest.raises(ResourceNotFoundError):
        arm.sdk().public_ip_addresses.get(RG, "nope")


async def test_the_adapter_attaches_and_detaches_a_public_ip_and_azure_says_who_holds_it(arm):
    pip = make_public_ip(arm, "web")
    nic = await add_secondary(arm, 0, "azcni-a", FeatureEdit(public_ip=pip.id))
    (config,) = nic.secondary()
    assert config.public_ip_id.lower() == pip.id.lower()
    held = arm.sdk().public_ip_addresses.get(RG, "web")
    me = f"{arm.vms[0].nic_id}/ipConfigurations/azcni-a"
    assert held.ip_configuration.id.lower() == me.lower()
    # a second ipConfiguration anywhere may not take it: ARM's error, as the port's type
    await add_secondary(arm, 1, "azcni-b")
    async with arm_adapter(arm) as adapter:
        with pytest.raises(AttachmentRefused) as refused:
            await adapter.update_ip_configurations(
                arm.vms[1].nic_id, features={"azcni-b": FeatureEdit(public_ip=pip.id)})
        assert refused.value.code == "PublicIPAddressInUse"
        assert [r.lower() for r in refused.value.resources] == [pip.id.lower()]
        # attached, it cannot be deleted
        with pytest.raises(HttpResponseError) as raised:
            arm.sdk().public_ip_addresses.begin_delete(RG, "web").result()
        assert error_code(raised) == "PublicIPAddressCannotBeDeleted"
        detached = await adapter.update_ip_configurations(
            arm.vms[0].nic_id, features={"azcni-a": FeatureEdit(drop_public_ip=pip.id)})
        assert detached.secondary()[0].public_ip_id == ""
    assert arm.sdk().public_ip_addresses.get(RG, "web").ip_configuration is None
    arm.sdk().public_ip_addresses.begin_delete(RG, "web").result()
    # a write naming a deleted public IP is an invalid reference
    async with arm_adapter(arm) as adapter:
        with pytest.raises(AttachmentRefused) as refused:
            await adapter.update_ip_configurations(
                arm.vms[0].nic_id, features={"azcni-a": FeatureEdit(public_ip=pip.id)})
        assert refused.value.code == "InvalidResourceReference"


async def test_backend_pools_list_their_members_and_refuse_a_basic_load_balancer(arm):
    front = make_public_ip(arm, "front")
    lb = make_lb(arm, "lb", front.id)
    pool = lb.backend_address_pools[0].id
    for vm in (0, 1):
        await add_secondary(arm, vm, f"azcni-{vm}", FeatureEdit(add_pools=(pool,)))
    members = arm.sdk().load_balancers.get(RG, "lb").backend_address_pools[0]
    assert {m.id.lower() for m in members.backend_ip_configurations} == {
        f"{arm.vms[vm].nic_id}/ipConfigurations/azcni-{vm}".lower() for vm in (0, 1)}
    old = make_lb(arm, "old", make_public_ip(arm, "old-front", sku="Basic").id, sku="Basic")
    async with arm_adapter(arm) as adapter:
        with pytest.raises(AttachmentRefused) as refused:
            await adapter.update_ip_configurations(arm.vms[0].nic_id, features={
                "azcni-0": FeatureEdit(add_pools=(old.backend_address_pools[0].id,))})
    assert refused.value.code == "BasicSkuLoadBalancerBackendPoolNotSupported"


def test_nsg_rules_are_validated_and_carry_the_default_rules(arm):
    nsgs = arm.sdk().network_security_groups
    nsg = nsgs.begin_create_or_update(RG, "nodes", {"location": "eastus", "properties": {
        "securityRules": [{"name": "no-8080", "properties": {
            "priority": 100, "direction": "Inbound", "access": "Deny", "protocol": "Tcp",
            "sourceAddressPrefix": "198.19.0.0/16", "sourcePortRange": "*",
            "destinationAddressPrefix": "*", "destinationPortRange": "8080"}}]}}).result()
    assert [r.name for r in nsg.security_rules] == ["no-8080"]
    assert [r.name for r in nsg.default_security_rules] == [
        "AllowVnetInBound", "AllowAzureLoadBalancerInBound", "DenyAllInBound",
        "AllowVnetOutBound", "AllowInternetOutBound", "DenyAllOutBound"]
    clash = {"priority": 100, "direction": "Inbound", "access": "Allow", "protocol": "*",
             "sourceAddressPrefix": "*", "sourcePortRange": "*",
             "destinationAddressPrefix": "*", "destinationPortRange": "*"}
    with pytest.raises(HttpResponseError) as raised:
        arm.sdk().security_rules.begin_create_or_update(RG, "nodes", "clash",
                                                        {"properties": clash}).result()
    assert error_code(raised) == "SecurityRuleConflict"
    with pytest.raises(HttpResponseError) as raised:
        arm.sdk().security_rules.begin_create_or_update(
            RG, "nodes", "low", {"properties": {**clash, "priority": 99}}).result()
    assert error_code(raised) == "SecurityRuleInvalidPriority"
    arm.sdk().security_rules.begin_delete(RG, "nodes", "no-8080").result()
    assert arm.sdk().network_security_groups.get(RG, "nodes").security_rules == []


async def test_the_fabric_hears_the_policy_nat_balancers_and_guarded_addresses(arm):
    seen: list[FabricPolicy] = []
    arm.emu.on_network_policy(seen.append)
    pip = make_public_ip(arm, "web")
    nic = await add_secondary(arm, 0, "azcni-a", FeatureEdit(public_ip=pip.id))
    private = nic.secondary()[0].address
    assert seen[-1].nat == ((pip.ip_address, private),)
    nsg = arm.sdk().network_security_groups.begin_create_or_update(
        RG, "nic", {"location": "eastus", "properties": {"securityRules": []}}).result()
    body = arm.nic_body(arm.vms[1])
    body["properties"]["networkSecurityGroup"] = {"id": nsg.id}
    arm.sdk().network_interfaces.begin_create_or_update("rg1", "vm1-nic", body).result()
    guarded = {g.address: g for g in seen[-1].guarded}
    assert set(guarded) == {arm.vms[1].primary_ip}
    (rules,) = guarded[arm.vms[1].primary_ip].nsgs
    assert [r.name for r in rules][-2:] == ["DenyAllInBound", "DenyAllOutBound"]


def test_tags_of_public_ips_and_load_balancers_are_kept_and_patched_alone(arm):
    """What an admin writes on a resource for azure-cni (issue 22 row 12), by PUT or by the
    updateTags PATCH that replaces the tags and nothing else."""
    pip = make_public_ip(arm, "tagged")
    lb = make_lb(arm, "tagged-lb", pip.id)
    sdk = arm.sdk()
    assert not sdk.public_ip_addresses.get(RG, "tagged").tags
    sdk.public_ip_addresses.update_tags(RG, "tagged", {"tags": {"azurecni-namespaces": "web"}})
    sdk.load_balancers.update_tags(RG, "tagged-lb", {"tags": {"azurecni-namespaces": "a,b"}})
    read = sdk.public_ip_addresses.get(RG, "tagged")
    assert read.tags == {"azurecni-namespaces": "web"} and read.ip_address == pip.ip_address
    read_lb = sdk.load_balancers.get(RG, "tagged-lb")
    assert read_lb.tags == {"azurecni-namespaces": "a,b"}
    assert [p.name for p in read_lb.backend_address_pools] == [
        p.name for p in lb.backend_address_pools]
    with pytest.raises(ResourceNotFoundError):
        sdk.load_balancers.update_tags(RG, "nope", {"tags": {}})
