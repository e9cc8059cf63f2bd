"""The emulated Azure world: VNets, subnets with address allocation, VMs and their NICs.

No I/O here: the HTTP layer (``azure_cni_sim.arm``) turns requests into calls on ``ArmState``
and its ``ArmError``s into ARM's error envelope. Every rule a NIC write must obey lives in
``ArmState.put_nic``, so the emulator refuses exactly what Azure refuses (arm-api.md §1-§2).
Codes marked UNVERIFIED are not documented by Microsoft; they are descriptive guesses.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

#: "Private IP addresses per network interface: 256" (Azure networking limits)
MAX_IP_CONFIGURATIONS = 256
# UNVERIFIED: Microsoft documents the limit but not the error; this follows the naming of the
# verified LoadBalancerFrontendIPConfigurationCountLimitReached ("cannot have more than").
NIC_LIMIT_CODE = "NetworkInterfaceIpConfigurationCountLimitReached"
# UNVERIFIED: cited by third parties for standalone NICs (arm-api.md §1.8)
DIFFERENT_SUBNETS_CODE = "IpConfigurationsOnSameNicCannotUseDifferentSubnets"

DEFAULT_SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
NETWORK_API_VERSION = "2026-03-01"


class ArmError(Exception):
    """A request Azure would refuse: HTTP status, ARM error code and message."""

    def __init__(self, status: int, code: str, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def new_etag() -> str:
    return f'W/"{uuid.uuid4()}"'


def _rg_prefix(subscription: str, resource_group: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{resource_group}"


@dataclass
class Subnet:
    id: str
    name: str
    vnet_id: str
    network: ipaddress.IPv4Network
    #: address -> id of the ipConfiguration holding it (also held while an operation runs)
    used: dict[ipaddress.IPv4Address, str] = field(default_factory=dict)
    #: no free address below this one (keeps "lowest free" cheap in large subnets)
    _hint: int = 0

    def __post_init__(self) -> None:
        self._hint = int(self.first_usable)

    @property
    def first_usable(self) -> ipaddress.IPv4Address:
        return self.network.network_address + 4

    @property
    def last_usable(self) -> ipaddress.IPv4Address:
        return self.network.broadcast_address - 1

    def reserved(self, address: ipaddress.IPv4Address) -> bool:
        """Azure keeps the network address, .1, .2, .3 and the broadcast address."""
        return not self.first_usable <= address <= self.last_usable

    @property
    def lowest_unused(self) -> ipaddress.IPv4Address:
        """No address below this one is free (where a search for free space may start)."""
        return ipaddress.IPv4Address(self._hint)

    def free_count(self) -> int:
        return max(0, int(self.last_usable) - int(self.first_usable) + 1) - len(self.used)

    def lowest_free(self, exclude: set[ipaddress.IPv4Address]) -> Iterator[ipaddress.IPv4Address]:
        """Free addresses in ascending order, skipping ``exclude`` as well."""
        for n in range(self._hint, int(self.last_usable) + 1):
            address = ipaddress.IPv4Address(n)
            if address not in self.used and address not in exclude:
                yield address

    def free_address(self, wanted: str | None = None) -> ipaddress.IPv4Address:
        """``wanted`` if it is a free usable address here, else the lowest free one (for a
        new NIC's primary); ValueError when neither is possible."""
        if wanted is not None:
            address = ipaddress.IPv4Address(wanted)
            if address not in self.network or self.reserved(address) or address in self.used:
                raise ValueError(f"{wanted} is not a free usable address of {self.id}")
            return address
        free = next(self.lowest_free(set()), None)
        if free is None:
            raise ValueError(f"subnet {self.id} is full")
        return free

    def claim(self, address: ipaddress.IPv4Address, owner: str) -> None:
        self.used[address] = owner
        while self._hint <= int(self.last_usable) and \
                ipaddress.IPv4Address(self._hint) in self.used:
            self._hint += 1

    def release(self, address: ipaddress.IPv4Address) -> None:
        if self.used.pop(address, None) is not None:
            self._hint = min(self._hint, int(address))


@dataclass
class VNet:
    id: str
    name: str
    subscription: str
    resource_group: str
    location: str
    address_space: list[str]
    subnets: dict[str, Subnet] = field(default_factory=dict)
    etag: str = field(default_factory=new_etag)
    guid: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class IpConfig:
    name: str
    address: ipaddress.IPv4Address
    method: str
    primary: bool
    subnet: Subnet
    state: str = "Succeeded"
    #: writable properties Azure stores and echoes (ASGs, load balancer pools, ...)
    extra: dict[str, Any] = field(default_factory=dict)
    #: set when the ipConfiguration holds the aligned block ``address/prefix_length``
    prefix_length: int | None = None

    def held(self) -> tuple[ipaddress.IPv4Address, ...]:
        """Every address of the subnet this ipConfiguration holds (a block's all)."""
        return _held(self.address, self.prefix_length)

    @property
    def private_ip(self) -> str:
        """``privateIPAddress`` as Azure reports it (``<address>/<length>`` for a block)."""
        if self.prefix_length is None:
            return str(self.address)
        return f"{self.address}/{self.prefix_length}"

    def address_json(self) -> dict[str, Any]:
        """The address fields of the ipConfiguration's JSON."""
        if self.prefix_length is None:
            return {"privateIPAddress": self.private_ip}
        return {"privateIPAddress": self.private_ip,
                "privateIPAddressPrefixLength": self.prefix_length}


def _held(address: ipaddress.IPv4Address, prefix_length: int | None
          ) -> tuple[ipaddress.IPv4Address, ...]:
    if prefix_length is None:
        return (address,)
    return tuple(ipaddress.IPv4Network(f"{address}/{prefix_length}"))


@dataclass
class Operation:
    """A long-running NIC write: InProgress for some polls, then its outcome."""

    id: str
    nic_id: str
    subscription: str
    location: str
    started: float
    polls_left: int
    outcome: str = "Succeeded"
    error: tuple[str, str] | None = None
    #: ipConfigurations before the write, restored if the operation fails
    before: list[IpConfig] = field(default_factory=list)
    status: str = "InProgress"


@dataclass
class Nic:
    id: str
    name: str
    subscription: str
    resource_group: str
    location: str
    vm_id: str
    mac: str
    ip_configs: list[IpConfig]
    etag: str = field(default_factory=new_etag)
    state: str = "Succeeded"
    guid: str = field(default_factory=lambda: str(uuid.uuid4()))
    extra: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    operation: Operation | None = None
    #: the VM's primary NIC (ARM's read-only ``properties.primary``)
    primary: bool = True

    def addresses(self) -> tuple[str, ...]:
        """Addresses of the NIC, primary first, in ipConfiguration order."""
        ordered = sorted(self.ip_configs, key=lambda c: not c.primary)
        return tuple(c.private_ip for c in ordered)

    def ipconfig_id(self, name: str) -> str:
        return f"{self.id}/ipConfigurations/{name}"


@dataclass
class Vm:
    id: str
    name: str
    subscription: str
    resource_group: str
    location: str
    nic_ids: list[str]
    vm_guid: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: Flexible scale set the VM belongs to, if any
    scale_set: str | None = None
    #: client IDs of user-assigned identities (system-assigned is always on)
    identities: tuple[str, ...] = ()


@dataclass(frozen=True)
class NicChange:
    """A NIC's committed addresses changed (primary first)."""

    nic_id: str
    vm_id: str
    old: tuple[str, ...]
    new: tuple[str, ...]


# writable NIC properties the emulator stores and echoes; everything else in a body is ignored
_NIC_WRITABLE = ("dnsSettings", "enableAcceleratedNetworking", "enableIPForwarding",
                 "networkSecurityGroup", "nicType", "auxiliaryMode", "auxiliarySku",
                 "disableTcpStateTracking")
_IPCONFIG_WRITABLE = ("applicationSecurityGroups", "loadBalancerBackendAddressPools",
                      "loadBalancerInboundNatRules", "publicIPAddress",
                      "applicationGatewayBackendAddressPools")


class ArmState:
    """All emulated resources, keyed by lower-cased resource ID (ARM is case-insensitive)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.vnets: dict[str, VNet] = {}
        self.subnets: dict[str, Subnet] = {}
        self.vms: dict[str, Vm] = {}
        self.nics: dict[str, Nic] = {}
        self.operations: dict[str, Operation] = {}
        self.resource_groups: dict[str, str] = {}

    # -- topology ---------------------------------------------------------------------------

    def add_resource_group(self, subscription: str, resource_group: str, location: str) -> None:
        self.resource_groups.setdefault(f"{subscription}/{resource_group}".lower(), location)

    def add_vnet(self, subscription: str, resource_group: str, name: str,
                 address_space: Sequence[str], location: str) -> VNet:
        vnet_id = f"{_rg_prefix(subscription, resource_group)}/providers/Microsoft.Network/" \
                  f"virtualNetworks/{name}"
        if vnet_id.lower() in self.vnets:
            raise ValueError(f"virtual network {vnet_id} exists already")
        space = [str(ipaddress.IPv4Network(p)) for p in address_space]
        self.add_resource_group(subscription, resource_group, location)
        vnet = VNet(vnet_id, name, subscription, resource_group, location, space)
        self.vnets[vnet_id.lower()] = vnet
        return vnet

    def add_subnet(self, vnet_id: str, name: str, cidr: str) -> Subnet:
        vnet = self.vnets.get(vnet_id.lower())
        if vnet is None:
            raise ValueError(f"no virtual network {vnet_id}")
        network = ipaddress.IPv4Network(cidr)
        if not any(network.subnet_of(ipaddress.IPv4Network(p)) for p in vnet.address_space):
            raise ValueError(f"subnet {cidr} is outside {vnet.name}'s address space "
                             f"{vnet.address_space}")
        for other in vnet.subnets.values():
            if network.overlaps(other.network):
                raise ValueError(f"subnet {cidr} overlaps {other.name} ({other.network})")
        if network.prefixlen > 29:
            raise ValueError(f"subnet {cidr}: Azure's smallest IPv4 subnet is a /29")
        subnet = Subnet(f"{vnet.id}/subnets/{name}", name, vnet.id, network)
        vnet.subnets[name.lower()] = subnet
        self.subnets[subnet.id.lower()] = subnet
        vnet.etag = new_etag()
        return subnet

    def add_vm(self, subscription: str, resource_group: str, name: str, subnet_id: str, *,
               location: str, primary_ip: str | None = None, nic_name: str | None = None,
               scale_set: str | None = None, identities: Sequence[str] = ()) -> tuple[Vm, Nic]:
        """A VM with one NIC whose primary ipConfiguration ``ipconfig1`` sits in ``subnet_id``."""
        subnet = self.subnets.get(subnet_id.lower())
        if subnet is None:
            raise ValueError(f"no subnet {subnet_id}")
        prefix = _rg_prefix(subscription, resource_group)
        vm_id = f"{prefix}/providers/Microsoft.Compute/virtualMachines/{name}"
        if vm_id.lower() in self.vms:
            raise ValueError(f"virtual machine {vm_id} exists already")
        nic_name = nic_name or f"{name}-nic"
        nic_id = f"{prefix}/providers/Microsoft.Network/networkInterfaces/{nic_name}"
        if nic_id.lower() in self.nics:
            raise ValueError(f"network interface {nic_id} exists already")
        address = subnet.free_address(primary_ip)
        self.add_resource_group(subscription, resource_group, location)
        nic = new_nic(nic_id, subnet, address, owner_id=vm_id, location=location,
                      method="Static" if primary_ip else "Dynamic")
        vm = Vm(vm_id, name, subscription, resource_group, location, [nic_id],
                scale_set=scale_set, identities=tuple(identities))
        self.nics[nic_id.lower()] = nic
        self.vms[vm_id.lower()] = vm
        return vm, nic

    def attach_nic(self, vm_id: str, subnet_id: str, nic_name: str) -> Nic:
        """A further NIC (not the primary) for the VM, its primary ipConfiguration ``ipconfig1``
        in ``subnet_id``: as when the VM was made with two NICs (Azure attaches a NIC to a
        running VM only after it is stopped, which the simulation does not model)."""
        vm = self.vms.get(vm_id.lower())
        subnet = self.subnets.get(subnet_id.lower())
        if vm is None or subnet is None:
            raise ValueError(f"no virtual machine {vm_id} or no subnet {subnet_id}")
        first = self.nics[vm.nic_ids[0].lower()]
        if self.subnets[first.ip_configs[0].subnet.id.lower()].vnet_id.lower() \
                != subnet.vnet_id.lower():
            raise ValueError("all NICs of a VM must be in one virtual network")
        nic_id = (f"{_rg_prefix(vm.subscription, vm.resource_group)}/providers/"
                  f"Microsoft.Network/networkInterfaces/{nic_name}")
        if nic_id.lower() in self.nics:
            raise ValueError(f"network interface {nic_id} exists already")
        nic = new_nic(nic_id, subnet, subnet.free_address(None), owner_id=vm.id,
                      location=vm.location, primary=False)
        self.nics[nic_id.lower()] = nic
        vm.nic_ids.append(nic_id)
        return nic

    # -- lookups ----------------------------------------------------------------------------

    def require_group(self, subscription: str, resource_group: str) -> None:
        if f"{subscription}/{resource_group}".lower() not in self.resource_groups:
            raise ArmError(404, "ResourceGroupNotFound",
                           f"Resource group '{resource_group}' could not be found.")

    def nic(self, subscription: str, resource_group: str, name: str) -> Nic:
        self.require_group(subscription, resource_group)
        nic_id = f"{_rg_prefix(subscription, resource_group)}/providers/Microsoft.Network/" \
                 f"networkInterfaces/{name}"
        found = self.nics.get(nic_id.lower())
        if found is None:
            raise _not_found("Microsoft.Network/networkInterfaces", name, resource_group)
        return found

    def vm(self, subscription: str, resource_group: str, name: str) -> Vm:
        self.require_group(subscription, resource_group)
        vm_id = f"{_rg_prefix(subscription, resource_group)}/providers/Microsoft.Compute/" \
                f"virtualMachines/{name}"
        found = self.vms.get(vm_id.lower())
        if found is None:
            raise _not_found("Microsoft.Compute/virtualMachines", name, resource_group)
        return found

    def vm_by_name(self, name: str) -> Vm | None:
        return next((v for v in self.vms.values() if v.name.lower() == name.lower()), None)

    def vnet(self, subscription: str, resource_group: str, name: str) -> VNet:
        self.require_group(subscription, resource_group)
        vnet_id = f"{_rg_prefix(subscription, resource_group)}/providers/Microsoft.Network/" \
                  f"virtualNetworks/{name}"
        found = self.vnets.get(vnet_id.lower())
        if found is None:
            raise _not_found("Microsoft.Network/virtualNetworks", name, resource_group)
        return found

    def subnet(self, subscription: str, resource_group: str, vnet: str, name: str) -> Subnet:
        found = self.vnet(subscription, resource_group, vnet).subnets.get(name.lower())
        if found is None:
            raise _not_found(f"Microsoft.Network/virtualNetworks/{vnet}/subnets", name,
                             resource_group)
        return found

    # -- NIC writes -------------------------------------------------------------------------

    def put_nic(self, subscription: str, resource_group: str, name: str, body: Any, *,
                if_match: str | None, if_none_match: str | None, polls: int,
                failure: tuple[str, str, str] | None = None,
                block_lengths: Sequence[int] = (28,),
                vnet_limit: int = 65_536,
                conflict_retry_after: int | None = None,
                operation_url: Callable[[Operation], str] = lambda op: op.id) -> tuple[Nic, bool]:
        """Validate and accept a NIC PUT; return the NIC and whether it was created.

        The write is all-or-nothing. It starts an Operation that reports InProgress ``polls``
        times; ``failure`` = (status, code, message) makes it end Failed/Canceled and roll back.
        """
        self.require_group(subscription, resource_group)
        nic_id = f"{_rg_prefix(subscription, resource_group)}/providers/Microsoft.Network/" \
                 f"networkInterfaces/{name}"
        nic = self.nics.get(nic_id.lower())
        # Preconditions first: a stale writer must learn that its view is stale.
        if if_none_match == "*" and nic is not None:
            raise ArmError(412, "PreconditionFailed",
                           f"The resource '{nic_id}' already exists (If-None-Match: *).")
        if if_match is not None and if_match != "*" and (nic is None or if_match != nic.etag):
            # UNVERIFIED body: NRP's exact 412 message is not documented (arm-api.md §1.6)
            raise ArmError(412, "PreconditionFailed",
                           f"The condition specified using HTTP conditional header(s) is not "
                           f"met. If-Match {if_match} does not match the current etag of "
                           f"{nic_id}.")
        if if_match == "*" and nic is None:
            raise _not_found("Microsoft.Network/networkInterfaces", name, resource_group)
        if nic is not None and nic.operation is not None:
            headers = ({"Retry-After": str(conflict_retry_after)}
                       if conflict_retry_after is not None else {})
            raise ArmError(409, "AnotherOperationInProgress",
                           "Another operation on this or dependent resource is in progress. "
                           "To retrieve status of the operation use uri: "
                           f"{operation_url(nic.operation)}.", headers)
        if not isinstance(body, Mapping):
            raise ArmError(400, "InvalidRequestContent",
                           "The request content was invalid and could not be deserialized.")
        props = body.get("properties") or {}
        if not isinstance(props, Mapping):
            raise ArmError(400, "InvalidRequestContent", "properties must be an object.")
        location = str(body.get("location") or (nic.location if nic else ""))
        if not location:
            raise ArmError(400, "LocationRequired",
                           "The location property is required for this definition.")
        wanted = _parse_ip_configurations(nic_id, props.get("ipConfigurations"))
        if len(wanted) > MAX_IP_CONFIGURATIONS:
            raise ArmError(400, NIC_LIMIT_CODE,
                           f"Network interface {nic_id} cannot have more than "
                           f"{MAX_IP_CONFIGURATIONS} IP configurations; the request has "
                           f"{len(wanted)}.")
        subnet = self._check_subnets(nic_id, wanted)
        primary_name = self._check_primary(nic, wanted)
        blocks = _blocks()
        try:
            blocks.check_lengths(nic_id, wanted, block_lengths)
            new_configs, claims = self._assign_addresses(nic_id, nic, wanted, subnet,
                                                         primary_name)
            vnet = self.vnets[subnet.vnet_id.lower()]
            before = blocks.private_ips(s.used for s in vnet.subnets.values())
            mine = sum(1 for c in (nic.ip_configs if nic else ()) if c.subnet.vnet_id == vnet.id)
            blocks.check_vnet_limit(vnet.id, before, before - mine + len(new_configs),
                                    vnet_limit)
        except blocks.BlockRequestError as e:
            raise ArmError(400, e.code, e.message) from None

        created = nic is None
        if nic is None:
            nic = Nic(nic_id, name, subscription, resource_group, location, "",
                      new_mac(), [])
            self.nics[nic_id.lower()] = nic
        for address, owner in claims:
            subnet.claim(address, owner)
        op = Operation(str(uuid.uuid4()), nic.id, subscription, nic.location, self._clock(),
                       polls_left=max(0, polls), before=nic.ip_configs)
        if failure is not None:
            op.outcome, code, message = failure
            op.error = (code, message)
        nic.ip_configs = new_configs
        nic.extra = {k: props[k] for k in _NIC_WRITABLE if k in props}
        tags = body.get("tags")
        nic.tags = dict(tags) if isinstance(tags, Mapping) else nic.tags
        nic.state = "Updating"
        nic.etag = new_etag()
        nic.operation = op
        self.operations[op.id] = op
        return nic, created

    def _check_subnets(self, nic_id: str, wanted: list[dict[str, Any]]) -> Subnet:
        subnets = []
        for cfg in wanted:
            ref = cfg["subnet_id"]
            subnet = self.subnets.get(ref.lower()) if ref else None
            if subnet is None:
                raise ArmError(400, "InvalidResourceReference",
                               f"Resource {ref} referenced by resource {nic_id} was not found. "
                               "Please make sure that the referenced resource exists, and that "
                               "both resources are in the same region.")
            subnets.append(subnet)
        if len({s.id for s in subnets}) > 1:
            raise ArmError(400, DIFFERENT_SUBNETS_CODE,
                           f"IP configurations on network interface {nic_id} use different "
                           "subnets; all IP configurations of a network interface must be in "
                           "the same subnet.")
        return subnets[0]

    @staticmethod
    def _check_primary(nic: Nic | None, wanted: list[dict[str, Any]]) -> str:
        primaries = [c for c in wanted if c["primary"]]
        if not primaries and len(wanted) == 1:
            wanted[0]["primary"] = True
            primaries = wanted
        if len(primaries) != 1:
            # UNVERIFIED code
            raise ArmError(400, "NetworkInterfaceMustHaveExactlyOnePrimaryIpConfiguration",
                           f"A network interface must have exactly one primary IP configuration; "
                           f"{len(primaries)} are marked primary.")
        if nic is not None:
            old = next(c for c in nic.ip_configs if c.primary)
            if primaries[0]["name"].lower() != old.name.lower():
                raise ArmError(400, "IpConfigDeleteNotSupported",
                               f"IP Configuration {old.name} cannot be deleted. Deletion and "
                               "renaming of the primary IP Configuration is not supported")
        return str(primaries[0]["name"])

    def _assign_addresses(
        self, nic_id: str, nic: Nic | None, wanted: list[dict[str, Any]], subnet: Subnet,
        primary_name: str,
    ) -> tuple[list[IpConfig], list[tuple[ipaddress.IPv4Address, str]]]:
        old = {c.name.lower(): c for c in (nic.ip_configs if nic else [])}
        mine = {str(a) for a, owner in subnet.used.items()
                if owner.lower().startswith(nic_id.lower() + "/")}
        taken_here: dict[ipaddress.IPv4Address, str] = {}
        result: list[IpConfig | None] = []
        dynamic: list[int] = []
        for i, cfg in enumerate(wanted):
            ipc_id = f"{nic_id}/ipConfigurations/{cfg['name']}"
            previous = old.get(cfg["name"].lower())
            keep_previous = previous is not None and previous.subnet is subnet and \
                previous.prefix_length == cfg["prefix"]
            address: ipaddress.IPv4Address | None = None
            if cfg["method"] == "Static" and cfg["address"] is not None:
                address = cfg["address"]
            elif cfg["method"] == "Static" and previous is None:
                raise ArmError(400, "PrivateIPAddressRequired",  # UNVERIFIED code
                               f"IP configuration {ipc_id} has Static allocation but no "
                               "privateIPAddress.")
            elif keep_previous and previous is not None:
                address = previous.address
            if address is None:
                dynamic.append(i)
                result.append(None)
                continue
            if cfg["prefix"] is not None:
                try:
                    _blocks().check_static_block(ipc_id, address, cfg["prefix"])
                except _blocks().BlockRequestError as e:
                    raise ArmError(400, e.code, e.message) from None
            for held in _held(address, cfg["prefix"]):
                self._check_static(ipc_id, held, subnet, taken_here, mine)
                taken_here[held] = ipc_id
            result.append(_ip_config(cfg, address, subnet, previous))
        # this NIC's own addresses stay held until the operation commits, so only addresses
        # nobody holds are handed out (an address dropped here is reusable after the write);
        # blocks first, so that single addresses do not split the aligned space they need
        for i in [i for i in dynamic if wanted[i]["prefix"] is not None]:
            length = wanted[i]["prefix"]
            block = _blocks().lowest_free_block(
                subnet.network, first_usable=max(subnet.first_usable, subnet.lowest_unused),
                last_usable=subnet.last_usable, held=subnet.used, exclude=taken_here,
                length=length)
            if block is None:
                raise ArmError(400, "SubnetIsFull",
                               f"Subnet {subnet.name} with address prefix {subnet.network} does "
                               f"not have a free aligned /{length} block for IP configuration "
                               f"{nic_id}/ipConfigurations/{wanted[i]['name']} "
                               f"({subnet.free_count()} addresses are free).")
            for held in block:
                taken_here[held] = f"{nic_id}/ipConfigurations/{wanted[i]['name']}"
            result[i] = _ip_config(wanted[i], block.network_address, subnet,
                                   old.get(wanted[i]["name"].lower()))
        dynamic = [i for i in dynamic if wanted[i]["prefix"] is None]
        free = subnet.lowest_free(set(taken_here))
        for i in dynamic:
            address = next(free, None)
            if address is None:
                raise ArmError(400, "SubnetIsFull",
                               f"Subnet {subnet.name} with address prefix {subnet.network} does "
                               f"not have enough capacity for {len(dynamic)} IP addresses.")
            ipc_id = f"{nic_id}/ipConfigurations/{wanted[i]['name']}"
            taken_here[address] = ipc_id
            result[i] = _ip_config(wanted[i], address, subnet, old.get(wanted[i]["name"].lower()))
        configs = [c for c in result if c is not None]
        claims = [(a, o) for a, o in taken_here.items() if subnet.used.get(a) != o]
        return configs, claims

    @staticmethod
    def _check_static(ipc_id: str, address: ipaddress.IPv4Address, subnet: Subnet,
                      taken_here: Mapping[ipaddress.IPv4Address, str], mine: set[str]) -> None:
        """Refuse a Static address outside the subnet, reserved, or someone else's."""
        if address not in subnet.network:
            raise ArmError(400, "PrivateIPAddressNotInSubnet",  # UNVERIFIED code
                           f"IP configuration {ipc_id} has private IP address {address} "
                           f"which is not in subnet {subnet.id} ({subnet.network}).")
        if subnet.reserved(address):
            raise ArmError(400, "PrivateIPAddressInReservedRange",  # UNVERIFIED code
                           f"Private static IP address {address} of IP configuration "
                           f"{ipc_id} falls in a range Azure reserves in subnet "
                           f"{subnet.network}.")
        if address in taken_here:
            raise ArmError(400, "PrivateIPAddressInUse",
                           f"IP configuration {ipc_id} is using the same private IP address "
                           f"{address} as IP configuration {taken_here[address]}.")
        owner = subnet.used.get(address)
        if owner is not None and str(address) not in mine:
            raise ArmError(400, "PrivateIPAddressIsAllocated",
                           f"IP configuration {ipc_id} is using the private IP address "
                           f"{address} which is already allocated to resource {owner}.")

    # -- operations -------------------------------------------------------------------------

    def poll(self, operation_id: str) -> tuple[Operation, NicChange | None]:
        """Answer one poll of an operation; the answer that ends it commits or rolls back."""
        op = self.operations.get(operation_id)
        if op is None:
            raise ArmError(404, "OperationNotFound",
                           f"The operation '{operation_id}' could not be found.")
        if op.status != "InProgress":
            return op, None
        if op.polls_left > 0:
            op.polls_left -= 1
            return op, None
        return op, self.finish(op)

    def finish(self, op: Operation) -> NicChange | None:
        """End an operation: commit its NIC's new ipConfigurations, or restore the old ones."""
        if op.status != "InProgress":
            return None
        op.status = op.outcome
        nic = self.nics.get(op.nic_id.lower())
        if nic is None or nic.operation is not op:
            return None
        nic.operation = None
        # While the operation ran, both the old and the new addresses were held for this NIC,
        # so whichever side loses can be released without looking at owners.
        before = {(a, c.subnet.id.lower()) for c in op.before for a in c.held()}
        after = {(a, c.subnet.id.lower()) for c in nic.ip_configs for a in c.held()}
        if op.outcome != "Succeeded":
            for address, subnet_id in after - before:
                self.subnets[subnet_id].release(address)
            for cfg in op.before:
                for address in cfg.held():
                    cfg.subnet.claim(address, nic.ipconfig_id(cfg.name))
            nic.ip_configs = op.before
            nic.state = "Failed"
            # a rollback changes the NIC (back to its old configurations): a fresh etag. A
            # success leaves the etag the PUT gave it: one fresh etag per successful write
            # (arm-api.md, "NIC GET"), so the PUT's answer names the version that succeeded
            nic.etag = new_etag()
            if not op.before:  # a failed create leaves no NIC behind
                del self.nics[nic.id.lower()]
            return None
        old = _ordered_addresses(op.before)
        for address, subnet_id in before - after:
            self.subnets[subnet_id].release(address)
        for cfg in nic.ip_configs:
            cfg.state = "Succeeded"
        nic.state = "Succeeded"
        new = nic.addresses()
        return NicChange(nic.id, nic.vm_id, old, new) if old != new else None

    def expired_operations(self, timeout: float) -> list[Operation]:
        """Operations running longer than ``timeout`` (Azure finishes them unpolled too)."""
        now = self._clock()
        return [op for op in self.operations.values()
                if op.status == "InProgress" and now - op.started >= timeout]


def new_mac() -> str:
    """A MAC address in ARM's form, in Microsoft's OUI as Azure's are."""
    return "00-0D-3A-" + "-".join(f"{b:02X}" for b in uuid.uuid4().bytes[:3])


def new_nic(nic_id: str, subnet: Subnet, address: ipaddress.IPv4Address, *, owner_id: str,
            location: str, method: str = "Dynamic", primary: bool = True) -> Nic:
    """A NIC holding only its primary ipConfiguration ``ipconfig1`` (its address claimed);
    its name, subscription and resource group are those of ``nic_id``."""
    parts = nic_id.split("/")
    nic = Nic(nic_id, parts[-1], parts[2], parts[4], location, owner_id, new_mac(), [],
              primary=primary)
    nic.ip_configs.append(IpConfig("ipconfig1", address, method, True, subnet))
    subnet.claim(address, nic.ipconfig_id("ipconfig1"))
    return nic


def _blocks() -> ModuleType:
    """``azure_cni_sim.arm.blocks``, imported on first use: importing it at the top would
    import the ``arm`` package, whose emulator imports this module."""
    from azure_cni_sim.arm import blocks  # noqa: PLC0415

    return blocks


def _not_found(resource_type: str, name: str, resource_group: str) -> ArmError:
    return ArmError(404, "ResourceNotFound",
                    f"The Resource '{resource_type}/{name}' under resource group "
                    f"'{resource_group}' was not found. For more details please go to "
                    "https://aka.ms/ARMResourceNotFoundFix")


def _ordered_addresses(configs: Sequence[IpConfig]) -> tuple[str, ...]:
    return tuple(str(c.address) for c in sorted(configs, key=lambda c: not c.primary))


def _ip_config(cfg: Mapping[str, Any], address: ipaddress.IPv4Address, subnet: Subnet,
               previous: IpConfig | None) -> IpConfig:
    unchanged = previous is not None and previous.address == address and \
        previous.prefix_length == cfg["prefix"]
    return IpConfig(cfg["name"], address, cfg["method"], cfg["primary"], subnet,
                    state="Succeeded" if unchanged else "Updating", extra=cfg["extra"],
                    prefix_length=cfg["prefix"])


def _parse_ip_configurations(nic_id: str, raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise ArmError(400, "NetworkInterfaceMustHaveAtLeastOneIpConfiguration",  # UNVERIFIED
                       f"Network interface {nic_id} must have at least one IP configuration.")
    seen: set[str] = set()
    out = []
    for item in raw:
        if not isinstance(item, Mapping) or not item.get("name"):
            raise ArmError(400, "InvalidRequestFormat",
                           "Every IP configuration needs a name.")
        name = str(item["name"])
        if name.lower() in seen:
            raise ArmError(400, "InvalidRequestFormat",
                           f"IP configuration name {name} is used twice in {nic_id}.")
        seen.add(name.lower())
        props = item.get("properties") or {}
        if not isinstance(props, Mapping):
            raise ArmError(400, "InvalidRequestFormat", f"IP configuration {name}: bad properties")
        subnet = props.get("subnet")
        subnet_id = str(subnet.get("id") or "") if isinstance(subnet, Mapping) else ""
        method = str(props.get("privateIPAllocationMethod") or "Dynamic").capitalize()
        if method not in ("Static", "Dynamic"):
            raise ArmError(400, "InvalidRequestFormat",
                           f"IP configuration {name}: privateIPAllocationMethod {method!r} is "
                           "not Static or Dynamic.")
        try:
            address, prefix = _blocks().parse_request(name, props)
        except _blocks().BlockRequestError as e:
            raise ArmError(400, e.code, e.message) from None
        version = str(props.get("privateIPAddressVersion") or "IPv4")
        if version != "IPv4":
            raise ArmError(400, "InvalidRequestFormat",
                           f"IP configuration {name}: the emulator supports IPv4 only.")
        out.append({
            "name": name, "subnet_id": subnet_id, "method": method, "address": address,
            "primary": bool(props.get("primary")),
            "prefix": prefix,
            "extra": {k: props[k] for k in _IPCONFIG_WRITABLE if k in props},
        })
    return out


# -- JSON views -------------------------------------------------------------------------------


def nic_json(nic: Nic) -> dict[str, Any]:
    """A NIC as NRP returns it (arm-api.md §1.3)."""
    configs = []
    for c in nic.ip_configs:
        configs.append({
            "name": c.name,
            "id": nic.ipconfig_id(c.name),
            "etag": nic.etag,
            "type": "Microsoft.Network/networkInterfaces/ipConfigurations",
            "properties": {
                "provisioningState": c.state,
                **c.address_json(),
                "privateIPAllocationMethod": c.method,
                "subnet": {"id": c.subnet.id},
                "primary": c.primary,
                "privateIPAddressVersion": "IPv4",
                **c.extra,
            },
        })
    extra = dict(nic.extra)
    dns = dict(extra.pop("dnsSettings", None) or {})
    props: dict[str, Any] = {
        "provisioningState": nic.state,
        "resourceGuid": nic.guid,
        "ipConfigurations": configs,
        "dnsSettings": {"dnsServers": list(dns.get("dnsServers") or []),
                        "appliedDnsServers": list(dns.get("dnsServers") or []),
                        "internalDomainNameSuffix": "sim.bx.internal.cloudapp.net"},
        "macAddress": nic.mac,
        "enableAcceleratedNetworking": False,
        "enableIPForwarding": False,
        "vnetEncryptionSupported": False,
        "nicType": "Standard",
        "primary": nic.primary,
        **extra,
    }
    if nic.vm_id:
        props["virtualMachine"] = {"id": nic.vm_id}
    out: dict[str, Any] = {"name": nic.name, "id": nic.id, "etag": nic.etag,
                           "type": "Microsoft.Network/networkInterfaces",
                           "location": nic.location, "properties": props}
    if nic.tags:
        out["tags"] = dict(nic.tags)
    return out


def subnet_json(subnet: Subnet, state: ArmState, list_limit: int | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"addressPrefix": str(subnet.network),
                             "provisioningState": "Succeeded",
                             "privateEndpointNetworkPolicies": "Disabled",
                             "privateLinkServiceNetworkPolicies": "Enabled"}
    refs = sorted(set(subnet.used.values()))
    # Azure leaves the list out for subnets with very many ipConfigurations (Cilium's parseSubnet)
    if list_limit is None or len(refs) <= list_limit:
        props["ipConfigurations"] = [{"id": r} for r in refs]
    vnet = state.vnets[subnet.vnet_id.lower()]
    return {"name": subnet.name, "id": subnet.id, "etag": vnet.etag,
            "type": "Microsoft.Network/virtualNetworks/subnets", "properties": props}


def vnet_json(vnet: VNet, state: ArmState, list_limit: int | None = None) -> dict[str, Any]:
    return {"name": vnet.name, "id": vnet.id, "etag": vnet.etag,
            "type": "Microsoft.Network/virtualNetworks", "location": vnet.location,
            "properties": {"provisioningState": "Succeeded", "resourceGuid": vnet.guid,
                           "addressSpace": {"addressPrefixes": list(vnet.address_space)},
                           "subnets": [subnet_json(s, state, list_limit)
                                       for s in vnet.subnets.values()],
                           "virtualNetworkPeerings": [], "enableDdosProtection": False}}


def vm_json(vm: Vm) -> dict[str, Any]:
    nics = [{"id": nic_id, "properties": {"primary": i == 0}}
            for i, nic_id in enumerate(vm.nic_ids)]
    props: dict[str, Any] = {
        "vmId": vm.vm_guid,
        "hardwareProfile": {"vmSize": "Standard_D4s_v5"},
        "networkProfile": {"networkInterfaces": nics},
        "provisioningState": "Succeeded",
    }
    if vm.scale_set:
        props["virtualMachineScaleSet"] = {
            "id": f"{_rg_prefix(vm.subscription, vm.resource_group)}/providers/"
                  f"Microsoft.Compute/virtualMachineScaleSets/{vm.scale_set}"}
    return {"name": vm.name, "id": vm.id, "type": "Microsoft.Compute/virtualMachines",
            "location": vm.location, "properties": props}


def usages_json(vnet: VNet) -> list[dict[str, Any]]:
    """``virtualNetworks/{vnet}/usages``: used and usable addresses per subnet."""
    return [{"id": s.id, "currentValue": len(s.used), "limit": s.free_count() + len(s.used),
             "name": {"value": "SubnetSpace", "localizedValue": "Subnet size and usage"},
             "unit": "Count"} for s in vnet.subnets.values()]


def check_ip_json(vnet: VNet, address: str) -> dict[str, Any]:
    """``checkIPAddressAvailability``: whether an address is free, else up to 5 free ones."""
    try:
        wanted = ipaddress.IPv4Address(address)
    except ValueError:
        raise ArmError(400, "InvalidParameter",
                       f"'{address}' is not a valid IPv4 address.") from None
    subnet = next((s for s in vnet.subnets.values() if wanted in s.network), None)
    if subnet is None:
        raise ArmError(400, "PrivateIPAddressNotInAnySubnet",  # UNVERIFIED code
                       f"Private IP address {address} is not in any subnet of {vnet.id}.")
    if not subnet.reserved(wanted) and wanted not in subnet.used:
        return {"available": True}
    nearby = [str(a) for a, _ in zip(subnet.lowest_free(set()), range(5), strict=False)]
    return {"available": False, "availableIPAddresses": nearby}
