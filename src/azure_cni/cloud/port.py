"""The operator's port to Azure: eight operations, typed values and typed errors.

The operator (the consumer) depends on this Protocol only. ``azure_cni.cloud.azure`` is the
implementation on the async azure-mgmt clients; the ARM emulator in ``azure_cni_sim.arm`` is
reached through that same adapter over HTTPS. The operator's unit tests use a stateful fake
(``tests/cloud/fake_network.py``) that a conformance test holds to the adapter's behaviour.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class IPConfiguration:
    """One ipConfiguration of a NIC, as Azure reports it."""

    name: str
    address: str | None
    primary: bool
    provisioning_state: str
    subnet_id: str
    #: set when the ipConfiguration holds the aligned block ``address/prefix_length``
    prefix_length: int | None = None

    @property
    def private_ip(self) -> str | None:
        """``privateIPAddress`` in Azure's form: the address, or ``<address>/<length>``."""
        if self.address is None or self.prefix_length is None:
            return self.address
        return f"{self.address}/{self.prefix_length}"

    #: resource ID of the public IP on it ("" for none)
    public_ip_id: str = ""
    #: resource IDs of the load balancer backend pools it is in
    backend_pool_ids: tuple[str, ...] = ()

    @property
    def features(self) -> IPConfigFeatures:
        return IPConfigFeatures(self.public_ip_id, self.backend_pool_ids)

    @property
    def succeeded(self) -> bool:
        return self.provisioning_state.lower() == "succeeded"

    @property
    def failed(self) -> bool:
        """Azure gave up on it; only a new write of the NIC clears this."""
        return self.provisioning_state.lower() == "failed"


@dataclass(frozen=True, slots=True)
class NicSnapshot:
    """A NIC as read (or as written) in one request; ``etag`` identifies the version."""

    id: str
    name: str
    etag: str
    location: str
    vm_id: str
    ip_configurations: tuple[IPConfiguration, ...]
    provisioning_state: str = "Succeeded"
    #: the VM's primary NIC (a VM with several NICs marks exactly one)
    primary_nic: bool = True
    #: ``AA-BB-CC-DD-EE-FF`` as ARM writes it ("" when Azure has not assigned one yet)
    mac_address: str = ""
    #: the NIC exactly as read (its JSON text: a third of the memory of the parsed form), so
    #: a write can start from it without reading the NIC again
    document: bytes | None = field(default=None, compare=False, repr=False)

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

    @property
    def failed(self) -> bool:
        """The NIC's last operation failed; only a new write of the NIC clears this."""
        return self.provisioning_state.lower() == "failed"


@dataclass(frozen=True)
class IPConfigFeatures:
    """What an ipConfiguration carries besides its address: a public IP and backend pools."""

    public_ip: str = ""
    backend_pools: tuple[str, ...] = ()

    def same(self, other: IPConfigFeatures) -> bool:
        """Equal as ARM compares resource IDs (case-insensitively, pools as a set)."""
        return (self.public_ip.lower() == other.public_ip.lower()
                and {p.lower() for p in self.backend_pools}
                == {p.lower() for p in other.backend_pools})


@dataclass(frozen=True)
class FeatureEdit:
    """A change to an ipConfiguration's public IP and backend pools, made to what it holds
    when the write lands: a write retried on a NIC that changed since it was read (412)
    keeps what another writer did meanwhile, except what the edit itself changes."""

    #: put this public IP on it ("": leave the slot to ``drop_public_ip`` and ``reset``)
    public_ip: str = ""
    #: take the public IP off if it is this one
    drop_public_ip: str = ""
    add_pools: tuple[str, ...] = ()
    remove_pools: tuple[str, ...] = ()
    #: first take everything off but the node's own backend pools (those of the NIC's
    #: primary ipConfiguration, which a new ipConfiguration may copy): a released address
    reset: bool = False

    def applied(self, current: IPConfigFeatures, node_pools: Iterable[str] = ()
                ) -> IPConfigFeatures:
        """What an ipConfiguration carrying ``current`` carries after this edit (resource IDs
        compare case-insensitively, as ARM's do)."""
        public_ip, pools = current.public_ip, list(current.backend_pools)
        if self.reset:
            keep = {p.lower() for p in node_pools}
            public_ip, pools = "", [p for p in pools if p.lower() in keep]
        if self.drop_public_ip and public_ip.lower() == self.drop_public_ip.lower():
            public_ip = ""
        public_ip = self.public_ip or public_ip
        gone = {p.lower() for p in self.remove_pools}
        pools = [p for p in pools if p.lower() not in gone]
        for pool in self.add_pools:
            if pool.lower() not in {p.lower() for p in pools}:
                pools.append(pool)
        return IPConfigFeatures(public_ip, tuple(pools))

    @property
    def attaches(self) -> tuple[str, ...]:
        """The resources this edit puts on an ipConfiguration."""
        return tuple(r for r in (self.public_ip, *self.add_pools) if r)


@dataclass(frozen=True)
class NewIPConfiguration:
    """An ipConfiguration to add: Dynamic when ``address`` is None, else Static on it; a
    block of ``prefix_length`` (``privateIPAddressPrefixLength``) when that is set."""

    name: str
    address: str | None = None
    prefix_length: int | None = None


@dataclass(frozen=True)
class SubnetInfo:
    """A subnet's prefix and how many addresses it still has, plus its VNet's address space."""

    id: str
    cidr: str
    vnet_address_space: tuple[str, ...]
    #: usable addresses not assigned to any ipConfiguration; None when Azure does not say
    free_addresses: int | None


@dataclass(frozen=True, slots=True)
class ListedNic:
    """A NIC as a listing shows it: its identity and version at once, the rest on demand.

    The NIC sweep lists every NIC every ``driftCheckSeconds`` and finds almost all of them as
    it saw them last time (the same etag: ARM gives a NIC a new one on every change), so it
    parses only those whose etag it has not seen (``snapshot``)."""

    id: str
    vm_id: str
    etag: str
    parse: Callable[[], NicSnapshot] = field(compare=False, repr=False)

    def snapshot(self) -> NicSnapshot:
        return self.parse()


class AzureNetwork(Protocol):
    """What the operator needs from Azure, and nothing more."""

    async def get_vm_nic(self, vm: VMRef, pod_subnet_id: str = "") -> NicSnapshot:
        """The VM's (or Uniform scale-set instance's) NIC in ``pod_subnet_id``; its primary
        NIC when that is empty (``vmnics.choose_nic``).

        Raises NotFound if the VM is gone or has no NIC in the subnet.
        """
        ...

    async def get_nic(self, nic_id: str) -> NicSnapshot:
        """A NIC by resource ID (a scale-set instance's too). Raises NotFound if it is gone."""
        ...

    def list_nics(self, subscription_id: str, resource_group: str
                  ) -> AsyncIterator[ListedNic]:
        """Every NIC of a resource group, a page at a time (one read per page, not per NIC).

        Raises NotFound if the resource group is gone.
        """
        ...

    def list_scale_set_nics(self, subscription_id: str, resource_group: str, scale_set: str
                            ) -> AsyncIterator[ListedNic]:
        """Every instance NIC of a Uniform scale set, a page at a time (one read per page).

        Raises NotFound if the scale set is gone.
        """
        ...

    async def update_ip_configurations(
        self,
        nic: str | NicSnapshot,
        add: Sequence[NewIPConfiguration] = (),
        remove: Sequence[str] = (),
        *,
        reapply: bool = False,
        features: Mapping[str, FeatureEdit] | None = None,
    ) -> NicSnapshot:
        """Add and remove named secondary ipConfigurations in ONE write of the whole NIC.

        A Uniform scale-set instance's NIC (its ID is under the instance) is written through
        its instance model instead: one Compute PUT guarded by the instance's etag, after
        which the NIC is read back; its addresses are always Dynamic (the model cannot ask
        for one), so a requested ``address`` is not kept.

        ``features`` edits, in the same write, the public IP and backend pools of the named
        existing secondary ipConfigurations (a name that is not on the NIC is ignored), each
        edit made to what the ipConfiguration holds when the write lands.

        ``nic`` is a resource ID (the NIC is read first) or a snapshot with its ``document``
        (written as is, guarded by its etag; a NIC that changed since is read again and the
        same edit applied). Idempotent by name: a name in ``add`` that already exists is kept
        as it is, a name in ``remove`` that is already gone is ignored. The primary is never
        removed. Nothing is written when nothing changes, unless ``reapply``: then the NIC is
        written anyway, which is how Azure clears a Failed provisioning state. Returns the
        NIC after the write has succeeded (or as read, if nothing was written).
        """
        ...

    async def get_subnet(self, subnet_id: str) -> SubnetInfo:
        """Prefix, free addresses and VNet address space of a subnet."""
        ...

    async def get_tags(self, resource_id: str) -> Mapping[str, str]:
        """The tags of a public IP address or a load balancer, as Azure spells them.

        Raises NotFound if it is gone, AuthFailed if the operator may not read it.
        """
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
    """The subnet has no address (or no free aligned block) left for a new ipConfiguration."""


class VnetLimitReached(SubnetFull):
    """The VNet holds as many private addresses as Azure allows (65,536; a block counts
    once): no subnet of it can give more, whatever its free space."""


class AddressInUse(CloudError):
    """A Static address requested is already used by another ipConfiguration.

    ``addresses`` are the requested addresses Azure named as taken (empty if it named none).
    """

    def __init__(self, message: str, *, addresses: Sequence[str] = (), code: str = "",
                 status: int | None = None) -> None:
        super().__init__(message, code=code, status=status)
        self.addresses = tuple(addresses)


class AttachmentRefused(CloudError):
    """Azure refused a public IP or backend pool named on an ipConfiguration (in use
    elsewhere, not Standard, gone, or one the operator may not join). ``resources`` are the
    resource IDs Azure named, or scopes (a subscription) that hold what it refused."""

    def __init__(self, message: str, *, resources: Sequence[str] = (), code: str = "",
                 status: int | None = None) -> None:
        super().__init__(message, code=code, status=status)
        self.resources = tuple(resources)

    def concerns(self, resource_id: str) -> bool:
        """Whether this refusal is about ``resource_id``: Azure named it or a scope holding
        it, or its message spells it out whole (names may hold dots; a trailing one ends the
        sentence: Azure's names never end with a dot)."""
        wanted = resource_id.lower().rstrip("/")
        if not wanted:
            return False
        for named in self.resources:
            scope = named.lower().rstrip("/")
            if wanted == scope or wanted.startswith(scope + "/"):
                return True
        text = str(self).lower()
        start = text.find(wanted)
        while start >= 0:
            after = text[start + len(wanted):start + len(wanted) + 2]
            if not after or not (_name_char(after[0]) or (
                    after[0] == "." and len(after) > 1 and _name_char(after[1]))):
                return True
            start = text.find(wanted, start + 1)
        return False


def _name_char(c: str) -> bool:
    """A character that continues an Azure resource name (letters, digits, ``_``, ``-``)."""
    return c.isalnum() or c in "_-"


class NicLimitExceeded(CloudError):
    """The NIC would hold more than 256 ipConfigurations."""


class NotFound(CloudError):
    """The VM, NIC or subnet does not exist (any more)."""


class AuthFailed(CloudError):
    """The credential was refused (401) or lacks a role assignment (403)."""


class Unsupported(CloudError):
    """The node's VM kind is not supported."""


class InvalidProviderID(CloudError):
    """A Node's spec.providerID is not an Azure VM resource."""


class MissingProviderID(InvalidProviderID):
    """The Node has no spec.providerID (yet): kubelet or the cloud controller sets it."""
