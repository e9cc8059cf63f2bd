"""Which of a VM's NICs carries a pool's pods, in pure functions.

On Azure every NIC sits in exactly one subnet (all its ipConfigurations share it), so a pool
names the NIC by its subnet (``spec.podSubnetID``): the VM's NIC whose primary ipConfiguration
is in that subnet. An empty ``podSubnetID`` names the VM's primary NIC, as before pools could
name one.
"""

from __future__ import annotations

from collections.abc import Sequence

from azure_cni.cloud.port import CloudError, NicSnapshot, NotFound


def in_subnet(nic: NicSnapshot, subnet_id: str) -> bool:
    """Whether ``nic`` sits in ``subnet_id`` (resource IDs compare case-insensitively)."""
    return any(c.primary and c.subnet_id.lower() == subnet_id.lower()
               for c in nic.ip_configurations)


def serves(nic: NicSnapshot, pod_subnet_id: str) -> bool:
    """Whether ``nic`` is the one a pool with ``pod_subnet_id`` uses on its VM."""
    return in_subnet(nic, pod_subnet_id) if pod_subnet_id else nic.primary_nic


def choose_nic(vm_id: str, nics: Sequence[NicSnapshot], pod_subnet_id: str) -> NicSnapshot:
    """The NIC of the VM ``vm_id`` (whose NICs are ``nics``) that carries the pool's pods.

    Raises NotFound when the VM has no NIC in the pod subnet (or no NIC at all), CloudError
    when several NICs of the VM sit in it and none is the primary (the pool cannot tell which
    one is meant).
    """
    if not nics:
        raise NotFound(f"virtual machine {vm_id} has no network interface",
                       code="NoNetworkInterface")
    if not pod_subnet_id:
        return next((n for n in nics if n.primary_nic), nics[0])
    found = [n for n in nics if in_subnet(n, pod_subnet_id)]
    if not found:
        have = ", ".join(f"{n.name} in {_subnet_name(n)}" for n in nics)
        raise NotFound(f"virtual machine {vm_id} has no network interface in the pod subnet "
                       f"{pod_subnet_id} (it has {have}); attach one when making the VM or "
                       "scale set, or change the pool's podSubnetID",
                       code="NoNicInPodSubnet")
    primary = [n for n in found if n.primary_nic]
    if primary:
        return primary[0]
    if len(found) > 1:
        raise CloudError(f"virtual machine {vm_id} has {len(found)} network interfaces in the "
                         f"pod subnet {pod_subnet_id} ({', '.join(n.name for n in found)}); "
                         "azure-cni uses one NIC per subnet", code="SeveralNicsInPodSubnet")
    return found[0]


def _subnet_name(nic: NicSnapshot) -> str:
    subnet = next((c.subnet_id for c in nic.ip_configurations if c.primary), "")
    return subnet.rsplit("/", 1)[-1] or "no subnet"
