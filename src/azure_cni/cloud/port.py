"""The operator's port to Azure: five operations, typed values and typed errors.

The operator (the consumer) depends on this Protocol only. ``azure_cni.cloud.azure`` is the
implementation on the async azure-mgmt clients; the ARM emulator in ``azure_cni_sim.arm`` is
reached through that same adapter over HTTPS, so there is no second, fake implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class VMRef:
    """A virtual machine as named by a Node's ``spec.providerID``."""

    subscription_id: str
    resource_group: str
    name: str
    #: set for scale-set instances: (scale set name, instance id)
    scale_set: tuple[str, str] | None = None

    @property
    def id(self) -> str:
        base = f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
        if self.scale_set is not None:
            vmss, instance = self.scale_set
            return (f"{base}/providers/Microsoft.Compute/virtualMachineScaleSets/{vmss}"
                    f"/virtualMachines/{instance}")
        return f"{base}/providers/Microsoft.Compute/virtualMachines/{self.name}"


@dataclass(frozen=True)
class IPConfiguration:
    """One ipConfiguration of a NIC, as Azure reports it."""

    name: str
    address: str | None
    primary: bool
    provisioning_state: str
    subnet_id: str

    @property
    def succeeded(self) -> bool:
        return self.provisioning_state.lower() == "succeeded"


@dataclass(frozen=True)
class NicSnapshot:
    """A NIC as read (or as written) in one request; ``etag`` identifies the version."""

    id: str
    name: str
    etag: str
    location: str
    vm_id: str
    ip_configurations: tuple[IPConfiguration, ...]

    @property
    def primary(self) -> IPConfiguration:
        for ipc in self.ip_configurations:
            if ipc.primary:
                return ipc
        raise ValueError(f"NIC {self.id} has no primary ipConfiguration")

    def secondary(self, prefix: str = "") -> tuple[IPConfiguration, ...]:
        """Non-primary ipConfigurations whose name starts with ``prefix``."""
        return tuple(c for c in self.ip_configurations
                     if not c.primary and c.name.startswith(prefix))


@dataclass(frozen=True)
class NewIPConfiguration:
    """An ipConfiguration to add: Dynamic when ``address`` is None, else Static on it."""

    name: str
    address: str | None = None


@dataclass(frozen=True)
class SubnetInfo:
    """A subnet's prefix and how many addresses it still has, plus its VNet's address space."""

    id: str
    cidr: str
    vnet_address_space: tuple[str, ...]
    #: usable addresses not assigned to any ipConfiguration; None when Azure does not say
    free_addresses: int | None


class AzureNetwork(Protocol):
    """What the operator needs from Azure, and nothing more."""

    async def get_vm_nic(self, vm: VMRef) -> NicSnapshot:
        """The VM's primary NIC. Raises NotFound if the VM or NIC is gone."""
        ...

    async def get_nic(self, nic_id: str) -> NicSnapshot:
        """A NIC by resource ID. Raises NotFound if it is gone."""
        ...

    async def update_ip_configurations(
        self,
        nic_id: str,
        add: Sequence[NewIPConfiguration] = (),
        remove: Sequence[str] = (),
    ) -> NicSnapshot:
        """Add and remove named secondary ipConfigurations in ONE write of the whole NIC.

        Idempotent by name: a name in ``add`` that already exists is kept as it is, a name in
        ``remove`` that is already gone is ignored. The primary is never removed. Returns the
        NIC after the write has succeeded (or as read, if nothing needed changing).
        """
        ...

    async def get_subnet(self, subnet_id: str) -> SubnetInfo:
        """Prefix, free addresses and VNet address space of a subnet."""
        ...

    async def close(self) -> None:
        """Release connections and credentials."""
        ...


# -- errors ---------------------------------------------------------------------------------


class CloudError(Exception):
    """An Azure call failed. ``code`` is Azure's error code when there was one."""

    def __init__(self, message: str, *, code: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class Throttled(CloudError):
    """429 (or a retryable 409) that outlasted the client's own retries."""

    def __init__(self, message: str, *, retry_after: float, code: str = "",
                 status: int | None = 429) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class Conflict(CloudError):
    """Another writer kept changing the NIC (etag mismatches) or an operation was in progress."""


class SubnetFull(CloudError):
    """The subnet has no address left for a new ipConfiguration."""


class AddressInUse(CloudError):
    """A Static address requested is already used by another ipConfiguration."""


class NicLimitExceeded(CloudError):
    """The NIC would hold more than 256 ipConfigurations."""


class NotFound(CloudError):
    """The VM, NIC or subnet does not exist (any more)."""


class AuthFailed(CloudError):
    """The credential was refused (401) or lacks a role assignment (403)."""


class Unsupported(CloudError):
    """The node's VM kind is not supported yet (Uniform scale sets)."""


class InvalidProviderID(CloudError):
    """A Node's spec.providerID is not an Azure VM resource."""
