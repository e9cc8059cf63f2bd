"""A topology document (VNets, subnets, VMs) applied to an emulator."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from azure_cni_sim.arm.admin import placement
from azure_cni_sim.arm.config import VmInfo

if TYPE_CHECKING:
    from azure_cni_sim.arm.emulator import ArmEmulator


@dataclass
class Topology:
    """A VNet and VMs to create, read from ``azure-cni-sim arm`` flags or a YAML file."""

    vnets: list[dict[str, Any]] = field(default_factory=list)
    vms: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any]) -> Topology:
        """``{vnets: [{name, addressSpace, subnets: {name: cidr}, resourceGroup?, location?}],
        vms: [{name, subnet: "<vnet>/<subnet>", primaryIP?, scaleSet?, identities?}]}``."""
        vnets = list(doc.get("vnets") or [])
        vms = list(doc.get("vms") or [])
        for vnet in vnets:
            for key in ("name", "addressSpace"):
                if key not in vnet:
                    raise ValueError(f"topology: a vnet needs {key!r}: {vnet}")
        for vm in vms:
            if "name" not in vm or "subnet" not in vm:
                raise ValueError(f"topology: a vm needs 'name' and 'subnet': {vm}")
        return cls(vnets, vms)

    def apply(self, emulator: ArmEmulator) -> list[VmInfo]:
        """Create the VNets, then the VMs; return the VMs created."""
        subnets: dict[str, str] = {}
        for vnet in self.vnets:
            info = emulator.add_vnet(vnet["name"], vnet["addressSpace"], vnet.get("subnets"),
                                     **placement(vnet))
            for name, subnet_id in info.subnet_ids.items():
                subnets[f"{vnet['name']}/{name}".lower()] = subnet_id
        created = []
        for vm in self.vms:
            vm_subnet = subnets.get(str(vm["subnet"]).lower())
            if vm_subnet is None:
                raise ValueError(f"topology: VM {vm['name']} names unknown subnet "
                                 f"{vm['subnet']!r} (known: {', '.join(sorted(subnets))})")
            created.append(emulator.add_vm(
                vm["name"], vm_subnet, primary_ip=vm.get("primaryIP"),
                scale_set=vm.get("scaleSet"), identities=tuple(vm.get("identities") or ())))
        return created
