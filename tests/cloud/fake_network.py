"""A stateful fake of the ``AzureNetwork`` port, for unit tests of the operator.

It keeps a small Azure of its own (VMs and Uniform scale-set instances), with the rules the
emulator and Azure enforce on the operator's writes: etags that change on every write,
lowest-free Dynamic allocation in the subnet, Static addresses refused when someone else
holds them, 256 ipConfigurations per NIC,
provisioning states (a Failed NIC or ipConfiguration is cleared only by a new write), and
throttling. It is not a mock of calls: tests set up a world, run the operator against it, and
look at the world. ``tests/cloud/test_fake_network.py`` holds it to the real adapter's
behaviour on the emulator.
"""

from __future__ import annotations

import ipaddress
import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from azure_cni.cloud.port import (
    AddressInUse,
    AttachmentRefused,
    CloudError,
    FeatureEdit,
    IPConfigFeatures,
    IPConfiguration,
    ListedNic,
    NewIPConfiguration,
    NicLimitExceeded,
    NicSnapshot,
    NotFound,
    SubnetFull,
    SubnetInfo,
    Throttled,
    VMRef,
)
from azure_cni.cloud.vmnics import choose_nic

MAX_IP_CONFIGURATIONS = 256
SUB = "00000000-0000-0000-0000-00000000fake"
RG = "rg1"


def _is_instance_nic(nic_id: str) -> bool:
    return "/microsoft.compute/virtualmachinescalesets/" in nic_id.lower()


def _etag() -> str:
    return f'W/"{uuid.uuid4()}"'


@dataclass
class FakeSubnet:
    id: str
    network: ipaddress.IPv4Network
    vnet_address_space: tuple[str, ...]
    #: address -> "<nic id>/<ipconfig name>" holding it
    used: dict[str, str] = field(default_factory=dict)
    #: pretend Azure leaves the ipConfigurations list out (free addresses unknown)
    hide_usage: bool = False

    def usable(self) -> list[str]:
        hosts = list(self.network.hosts())
        return [str(a) for a in hosts[3:]]  # .1-.3 and the broadcast are Azure's

    def free(self) -> list[str]:
        return [a for a in self.usable() if a not in self.used]

    def free_block(self, length: int, exclude: set[str]) -> list[str] | None:
        """The lowest aligned block of ``length`` whose addresses are all usable and free."""
        usable = set(self.usable())
        if length < self.network.prefixlen:
            return None
        for block in self.network.subnets(new_prefix=length):
            addresses = [str(a) for a in block]
            if all(a in usable and a not in self.used and a not in exclude
                   for a in addresses):
                return addresses
        return None


@dataclass
class FakeIPConfig:
    name: str
    address: str
    primary: bool = False
    state: str = "Succeeded"
    prefix_length: int | None = None

    def held(self) -> list[str]:
        """Every address the ipConfiguration holds (a block's all)."""
        if self.prefix_length is None:
            return [self.address]
        block = ipaddress.IPv4Network(f"{self.address}/{self.prefix_length}")
        return [str(a) for a in block]
    features: IPConfigFeatures = field(default_factory=IPConfigFeatures)


@dataclass
class FakeNic:
    id: str
    vm_id: str
    subnet: FakeSubnet
    configs: list[FakeIPConfig]
    etag: str = field(default_factory=_etag)
    state: str = "Succeeded"
    primary_nic: bool = True

    def snapshot(self) -> NicSnapshot:
        configs = tuple(IPConfiguration(c.name, c.address, c.primary, c.state, self.subnet.id,
                                        c.prefix_length, c.features.public_ip,
                                        c.features.backend_pools)
                        for c in self.configs)
        snap = NicSnapshot(self.id, self.id.rsplit("/", 1)[-1], self.etag, "eastus", self.vm_id,
                           configs, provisioning_state=self.state,
                           primary_nic=self.primary_nic)
        # the document only has to identify the version the write starts from
        return replace(snap, document=b"{}")


@dataclass
class Throttle:
    """The next ``count`` calls of ``operation`` ("read", "write" or "*") raise Throttled."""

    operation: str
    count: int
    retry_after: float


class FakeAzure:
    """One subscription, one resource group, any number of subnets and VMs."""

    def __init__(self) -> None:
        self.subnets: dict[str, FakeSubnet] = {}
        self.vms: dict[str, str] = {}  # vm id (lower) -> nic id
        self.nics: dict[str, FakeNic] = {}
        self.calls: Counter[str] = Counter()
        #: listed NICs a caller parsed (``ListedNic.snapshot``)
        self.parsed = 0
        self.writes: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []
        self.faults: dict[str, list[CloudError]] = {}
        self.throttles: list[Throttle] = []
        self.conflicts = 0
        #: public IP resource ID (lower) -> SKU; backend pool ID (lower) -> its LB's SKU
        self.public_ips: dict[str, str] = {}
        self.backend_pools: dict[str, str] = {}
        #: public IP or load balancer resource ID (lower) -> its tags
        self.tags: dict[str, dict[str, str]] = {}
        #: scopes (lower) the operator's identity may not join (LinkedAuthorizationFailed)
        self.join_denied: set[str] = set()
        self._names = itertools.count()
        self.closed = False

    # -- building the world -------------------------------------------------------------------

    def add_public_ip(self, name: str, tags: Mapping[str, str] | None = None, *,
                      resource_group: str = "pips", sku: str = "Standard") -> str:
        pip_id = (f"/subscriptions/{SUB}/resourceGroups/{resource_group}/providers/"
                  f"Microsoft.Network/publicIPAddresses/{name}")
        self.public_ips[pip_id.lower()] = sku
        self.tags[pip_id.lower()] = dict(tags or {})
        return pip_id

    def add_backend_pool(self, lb: str, pool: str, tags: Mapping[str, str] | None = None, *,
                         resource_group: str = "pips", sku: str = "Standard") -> str:
        lb_id = (f"/subscriptions/{SUB}/resourceGroups/{resource_group}/providers/"
                 f"Microsoft.Network/loadBalancers/{lb}")
        pool_id = f"{lb_id}/backendAddressPools/{pool}"
        self.backend_pools[pool_id.lower()] = sku
        self.tags.setdefault(lb_id.lower(), {}).update(tags or {})
        return pool_id

    def holder_of(self, resource_id: str) -> str | None:
        """``<nic id>/<ipconfig>`` whose public IP is ``resource_id``."""
        for nic in self.nics.values():
            for c in nic.configs:
                if c.features.public_ip.lower() == resource_id.lower():
                    return f"{nic.id}/ipConfigurations/{c.name}"
        return None

    def deny_join(self, scope: str) -> None:
        """From now on the operator may not join anything under ``scope``."""
        self.join_denied.add(scope.lower().rstrip("/"))

    def _check_linked_access(self, nic_id: str, configs: Sequence[FakeIPConfig]) -> None:
        """ARM's join check over every reference the written NIC holds (the emulator's, in
        short): a 403 LinkedAuthorizationFailed naming the scope, or the foreign subscription."""
        for config in configs:
            for linked in (config.features.public_ip, *config.features.backend_pools):
                subscription = linked.strip("/").split("/")[1] if linked.count("/") > 2 else ""
                if linked and subscription.lower() != SUB.lower():
                    raise AttachmentRefused(
                        f"The client has permission to perform action 'Microsoft.Network/"
                        f"networkInterfaces/write' on scope '{nic_id}', however the current "
                        f"tenant 'fake' is not authorized to access linked subscription "
                        f"'{subscription}'.", resources=(f"/subscriptions/{subscription}",),
                        code="LinkedAuthorizationFailed", status=403)
                if any(linked.lower() == d or linked.lower().startswith(d + "/")
                       for d in self.join_denied):
                    action = ("publicIPAddresses/join/action"
                              if linked == config.features.public_ip
                              else "loadBalancers/backendAddressPools/join/action")
                    raise AttachmentRefused(
                        f"The client 'fake' with object id 'fake' has permission to perform "
                        f"action 'Microsoft.Network/networkInterfaces/write' on scope "
                        f"'{nic_id}'; however, it does not have permission to perform action "
                        f"'Microsoft.Network/{action}' on the linked scope(s) '{linked}' or "
                        "the linked scope(s) are invalid.", resources=(linked,),
                        code="LinkedAuthorizationFailed", status=403)

    def _check_features(self, nic_id: str, features: Mapping[str, IPConfigFeatures]) -> None:
        """Azure's refusals for what an ipConfiguration may carry (the emulator's, in short)."""
        for name, feature in features.items():
            me = f"{nic_id}/ipConfigurations/{name}"
            if feature.public_ip:
                sku = self.public_ips.get(feature.public_ip.lower())
                holder = self.holder_of(feature.public_ip)
                if sku is None:
                    raise AttachmentRefused(
                        f"Resource {feature.public_ip} referenced by resource {nic_id} was not "
                        "found.", resources=(feature.public_ip,),
                        code="InvalidResourceReference", status=400)
                if holder is not None and holder.lower() != me.lower():
                    raise AttachmentRefused(
                        f"Resource {me} is referencing public IP address {feature.public_ip} "
                        f"that is already allocated to resource {holder}.",
                        resources=(feature.public_ip,), code="PublicIPAddressInUse", status=400)
            for pool in feature.backend_pools:
                if pool.lower() not in self.backend_pools:
                    raise AttachmentRefused(
                        f"Resource {pool} referenced by resource {nic_id} was not found.",
                        resources=(pool,), code="InvalidResourceReference", status=400)

    def add_subnet(self, cidr: str, name: str = "nodes", space: str = "198.18.0.0/16") -> str:
        subnet_id = (f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/"
                     f"virtualNetworks/vnet/subnets/{name}")
        self.subnets[subnet_id.lower()] = FakeSubnet(subnet_id, ipaddress.IPv4Network(cidr),
                                                     (space,))
        return subnet_id

    def add_vm(self, name: str, subnet_id: str) -> tuple[str, str]:
        """A VM and its NIC with a primary address; returns (providerID, NIC id)."""
        subnet = self.subnets[subnet_id.lower()]
        vm_id = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/" \
                f"virtualMachines/{name}"
        nic_id = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/" \
                 f"networkInterfaces/{name}-nic"
        address = subnet.free()[0]
        subnet.used[address] = f"{nic_id}/ipconfig1"
        self.nics[nic_id.lower()] = FakeNic(nic_id, vm_id, subnet,
                                            [FakeIPConfig("ipconfig1", address, primary=True)])
        self.vms[vm_id.lower()] = nic_id
        return f"azure://{vm_id}", nic_id

    def add_instance(self, scale_set: str, instance_id: str, subnet_id: str
                     ) -> tuple[str, str]:
        """An instance of a Uniform scale set and its NIC; returns (providerID, NIC id).

        Its NIC is written through the instance model, so its addresses are always Dynamic,
        and it is listed with its scale set, not with the resource group's Network NICs.
        """
        subnet = self.subnets[subnet_id.lower()]
        vm_id = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/" \
                f"virtualMachineScaleSets/{scale_set}/virtualMachines/{instance_id}"
        nic_id = f"{vm_id}/networkInterfaces/{scale_set}-nic"
        address = subnet.free()[0]
        subnet.used[address] = f"{nic_id}/ipconfig1"
        self.nics[nic_id.lower()] = FakeNic(nic_id, vm_id, subnet,
                                            [FakeIPConfig("ipconfig1", address, primary=True)])
        self.vms[vm_id.lower()] = nic_id
        return f"azure://{vm_id}", nic_id

    def add_nic(self, provider_id: str, subnet_id: str, name: str) -> str:
        """A second NIC (not the primary) for the VM or instance, in ``subnet_id``."""
        vm_id = provider_id.removeprefix("azure://")
        subnet = self.subnets[subnet_id.lower()]
        if "/virtualmachinescalesets/" in vm_id.lower():
            nic_id = f"{vm_id}/networkInterfaces/{name}"
        else:
            nic_id = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/" \
                     f"networkInterfaces/{name}"
        address = subnet.free()[0]
        subnet.used[address] = f"{nic_id}/ipconfig1"
        self.nics[nic_id.lower()] = FakeNic(nic_id, vm_id, subnet,
                                            [FakeIPConfig("ipconfig1", address, primary=True)],
                                            primary_nic=False)
        return nic_id

    def delete_vm(self, provider_id: str) -> None:
        vm_id = provider_id.removeprefix("azure://").lower()
        nic = self.nics.pop(self.vms.pop(vm_id).lower())
        for c in nic.configs:
            for a in c.held():
                nic.subnet.used.pop(a, None)

    def attach_nic(self, nic_id: str, provider_id: str) -> None:
        """Detach ``nic_id`` from its VM and make it ``provider_id``'s NIC, addresses and all."""
        nic = self.nic(nic_id)
        for vm_id, attached in list(self.vms.items()):
            if attached.lower() == nic_id.lower():
                del self.vms[vm_id]
        nic.vm_id = provider_id.removeprefix("azure://")
        self.vms[nic.vm_id.lower()] = nic.id

    def nic(self, nic_id: str) -> FakeNic:
        return self.nics[nic_id.lower()]

    def ours(self, nic_id: str) -> dict[str, str]:
        """The NIC's azure-cni ipConfigurations: name -> address."""
        return {c.name: c.address for c in self.nic(nic_id).configs if c.name.startswith("azcni-")}

    def take_address(self, subnet_id: str, address: str, owner: str = "someone-else") -> None:
        """Somebody outside azure-cni holds ``address`` from now on."""
        self.subnets[subnet_id.lower()].used[address] = owner

    def remove_behind_our_back(self, nic_id: str, *names: str) -> None:
        nic = self.nic(nic_id)
        for c in [c for c in nic.configs if c.name in names]:
            nic.configs.remove(c)
            for a in c.held():
                nic.subnet.used.pop(a, None)
        nic.etag = _etag()

    def change_behind_our_back(self, nic_id: str, name: str, *,
                               public_ip: str | None = None,
                               backend_pools: Sequence[str] | None = None) -> None:
        """Another tool writes ipConfiguration ``name``: its public IP and/or backend pools
        become these (the NIC gets a new etag)."""
        nic = self.nic(nic_id)
        for i, c in enumerate(nic.configs):
            if c.name == name:
                now = c.features
                nic.configs[i] = replace(c, features=IPConfigFeatures(
                    now.public_ip if public_ip is None else public_ip,
                    now.backend_pools if backend_pools is None else tuple(backend_pools)))
        nic.etag = _etag()

    def fail(self, nic_id: str, *names: str) -> None:
        """A failed operation left these ipConfigurations (or, without names, the NIC) Failed."""
        nic = self.nic(nic_id)
        if not names:
            nic.state = "Failed"
        for c in nic.configs:
            if c.name in names:
                c.state = "Failed"

    def set_state(self, nic_id: str, name: str, state: str) -> None:
        next(c for c in self.nic(nic_id).configs if c.name == name).state = state

    def inject(self, operation: str, *errors: CloudError) -> None:
        """The next calls of ``operation`` raise these errors, one call each."""
        self.faults.setdefault(operation, []).extend(errors)

    def throttle(self, operation: str, count: int, retry_after: float) -> None:
        self.throttles.append(Throttle(operation, count, retry_after))

    # -- the port -----------------------------------------------------------------------------

    def _call(self, operation: str, kind: str) -> None:
        self.calls[operation] += 1
        queued = self.faults.get(operation)
        if queued:
            raise queued.pop(0)
        for t in self.throttles:
            if t.operation in (kind, "*") and t.count > 0:
                t.count -= 1
                raise Throttled(f"{operation} throttled", retry_after=t.retry_after,
                                code="SubscriptionRequestsThrottled")

    def _nic(self, nic_id: str) -> FakeNic:
        found = self.nics.get(nic_id.lower())
        if found is None:
            raise NotFound(f"The Resource 'Microsoft.Network/networkInterfaces/{nic_id}' was "
                           "not found.", code="ResourceNotFound", status=404)
        return found

    async def get_vm_nic(self, vm: VMRef, pod_subnet_id: str = "") -> NicSnapshot:
        self._call("get_vm_nic", "read")
        nic_id = self.vms.get(vm.id.lower())
        if nic_id is None:
            raise NotFound(f"virtual machine {vm.id} not found", code="ResourceNotFound",
                           status=404)
        nics = [n.snapshot() for n in self.nics.values() if n.vm_id.lower() == vm.id.lower()]
        return choose_nic(vm.id, nics, pod_subnet_id)

    async def get_nic(self, nic_id: str) -> NicSnapshot:
        self._call("get_nic", "read")
        return self._nic(nic_id).snapshot()

    async def list_nics(self, subscription_id: str, resource_group: str
                        ) -> AsyncIterator[ListedNic]:
        self._call("list_nics", "read")
        for nic in list(self.nics.values()):
            if not _is_instance_nic(nic.id):
                yield self._listed(nic.snapshot())

    async def list_scale_set_nics(self, subscription_id: str, resource_group: str,
                                  scale_set: str) -> AsyncIterator[ListedNic]:
        self._call("list_scale_set_nics", "read")
        marker = f"/virtualmachinescalesets/{scale_set.lower()}/virtualmachines/"
        for nic in list(self.nics.values()):
            if marker in nic.id.lower():
                yield self._listed(nic.snapshot())

    def _listed(self, snapshot: NicSnapshot) -> ListedNic:
        """As a listing page gives it; ``parsed`` counts the NICs the caller looked into."""
        def parse() -> NicSnapshot:
            self.parsed += 1
            return snapshot
        return ListedNic(snapshot.id, snapshot.vm_id, snapshot.etag, parse)

    async def update_ip_configurations(
        self,
        nic: str | NicSnapshot,
        add: Sequence[NewIPConfiguration] = (),
        remove: Sequence[str] = (),
        *,
        reapply: bool = False,
        features: Mapping[str, FeatureEdit] | None = None,
    ) -> NicSnapshot:
        self._call("update_ip_configurations", "write")
        nic_id = nic if isinstance(nic, str) else nic.id
        current = self._nic(nic_id)
        if _is_instance_nic(nic_id):  # the instance model cannot ask for an address
            add = [NewIPConfiguration(a.name) for a in add]
        if not isinstance(nic, str) and nic.etag != current.etag:
            self.conflicts += 1  # the adapter reads again and applies the same edit
        have = {c.name.lower() for c in current.configs}
        fresh = [a for a in add if a.name.lower() not in have]
        doomed = {n.lower() for n in remove if n.lower() in have}
        wanted = {n.lower(): f for n, f in (features or {}).items()}
        # each edit is made to the NIC as it is now, not as the caller read it
        node_pools = next(c.features.backend_pools for c in current.configs if c.primary)
        edited = {c.name: wanted[c.name.lower()].applied(c.features, node_pools)
                  for c in current.configs if not c.primary and c.name.lower() in wanted
                  and c.name.lower() not in doomed}
        featured = {name: f for name, f in edited.items()
                    if not f.same(next(c for c in current.configs if c.name == name).features)}
        if not fresh and not doomed and not featured and not reapply:
            return current.snapshot()
        kept = [c for c in current.configs if c.name.lower() not in doomed]
        self._check_linked_access(nic_id, [replace(c, features=featured.get(c.name, c.features))
                                           for c in kept])
        self._check_features(nic_id, featured)
        if len(kept) + len(fresh) > MAX_IP_CONFIGURATIONS:
            raise NicLimitExceeded(f"NIC {nic_id} cannot have more than "
                                   f"{MAX_IP_CONFIGURATIONS} IP configurations",
                                   code="NetworkInterfaceIpConfigurationCountLimitReached")
        subnet = current.subnet
        mine = {a for c in current.configs for a in c.held()}
        # all-or-nothing, like a PUT: check everything before changing anything
        statics = [a for new in fresh if new.address is not None
                   for a in FakeIPConfig(new.name, new.address,
                                         prefix_length=new.prefix_length).held()]
        taken = [a for a in statics if subnet.used.get(a) is not None and a not in mine]
        if taken:
            raise AddressInUse(
                f"IP configuration {nic_id}/ipConfigurations/x is using the private IP address "
                f"{taken[0]} which is already allocated to resource "
                f"{subnet.used[taken[0]]}.", addresses=taken[:1],
                code="PrivateIPAddressIsAllocated", status=400)
        free = [a for a in subnet.free() if a not in statics]
        dynamic = sum(1 for a in fresh if a.address is None and a.prefix_length is None)
        if dynamic > len(free):
            raise SubnetFull(f"Subnet {subnet.network} does not have enough capacity for "
                             f"{dynamic} IP addresses.", code="SubnetIsFull", status=400)
        blocks: dict[str, list[str]] = {}
        claimed = set(statics) | set(free[:dynamic])
        for a in fresh:
            if a.address is None and a.prefix_length is not None:
                block = subnet.free_block(a.prefix_length, claimed)
                if block is None:
                    raise SubnetFull(f"Subnet {subnet.network} does not have enough capacity "
                                     f"for a /{a.prefix_length} block.", code="SubnetIsFull",
                                     status=400)
                blocks[a.name] = block
                claimed.update(block)
        for c in current.configs:
            if c.name.lower() in doomed:
                for held in c.held():
                    subnet.used.pop(held, None)
        new = []
        for a in fresh:
            if a.name in blocks:
                address = blocks[a.name][0]
            else:
                address = a.address if a.address is not None else free.pop(0)
            config = FakeIPConfig(a.name, address, prefix_length=a.prefix_length)
            for held in config.held():
                subnet.used[held] = f"{nic_id}/{a.name}"
            new.append(config)
        # a write clears Failed: everything on the NIC was provisioned again
        current.configs = [replace(c, state="Succeeded", features=featured.get(c.name, c.features))
                           for c in kept] + new
        current.state = "Succeeded"
        current.etag = _etag()
        self.writes.append((nic_id, tuple(a.name for a in fresh), tuple(sorted(doomed))))
        return current.snapshot()

    async def get_subnet(self, subnet_id: str) -> SubnetInfo:
        self._call("get_subnet", "read")
        subnet = self.subnets.get(subnet_id.lower())
        if subnet is None:
            raise NotFound(f"subnet {subnet_id} not found", code="NotFound", status=404)
        free = None if subnet.hide_usage else len(subnet.free())
        return SubnetInfo(subnet.id, str(subnet.network), subnet.vnet_address_space, free)

    async def get_tags(self, resource_id: str) -> Mapping[str, str]:
        self._call("get_tags", "read")
        found = self.tags.get(resource_id.lower())
        if found is None:
            kind, _, name = resource_id.rstrip("/").rpartition("/")
            raise NotFound(f"The Resource 'Microsoft.Network/{kind.rpartition('/')[2]}/{name}' "
                           "was not found.", code="ResourceNotFound", status=404)
        return dict(found)

    async def close(self) -> None:
        self.closed = True
