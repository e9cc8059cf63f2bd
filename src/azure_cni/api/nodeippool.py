"""The NodeIPPool custom resource as typed values, and conversion to and from its JSON.

One pool per node, cluster-scoped, named after the node. ``spec`` is the admin's intent.
``status`` has two writers that never touch each other's fields (each applies its own fields
with server-side apply under its own field manager):

- the operator: ``nic``, ``ips``, ``allocated``, ``excessSince``, conditions ``Provisioned``,
  ``Ready``, ``SubnetExhausted``, and ``observedGeneration``;
- the node agent: ``used``, ``cooling`` (freed addresses still in their cooldown, which it
  will not hand out yet), ``releaseAcks``, ``idleBlocks`` and condition ``AgentReady``.

Release handshake: the operator marks an address ``Releasing``; the agent stops handing it out
and, once no pod uses it, lists its ipConfiguration name in ``releaseAcks``; only then does the
operator remove it from the NIC. ipConfiguration names are never reused and an address marked
``Releasing`` never becomes ``Available`` again, so an acknowledgement can never be stale.

In ``Blocks`` mode an entry of ``status.ips`` is an aligned CIDR block (``prefixLength`` set,
``address`` its first address) and the handshake works on whole blocks; every size in the
spec still counts addresses.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, ClassVar

from azure_cni.api.podnet import POD_LIST, PodAttachment, PodNetworkRequest
from azure_cni.api.timestamps import parse_time as parse_time  # noqa: PLC0414 (re-exported)
from azure_cni.api.timestamps import rfc3339 as rfc3339  # noqa: PLC0414 (re-exported)
from azure_cni.api.timestamps import utcnow as utcnow  # noqa: PLC0414 (re-exported)
from azure_cni.api.wire import (
    Derived,
    Rule,
    Wire,
    WireError,
    at_least,
    at_most,
    decode,
    encode,
    not_above,
    wire,
)
from azure_cni.api.wire import problems as wire_problems

GROUP = "azurecni.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "NodeIPPool"
PLURAL = "nodeippools"
SHORT_NAME = "nip"

#: A NIC holds 256 ipConfigurations and one of them is the primary.
MAX_SECONDARY_IPS = 255
#: Prefix of every ipConfiguration azure-cni creates; anything else on a NIC is not ours.
IPCONFIG_PREFIX = "azcni-"

#: on a pool the operator made from a NodeIPPoolClass: the class's name
CLASS_LABEL = f"{GROUP}/pool-class"

OPERATOR_FIELD_MANAGER = "azure-cni-operator"
AGENT_FIELD_MANAGER = "azure-cni-agent"


class PoolMode(StrEnum):
    """What one ipConfiguration of the pool holds: one address, or an aligned CIDR block."""

    ADDRESSES = "Addresses"
    BLOCKS = "Blocks"


#: AKS's static block allocation uses /28 blocks (azure-features.md §1)
DEFAULT_BLOCK_PREFIX_LENGTH = 28
#: block lengths a pool may ask for: 4 to 64 addresses (Azure documents none but /28)
MIN_BLOCK_PREFIX_LENGTH = 26
MAX_BLOCK_PREFIX_LENGTH = 30


def block_size(prefix_length: int | None) -> int:
    """Addresses in one ipConfiguration: 1 for a single address, else the block's."""
    return 1 if prefix_length is None else 2 ** (32 - prefix_length)


class IPState(StrEnum):
    AVAILABLE = "Available"
    RELEASING = "Releasing"


class ConditionType(StrEnum):
    PROVISIONED = "Provisioned"
    READY = "Ready"
    SUBNET_EXHAUSTED = "SubnetExhausted"
    AGENT_READY = "AgentReady"
    #: per-pod public IPs and backend pools: False while a request is refused
    POD_NETWORKING = "PodNetworking"
    #: which NodeIPPoolClass the pool follows, or why none (written by the class sync)
    POOL_CLASS = "PoolClass"


OPERATOR_CONDITIONS = frozenset(
    {ConditionType.PROVISIONED, ConditionType.READY, ConditionType.SUBNET_EXHAUSTED,
     ConditionType.POD_NETWORKING}
)
AGENT_CONDITIONS = frozenset({ConditionType.AGENT_READY})
#: written by the operator's class sync under a field manager of its own, so that the
#: reconcile's status writes (which omit it) never remove it
CLASS_CONDITIONS = frozenset({ConditionType.POOL_CLASS})
CLASS_FIELD_MANAGER = "azure-cni-operator-classes"


class InvalidPool(ValueError):
    """A NodeIPPool object that cannot be interpreted; the message names the field."""


#: what ``kubectl scale nodeippool <node> --replicas=N`` means (``kubectl explain`` shows it)
SCALE_DESCRIPTION = (
    "Floor, and what `kubectl scale nodeippool <node> --replicas=N` sets (the SCALE-MIN "
    "column): the pool holds at least this many addresses, more when its pods and its warm "
    "pool (minFreeIPs) need them, and never more than maxIPs. Setting it below what the pool "
    "holds (ALLOCATED) releases nothing by itself: free addresses above maxFreeIPs go back to "
    "the subnet after releaseDelaySeconds. To shrink a pool, lower maxFreeIPs or maxIPs.")


def _count(name: str, description: str, **declared: Any) -> dict[str, Wire]:
    """A spec field counting addresses (or seconds): never negative, defaulted by the API
    server to the code's default."""
    return wire(name, description, minimum=0, default_in_schema=True, **declared)


_SUBNET_ID_RULE = Rule(
    "self == '' || self.matches('(?i)^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
    "Microsoft[.]Network/virtualNetworks/[^/]+/subnets/[^/]+$')",
    "podSubnetID must be a subnet's resource ID (/subscriptions/<s>/resourceGroups/<g>/"
    "providers/Microsoft.Network/virtualNetworks/<vnet>/subnets/<subnet>) or empty")


@dataclass(frozen=True)
class PoolSpec:
    """The admin's intent for one node's pool. Each field's declaration is also its CRD
    schema (default, bounds, description): see ``api/wire.py``."""

    node_name: str = field(metadata=wire(
        "nodeName", "The node this pool belongs to; equal to the pool's name.", required=True,
        min_length=1, max_length=253, immutable="nodeName is immutable"))
    min_ips: int = field(default=0, metadata=_count(
        "minIPs", SCALE_DESCRIPTION, limits=(not_above("maxIPs"),)))
    max_ips: int = field(default=250, metadata=_count(
        "maxIPs", "Ceiling on the addresses of this node (at most 255: a NIC holds 256 "
        "ipConfigurations and one is the primary).", limits=(
            at_most(MAX_SECONDARY_IPS, "a NIC holds 256 ipConfigurations and one of them is "
                                       "the primary"), at_least(1))))
    batch_size: int = field(default=8, metadata=_count(
        "batchSize", "Addresses are added in multiples of this, in one NIC write.",
        limits=(at_least(1), at_most(MAX_SECONDARY_IPS))))
    min_free_ips: int = field(default=8, metadata=_count(
        "minFreeIPs", "Warm pool: keep at least this many addresses free for new pods.",
        limits=(not_above("maxFreeIPs"),)))
    max_free_ips: int = field(default=24, metadata=_count(
        "maxFreeIPs", "Release free addresses above this many (after releaseDelaySeconds)."))
    release_delay_seconds: int = field(default=180, metadata=_count(
        "releaseDelaySeconds", "How long an excess must last before addresses are released "
        "(hysteresis).", maximum=86400))
    mode: PoolMode = field(default=PoolMode.ADDRESSES, metadata=wire(
        description="Addresses: one ipConfiguration per address. Blocks: one ipConfiguration "
                    "per aligned CIDR block of blockPrefixLength (privateIPAddressPrefixLength);"
                    " the sizes above still count addresses and are rounded up to whole "
                    "blocks. Cannot change while pods use the pool.", default_in_schema=True))
    #: the length of each block in Blocks mode (ignored in Addresses mode)
    block_prefix_length: int = field(default=DEFAULT_BLOCK_PREFIX_LENGTH, metadata=wire(
        description="Length of each block in Blocks mode (a /28 holds 16 addresses). Cannot "
                    "change while pods use the pool.", minimum=MIN_BLOCK_PREFIX_LENGTH,
        maximum=MAX_BLOCK_PREFIX_LENGTH, default_in_schema=True))
    #: the subnet whose NIC of the VM carries the pods ("": the VM's primary NIC); on Azure
    #: every NIC sits in one subnet, so naming the subnet names the NIC
    pod_subnet_id: str = field(default="", metadata=wire(
        "podSubnetID", "Resource ID of the subnet pods take their addresses from: the operator "
        "uses the VM's NIC in that subnet (a second NIC attached when the VM or scale set was "
        "made). Empty: the VM's primary NIC. Cannot change once set: delete the pool (its node "
        "drained) to move it.", max_length=1024, default_in_schema=True,
        rules=(_SUBNET_ID_RULE,),
        immutable="podSubnetID is immutable: the pool's addresses are on that subnet's NIC; "
                  "delete the pool (drain the node first) to move it"))

    @property
    def prefix_length(self) -> int | None:
        """The ``privateIPAddressPrefixLength`` of each new ipConfiguration (None: one
        address)."""
        return self.block_prefix_length if self.mode is PoolMode.BLOCKS else None

    @property
    def unit(self) -> int:
        """Addresses one ipConfiguration of this pool holds."""
        return block_size(self.prefix_length)

    def validate(self) -> None:
        """Raise InvalidPool for what the CRD's schema and CEL rules also refuse (but the
        subnet ID's form and the rules on old values)."""
        problems = wire_problems(self, "spec")
        if problems:
            raise InvalidPool("; ".join(problems))

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], name: str | None = None) -> PoolSpec:
        """A spec as the API server stores it; ``name`` stands for a missing nodeName."""
        data: Any = spec
        if isinstance(spec, Mapping) and not spec.get("nodeName"):
            data = {**spec, "nodeName": name or ""}
        try:
            return decode(cls, data, "spec")
        except WireError as e:
            raise InvalidPool(str(e)) from e

    def to_dict(self) -> dict[str, Any]:
        return encode(self)


@dataclass(frozen=True)
class PoolDefaults(PoolSpec):
    """The spec the operator gives a new node's pool (the chart's ``pool`` settings), and
    what a NodeIPPoolClass sets part of: a PoolSpec without its node, every field declared
    once, on PoolSpec."""

    node_name: str = ""

    WIRE_EXCLUDE: ClassVar[tuple[str, ...]] = ("nodeName",)

    def spec_for(self, node_name: str) -> PoolSpec:
        values = {f.name: getattr(self, f.name) for f in fields(PoolSpec)}
        return PoolSpec(**{**values, "node_name": node_name})


@dataclass(frozen=True, slots=True)
class PoolIP:
    """One secondary ipConfiguration of the node's NIC that belongs to the pool: a single
    address, or (``prefix_length`` set) the aligned block starting at ``address``."""

    address: str = field(metadata=wire(required=True))
    ip_configuration: str = field(metadata=wire(required=True))
    state: IPState = field(default=IPState.AVAILABLE, metadata=wire(required=True))
    prefix_length: int | None = field(default=None, metadata=wire(
        description="Set for a block: the ipConfiguration holds address/prefixLength."))

    @property
    def size(self) -> int:
        return block_size(self.prefix_length)

    @classmethod
    def from_azure(cls, private_ip: str, ip_configuration: str,
                   state: IPState = IPState.AVAILABLE) -> PoolIP:
        """From ``privateIPAddress`` as Azure reports it: ``<address>`` or, for a block,
        ``<address>/<length>`` (azure-features.md §1)."""
        address, _, length = private_ip.partition("/")
        return cls(address, ip_configuration, state, int(length) if length else None)

    def addresses(self) -> tuple[PoolIP, ...]:
        """One single-address entry per address this one holds, under the same name."""
        if self.prefix_length is None:
            return (self,)
        block = ipaddress.IPv4Network(f"{self.address}/{self.prefix_length}")
        return tuple(PoolIP(str(a), self.ip_configuration, self.state) for a in block)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "status.ips[]") -> PoolIP:
        try:
            return decode(cls, d, path)
        except WireError as e:
            raise InvalidPool(str(e)) from e

    def to_dict(self) -> dict[str, Any]:
        return encode(self)


@dataclass(frozen=True, slots=True)
class NicInfo:
    """What the operator found on Azure for this node: what the agent needs for its datapath.

    ``primary_ip`` is the NIC's own primary address (on a second NIC, not the VM's);
    ``primary_nic`` says whether the NIC is the VM's primary one, and ``mac_address``
    (``AA-BB-CC-DD-EE-FF``, as ARM writes it) is how the agent finds the NIC on the host.
    """

    id: str = ""
    primary_ip: str = field(default="", metadata=wire("primaryIP"))
    subnet_id: str = field(default="", metadata=wire("subnetID"))
    subnet_cidr: str = field(default="", metadata=wire("subnetCIDR"))
    vnet_address_space: tuple[str, ...] = ()
    name: str = field(default="", metadata=wire(omit_empty=True))
    mac_address: str = field(default="", metadata=wire(omit_empty=True))
    primary_nic: bool = field(default=True, metadata=wire(
        "primary", "Whether this is the VM's primary NIC."))

    @property
    def gateway(self) -> str:
        """The subnet's gateway: Azure answers on its first usable address (.1)."""
        if not self.subnet_cidr:
            return ""
        return str(ipaddress.IPv4Network(self.subnet_cidr, strict=False).network_address + 1)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "status.nic") -> NicInfo:
        try:
            return decode(cls, d, path)
        except WireError as e:
            raise InvalidPool(str(e)) from e

    def to_dict(self) -> dict[str, Any]:
        return encode(self)


class _TrueFalse:
    """A condition's status: "True" on the wire is True; "False" and "Unknown" are not."""

    schema: Mapping[str, Any] = {"type": "string", "enum": ["True", "False", "Unknown"]}

    def decode(self, raw: Any) -> bool:
        return bool(raw == "True")

    def encode(self, value: Any) -> str:
        return "True" if value else "False"


@dataclass(frozen=True, slots=True)
class Condition:
    #: any writer may add a condition of its own type (not ours to interpret: not decoded)
    type: ConditionType = field(metadata=wire(required=True, open_enum=True))
    status: bool = field(metadata=wire(required=True, codec=_TrueFalse()))
    reason: str = ""
    message: str = ""
    last_transition_time: str = field(default="", metadata=wire(format="date-time"))
    observed_generation: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Condition | None:
        """The condition, or None for one this code does not know (another writer's)."""
        try:
            return decode(cls, d, "status.conditions[]")
        except WireError:
            return None

    def to_dict(self) -> dict[str, Any]:
        """Its wire form, stamped now when it has no transition time yet."""
        return encode(replace(self, last_transition_time=self.last_transition_time
                              or rfc3339(utcnow())))


def set_condition(existing: Iterable[Condition], new: Condition) -> tuple[Condition, ...]:
    """Replace the condition of ``new.type``, keeping its transition time if status is unchanged."""
    out = []
    replaced = False
    for c in existing:
        if c.type == new.type:
            keep_time = c.status == new.status and c.last_transition_time
            out.append(replace(new, last_transition_time=c.last_transition_time)
                       if keep_time else new)
            replaced = True
        else:
            out.append(c)
    if not replaced:
        out.append(new)
    return tuple(out)


_OPERATOR = "operator"
_AGENT = "agent"


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """Both writers' fields; each writer renders only its own part (see module docstring)."""

    nic: NicInfo | None = field(default=None, metadata=wire(
        description="The node's NIC as the operator found it on Azure.", owner=_OPERATOR))
    ips: tuple[PoolIP, ...] = field(default=(), metadata=wire(
        description="Secondary addresses of the NIC that belong to the pool.",
        list_type="map", map_keys=("ipConfiguration",), owner=_OPERATOR))
    # Server-side apply drops a field its manager stops sending, so "no excess" is omission.
    excess_since: dt.datetime | None = field(default=None, metadata=wire(
        description="Since when the pool has held more free addresses than maxFreeIPs.",
        owner=_OPERATOR))
    observed_generation: int | None = field(default=None, metadata=wire(owner=_OPERATOR))
    used: int = field(default=0, metadata=wire(
        description="Addresses the node agent has handed to pods.", owner=_AGENT))
    #: Available addresses the agent will not hand out before their cooldown ends
    cooling: int = field(default=0, metadata=wire(
        description="Available addresses freed by a pod less than the agent's cooldown ago: "
                    "not handed out yet, so not free for the warm pool either.", owner=_AGENT))
    release_acks: frozenset[str] = field(default=frozenset(), metadata=wire(
        description="ipConfiguration names the agent confirms are unused and will not hand "
                    "out: the operator may remove them.", owner=_AGENT))
    #: blocks none of whose addresses is used or cooling (agent-owned): what to release first
    idle_blocks: frozenset[str] = field(default=frozenset(), metadata=wire(
        description="Blocks (their ipConfiguration names) none of whose addresses a pod uses "
                    "or cools down: the operator releases these first.", owner=_AGENT,
        omit_empty=True))
    #: both writers' (each renders the types it owns); others' types are not read
    conditions: tuple[Condition, ...] = field(default=(), metadata=wire(
        list_type="map", map_keys=("type",), drop_invalid=True))
    #: agent: what pods on the node asked for (a public IP, backend pools), per address
    pod_requests: tuple[PodNetworkRequest, ...] = field(default=(), metadata=wire(
        description="Written by the node agent: the public IP and backend pools pods asked "
                    "for by annotation, per pod address. withdrawn: the pod is gone and the "
                    "agent keeps the address until the operator reports it Detached.",
        **POD_LIST, owner=_AGENT, omit_empty=True))
    #: operator: what it attached, refused or detached for those requests
    pod_networking: tuple[PodAttachment, ...] = field(default=(), metadata=wire(
        description="Written by the operator, per pod address: what it attached to the "
                    "address's ipConfiguration, what it refused and why, and which withdrawn "
                    "requests are off the NIC.", **POD_LIST, owner=_OPERATOR, omit_empty=True))

    WIRE_DERIVED: ClassVar[tuple[Derived, ...]] = (
        Derived("allocated", int, Wire(description="Number of addresses in ips (a block "
                                                   "counts all of its own).", owner=_OPERATOR)),
        Derived("blocks", int, Wire(description="Number of blocks in ips (Blocks mode).",
                                    owner=_OPERATOR, omit_empty=True)),
    )

    @property
    def allocated(self) -> int:
        """Addresses the pool holds (a block counts all of its addresses)."""
        return sum(ip.size for ip in self.ips)

    @property
    def blocks(self) -> int:
        return sum(1 for ip in self.ips if ip.prefix_length is not None)

    def by_address(self) -> PoolStatus:
        """This status with every block expanded into its addresses, each under the block's
        ipConfiguration name: what the node agent hands out from."""
        if not self.blocks:
            return self
        return replace(self, ips=tuple(a for ip in self.ips for a in ip.addresses()))

    def condition(self, ctype: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == ctype), None)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> PoolStatus:
        try:
            return decode(cls, d, "status")
        except WireError as e:
            raise InvalidPool(str(e)) from e

    def operator_fields(self) -> dict[str, Any]:
        """The operator's part of status, for its server-side apply."""
        return {**encode(self, owner=_OPERATOR), "conditions": [
            c.to_dict() for c in self.conditions if c.type in OPERATOR_CONDITIONS]}

    def agent_fields(self) -> dict[str, Any]:
        """The agent's part of status, for its server-side apply."""
        return {**encode(self, owner=_AGENT), "conditions": [
            c.to_dict() for c in self.conditions if c.type in AGENT_CONDITIONS]}


@dataclass(frozen=True, slots=True)
class NodeIPPool:
    name: str
    spec: PoolSpec
    status: PoolStatus = field(default_factory=PoolStatus)
    generation: int = 0
    resource_version: str = ""
    uid: str = ""
    #: set once the pool is being deleted (it stays while a finalizer holds it)
    deletion_timestamp: dt.datetime | None = None
    finalizers: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def deleting(self) -> bool:
        return self.deletion_timestamp is not None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> NodeIPPool:
        """Interpret a NodeIPPool as returned by the API server (a dict)."""
        meta = obj.get("metadata") or {}
        name = str(meta.get("name") or "")
        if not name:
            raise InvalidPool("metadata.name is missing")
        return cls(
            name=name,
            spec=PoolSpec.from_dict(obj.get("spec") or {}, name),
            status=PoolStatus.from_dict(obj.get("status")),
            generation=int(meta.get("generation") or 0),
            resource_version=str(meta.get("resourceVersion") or ""),
            uid=str(meta.get("uid") or ""),
            deletion_timestamp=parse_time(meta.get("deletionTimestamp")),
            finalizers=tuple(str(f) for f in meta.get("finalizers") or ()),
            labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        )


def status_apply_body(name: str, status: Mapping[str, Any]) -> dict[str, Any]:
    """The server-side-apply document for a status subresource write."""
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name},
            "status": dict(status)}
