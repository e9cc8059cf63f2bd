"""Uniform virtual machine scale sets: instances, their network profile and the rules of an
instance PUT, as the Compute RP applies them (azure-features.md §2, arm-api.md §1.8).

No I/O here (``scaleset_resources`` serves the HTTP side). An instance's NIC is an ordinary
``armstate.Nic`` in ``ArmState.nics``, keyed by its scale-set path
(``.../virtualMachineScaleSets/<ss>/virtualMachines/<i>/networkInterfaces/<nic>``), so
address allocation, long-running operations, rollback and the fabric's NIC-change hook are
the Network side's own. What is Compute's lives here: the instance model (its etag, its image,
the ``networkProfileConfiguration`` that is a view of the NIC), the instance PUT's rules
and Compute's throttling (``compute_throttling``).

Uniform instance NICs are not Network resources: NRP's list of a resource group's NICs leaves
them out, and they can be changed only through the instance model.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from azure_cni_sim.armstate import (
    _IPCONFIG_WRITABLE,
    MAX_IP_CONFIGURATIONS,
    ArmError,
    ArmState,
    Nic,
    Operation,
    Vm,
    _not_found,
    _rg_prefix,
    new_etag,
    new_nic,
)

#: "VMScaleSetIpConfigurationsOnSameNicCannotUseDifferentSubnets" (named in Cilium's tests)
DIFFERENT_SUBNETS_CODE = "VMScaleSetIpConfigurationsOnSameNicCannotUseDifferentSubnets"
#: a gallery image's read permission the instance PUT checks when the body names the image
#: (Azure/AKS#1819): the operator's identity is never granted it in the emulator
GALLERY_READ = "Microsoft.Compute/galleries/images/versions/read"
# members of a NIC ipConfiguration that the scale-set model does not have: Compute refuses a
# body that carries them ("Could not find member ...")
_NOT_IN_MODEL = ("privateIPAddress", "privateIPAllocationMethod")


def scale_set_id(subscription: str, resource_group: str, name: str) -> str:
    return (f"{_rg_prefix(subscription, resource_group)}/providers/Microsoft.Compute/"
            f"virtualMachineScaleSets/{name}")


@dataclass
class ScaleSet:
    id: str
    name: str
    subscription: str
    resource_group: str
    location: str
    subnet_id: str
    #: the name of every instance's (one) NIC configuration, and so of its NIC
    nic_config: str
    #: the image every instance was made from: a Compute Gallery image version
    image_id: str
    instances: dict[str, Instance] = field(default_factory=dict)
    #: further NIC configurations of every instance: (name, subnet ID), e.g. a pod subnet's
    more_nics: tuple[tuple[str, str], ...] = ()
    next_instance: int = 0


@dataclass
class Instance:
    scale_set: ScaleSet
    instance_id: str
    #: the ``armstate.Vm`` standing for the instance (IMDS, the fabric, snapshots)
    vm: Vm
    nic_id: str
    computer_name: str
    #: every NIC of the instance, the primary (``nic_id``) first
    nic_ids: list[str] = field(default_factory=list)
    #: Compute etags are quoted integers that grow with every accepted write
    version: int = 1
    vm_guid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def id(self) -> str:
        return f"{self.scale_set.id}/virtualMachines/{self.instance_id}"

    @property
    def name(self) -> str:
        """ARM's name of a Uniform instance: ``<scale set>_<instance id>``."""
        return f"{self.scale_set.name}_{self.instance_id}"

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


class ScaleSets:
    """Every Uniform scale set of an ``ArmState`` (``ArmState.scale_sets``)."""

    def __init__(self, state: ArmState) -> None:
        self.state = state
        self.by_id: dict[str, ScaleSet] = {}

    # -- topology ---------------------------------------------------------------------------

    def add_scale_set(self, subscription: str, resource_group: str, name: str, subnet_id: str,
                      *, location: str, more_nics: tuple[tuple[str, str], ...] = ()
                      ) -> ScaleSet:
        for subnet in (subnet_id, *(s for _, s in more_nics)):
            if self.state.subnets.get(subnet.lower()) is None:
                raise ValueError(f"no subnet {subnet}")
        ss_id = scale_set_id(subscription, resource_group, name)
        if ss_id.lower() in self.by_id:
            raise ValueError(f"scale set {ss_id} exists already")
        self.state.add_resource_group(subscription, resource_group, location)
        gallery = (f"/subscriptions/{subscription}/resourceGroups/images/providers/"
                   "Microsoft.Compute/galleries/nodeimages/images/ubuntu/versions/2026.11.1")
        ss = ScaleSet(ss_id, name, subscription, resource_group, location, subnet_id,
                      f"{name}-nic", gallery, more_nics=more_nics)
        self.by_id[ss_id.lower()] = ss
        return ss

    def add_instance(self, scale_set: ScaleSet, primary_ip: str | None = None) -> Instance:
        """A new instance with one NIC whose primary ipConfiguration is ``ipconfig1``."""
        subnet = self.state.subnets[scale_set.subnet_id.lower()]
        instance_id = str(scale_set.next_instance)
        scale_set.next_instance += 1
        inst_path = f"{scale_set.id}/virtualMachines/{instance_id}"
        nic_id = f"{inst_path}/networkInterfaces/{scale_set.nic_config}"
        nic = new_nic(nic_id, subnet, subnet.free_address(primary_ip), owner_id=inst_path,
                      location=scale_set.location)
        nics = [nic]
        for config, subnet_id in scale_set.more_nics:
            more = self.state.subnets[subnet_id.lower()]
            nics.append(new_nic(f"{inst_path}/networkInterfaces/{config}", more,
                                more.free_address(None), owner_id=inst_path,
                                location=scale_set.location, primary=False))
        # AKS-style computer names (<scale set><6 base-36 digits>) are valid node names, unlike
        # the instance's ARM name "<scale set>_<id>"
        computer_name = f"{scale_set.name}{_base36(int(instance_id)):0>6}"
        vm = Vm(inst_path, computer_name, scale_set.subscription, scale_set.resource_group,
                scale_set.location, [n.id for n in nics])
        for each in nics:
            self.state.nics[each.id.lower()] = each
        self.state.vms[inst_path.lower()] = vm
        instance = Instance(scale_set, instance_id, vm, nic_id, computer_name,
                            [n.id for n in nics])
        scale_set.instances[instance_id] = instance
        return instance

    def delete_instance(self, instance: Instance) -> None:
        """Scale in: the instance, its NICs and their addresses are gone."""
        for nic_id in instance.nic_ids:
            nic = self.state.nics.pop(nic_id.lower(), None)
            for cfg in nic.ip_configs if nic is not None else ():
                cfg.subnet.release(cfg.address)
        self.state.vms.pop(instance.id.lower(), None)
        instance.scale_set.instances.pop(instance.instance_id, None)

    # -- lookups ----------------------------------------------------------------------------

    def scale_set(self, subscription: str, resource_group: str, name: str) -> ScaleSet:
        self.state.require_group(subscription, resource_group)
        found = self.by_id.get(scale_set_id(subscription, resource_group, name).lower())
        if found is None:
            raise _not_found("Microsoft.Compute/virtualMachineScaleSets", name, resource_group)
        return found

    def instance(self, subscription: str, resource_group: str, name: str,
                 instance_id: str) -> Instance:
        found = self.scale_set(subscription, resource_group, name).instances.get(instance_id)
        if found is None:
            raise _not_found(f"Microsoft.Compute/virtualMachineScaleSets/{name}/virtualMachines",
                             instance_id, resource_group)
        return found

    def nic(self, instance: Instance, nic_name: str) -> Nic:
        nic = next((n for n in self.instance_nics(instance)
                    if n.name.lower() == nic_name.lower()), None)
        if nic is None:
            raise _not_found(f"Microsoft.Compute/virtualMachineScaleSets/"
                             f"{instance.scale_set.name}/virtualMachines/"
                             f"{instance.instance_id}/networkInterfaces", nic_name,
                             instance.scale_set.resource_group)
        return nic

    def instance_nic(self, instance: Instance) -> Nic:
        return self.state.nics[instance.nic_id.lower()]

    def instance_nics(self, instance: Instance) -> list[Nic]:
        """Every NIC of the instance, the primary first."""
        return [self.state.nics[n.lower()] for n in instance.nic_ids
                if n.lower() in self.state.nics]

    # -- the instance PUT -------------------------------------------------------------------

    def put_instance(self, instance: Instance, body: Any, *, if_match: str | None,
                     polls: int, failure: tuple[str, str, str] | None) -> Operation:
        """Validate an instance PUT and start its operation (the NIC write under it).

        All-or-nothing, like the NIC PUT: the instance's ipConfigurations come from the body's
        NIC configuration, matched by name; kept ones keep their addresses, new ones get the
        lowest free addresses, dropped ones give theirs back when the operation succeeds.
        """
        if if_match is not None and if_match not in ("*", instance.etag):
            # UNVERIFIED body: Compute's exact 412 text is not documented
            raise ArmError(412, "PreconditionFailed",
                           f"The specified precondition 'If-Match = {if_match}' was not met: "
                           f"the current etag of {instance.id} is {instance.etag}.")
        if any(n.operation is not None for n in self.instance_nics(instance)):
            raise ArmError(409, "Conflict",
                           "The request failed due to conflict with a concurrent request. To "
                           "resolve it, please refer to https://aka.ms/activitylog to get more "
                           "details on the conflicting requests.")
        if not isinstance(body, Mapping) or not isinstance(body.get("properties") or {}, Mapping):
            raise ArmError(400, "InvalidRequestContent",
                           "The request content was invalid and could not be deserialized.")
        props = body.get("properties") or {}
        self._check_image(instance, props)
        nic, wanted = self._changed_nic(instance, props)
        subnet = self.state.subnets.get(wanted[0]["subnet_id"].lower())
        assert subnet is not None  # _wanted_ip_configurations checked every reference
        primary = self.state._check_primary(nic, wanted)
        configs, claims = self.state._assign_addresses(nic.id, nic, wanted, subnet, primary)
        for address, owner in claims:
            subnet.claim(address, owner)
        op = Operation(str(uuid.uuid4()), nic.id, instance.scale_set.subscription,
                       nic.location, self.state._clock(), polls_left=max(0, polls),
                       before=nic.ip_configs)
        if failure is not None:
            op.outcome, code, message = failure
            op.error = (code, message)
        nic.ip_configs = configs
        nic.state = "Updating"
        nic.etag = new_etag()
        nic.operation = op
        self.state.operations[op.id] = op
        instance.version += 1
        return op

    @staticmethod
    def _check_image(instance: Instance, props: Mapping[str, Any]) -> None:
        storage = props.get("storageProfile")
        image = storage.get("imageReference") if isinstance(storage, Mapping) else None
        if not isinstance(image, Mapping) or "/galleries/" not in str(image.get("id") or ""):
            return
        raise ArmError(403, "LinkedAuthorizationFailed",
                       "The client has permission to perform action "
                       "'Microsoft.Compute/virtualMachineScaleSets/virtualMachines/write' on "
                       f"scope '{instance.id}'; however, it does not "
                       f"have permission to perform action '{GALLERY_READ}' on the linked "
                       f"scope(s) '{image.get('id')}' or the linked scope(s) are invalid.")

    def _changed_nic(self, instance: Instance, props: Mapping[str, Any]
                     ) -> tuple[Nic, list[dict[str, Any]]]:
        """The NIC whose ipConfigurations the body changes and what it wants them to be (the
        primary NIC, unchanged, when the body changes none). A PUT that changes the
        ipConfigurations of two NICs at once is refused: the emulator writes one NIC per
        operation (UNVERIFIED whether Compute allows it; azure-cni never asks)."""
        nics = self.instance_nics(instance)
        profile = props.get("networkProfileConfiguration")
        if profile is None:  # the body leaves the network profile as it is
            return nics[0], _as_wanted(nics[0])
        configs = profile.get("networkInterfaceConfigurations") \
            if isinstance(profile, Mapping) else None
        if not isinstance(configs, list):
            raise ArmError(400, "InvalidParameter",
                           "networkProfileConfiguration.networkInterfaceConfigurations must be "
                           "a list.")
        names = sorted(str(c.get("name") or "").lower() for c in configs
                       if isinstance(c, Mapping))
        if names != sorted(n.name.lower() for n in nics):
            # UNVERIFIED code: adding or dropping NICs of an instance is not what this models
            raise ArmError(400, "InvalidParameter",
                           f"The network profile of {instance.id} must keep exactly its network "
                           f"interface configurations {[n.name for n in nics]}.")
        changed = []
        for nic in nics:
            mine = next(c for c in configs
                        if str(c.get("name") or "").lower() == nic.name.lower())
            wanted = self._wanted_ip_configurations(instance, nic, mine)
            if _key(wanted) != _key(_as_wanted(nic)):
                changed.append((nic, wanted))
        if len(changed) > 1:
            raise ArmError(400, "InvalidParameter",
                           f"The emulator changes the ipConfigurations of one network interface "
                           f"of {instance.id} per request; this one changes "
                           f"{[n.name for n, _ in changed]}.")
        return changed[0] if changed else (nics[0], _as_wanted(nics[0]))

    def _wanted_ip_configurations(self, instance: Instance, nic: Nic,
                                  mine: Mapping[str, Any]) -> list[dict[str, Any]]:
        """A NIC configuration's ipConfigurations in ``armstate``'s parsed form."""
        raw = (mine.get("properties") or {}).get("ipConfigurations")
        if not isinstance(raw, list) or not raw:
            raise ArmError(400, "InvalidParameter",
                           f"Network interface configuration {nic.name} must have at least one "
                           "IP configuration.")
        if len(raw) > MAX_IP_CONFIGURATIONS:
            # UNVERIFIED code, as for the NIC (armstate.NIC_LIMIT_CODE)
            raise ArmError(400, "NetworkInterfaceIpConfigurationCountLimitReached",
                           f"Network interface configuration {nic.name} of {instance.id} cannot "
                           f"have more than {MAX_IP_CONFIGURATIONS} IP configurations; the "
                           f"request has {len(raw)}.")
        wanted: list[dict[str, Any]] = []
        seen: set[str] = set()
        for i, item in enumerate(raw):
            name = str(item.get("name") or "") if isinstance(item, Mapping) else ""
            ipc = item.get("properties") if isinstance(item, Mapping) else None
            if not name or not isinstance(ipc, Mapping) or name.lower() in seen:
                raise ArmError(400, "InvalidParameter",
                               f"IP configuration {i} of {nic.name} needs a unique name and "
                               "properties.")
            seen.add(name.lower())
            for member in _NOT_IN_MODEL:
                if member in ipc:
                    raise ArmError(400, "InvalidRequestFormat",
                                   f"Could not find member '{member}' on object of type "
                                   "'VirtualMachineScaleSetIPConfigurationProperties'. Path "
                                   "'properties.networkProfileConfiguration."
                                   f"networkInterfaceConfigurations[0].properties."
                                   f"ipConfigurations[{i}].properties.{member}'.")
            subnet = ipc.get("subnet")
            subnet_id = str(subnet.get("id") or "") if isinstance(subnet, Mapping) else ""
            if self.state.subnets.get(subnet_id.lower()) is None:
                raise ArmError(400, "InvalidResourceReference",
                               f"Resource {subnet_id} referenced by resource {instance.id} was "
                               "not found.")
            wanted.append({"name": name, "subnet_id": subnet_id, "method": "Dynamic",
                           "address": None, "primary": bool(ipc.get("primary")),
                           "extra": {k: ipc[k] for k in _IPCONFIG_WRITABLE if k in ipc},
                           # the instance model has no address blocks (UNVERIFIED: the
                           # model's ipConfiguration documents no privateIPAddressPrefixLength)
                           "prefix": None})
        if len({w["subnet_id"].lower() for w in wanted}) > 1:
            raise ArmError(400, DIFFERENT_SUBNETS_CODE,
                           f"IP configurations on the network interface configuration "
                           f"{nic.name} of {instance.id} use different subnets.")
        return wanted


def _as_wanted(nic: Nic) -> list[dict[str, Any]]:
    """The NIC's ipConfigurations as an instance PUT that keeps them would ask for them."""
    return [{"name": c.name, "subnet_id": c.subnet.id, "method": "Dynamic", "address": None,
             "primary": c.primary, "extra": dict(c.extra), "prefix": c.prefix_length}
            for c in nic.ip_configs]


def _key(wanted: list[dict[str, Any]]) -> list[tuple[str, str, bool, str]]:
    return [(w["name"].lower(), w["subnet_id"].lower(), w["primary"], repr(sorted(
        w["extra"].items()))) for w in wanted]


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


# -- JSON views -------------------------------------------------------------------------------


def provisioning_state(nic: Nic) -> str:
    if nic.operation is not None:
        return "Updating"
    return "Failed" if nic.state == "Failed" else "Succeeded"


def instance_json(instance: Instance, nics: list[Nic]) -> dict[str, Any]:
    """A VirtualMachineScaleSetVM as Compute returns it (api-version 2026-04-01); ``nics``
    are its NICs, the primary first."""
    ss = instance.scale_set
    configurations = []
    for nic in nics:
        ip_configurations = []
        for c in nic.ip_configs:
            ipc: dict[str, Any] = {"primary": c.primary, "subnet": {"id": c.subnet.id},
                                   "privateIPAddressVersion": "IPv4", **c.extra}
            ip_configurations.append({"name": c.name, "properties": ipc})
        configurations.append({
            "name": nic.name,
            "properties": {"primary": nic.primary, "enableAcceleratedNetworking": False,
                           "enableIPForwarding": False, "dnsSettings": {"dnsServers": []},
                           "ipConfigurations": ip_configurations}})
    busy = next((n for n in nics if n.operation is not None), None)
    return {
        "name": instance.name,
        "id": instance.id,
        "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
        "location": ss.location,
        "etag": instance.etag,
        "instanceId": instance.instance_id,
        "sku": {"name": "Standard_D4s_v5", "tier": "Standard"},
        "properties": {
            "latestModelApplied": True,
            "vmId": instance.vm_guid,
            "hardwareProfile": {"vmSize": "Standard_D4s_v5"},
            "storageProfile": {
                "imageReference": {"id": ss.image_id, "exactVersion": ss.image_id.rsplit("/")[-1]},
                "osDisk": {"osType": "Linux", "createOption": "FromImage", "caching": "ReadWrite",
                           "name": f"{instance.name}_osdisk", "diskSizeGB": 128,
                           "managedDisk": {"storageAccountType": "Premium_LRS"}},
                "dataDisks": []},
            "osProfile": {"computerName": instance.computer_name, "adminUsername": "azureuser",
                          "linuxConfiguration": {"disablePasswordAuthentication": True}},
            "networkProfile": {"networkInterfaces": [
                {"id": nic.id, "properties": {"primary": nic.primary}} for nic in nics]},
            "networkProfileConfiguration": {"networkInterfaceConfigurations": configurations},
            "provisioningState": provisioning_state(busy or nics[0]),
        },
    }
