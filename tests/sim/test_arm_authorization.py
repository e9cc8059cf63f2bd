"""Azure RBAC in the emulator: managed identities, custom roles, role assignments, the
permissions API and ARM's 403s, as the operator's adapter and an admin's az commands see them."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from azure_cni.cloud.azure import AzureAdapter
from azure_cni.cloud.permissions import PermissionSet, allowed, missing
from azure_cni.cloud.port import AuthFailed, NewIPConfiguration
from azure_cni_sim.arm import ArmConfig, ArmEmulator, VmInfo
from azure_cni_sim.arm.authorization import action_matches, added_references, covers
from azure_cni_sim.arm.config import StaticTokenCredential
from azure_cni_sim.armstate import DEFAULT_SUBSCRIPTION
from azure_cni_sim.azcli import AzCli, AzError

pytestmark = pytest.mark.timeout(60)
SUB = f"/subscriptions/{DEFAULT_SUBSCRIPTION}"
ROLE = {
    "Name": "azure-cni operator (test)",
    "Description": "what the operator needs on standalone VMs",
    "Actions": ["Microsoft.Compute/virtualMachines/read",
                "Microsoft.Network/networkInterfaces/read",
                "Microsoft.Network/networkInterfaces/write",
                "Microsoft.Network/virtualNetworks/read",
                "Microsoft.Network/virtualNetworks/subnets/read",
                "Microsoft.Network/virtualNetworks/subnets/join/action"],
    "AssignableScopes": [SUB],
}


@dataclass
class Tenant:
    emu: ArmEmulator
    az: AzCli
    vm: VmInfo
    subnet_id: str

    def adapter(self, principal: str) -> AzureAdapter:
        return AzureAdapter(self.emu.azure_settings(polling_interval=0.01),
                            credential=StaticTokenCredential(self.emu.issue_token(principal)))


@pytest.fixture
def tenant() -> Iterator[Tenant]:
    with ArmEmulator(ArmConfig(lro_polls=1, enforce_rbac=True)) as emu:
        vnet = emu.add_vnet("vnet", "198.18.0.0/16", {"nodes": "198.18.0.0/22"},
                            resource_group="network")
        vm = emu.add_vm("vm0", vnet.subnet_ids["nodes"], resource_group="nodes")
        az = AzCli(emu.arm_url, emu.ca_path, emu.issue_token("portal-admin"))
        yield Tenant(emu, az, vm, vnet.subnet_ids["nodes"])


async def test_the_identity_may_do_what_its_role_grants_where_it_is_assigned(tenant) -> None:
    az = tenant.az
    identity = az.run("az identity create -g nodes -n azure-cni")
    assert identity["clientId"] and identity["principalId"]
    principal = identity["principalId"]
    adapter = tenant.adapter(principal)
    try:
        with pytest.raises(AuthFailed, match=r"Microsoft\.Compute/virtualMachines/read"):
            await adapter.get_vm_nic(_ref(tenant.vm))
        az.role_definition_create(ROLE)
        for scope in (f"{SUB}/resourceGroups/nodes", f"{SUB}/resourceGroups/network"):
            az.run(f"az role assignment create --assignee-object-id {principal} "
                   f"--assignee-principal-type ServicePrincipal --role '{ROLE['Name']}' "
                   f"--scope {scope}")
        nic = await adapter.get_vm_nic(_ref(tenant.vm))
        grown = await adapter.update_ip_configurations(
            nic, add=[NewIPConfiguration("azcni-a")])
        assert len(grown.ip_configurations) == 2
        # without the assignment on the VNet's group, a new ipConfiguration cannot join the
        # subnet: ARM's linked check names the action and the subnet
        az.run(f"az role assignment delete --assignee-object-id {principal} "
               f"--scope {SUB}/resourceGroups/network")
        with pytest.raises(AuthFailed) as refused:
            await adapter.update_ip_configurations(
                tenant.vm.nic_id, add=[NewIPConfiguration("azcni-b")])
        assert refused.value.code == "LinkedAuthorizationFailed"
        assert "virtualNetworks/subnets/join/action" in str(refused.value)
        assert tenant.subnet_id.lower() in str(refused.value).lower()
        # the permissions API says the same, per scope
        nic_sets = await adapter.get_permissions(tenant.vm.nic_id)
        subnet_sets = await adapter.get_permissions(tenant.subnet_id)
        assert missing(["Microsoft.Network/networkInterfaces/write"], nic_sets) == []
        assert missing(["Microsoft.Network/virtualNetworks/subnets/join/action"],
                       subnet_sets) == ["Microsoft.Network/virtualNetworks/subnets/join/action"]
    finally:
        await adapter.close()


async def test_an_owner_and_an_unenforced_emulator_may_do_everything(tenant) -> None:
    adapter = tenant.adapter("portal-admin")
    try:
        assert allowed("Microsoft.Anything/at/all", await adapter.get_permissions(SUB))
        await adapter.get_vm_nic(_ref(tenant.vm))
    finally:
        await adapter.close()


def test_imds_tokens_of_a_user_assigned_identity_act_for_its_principal(tenant) -> None:
    identity = tenant.az.identity_create("nodes", "azure-cni")
    tenant.az.run(f"az vm identity assign -g nodes -n vm0 --identities {identity['id']}")
    imds = tenant.emu.open_vm_imds("vm0")
    request = urllib.request.Request(
        f"{imds}/metadata/identity/oauth2/token?api-version=2018-02-01"
        f"&resource=https://management.azure.com&client_id={identity['clientId']}",
        headers={"Metadata": "true"})
    with urllib.request.urlopen(request, timeout=10) as response:
        token = json.loads(response.read())["access_token"]
    issued = tenant.emu.tokens.lookup(token)
    assert issued is not None and issued.principal == identity["principalId"]


def test_a_role_is_assignable_only_within_its_assignable_scopes(tenant) -> None:
    tenant.az.role_definition_create({**ROLE, "AssignableScopes": [f"{SUB}/resourceGroups/x"]})
    with pytest.raises(AzError) as refused:
        tenant.az.role_assignment_create("p-1", ROLE["Name"], f"{SUB}/resourceGroups/nodes")
    assert refused.value.status == 403
    with pytest.raises(AzError) as again:
        tenant.az.role_definition_create(ROLE)
    assert again.value.code == "RoleDefinitionWithSameNameExists"


def test_an_unknown_az_command_is_named(tenant) -> None:
    with pytest.raises(AzError, match="az network nic update: not a command"):
        tenant.az.run("az network nic update -g nodes -n vm0-nic")


@pytest.mark.parametrize(("pattern", "action", "expected"), [
    ("Microsoft.Network/*", "Microsoft.Network/networkInterfaces/write", True),
    ("microsoft.network/networkinterfaces/WRITE", "Microsoft.Network/networkInterfaces/write",
     True),
    ("Microsoft.Network/*/read", "Microsoft.Network/virtualNetworks/subnets/read", True),
    ("Microsoft.Network/*/read", "Microsoft.Network/networkInterfaces/write", False),
    ("*", "Microsoft.Compute/virtualMachines/read", True),
])
def test_action_patterns(pattern: str, action: str, expected: bool) -> None:
    assert action_matches(pattern, action) is expected
    assert allowed(action, [PermissionSet((pattern,))]) is expected


def test_not_actions_subtract_from_their_own_set_only() -> None:
    network = PermissionSet(("Microsoft.Network/*",), ("Microsoft.Network/*/delete",))
    assert not allowed("Microsoft.Network/networkInterfaces/delete", [network])
    assert allowed("Microsoft.Network/networkInterfaces/delete",
                   [network, PermissionSet(("Microsoft.Network/networkInterfaces/*",))])


def test_scopes_cover_what_is_below_them() -> None:
    assert covers(f"{SUB}/resourceGroups/nodes", f"{SUB}/resourcegroups/NODES/providers/x/y/z")
    assert not covers(f"{SUB}/resourceGroups/node", f"{SUB}/resourceGroups/nodes")


def test_a_write_is_checked_for_the_references_it_adds() -> None:
    subnet = f"{SUB}/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/v/subnets/s"
    pip = f"{SUB}/resourceGroups/p/providers/Microsoft.Network/publicIPAddresses/web"
    now = [{"name": "ipconfig1", "properties": {"subnet": {"id": subnet}}}]
    wanted = [*now, {"name": "azcni-a", "properties": {"subnet": {"id": subnet},
                                                       "publicIPAddress": {"id": pip}}}]
    assert added_references(wanted, now) == [
        ("Microsoft.Network/publicIPAddresses/join/action", pip.lower()),
        ("Microsoft.Network/virtualNetworks/subnets/join/action", subnet.lower())]
    assert added_references(now, now) == []


def _ref(vm: VmInfo):  # type: ignore[no-untyped-def]
    from azure_cni.cloud.providerid import parse_provider_id

    return parse_provider_id(f"azure://{vm.vm_id}")
