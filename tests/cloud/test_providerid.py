"""providerID parsing: every form kubelet and cloud tooling write, and clear refusals."""

from __future__ import annotations

import pytest

from azure_cni.cloud.port import InvalidProviderID, VMRef
from azure_cni.cloud.providerid import parse_provider_id

SUB = "0a1b2c3d-0000-4000-8000-000000000001"


@pytest.mark.parametrize(("provider_id", "expected"), [
    (f"azure:///subscriptions/{SUB}/resourceGroups/MC_rg_aks_eastus/providers/"
     "Microsoft.Compute/virtualMachines/aks-nodepool1-12345678-vm0",
     VMRef(SUB, "MC_rg_aks_eastus", "aks-nodepool1-12345678-vm0")),
    # two slashes, as some tools normalise the URI
    (f"azure://subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/"
     "virtualMachines/vm1", VMRef(SUB, "rg", "vm1")),
    # ARM is case-insensitive and AKS writes lower-case groups
    (f"AZURE:///SUBSCRIPTIONS/{SUB}/resourcegroups/rg/PROVIDERS/microsoft.compute/"
     "VIRTUALMACHINES/vm1/", VMRef(SUB, "rg", "vm1")),
    # a Flexible scale-set VM has the plain virtualMachines form
    (f"azure:///subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/"
     "virtualMachines/flexpool_1a2b3c4d", VMRef(SUB, "rg", "flexpool_1a2b3c4d")),
    # a Uniform scale-set instance
    (f"azure:///subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/"
     "virtualMachineScaleSets/pool/virtualMachines/17",
     VMRef(SUB, "rg", "pool_17", scale_set=("pool", "17"))),
])
def test_valid_provider_ids(provider_id, expected):
    assert parse_provider_id(provider_id) == expected


def test_the_vm_id_round_trips():
    vm_id = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/a"
    assert parse_provider_id(f"azure://{vm_id}").id == vm_id
    uniform = (f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/"
               "virtualMachineScaleSets/pool/virtualMachines/3")
    assert parse_provider_id(f"azure://{uniform}").id == uniform


@pytest.mark.parametrize("provider_id", [
    "",
    "kind://docker/node1",
    "aws:///us-east-1a/i-0123456789abcdef0",
    f"azure:///subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/",
    f"azure:///subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/"
    "networkInterfaces/nic1",
    f"azure:////subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/"
    "virtualMachines/vm1",
    f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1",
    f"azure:///subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/"
    "virtualMachineScaleSets/pool/virtualMachines/1/extra",
])
def test_anything_else_is_refused_naming_the_value_and_the_expected_form(provider_id):
    with pytest.raises(InvalidProviderID) as refused:
        parse_provider_id(provider_id)
    message = str(refused.value)
    assert repr(provider_id) in message
    assert "azure:///subscriptions/<subscription>/resourceGroups/<group>" in message
    assert refused.value.code == "InvalidProviderID"
