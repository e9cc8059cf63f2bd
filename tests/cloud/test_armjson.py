"""The pure ARM JSON conversions and the NIC edit, table-tested without a server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.mgmt.network.models import NetworkInterface

from azure_cni.cloud.armjson import (
    MAX_IP_CONFIGURATIONS,
    REFERENCE,
    edit_ip_configurations,
    load_collapsed,
    parse_nic,
    parse_subnet,
    parse_vm_primary_nic_id,
    usable_addresses,
)
from azure_cni.cloud.port import CloudError, NewIPConfiguration, NicLimitExceeded, NotFound

NIC_ID = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/nic"
SUBNET = ("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/"
          "subnets/a")
ASG = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/applicationSecurityGroups/x"


def ipconfig(name: str, address: str, *, primary: bool = False, state: str = "Succeeded",
             **extra: Any) -> dict[str, Any]:
    return {"name": name, "id": f"{NIC_ID}/ipConfigurations/{name}", "etag": 'W/"1"',
            "properties": {"privateIPAddress": address, "privateIPAllocationMethod": "Dynamic",
                           "primary": primary, "provisioningState": state,
                           "subnet": {"id": SUBNET}, **extra}}


def nic(*configs: dict[str, Any]) -> dict[str, Any]:
    return {"id": NIC_ID, "name": "nic", "etag": 'W/"1"', "location": "eastus",
            "properties": {"provisioningState": "Succeeded",
                           "virtualMachine": {"id": "/vm"},
                           "ipConfigurations": list(configs)}}


BASE = nic(ipconfig("ipconfig1", "10.0.0.4", primary=True,
                    applicationSecurityGroups=[{"id": ASG}]),
           ipconfig("azcni-a", "10.0.0.5"), ipconfig("azcni-b", "10.0.0.6", state="Updating"))


def edit(add=(), remove=(), *, asgs=False, pools=False, doc=BASE):
    return edit_ip_configurations(doc, list(add), list(remove),
                                  copy_application_security_groups=asgs,
                                  copy_load_balancer_pools=pools)


def test_parse_nic_reads_the_sdk_model_and_plain_json_alike():
    from_json = parse_nic(BASE)
    assert parse_nic(NetworkInterface(BASE)) == from_json
    assert from_json.primary.address == "10.0.0.4"
    assert from_json.vm_id == "/vm"
    assert [c.succeeded for c in from_json.ip_configurations] == [True, True, False]
    assert [c.name for c in from_json.secondary("azcni-")] == ["azcni-a", "azcni-b"]


def test_nothing_to_change_is_no_edit():
    assert edit(add=[NewIPConfiguration("azcni-a")], remove=["azcni-gone"]) is None
    assert edit() is None


def test_existing_names_are_kept_as_they_are_and_compared_case_insensitively():
    result = edit(add=[NewIPConfiguration("AZCNI-A", "10.9.9.9"), NewIPConfiguration("azcni-c")])
    assert result is not None
    assert result.added == ("azcni-c",)
    configs = result.body["properties"]["ipConfigurations"]
    assert configs[1]["properties"]["privateIPAddress"] == "10.0.0.5"
    assert configs[-1] == {"name": "azcni-c", "properties": {
        "subnet": {"id": SUBNET}, "primary": False, "privateIPAddressVersion": "IPv4",
        "privateIPAllocationMethod": "Dynamic"}}


def test_static_additions_carry_their_address():
    result = edit(add=[NewIPConfiguration("azcni-s", "10.0.0.50")])
    assert result is not None
    props = result.body["properties"]["ipConfigurations"][-1]["properties"]
    assert props["privateIPAllocationMethod"] == "Static"
    assert props["privateIPAddress"] == "10.0.0.50"


def test_removal_drops_only_the_named_configurations():
    result = edit(remove=["azcni-b", "azcni-missing"])
    assert result is not None
    assert result.removed == ("azcni-b",)
    assert [c["name"] for c in result.body["properties"]["ipConfigurations"]] == [
        "ipconfig1", "azcni-a"]
    assert len(BASE["properties"]["ipConfigurations"]) == 3  # the input is not modified


def test_the_primary_cannot_be_removed():
    with pytest.raises(CloudError) as refused:
        edit(remove=["IPCONFIG1"])
    assert refused.value.code == "IpConfigDeleteNotSupported"


@pytest.mark.parametrize(("asgs", "pools"), [(False, False), (True, False), (True, True)])
def test_groups_and_pools_are_copied_only_when_asked(asgs, pools):
    pool = {"id": "/lb/pool"}
    doc = nic(ipconfig("ipconfig1", "10.0.0.4", primary=True,
                       applicationSecurityGroups=[{"id": ASG, "etag": "x"}],
                       loadBalancerBackendAddressPools=[pool]))
    result = edit(add=[NewIPConfiguration("azcni-c")], asgs=asgs, pools=pools, doc=doc)
    assert result is not None
    props = result.body["properties"]["ipConfigurations"][-1]["properties"]
    assert props.get("applicationSecurityGroups") == ([{"id": ASG}] if asgs else None)
    assert props.get("loadBalancerBackendAddressPools") == ([pool] if pools else None)


def test_the_256_limit_counts_what_stays_after_removals():
    configs = [ipconfig("ipconfig1", "10.0.0.4", primary=True)] + [
        ipconfig(f"azcni-{i}", f"10.0.1.{i}") for i in range(MAX_IP_CONFIGURATIONS - 1)]
    full = nic(*configs)
    with pytest.raises(NicLimitExceeded, match="256"):
        edit(add=[NewIPConfiguration("azcni-new")], doc=full)
    swap = edit(add=[NewIPConfiguration("azcni-new")], remove=["azcni-0"], doc=full)
    assert swap is not None
    assert len(swap.body["properties"]["ipConfigurations"]) == MAX_IP_CONFIGURATIONS


def test_contradictory_requests_are_caller_bugs():
    with pytest.raises(ValueError, match="both added and removed"):
        edit(add=[NewIPConfiguration("azcni-c")], remove=["azcni-c"])
    with pytest.raises(ValueError, match="added twice"):
        edit(add=[NewIPConfiguration("azcni-c", "10.0.0.9"), NewIPConfiguration("azcni-c")])


@pytest.mark.parametrize(("cidr", "usable"), [("10.0.0.0/29", 3), ("10.0.0.0/24", 251),
                                               ("10.0.0.0/16", 65531)])
def test_azure_reserves_five_addresses_per_subnet(cidr, usable):
    assert usable_addresses(cidr) == usable


def test_parse_subnet_free_addresses():
    listed = {"id": SUBNET, "properties": {"addressPrefix": "10.0.0.0/24",
                                           "ipConfigurations": [{"id": "a"}, {"id": "b"}]}}
    assert parse_subnet(listed, ["10.0.0.0/16"]).free_addresses == 249
    omitted = {"id": SUBNET, "properties": {"addressPrefixes": ["10.0.0.0/24"]}}
    info = parse_subnet(omitted, ["10.0.0.0/16"])
    assert info.free_addresses is None
    assert info.cidr == "10.0.0.0/24"


def test_references_collapse_as_they_are_parsed_and_still_count():
    refs = [{"id": f"{NIC_ID}{i}/ipConfigurations/azcni-{i}"} for i in range(6)]
    body = json.dumps({"id": SUBNET, "name": "a", "properties": {
        "addressPrefix": "10.0.0.0/24", "ipConfigurations": refs,
        "networkSecurityGroup": {"id": ASG, "name": "x"}}}).encode()
    subnet = load_collapsed(body)
    assert parse_subnet(subnet, ["10.0.0.0/16"]).free_addresses == 251 - 6
    assert all(ref is REFERENCE for ref in subnet["properties"]["ipConfigurations"])
    # objects holding more than an id are kept whole, the subnet itself included
    assert subnet["id"] == SUBNET
    assert subnet["properties"]["networkSecurityGroup"] == {"id": ASG, "name": "x"}


@pytest.mark.parametrize(("nics", "expected"), [
    ([{"id": "/only"}], "/only"),
    ([{"id": "/a", "properties": {"primary": False}},
      {"id": "/b", "properties": {"primary": True}}], "/b"),
])
def test_the_vms_primary_nic(nics, expected):
    vm = {"id": "/vm", "properties": {"networkProfile": {"networkInterfaces": nics}}}
    assert parse_vm_primary_nic_id(vm) == expected


def test_a_vm_without_a_nic_is_not_found():
    with pytest.raises(NotFound):
        parse_vm_primary_nic_id({"id": "/vm", "properties": {"networkProfile": {}}})
