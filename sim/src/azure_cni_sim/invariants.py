"""The promises the chaos campaign checks after every round, as one pure function of what it saw.

An ``Observation`` is what a round left behind, gathered from the real parts: the address each
live pod's interface holds (read in its network namespace), the agent's records (its store,
through its status), each NodeIPPool as the API server has it, each NIC as ARM has it, and the
pods the runtime gave up on. ``check`` turns it into findings, one list per invariant:

- ``duplicate``: one address claimed by two pods, in the kernel (two interfaces hold it) or in
  the agent's records (two keys), or held by a pod although its NIC no longer has it (Azure may
  hand it to another NIC);
- ``unrecorded``: a live pod holds an address the agent has no record of (it may hand it out
  again);
- ``leak``: the agent records an address for a pod that no longer lives;
- ``orphan``: an azure-cni ipConfiguration on a NIC that no pool's inventory names;
- ``acked_on_nic``: an address the agent acknowledged for release that is still on the NIC;
- ``failed_with_room``: a pod the runtime gave up on although its pool was below its ceiling
  and the subnet had room;
- ``unasked_feature``: an azure-cni ipConfiguration carries a public IP or backend pool (other
  than the node's own, those of the NIC's primary) that the live pod holding its address did
  not ask for, or no live pod holds its address at all: a released or reused address would
  hand the next pod the previous one's internet traffic or load balancer;
- ``unsettled``: a pool that is not at rest: not Ready, usage not published, addresses still
  cooling or being released, free addresses outside the warm band, an inventory that disagrees
  with the NIC, or an ipConfiguration not in provisioningState ``Succeeded``.

One more promise is about the operator's replicas over time, not about a round's end:
``writes_by_non_leaders`` finds each NIC write that did not come from the process holding the
leader Lease at that moment (the Lease's terms against the principal ARM saw on the write).

Leaks, orphans, acknowledgements and settling are promises about a system that had time to
converge: the campaign waits (bounded) for ``check`` to come back clean and counts what is left
when the wait ends. Nothing above the ``# -- I/O --`` line does I/O.
"""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from azure_cni.api.nodeippool import IPCONFIG_PREFIX, ConditionType, IPState, NodeIPPool

#: the Ready reason of a pool whose warm pool a clamp (subnet, maxIPs, NIC) stops
LIMITED = "Limited"

INVARIANTS = ("duplicate", "unrecorded", "leak", "orphan", "acked_on_nic", "failed_with_room",
              "unasked_feature", "unsettled")


@dataclass(frozen=True)
class Pod:
    """A live pod's interface: the node it runs on, its attachment key, what it holds."""

    node: str
    key: str
    address: str | None
    #: the public IP and backend pools (resource IDs) the pod asked for by annotation
    asked: tuple[str, ...] = ()


@dataclass(frozen=True)
class Record:
    """One of the agent's records: this key holds this address on this node."""

    node: str
    key: str
    address: str


@dataclass(frozen=True)
class NicView:
    """A node's NIC as ARM returns it: azure-cni's ipConfigurations (name -> address) and the
    names of those not ``Succeeded``."""

    node: str
    ipconfigs: Mapping[str, str]
    not_succeeded: tuple[str, ...] = ()
    #: name -> the public IP and backend pools it carries beyond the node's own pools (only
    #: those that carry any)
    features: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    pods: Sequence[Pod] = ()
    records: Sequence[Record] = ()
    pools: Sequence[NodeIPPool] = ()
    nics: Sequence[NicView] = ()
    #: addresses the subnet still has for new ipConfigurations
    subnet_free: int = 0
    #: (node, key) of pods the runtime gave up on
    gave_up: Sequence[tuple[str, str]] = ()


@dataclass
class Findings:
    """What ``check`` found, one list of readable findings per invariant."""

    by_invariant: dict[str, list[str]] = field(
        default_factory=lambda: {name: [] for name in INVARIANTS})

    @property
    def clean(self) -> bool:
        return not any(self.by_invariant.values())

    def counts(self) -> dict[str, int]:
        return {name: len(found) for name, found in self.by_invariant.items()}

    def add(self, invariant: str, finding: str) -> None:
        self.by_invariant[invariant].append(finding)


def check(seen: Observation) -> Findings:
    """Every invariant over one observation."""
    findings = Findings()
    for name, rule in _RULES.items():
        for finding in rule(seen):
            findings.add(name, finding)
    return findings


def duplicates(seen: Observation) -> Iterable[str]:
    claimants: dict[str, set[str]] = defaultdict(set)
    for pod in seen.pods:
        if pod.address is not None:
            claimants[pod.address].add(f"pod {pod.node}/{pod.key}")
    for record in seen.records:
        claimants[record.address].add(f"pod {record.node}/{record.key}")
    for address, who in sorted(claimants.items()):
        if len(who) > 1:
            yield f"{address} is claimed by {', '.join(sorted(who))}"
    on_nic = {(nic.node, a) for nic in seen.nics for a in nic.ipconfigs.values()}
    nodes_seen = {nic.node for nic in seen.nics}
    for record in seen.records:
        if record.node in nodes_seen and (record.node, record.address) not in on_nic:
            yield (f"{record.address} is held by pod {record.node}/{record.key} but is no longer "
                   "on its NIC: Azure may give it to another NIC")


def unrecorded(seen: Observation) -> Iterable[str]:
    recorded = {(r.node, r.key) for r in seen.records}
    for pod in seen.pods:
        if pod.address is not None and (pod.node, pod.key) not in recorded:
            yield f"pod {pod.node}/{pod.key} holds {pod.address} but the agent has no record"


def leaks(seen: Observation) -> Iterable[str]:
    live = {(p.node, p.key) for p in seen.pods}
    for record in seen.records:
        if (record.node, record.key) not in live:
            yield f"{record.address} is recorded for {record.node}/{record.key}, which is gone"


def orphans(seen: Observation) -> Iterable[str]:
    known = {(pool.name, ip.ip_configuration) for pool in seen.pools for ip in pool.status.ips}
    for nic in seen.nics:
        for name, address in sorted(nic.ipconfigs.items()):
            if (nic.node, name) not in known:
                yield f"{nic.node}: ipConfiguration {name} ({address}) is in no pool"


def acked_on_nic(seen: Observation) -> Iterable[str]:
    nics = {nic.node: nic for nic in seen.nics}
    for pool in seen.pools:
        nic = nics.get(pool.name)
        for name in sorted(pool.status.release_acks):
            if nic is not None and name in nic.ipconfigs:
                yield (f"{pool.name}: {name} ({nic.ipconfigs[name]}) was acknowledged for "
                       "release but is still on the NIC")


def failed_with_room(seen: Observation) -> Iterable[str]:
    pools = {pool.name: pool for pool in seen.pools}
    for node, key in seen.gave_up:
        pool = pools.get(node)
        if pool is not None and pool.status.allocated < pool.spec.max_ips \
                and seen.subnet_free > 0:
            yield (f"pod {node}/{key} failed while its pool had {pool.status.allocated} of "
                   f"{pool.spec.max_ips} and the subnet {seen.subnet_free} free")


def unasked_features(seen: Observation) -> Iterable[str]:
    holders: dict[tuple[str, str], list[Pod]] = defaultdict(list)
    for pod in seen.pods:
        if pod.address is not None:
            holders[(pod.node, pod.address)].append(pod)
    for nic in seen.nics:
        for name, carried in sorted(nic.features.items()):
            address = nic.ipconfigs.get(name, "?")
            pods = holders.get((nic.node, address), [])
            if not pods:
                yield (f"{nic.node}: {address} ({name}) is no pod's and still carries "
                       f"{', '.join(carried)}")
                continue
            for pod in pods:
                asked = {a.lower() for a in pod.asked}
                unasked = [r for r in carried if r.lower() not in asked]
                if unasked:
                    yield (f"{nic.node}: {address} ({name}) carries {', '.join(unasked)}, but "
                           f"pod {pod.node}/{pod.key} did not ask for it")


def unsettled(seen: Observation) -> Iterable[str]:
    nics = {nic.node: nic for nic in seen.nics}
    recorded: dict[str, set[str]] = defaultdict(set)
    for record in seen.records:
        recorded[record.node].add(record.address)
    for pool in seen.pools:
        ready = pool.status.condition(ConditionType.READY)
        # Ready=False "Limited" is the truth while the subnet or maxIPs stops the warm pool
        limited = ready is not None and ready.reason == LIMITED and (
            seen.subnet_free == 0 or pool.status.allocated >= pool.spec.max_ips)
        if ready is None or not (ready.status or limited) \
                or pool.status.observed_generation != pool.generation:
            yield f"{pool.name}: not Ready ({ready.reason if ready else 'no condition'})"
        yield from _at_rest(pool, recorded[pool.name], seen.subnet_free)
        nic = nics.get(pool.name)
        if nic is None:
            continue
        inventory = {ip.ip_configuration: ip.address for ip in pool.status.ips}
        if inventory != dict(nic.ipconfigs):
            yield f"{pool.name}: the inventory disagrees with the NIC"
        for name in nic.not_succeeded:
            yield f"{pool.name}: ipConfiguration {name} is not Succeeded"


def _at_rest(pool: NodeIPPool, records: set[str], subnet_free: int) -> Iterable[str]:
    """A pool at rest: usage published, no release waiting on anyone but a pod, free addresses
    in the warm band (DESIGN.md: ``free = Available - used - cooling`` within
    ``[minFreeIPs, maxFreeIPs]``, unless a clamp stops it)."""
    status, spec = pool.status, pool.spec
    if status.used != len(records):
        yield f"{pool.name}: the agent published {status.used} used, it records {len(records)}"
    if status.cooling:
        yield f"{pool.name}: {status.cooling} addresses still cooling down"
    # a Releasing address a pod holds waits for that pod, however long it lives
    waiting = [ip for ip in status.ips
               if ip.state is IPState.RELEASING and ip.address not in records]
    if waiting or status.excess_since is not None:
        yield f"{pool.name}: a release is under way ({len(waiting)} Releasing, unused)"
    available = sum(1 for ip in status.ips if ip.state is IPState.AVAILABLE)
    free = available - status.used - status.cooling
    if free > spec.max_free_ips and available > spec.min_ips:
        yield f"{pool.name}: {free} free is above maxFreeIPs {spec.max_free_ips}"
    if free < spec.min_free_ips and status.allocated < spec.max_ips and subnet_free > 0:
        yield f"{pool.name}: {free} free is below minFreeIPs {spec.min_free_ips}"


_RULES = {"duplicate": duplicates, "unrecorded": unrecorded, "leak": leaks, "orphan": orphans,
          "acked_on_nic": acked_on_nic, "failed_with_room": failed_with_room,
          "unasked_feature": unasked_features, "unsettled": unsettled}


@dataclass(frozen=True)
class Life:
    """One process of an operator replica: the pod name it gives the Lease (its holder
    identity starts with it), the identity ARM sees on its requests, when it ran."""

    pod: str
    principal: str
    started: float
    ended: float | None = None

    def alive_at(self, at: float) -> bool:
        return self.started <= at and (self.ended is None or at <= self.ended)


@dataclass(frozen=True)
class Write:
    """A write ARM accepted or refused: when it arrived, and from whom."""

    at: float
    principal: str


def holder_at(terms: Sequence[tuple[float, str]], at: float) -> str:
    """The Lease's holder at ``at``, from its terms (acquired at, holder) in order."""
    holder = ""
    for acquired, name in terms:
        if acquired > at:
            break
        holder = name
    return holder


def writes_by_non_leaders(writes: Iterable[Write], terms: Sequence[tuple[float, str]],
                          lives: Iterable[Life]) -> list[str]:
    """Each write not made by the live process that held the Lease when it was made."""
    lives = list(lives)
    found = []
    for write in writes:
        holder = holder_at(terms, write.at)
        life = next((lf for lf in lives if holder.startswith(f"{lf.pod}_")), None)
        if life is None or life.principal != write.principal or not life.alive_at(write.at):
            found.append(f"NIC write at {write.at:.2f} by {write.principal}; the Lease named "
                         f"{holder or 'nobody'}")
    return found


# -- I/O ---------------------------------------------------------------------------------------


def interface_address(netns: str, ifname: str = "eth0") -> str | None:
    """The IPv4 address ``ifname`` holds in ``netns`` (None: no such interface or address)."""
    done = subprocess.run(["ip", "-j", "-4", "-n", netns, "addr", "show", "dev", ifname],
                          capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0 or not done.stdout.strip():
        return None
    for link in json.loads(done.stdout):
        for info in link.get("addr_info", ()):
            return str(info["local"])
    return None


def nic_view(node: str, nic: Mapping[str, Any]) -> NicView:
    """azure-cni's part of a NIC document as ARM returns it."""
    configs = nic["properties"]["ipConfigurations"]
    ours = [c for c in configs if str(c["name"]).startswith(IPCONFIG_PREFIX)]
    node_pools = {p.lower() for c in configs if c["properties"].get("primary")
                  for p in _pools(c)}
    features = {}
    for c in ours:
        public_ip = (c["properties"].get("publicIPAddress") or {}).get("id")
        carried = ([public_ip] if public_ip else []) + [
            p for p in _pools(c) if p.lower() not in node_pools]
        if carried:
            features[str(c["name"])] = tuple(carried)
    return NicView(node, {c["name"]: c["properties"]["privateIPAddress"] for c in ours},
                   tuple(c["name"] for c in ours
                         if c["properties"].get("provisioningState") != "Succeeded"),
                   features)


def _pools(config: Mapping[str, Any]) -> list[str]:
    return [str(p["id"]) for p in config["properties"].get("loadBalancerBackendAddressPools")
            or () if p.get("id")]
