"""The agent's status document (``GET /v1/status``, ``azure-cni status``) as a typed value.

The agent builds an ``AgentStatus``; ``to_dict`` is the JSON on the wire (its keys are the
contract with ``azure-cni status --json`` and the simulation), ``from_dict`` reads it back,
and ``status_cli.render`` is the one renderer for people.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from azure_cni.agent.allocator import Allocator
from azure_cni.agent.egress import EgressReconciler
from azure_cni.api.nodeippool import NicInfo, PoolIP
from azure_cni.api.podnet import PodAttachment, PodNetworkRequest


@dataclass(frozen=True)
class Readiness:
    """Whether pods can start on this node, and why (the AgentReady condition)."""

    ready: bool
    reason: str
    message: str


@dataclass(frozen=True)
class AttachmentRow:
    """One address held by one attachment."""

    container_id: str
    ifname: str
    address: str
    host_veth: str
    netns: str
    pod: str
    network: str
    #: wall-clock seconds
    assigned_at: float

    def to_dict(self) -> dict[str, Any]:
        return {"containerID": self.container_id, "ifname": self.ifname,
                "address": self.address, "hostVeth": self.host_veth, "netns": self.netns,
                "pod": self.pod, "network": self.network, "assignedAt": self.assigned_at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttachmentRow:
        return cls(str(d.get("containerID") or ""), str(d.get("ifname") or ""),
                   str(d.get("address") or ""), str(d.get("hostVeth") or ""),
                   str(d.get("netns") or ""), str(d.get("pod") or ""),
                   str(d.get("network") or ""), float(d.get("assignedAt") or 0.0))


@dataclass(frozen=True)
class PoolSummary:
    """The pool as the agent counts it, with the NIC and the addresses it came with."""

    known: bool
    allocated: int = 0
    used: int = 0
    free: int = 0
    releasing: int = 0
    cooling: int = 0
    release_acks: tuple[str, ...] = ()
    outside_pool: tuple[str, ...] = ()
    nic: NicInfo | None = None
    addresses: tuple[PoolIP, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"known": self.known, "allocated": self.allocated, "used": self.used,
                "free": self.free, "releasing": self.releasing, "coolingDown": self.cooling,
                "releaseAcks": list(self.release_acks), "outsidePool": list(self.outside_pool),
                "nic": self.nic.to_dict() if self.nic else None,
                "addresses": [ip.to_dict() for ip in self.addresses]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PoolSummary:
        nic = d.get("nic")
        return cls(bool(d.get("known")), int(d.get("allocated") or 0), int(d.get("used") or 0),
                   int(d.get("free") or 0), int(d.get("releasing") or 0),
                   int(d.get("coolingDown") or 0),
                   tuple(str(a) for a in d.get("releaseAcks") or ()),
                   tuple(str(a) for a in d.get("outsidePool") or ()),
                   NicInfo.from_dict(nic) if isinstance(nic, Mapping) else None,
                   tuple(PoolIP.from_dict(ip) for ip in d.get("addresses") or ()))


@dataclass(frozen=True)
class SnatSummary:
    """The egress policy in force."""

    #: None when the pods' CIDR is not set (the transparent datapath)
    pod_cidr: str | None = None
    vnet: tuple[str, ...] = ()
    non_masquerade: tuple[str, ...] = ()
    masquerade: bool = False
    public_sources: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"podCIDR": self.pod_cidr, "vnet": list(self.vnet),
                "nonMasquerade": list(self.non_masquerade), "masquerade": self.masquerade,
                "publicSources": list(self.public_sources)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SnatSummary:
        return cls(str(d["podCIDR"]) if d.get("podCIDR") else None,
                   tuple(map(str, d.get("vnet") or ())),
                   tuple(map(str, d.get("nonMasquerade") or ())), bool(d.get("masquerade")),
                   tuple(map(str, d.get("publicSources") or ())))


@dataclass(frozen=True)
class AgentStatus:
    """Everything ``azure-cni status`` shows about one node's agent."""

    node: str
    ready: bool
    reason: str
    message: str
    pool: PoolSummary
    mtu: int = 0
    socket: str = ""
    pool_source: str = ""
    pool_source_problem: str = ""
    egress_problem: str = ""
    assignments: tuple[AttachmentRow, ...] = ()
    #: address -> wall-clock time its cooldown ends
    cooling_down: Mapping[str, float] = field(default_factory=dict)
    snat: SnatSummary = field(default_factory=SnatSummary)
    #: per-pod Azure networking: what pods asked for, and what the operator did
    pod_requests: tuple[PodNetworkRequest, ...] = ()
    pod_networking: tuple[PodAttachment, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node, "poolSource": self.pool_source,
            "poolSourceProblem": self.pool_source_problem, "ready": self.ready,
            "reason": self.reason, "message": self.message, "socket": self.socket,
            "mtu": self.mtu, "egressProblem": self.egress_problem,
            "pool": self.pool.to_dict(),
            "assignments": [a.to_dict() for a in self.assignments],
            "coolingDown": dict(self.cooling_down),
            "snat": self.snat.to_dict(),
            "podRequests": [r.to_dict() for r in self.pod_requests],
            "podNetworking": [a.to_dict() for a in self.pod_networking],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AgentStatus:
        return cls(
            node=str(d.get("node") or ""), ready=bool(d.get("ready")),
            reason=str(d.get("reason") or ""), message=str(d.get("message") or ""),
            pool=PoolSummary.from_dict(d.get("pool") or {}), mtu=int(d.get("mtu") or 0),
            socket=str(d.get("socket") or ""), pool_source=str(d.get("poolSource") or ""),
            pool_source_problem=str(d.get("poolSourceProblem") or ""),
            egress_problem=str(d.get("egressProblem") or ""),
            assignments=tuple(AttachmentRow.from_dict(a) for a in d.get("assignments") or ()),
            cooling_down={str(a): float(t) for a, t in (d.get("coolingDown") or {}).items()},
            snat=SnatSummary.from_dict(d.get("snat") or {}),
            pod_requests=tuple(PodNetworkRequest.from_dict(r)
                               for r in d.get("podRequests") or ()),
            pod_networking=tuple(PodAttachment.from_dict(a)
                                 for a in d.get("podNetworking") or ()))


# -- reading it from the agent's parts ------------------------------------------------------

async def read_status(*, node: str, pool_source: str, pool_source_problem: str,
                      readiness: Readiness, socket: str, mtu: int, egress: EgressReconciler,
                      allocator: Allocator) -> AgentStatus:
    """The status as the agent's parts see it now (one read of the store)."""
    usage, assignments, released = await allocator.snapshot()
    pool = allocator.pool
    clock = allocator.clock
    now, wall = clock.since_boot(), clock.wall()
    policy = egress.policy
    return AgentStatus(
        node=node, pool_source=pool_source, pool_source_problem=pool_source_problem,
        ready=readiness.ready, reason=readiness.reason, message=readiness.message,
        socket=socket, mtu=mtu, egress_problem=egress.problem,
        pool=PoolSummary(
            usage.known, usage.allocated, usage.used, usage.free, usage.releasing,
            usage.cooling, tuple(sorted(usage.release_acks)), usage.outside_pool,
            pool.status.nic if pool else None, pool.status.ips if pool else ()),
        assignments=tuple(AttachmentRow(
            a.key.container_id, a.key.ifname, a.address, a.host_veth, a.netns, a.pod,
            a.network, a.assigned_at) for a in assignments),
        # as wall-clock deadlines, for people and for the status command
        cooling_down={address: wall + (r.cool_until - now)
                      for address, r in sorted(released.items()) if r.cool_until > now},
        snat=SnatSummary(policy.pod_cidr, tuple(policy.vnet_cidrs),
                         tuple(policy.non_masquerade_cidrs), policy.masquerade,
                         tuple(policy.public_sources)),
        pod_requests=tuple(await allocator.pod_requests()),
        pod_networking=pool.status.pod_networking if pool else ())
