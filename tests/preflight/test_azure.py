"""The Azure checks against the emulator with RBAC on: the operator's identity reads each
node's NIC, and the permissions API says what it may do."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from azure_cni.api.settings import Settings
from azure_cni.cloud.azure import AzureAdapter
from azure_cni.cloud.providerid import parse_provider_id
from azure_cni.preflight.azure import azure_findings
from azure_cni.preflight.findings import Check, Result
from azure_cni_sim.arm import ArmConfig, ArmEmulator
from azure_cni_sim.arm.config import StaticTokenCredential
from azure_cni_sim.armstate import DEFAULT_SUBSCRIPTION
from azure_cni_sim.azcli import AzCli

pytestmark = pytest.mark.timeout(60)
SUB = f"/subscriptions/{DEFAULT_SUBSCRIPTION}"
ACTIONS = ["Microsoft.Compute/virtualMachines/read",
           "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
           "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/write",
           "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/networkInterfaces/read",
           "Microsoft.Compute/virtualMachineScaleSets/networkInterfaces/read",
           "Microsoft.Network/networkInterfaces/read",
           "Microsoft.Network/networkInterfaces/write",
           "Microsoft.Network/virtualNetworks/read",
           "Microsoft.Network/virtualNetworks/subnets/read",
           "Microsoft.Network/virtualNetworks/subnets/join/action"]


@pytest.fixture
def emu() -> Iterator[ArmEmulator]:
    with ArmEmulator(ArmConfig(lro_polls=1, enforce_rbac=True)) as emu:
        yield emu


async def findings(emu: ArmEmulator, principal: str, nodes: dict[str, str]
                   ) -> dict[tuple[Check, str], tuple[Result, str]]:
    adapter = AzureAdapter(emu.azure_settings(polling_interval=0.01),
                           credential=StaticTokenCredential(emu.issue_token(principal)))
    try:
        found = await azure_findings(
            adapter, [(name, parse_provider_id(pid)) for name, pid in nodes.items()],
            Settings())
    finally:
        await adapter.close()
    return {(f.check, f.subject): (f.result, f.message) for f in found}


async def test_each_missing_permission_is_named_with_its_scope(emu: ArmEmulator) -> None:
    vnet = emu.add_vnet("vnet", "198.18.0.0/16", {"nodes": "198.18.0.0/22"},
                        resource_group="network")
    subnet = vnet.subnet_ids["nodes"]
    vm = emu.add_vm("vm0", subnet, resource_group="nodes")
    pool = emu.add_scale_set("pool", subnet, resource_group="nodes")
    instance = emu.add_instance(pool)
    az = AzCli(emu.arm_url, emu.ca_path, emu.issue_token("portal-admin"))
    principal = az.identity_create("nodes", "azure-cni")["principalId"]
    az.role_definition_create({"Name": "op", "Actions": ACTIONS, "AssignableScopes": [SUB]})
    az.role_assignment_create(principal, "op", f"{SUB}/resourceGroups/nodes")
    nodes = {"vm0": f"azure://{vm.vm_id}", instance.name: f"azure://{instance.vm_id}",
             "ghost": f"azure://{SUB}/resourceGroups/nodes/providers/Microsoft.Compute/"
                      "virtualMachines/ghost"}

    found = await findings(emu, principal, nodes)
    assert found[(Check.NIC, "vm0")][0] is Result.PASS
    assert found[(Check.NIC, "ghost")][0] is Result.FAIL
    assert "ghost" in found[(Check.NIC, "ghost")][1]
    for node in ("vm0", instance.name):
        result, message = found[(Check.PERMISSIONS, node)]
        assert result is Result.FAIL
        assert "Microsoft.Network/virtualNetworks/subnets/join/action" in message
        assert "virtualNetworks/vnet/subnets/nodes (resource group network)" in message

    az.role_assignment_create(principal, "op", f"{SUB}/resourceGroups/network")
    found = await findings(emu, principal, nodes)
    assert found[(Check.PERMISSIONS, "vm0")][0] is Result.PASS
    assert found[(Check.PERMISSIONS, instance.name)][0] is Result.PASS


async def test_an_identity_without_any_role_cannot_read_the_nic(emu: ArmEmulator) -> None:
    vnet = emu.add_vnet("vnet", "198.18.0.0/16", {"nodes": "198.18.0.0/22"})
    vm = emu.add_vm("vm0", vnet.subnet_ids["nodes"])
    result, message = (await findings(emu, "nobody", {"vm0": f"azure://{vm.vm_id}"}))[
        (Check.NIC, "vm0")]
    assert result is Result.FAIL
    assert "Microsoft.Compute/virtualMachines/read" in message
