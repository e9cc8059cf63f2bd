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
    IpConfig,
    Nic,
    Operation,
    Vm,
    _not_found,
    _rg_prefix,
    new_etag,
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
    next_instance: int = 0


@dataclass
class Instance:
    scale_set: ScaleSet
    instance_id: str
    #: the ``armstate.Vm`` standing for the instance (IMDS, the fabric, snapshots)
    vm: Vm
    nic_id: str
    computer_name: str
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
                      *, location: str) -> ScaleSet:
        if self.state.subnets.get(subnet_id.lower()) is None:
            raise ValueError(f"no subnet {subnet_id}")
        ss_id = scale_set_id(subscription, resource_group, name)
        if ss_id.lower() in self.by_id:
            raise ValueError(f"scale set {ss_id} exists already")
        self.state.add_resource_group(subscription, resource_group, location)
        gallery = (f"/subscriptions/{subscription}/resourceGroups/images/providers/"
                   "Microsoft.Compute/galleries/nodeimages/images/ubuntu/versions/2026.11.1")
        ss = ScaleSet(ss_id, name, subscription, resource_group, location, subnet_id,
                      f"{name}-nic", gallery)
        self.by_id[ss_id.lower()] = ss
        return ss

    def add_instance(self, scale_set: ScaleSet, primary_ip: str | None = None) -> Instance:
        """A new instance with one NIC whose primary ipConfiguration is ``ipconfig1``."""
        subnet = self.state.subnets[scale_set.subnet_id.lower()]
        instance_id = str(scale_set.next_instance)
        scale_set.next_instance += 1
        inst_path = f"{scale_set.id}/virtualMachines/{instance_id}"
        nic_id = f"{inst_path}/networkInterfaces/{scale_set.nic_config}"
        address = subnet.free_address(primary_ip)
        mac = "00-0D-3A-" + "-".join(f"{b:02X}" for b in uuid.uuid4().bytes[:3])
        nic = Nic(nic_id, scale_set.nic_config, scale_set.subscription,
                  scale_set.resource_group, scale_set.location, inst_path, mac, [])
        nic.ip_configs.append(IpConfig("ipconfig1", address, "Dynamic", True, subnet))
        subnet.claim(address, nic.ipconfig_id("ipconfig1"))
        # AKS-style computer names (<scale set><6 base-36 digits>) are valid node names, unlike
        # the instance's ARM name "<scale set>_<id>"
        computer_name = f"{scale_set.name}{_base36(int(instance_id)):0>6}"
        vm = Vm(inst_path, computer_name, scale_set.subscription, scale_set.resource_group,
                scale_set.location, [nic_id])
        self.state.nics[nic_id.lower()] = nic
        self.state.vms[inst_path.lower()] = vm
        instance = Instance(scale_set, instance_id, vm, nic_id, computer_name)
        scale_set.instances[instance_id] = instance
        return instance

    def delete_instance(self, instance: Instance) -> None:
        """Scale in: the instance, its NIC and its addresses are gone."""
        nic = self.state.nics.pop(instance.nic_id.lower(), None)
        if nic is not None:
            for cfg in nic.ip_configs:
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
        nic = self.state.nics.get(instance.nic_id.lower())
        if nic is None or nic.name.lower() != nic_name.lower():
            raise _not_found(f"Microsoft.Compute/virtualMachineScaleSets/"
                             f"{instance.scale_set.name}/virtualMachines/"
                             f"{instance.instance_id}/networkInterfaces", nic_name,
                             instance.scale_set.resource_group)
        return nic

    def instance_nic(self, instance: Instance) -> Nic:
        return self.state.nics[instance.nic_id.lower()]

    # -- the instance PUT -------------------------------------------------------------------

    def put_instance(self, instance: Instance, body: Any, *, if_match: str | None,
                     polls: int, failure: tuple[str, str, str] | None) -> Operation:
        """Validate an instance PUT and start its operation (the NIC write under it).

        All-or-nothing, like the NIC PUT: the instance's ipConfigurations come from the body's
        NIC configuration, matched by name; kept ones keep their addresses, new ones get the
        lowest free addresses, dropped ones give theirs back when the operation succeeds.
        """
        nic = self.instance_nic(instance)
        if if_match is not None and if_match not in ("*", instance.etag):
            # UNVERIFIED body: Compute's exact 412 text is not documented
            raise ArmError(412, "PreconditionFailed",
                           f"The specified precondition 'If-Match = {if_match}' was not met: "
                           f"the current etag of {instance.id} is {instance.etag}.")
        if nic.operation is not None:
            raise ArmError(409, "Conflict",
                           "The request failed due to conflict with a concurrent request. To "
                           "resolve it, please refer to https://aka.ms/activitylog to get more "
                           "details on the conflicting requests.")
        if not isinstance(body, Mapping) or not isinstance(body.get("properties") or {}, Mapping):
            raise ArmError(400, "InvalidRequestContent",
                           "The request content was invalid and could not be deserialized.")
        props = body.get("properties") or {}
        self._check_image(instance, props)
        wanted = self._wanted_ip_configurations(instance, nic, props)
        if wanted is None:  # the body leaves the network profile as it is
            wanted = [{"name": c.name, "subnet_id": c.subnet.id, "method": "Dynamic",
                       "address": None, "primary": c.primary, "extra": dict(c.extra),
                       "prefix": c.prefix_length}
                      for c in nic.ip_configs]
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

    def _wanted_ip_configurations(self, instance: Instance, nic: Nic,
                                  props: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        """The body's ipConfigurations of the instance's NIC in ``armstate``'s parsed form."""
        profile = props.get("networkProfileConfiguration")
        if profile is None:
            return None
        configs = profile.get("networkInterfaceConfigurations") \
            if isinstance(profile, Mapping) else None
        if not isinstance(configs, list):
            raise ArmError(400, "InvalidParameter",
                           "networkProfileConfiguration.networkInterfaceConfigurations must be "
                           "a list.")
        mine = next((c for c in configs if isinstance(c, Mapping)
                     and str(c.get("name") or "").lower() == nic.name.lower()), None)
        if mine is None or len(configs) != 1:
            # UNVERIFIED code: adding or dropping NICs of an instance is not what this models
            raise ArmError(400, "InvalidParameter",
                           f"The network profile of {instance.id} must keep exactly its network "
                           f"interface configuration {nic.name!r}.")
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


def instance_json(instance: Instance, nic: Nic) -> dict[str, Any]:
    """A VirtualMachineScaleSetVM as Compute returns it (api-version 2026-04-01)."""
    ss = instance.scale_set
    ip_configurations = []
    for c in nic.ip_configs:
        ipc: dict[str, Any] = {"primary": c.primary, "subnet": {"id": c.subnet.id},
                               "privateIPAddressVersion": "IPv4", **c.extra}
        ip_configurations.append({"name": c.name, "properties": ipc})
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
            "networkProfile": {"networkInterfaces": [{"id": nic.id}]},
            "networkProfileConfiguration": {"networkInterfaceConfigurations": [{
                "name": ss.nic_config,
                "properties": {"primary": True, "enableAcceleratedNetworking": False,
                               "enableIPForwarding": False, "dnsSettings": {"dnsServers": []},
                               "ipConfigurations": ip_configurations}}]},
            "provisioningState": provisioning_state(nic),
        },
    }
