"""Uniform scale-set instances, in pure functions: their NIC IDs and the one edit azure-cni
makes to an instance's model.

A Uniform instance's NIC cannot be written through the Network provider; its
ipConfigurations are changed by a PUT of the instance model
(``properties.networkProfileConfiguration.networkInterfaceConfigurations[]``), and its
addresses are read back through the Network provider's read-only scale-set NIC API
(arm-api.md §1.8, azure-features.md §2).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from azure_cni.cloud.armjson import NicEdit, edit_ip_configurations
from azure_cni.cloud.port import CloudError, NewIPConfiguration, NotFound, Unsupported
from azure_cni.cloud.resourceid import ResourceID, parse_resource_id

#: NRP serves scale-set NICs only with this api-version; newer ones are refused with
#: NoRegisteredProviderFound (azure-sdk-for-python#32029, arm-api.md §0)
VMSS_NETWORK_API_VERSION = "2018-10-01"
# members of a NIC ipConfiguration that the scale-set model does not have (Compute refuses
# them): a Uniform instance's addresses are always Dynamic
_NOT_IN_MODEL = ("privateIPAddress", "privateIPAllocationMethod")


@dataclass(frozen=True)
class InstanceNic:
    """The NIC of a Uniform instance:
    ``.../virtualMachineScaleSets/<ss>/virtualMachines/<i>/networkInterfaces/<nic>``."""

    subscription: str
    resource_group: str
    scale_set: str
    instance_id: str
    nic: str


def instance_nic(ref: ResourceID) -> InstanceNic | None:
    """The instance NIC a resource ID names, or None if it names something else."""
    if not ref.is_type("Microsoft.Compute", "virtualMachineScaleSets", "virtualMachines",
                       "networkInterfaces"):
        return None
    return InstanceNic(ref.subscription, ref.resource_group,
                       ref.name_of("virtualMachineScaleSets"), ref.name_of("virtualMachines"),
                       ref.name)


def is_instance_nic_id(nic_id: str) -> bool:
    """Whether ``nic_id`` is the NIC of a Uniform scale-set instance."""
    try:
        return instance_nic(parse_resource_id(nic_id)) is not None
    except CloudError:
        return False


def _nic_configuration(model: Mapping[str, Any], nic_name: str) -> dict[str, Any]:
    props = model.get("properties") or {}
    profile = props.get("networkProfileConfiguration") or {}
    for config in profile.get("networkInterfaceConfigurations") or ():
        if str(config.get("name") or "").lower() == nic_name.lower():
            return dict(config)
    raise NotFound(f"scale-set instance {model.get('id')} has no network interface "
                   f"configuration {nic_name!r}", code="NoNetworkInterfaceConfiguration")


def edit_instance_ip_configurations(
    model: Mapping[str, Any],
    nic_name: str,
    add: Sequence[NewIPConfiguration],
    remove: Sequence[str],
    *,
    reapply: bool,
    copy_application_security_groups: bool,
    copy_load_balancer_pools: bool,
) -> NicEdit | None:
    """The instance model to PUT with ``add`` appended to and ``remove`` dropped from the
    ipConfigurations of its NIC configuration ``nic_name``, or None when nothing changes
    (and not ``reapply``).

    The same rules as a NIC's (``armjson.edit_ip_configurations``, which does the edit), with
    what the instance model needs: addresses are Dynamic (the model cannot pin one, so a
    requested address is not kept), and the image reference is left out, because naming a
    Compute Gallery image in the PUT needs read permission on that gallery (Azure/AKS#1819);
    left out, the instance keeps its image.
    """
    if any(a.prefix_length is not None for a in add):
        # the instance model's ipConfigurations have no privateIPAddressPrefixLength
        raise Unsupported(
            f"address blocks cannot be added to {model.get('id')}: a Uniform scale-set "
            "instance's model has no address prefixes; use mode Addresses for this node's "
            "pool, or Flexible orchestration")
    config = _nic_configuration(model, nic_name)
    config_props = dict(config.get("properties") or {})
    view: dict[str, Any] = {
        "id": model.get("id"),
        "properties": {"ipConfigurations": config_props.get("ipConfigurations") or []}}
    edit = edit_ip_configurations(
        view, [NewIPConfiguration(a.name) for a in add], remove,
        copy_application_security_groups=copy_application_security_groups,
        copy_load_balancer_pools=copy_load_balancer_pools)
    if edit is None and not reapply:
        return None
    edited: dict[str, Any] = edit.body if edit is not None else view
    configs = edited["properties"]["ipConfigurations"]
    cleaned = []
    for ipc in configs:
        ipc_props = {k: v for k, v in (ipc.get("properties") or {}).items()
                     if k not in _NOT_IN_MODEL}
        cleaned.append({**ipc, "properties": ipc_props})
    body = copy.deepcopy(dict(model))
    props = body.setdefault("properties", {})
    storage = props.get("storageProfile")
    if isinstance(storage, dict):
        storage.pop("imageReference", None)
    for nic_config in props["networkProfileConfiguration"]["networkInterfaceConfigurations"]:
        if str(nic_config.get("name") or "").lower() == nic_name.lower():
            nic_config.setdefault("properties", {})["ipConfigurations"] = cleaned
    return NicEdit(added=edit.added if edit else (), removed=edit.removed if edit else (),
                   body=body)
