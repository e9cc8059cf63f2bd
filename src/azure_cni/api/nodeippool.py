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
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from azure_cni.api.podnet import PodAttachment, PodNetworkRequest

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


@dataclass(frozen=True)
class PoolSpec:
    """The admin's intent for one node's pool. Defaults mirror the CRD's schema defaults."""

    node_name: str
    min_ips: int = 0
    max_ips: int = 250
    batch_size: int = 8
    min_free_ips: int = 8
    max_free_ips: int = 24
    release_delay_seconds: int = 180
    mode: PoolMode = PoolMode.ADDRESSES
    #: the length of each block in Blocks mode (ignored in Addresses mode)
    block_prefix_length: int = DEFAULT_BLOCK_PREFIX_LENGTH
    #: the subnet whose NIC of the VM carries the pods ("": the VM's primary NIC); on Azure
    #: every NIC sits in one subnet, so naming the subnet names the NIC
    pod_subnet_id: str = ""

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
        """Raise InvalidPool for combinations the CRD's CEL rules also refuse."""
        problems = []
        if not self.node_name:
            problems.append("spec.nodeName must be set")
        if not 0 <= self.min_ips <= self.max_ips:
            problems.append(f"spec.minIPs ({self.min_ips}) must be between 0 and "
                            f"spec.maxIPs ({self.max_ips})")
        if not 1 <= self.max_ips <= MAX_SECONDARY_IPS:
            problems.append(f"spec.maxIPs ({self.max_ips}) must be between 1 and "
                            f"{MAX_SECONDARY_IPS} (a NIC holds 256 ipConfigurations, one primary)")
        if not 1 <= self.batch_size <= MAX_SECONDARY_IPS:
            problems.append(f"spec.batchSize ({self.batch_size}) must be between 1 and "
                            f"{MAX_SECONDARY_IPS}")
        if not 0 <= self.min_free_ips <= self.max_free_ips:
            problems.append(f"spec.minFreeIPs ({self.min_free_ips}) must not exceed "
                            f"spec.maxFreeIPs ({self.max_free_ips})")
        if self.release_delay_seconds < 0:
            problems.append("spec.releaseDelaySeconds must not be negative")
        if not MIN_BLOCK_PREFIX_LENGTH <= self.block_prefix_length <= MAX_BLOCK_PREFIX_LENGTH:
            problems.append(f"spec.blockPrefixLength ({self.block_prefix_length}) must be "
                            f"between {MIN_BLOCK_PREFIX_LENGTH} and {MAX_BLOCK_PREFIX_LENGTH}")
        if problems:
            raise InvalidPool("; ".join(problems))

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], name: str | None = None) -> PoolSpec:
        defaults = cls(node_name="")
        try:
            mode = PoolMode(spec.get("mode", defaults.mode))
        except ValueError:
            raise InvalidPool(f"spec.mode {spec.get('mode')!r} must be one of "
                              f"{', '.join(m.value for m in PoolMode)}") from None
        try:
            return cls(
                node_name=str(spec.get("nodeName") or name or ""),
                min_ips=int(spec.get("minIPs", defaults.min_ips)),
                max_ips=int(spec.get("maxIPs", defaults.max_ips)),
                batch_size=int(spec.get("batchSize", defaults.batch_size)),
                min_free_ips=int(spec.get("minFreeIPs", defaults.min_free_ips)),
                max_free_ips=int(spec.get("maxFreeIPs", defaults.max_free_ips)),
                release_delay_seconds=int(
                    spec.get("releaseDelaySeconds", defaults.release_delay_seconds)),
                mode=mode,
                block_prefix_length=int(
                    spec.get("blockPrefixLength", defaults.block_prefix_length)),
                pod_subnet_id=str(spec.get("podSubnetID") or ""),
            )
        except (TypeError, ValueError) as e:
            raise InvalidPool(f"spec has a non-integer field: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodeName": self.node_name,
            "minIPs": self.min_ips,
            "maxIPs": self.max_ips,
            "batchSize": self.batch_size,
            "minFreeIPs": self.min_free_ips,
            "maxFreeIPs": self.max_free_ips,
            "releaseDelaySeconds": self.release_delay_seconds,
            "mode": str(self.mode),
            "blockPrefixLength": self.block_prefix_length,
            "podSubnetID": self.pod_subnet_id,
        }


@dataclass(frozen=True)
class PoolIP:
    """One secondary ipConfiguration of the node's NIC that belongs to the pool: a single
    address, or (``prefix_length`` set) the aligned block starting at ``address``."""

    address: str
    ip_configuration: str
    state: IPState = IPState.AVAILABLE
    prefix_length: int | None = None

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
    def from_dict(cls, d: Mapping[str, Any]) -> PoolIP:
        try:
            length = d.get("prefixLength")
            return cls(str(d["address"]), str(d["ipConfiguration"]),
                       IPState(d.get("state", IPState.AVAILABLE)),
                       int(length) if length is not None else None)
        except (KeyError, ValueError) as e:
            raise InvalidPool(f"status.ips has a malformed entry {dict(d)!r}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address, "ipConfiguration": self.ip_configuration,
                               "state": str(self.state)}
        if self.prefix_length is not None:
            out["prefixLength"] = self.prefix_length
        return out


@dataclass(frozen=True)
class NicInfo:
    """What the operator found on Azure for this node: what the agent needs for its datapath.

    ``primary_ip`` is the NIC's own primary address (on a second NIC, not the VM's);
    ``primary_nic`` says whether the NIC is the VM's primary one, and ``mac_address``
    (``AA-BB-CC-DD-EE-FF``, as ARM writes it) is how the agent finds the NIC on the host.
    """

    id: str
    primary_ip: str
    subnet_id: str
    subnet_cidr: str
    vnet_address_space: tuple[str, ...]
    name: str = ""
    mac_address: str = ""
    primary_nic: bool = True

    @property
    def gateway(self) -> str:
        """The subnet's gateway: Azure answers on its first usable address (.1)."""
        if not self.subnet_cidr:
            return ""
        return str(ipaddress.IPv4Network(self.subnet_cidr, strict=False).network_address + 1)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NicInfo:
        return cls(
            id=str(d.get("id", "")),
            primary_ip=str(d.get("primaryIP", "")),
            subnet_id=str(d.get("subnetID", "")),
            subnet_cidr=str(d.get("subnetCIDR", "")),
            vnet_address_space=tuple(str(c) for c in d.get("vnetAddressSpace") or ()),
            name=str(d.get("name") or ""),
            mac_address=str(d.get("macAddress") or ""),
            primary_nic=d.get("primary") is not False,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "primaryIP": self.primary_ip,
            "subnetID": self.subnet_id,
            "subnetCIDR": self.subnet_cidr,
            "vnetAddressSpace": list(self.vnet_address_space),
            "primary": self.primary_nic,
        }
        if self.name:
            out["name"] = self.name
        if self.mac_address:
            out["macAddress"] = self.mac_address
        return out


@dataclass(frozen=True)
class Condition:
    type: ConditionType
    status: bool
    reason: str
    message: str = ""
    last_transition_time: str = ""
    observed_generation: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Condition | None:
        try:
            ctype = ConditionType(d["type"])
        except (KeyError, ValueError):
            return None  # a condition some other writer added; not ours to interpret
        gen = d.get("observedGeneration")
        return cls(ctype, d.get("status") == "True", str(d.get("reason", "")),
                   str(d.get("message", "")), str(d.get("lastTransitionTime", "")),
                   int(gen) if gen is not None else None)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": str(self.type),
            "status": "True" if self.status else "False",
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": self.last_transition_time or rfc3339(utcnow()),
        }
        if self.observed_generation is not None:
            out["observedGeneration"] = self.observed_generation
        return out


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: RFC 3339 date-time: fractions of any length (Kubernetes' MicroTime has 6, Go's RFC3339Nano
#: up to 9; Python keeps 6) and a "Z" or numeric offset
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?"
                      r"(Z|[+-]\d\d:\d\d)", re.IGNORECASE)


def parse_time(value: str | None) -> dt.datetime | None:
    """An RFC 3339 timestamp as an aware UTC datetime; None when absent or unreadable."""
    match = _RFC3339.fullmatch(value or "")
    if match is None:
        return None
    seconds, fraction, offset = match.groups()
    zone = "+00:00" if offset.upper() == "Z" else offset
    try:
        parsed = dt.datetime.fromisoformat(f"{seconds}.{(fraction or '0')[:6]:0<6}{zone}")
    except ValueError:
        return None
    return parsed.astimezone(dt.UTC)


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


@dataclass(frozen=True)
class PoolStatus:
    """Both writers' fields; each writer renders only its own part (see module docstring)."""

    nic: NicInfo | None = None
    ips: tuple[PoolIP, ...] = ()
    excess_since: dt.datetime | None = None
    observed_generation: int | None = None
    used: int = 0
    #: Available addresses the agent will not hand out before their cooldown ends
    cooling: int = 0
    release_acks: frozenset[str] = frozenset()
    #: blocks none of whose addresses is used or cooling (agent-owned): what to release first
    idle_blocks: frozenset[str] = frozenset()
    conditions: tuple[Condition, ...] = ()
    #: agent: what pods on the node asked for (a public IP, backend pools), per ipConfiguration
    pod_requests: tuple[PodNetworkRequest, ...] = ()
    #: operator: what it attached, refused or detached for those requests
    pod_networking: tuple[PodAttachment, ...] = ()

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
        d = d or {}
        nic = d.get("nic")
        conditions = tuple(c for c in (Condition.from_dict(x) for x in d.get("conditions") or ())
                           if c is not None)
        gen = d.get("observedGeneration")
        return cls(
            nic=NicInfo.from_dict(nic) if nic else None,
            ips=tuple(PoolIP.from_dict(x) for x in d.get("ips") or ()),
            excess_since=parse_time(d.get("excessSince")),
            observed_generation=int(gen) if gen is not None else None,
            used=int(d.get("used") or 0),
            cooling=int(d.get("cooling") or 0),
            release_acks=frozenset(str(a) for a in d.get("releaseAcks") or ()),
            idle_blocks=frozenset(str(a) for a in d.get("idleBlocks") or ()),
            conditions=conditions,
            pod_requests=tuple(PodNetworkRequest.from_dict(x)
                               for x in d.get("podRequests") or ()),
            pod_networking=tuple(PodAttachment.from_dict(x)
                                 for x in d.get("podNetworking") or ()),
        )

    def operator_fields(self) -> dict[str, Any]:
        """The operator's part of status, for its server-side apply."""
        out: dict[str, Any] = {
            "ips": [ip.to_dict() for ip in self.ips],
            "allocated": self.allocated,
            **({"blocks": self.blocks} if self.blocks else {}),
            "conditions": [c.to_dict() for c in self.conditions if c.type in OPERATOR_CONDITIONS],
        }
        # Server-side apply drops a field its manager stops sending, so "no excess" is omission.
        if self.excess_since is not None:
            out["excessSince"] = rfc3339(self.excess_since)
        if self.nic is not None:
            out["nic"] = self.nic.to_dict()
        if self.observed_generation is not None:
            out["observedGeneration"] = self.observed_generation
        if self.pod_networking:
            out["podNetworking"] = [a.to_dict() for a in self.pod_networking]
        return out

    def agent_fields(self) -> dict[str, Any]:
        """The agent's part of status, for its server-side apply."""
        out: dict[str, Any] = {
            "used": self.used,
            "cooling": self.cooling,
            "releaseAcks": sorted(self.release_acks),
            "conditions": [c.to_dict() for c in self.conditions if c.type in AGENT_CONDITIONS],
        }
        if self.idle_blocks:
            out["idleBlocks"] = sorted(self.idle_blocks)
        if self.pod_requests:
            out["podRequests"] = [r.to_dict() for r in self.pod_requests]
        return out


@dataclass(frozen=True)
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
