"""Turn a Node's ``spec.providerID`` into the VM it names."""

from __future__ import annotations

import re

from azure_cni.cloud.port import InvalidProviderID, VMRef

_EXPECTED = ("azure:///subscriptions/<subscription>/resourceGroups/<group>/providers/"
             "Microsoft.Compute/virtualMachines/<vm> (or .../virtualMachineScaleSets/<scale set>"
             "/virtualMachines/<instance id>)")

# kubelet writes three slashes; some tools normalise the URI to two, so both are accepted.
_PROVIDER_ID = re.compile(
    r"^azure:/{2,3}subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)"
    r"/providers/microsoft\.compute/"
    r"(?:virtualmachinescalesets/(?P<vmss>[^/]+)/virtualmachines/(?P<instance>[^/]+)"
    r"|virtualmachines/(?P<vm>[^/]+))/?$",
    re.IGNORECASE,
)


def parse_provider_id(provider_id: str) -> VMRef:
    """The VM a providerID names; a Uniform scale-set instance has ``scale_set`` set.

    Flexible scale-set VMs carry the plain virtualMachines form, so they parse as ordinary VMs.
    """
    match = _PROVIDER_ID.match(provider_id.strip())
    if match is None:
        raise InvalidProviderID(
            f"node providerID {provider_id!r} is not an Azure virtual machine; "
            f"expected {_EXPECTED}",
            code="InvalidProviderID")
    sub, rg = match["sub"], match["rg"]
    if match["vmss"] is not None:
        vmss, instance = match["vmss"], match["instance"]
        # Azure names a Uniform instance "<scale set>_<instance id>" (IMDS compute.name).
        return VMRef(sub, rg, f"{vmss}_{instance}", scale_set=(vmss, instance))
    return VMRef(sub, rg, match["vm"])
