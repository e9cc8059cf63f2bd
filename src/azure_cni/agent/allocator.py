"""Which pool address a new pod gets, and what the agent tells the operator about the pool.

All reads and writes of the store and of the agent's copy of the pool run on one dedicated
thread, in order. That single thread is the "short pick-and-record step" every ADD goes
through; netlink work happens elsewhere. It also closes a race of the release handshake: the
acknowledgements are computed on the same thread after the pool update that marked an address
``Releasing`` was applied, so no pick made with an older copy of the pool can still be in
flight when the agent acknowledges that address.

A request that finds no free address waits here (``assign``'s ``wait``) until a release or a
new copy of the pool wakes it; ``holding`` is the whole of an ADD's business with addresses in
one call: the pick (or the wait), the address given back if the caller's work fails, and what
the pod asks of Azure recorded once it has succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from azure_cni.aio.threads import on_thread
from azure_cni.api.attachment import AttachmentKey
from azure_cni.api.nodeippool import IPState, NodeIPPool, PoolIP
from azure_cni.api.podnet import AttachmentState, PodNetworkRequest
from azure_cni.ipam.store import (
    AddressStore,
    Assignment,
    Clock,
    Release,
    StoredPodRequest,
)

T = TypeVar("T")
log = logging.getLogger(__name__)
#: cooldowns end without any event, so a waiting request looks again at least this often
LOOK_AGAIN_SECONDS = 1.0


class PoolBeingDeleted(Exception):
    """The node's NodeIPPool is being deleted: no new address is handed out."""


class AttachedElsewhere(Exception):
    """The key holds an address already, for another network namespace."""

    def __init__(self, key: AttachmentKey, netns: str) -> None:
        super().__init__(f"{key} is attached in {netns}")
        self.netns = netns


@dataclass(frozen=True)
class PodAsks:
    """What a pod asks of Azure for its address (a public IP, backend pools), for the
    operator; see ``api.podnet``."""

    public_ip: str
    backend_pools: tuple[str, ...]
    pod_uid: str = ""


@dataclass(frozen=True)
class Held:
    """An address held for a key, and whether this call is what made it so."""

    assignment: Assignment
    created: bool


def choose_address(pool: Sequence[PoolIP], taken: frozenset[str],
                   released: Mapping[str, Release], now: float) -> str | None:
    """The address a new pod gets: Available, unused, not cooling down; least recently used.

    Addresses never handed out come first (in pool order), then the one released longest ago,
    so a just-freed address is reused as late as possible (stale ARP entries, endpoints).
    """
    best: tuple[float, int, str] | None = None
    for order, ip in enumerate(pool):
        if ip.state != IPState.AVAILABLE or ip.address in taken:
            continue
        release = released.get(ip.address)
        if release is not None and release.cool_until > now:
            continue
        rank = (release.released_at if release else float("-inf"), order, ip.address)
        if best is None or rank < best:
            best = rank
    return best[2] if best else None


def choose_wanted(pool: Sequence[PoolIP], taken: frozenset[str], wanted: str) -> str | None:
    """``wanted`` if the pool holds it Available and nobody uses it, else None (pure).

    An address asked for by name is given even while it cools down: whoever asks for a
    fixed address knows what was there before.
    """
    available = any(ip.address == wanted and ip.state == IPState.AVAILABLE for ip in pool)
    return wanted if available and wanted not in taken else None


@dataclass(frozen=True)
class PoolUsage:
    """The pool as the agent sees it; feeds STATUS, metrics and the NodeIPPool status."""

    known: bool
    allocated: int
    used: int
    free: int
    releasing: int
    cooling: int
    release_acks: frozenset[str] = field(default_factory=frozenset)
    #: addresses held by pods that are not (or no longer) in the pool's inventory
    outside_pool: tuple[str, ...] = ()
    #: seconds until the next cooldown of a pool address ends (``cooling`` or an ack changes)
    cooldown_ends_in: float | None = None
    #: Available blocks none of whose addresses is used or cooling
    idle_blocks: frozenset[str] = field(default_factory=frozenset)

    def describe(self) -> str:
        """The counts, for an error message a person reads."""
        return (f"{self.allocated} allocated, {self.used} used, {self.releasing} releasing, "
                f"{self.cooling} cooling down, {self.free} free")


def pool_usage(pool: NodeIPPool | None, assignments: Sequence[Assignment],
               released: Mapping[str, Release], now: float, *,
               blocks: frozenset[str] = frozenset(),
               withheld: frozenset[str] = frozenset()) -> PoolUsage:
    """Count what ``choose_address`` could hand out and what may be released (pure).

    ``pool`` has one entry per address (blocks expanded, see ``Allocator.set_pool``); an
    ipConfiguration is acknowledged only when every address under its name is Releasing,
    unused and out of its cooldown; ``blocks`` names the pool's blocks, reported idle when
    all of their addresses are Available, unused and out of their cooldown. ``withheld``
    addresses (a gone pod's public IP or pools not yet detached) count as cooling: not free
    for the warm pool until the operator has taken them off.
    """
    taken = {a.address for a in assignments}
    if pool is None:
        return PoolUsage(False, 0, len(taken), 0, 0, 0,
                         outside_pool=tuple(sorted(taken)))
    free = releasing = cooling = 0
    acks: set[str] = set()
    # a block is acked as a whole: one address of it in use or cooling holds all of it back
    held_back: set[str] = set()
    busy: set[str] = set()
    inventory = set()
    ends: list[float] = []
    for ip in pool.status.ips:
        inventory.add(ip.address)
        release = released.get(ip.address)
        cool = release is not None and release.cool_until > now
        if cool and release is not None and ip.address not in taken:
            ends.append(release.cool_until - now)
        if ip.state != IPState.AVAILABLE or ip.address in taken or cool:
            busy.add(ip.ip_configuration)
        if ip.state == IPState.RELEASING:
            releasing += 1
            if ip.address not in taken and not cool:
                acks.add(ip.ip_configuration)
            else:
                held_back.add(ip.ip_configuration)
        elif ip.address not in taken:
            if cool or ip.address in withheld:
                cooling += 1
            else:
                free += 1
    return PoolUsage(True, len(pool.status.ips), len(taken), free, releasing, cooling,
                     frozenset(acks - held_back), tuple(sorted(taken - inventory)),
                     min(ends) if ends else None, frozenset(blocks - busy))


def settled_requests(pool: NodeIPPool, stored: Sequence[StoredPodRequest]) -> list[str]:
    """Withdrawn requests the agent may forget (their addresses become reusable): the operator
    reports them Detached, or the address left the pool (its ipConfiguration is gone).

    A Detached answer is for the request of the same address and pod; when it names the
    pod's UID, that must match too, so an answer left from an earlier pod of the same name
    (a StatefulSet's) does not settle a later one's request.
    """
    inventory = {ip.address for ip in pool.status.ips}
    detached = {a.address: a for a in pool.status.pod_networking
                if a.state == AttachmentState.DETACHED}

    def answered(r: StoredPodRequest) -> bool:
        answer = detached.get(r.address)
        return answer is not None and answer.pod == r.pod and (
            not answer.pod_uid or answer.pod_uid == r.pod_uid)

    return [r.address for r in stored
            if r.withdrawn and (r.address not in inventory or answered(r))]


def publishable_requests(pool: NodeIPPool | None, stored: Sequence[StoredPodRequest]
                         ) -> list[PodNetworkRequest]:
    """The store's requests as ``status.podRequests`` entries (pure)."""
    configs = {ip.address: ip.ip_configuration for ip in pool.status.ips} if pool else {}
    return [PodNetworkRequest(configs[r.address], r.address, r.pod, r.public_ip,
                              r.backend_pools, r.withdrawn, r.pod_uid)
            for r in stored if r.address in configs]


def stray_requests(pool: NodeIPPool | None, published: Sequence[PodNetworkRequest]
                   ) -> list[PodNetworkRequest]:
    """Entries of the pool's ``status.podRequests`` the agent does not publish (pure).

    The agent's server-side apply drops what it no longer publishes, but only entries it owns:
    when the CRD changed the list's key (ipConfiguration to address) the entries stored before
    kept ownership under the old key, which no longer names them, so those the agent forgot
    before its first write under the new key stay, owned by nobody.
    """
    if pool is None:
        return []
    mine = {r.address for r in published}
    return [r for r in pool.status.pod_requests if r.address not in mine]


class Allocator:
    """The store and the agent's copy of the pool, used from one thread only."""

    def __init__(self, store_path: Path, cooldown_seconds: float,
                 clock: Clock | None = None) -> None:
        self.store_path = store_path
        self.cooldown_seconds = cooldown_seconds
        #: cooldowns are measured on ``clock.since_boot``, never on the wall clock
        self.clock = clock or Clock()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._store: AddressStore | None = None
        self._pool: NodeIPPool | None = None
        self._blocks: frozenset[str] = frozenset()
        #: set (and replaced) when an address may have come free: a new pool, a release
        self._changed = asyncio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _run(self, fn: Callable[[], T]) -> T:
        return await on_thread(self._thread, fn)

    @property
    def is_open(self) -> bool:
        return self._store is not None

    @property
    def store(self) -> AddressStore:
        assert self._store is not None, "Allocator.open() was not awaited"
        return self._store

    async def open(self) -> None:
        def open_store() -> None:
            self._store = AddressStore(self.store_path, self.clock)

        await self._run(open_store)

    async def close(self) -> None:
        def close_store() -> None:
            if self._store is not None:
                self._store.close()
                self._store = None

        await self._run(close_store)
        self._thread.shutdown(wait=True)

    async def set_pool(self, pool: NodeIPPool | None) -> None:
        """Adopt a new copy of the NodeIPPool; later picks and acks see it."""

        blocks: frozenset[str] = frozenset()
        if pool is not None:
            # blocks become their addresses, each under its block's ipConfiguration: picks,
            # counts and the store see single addresses only
            blocks = frozenset(ip.ip_configuration for ip in pool.status.ips
                               if ip.prefix_length is not None)
            pool = replace(pool, status=pool.status.by_address())

        def adopt() -> None:
            # Held addresses are never handed out again, whatever the pool says; one that
            # left the NIC is reported as usage.outside_pool (the agent logs it once).
            self._pool = pool
            if pool is not None:
                self._blocks = blocks
                inventory = {ip.address for ip in pool.status.ips}
                gone = [a for a in self.store.releases() if a not in inventory]
                if gone:
                    self.store.forget_releases(gone)
                settled = settled_requests(pool, self.store.pod_requests())
                if settled:
                    self.store.forget_pod_requests(settled)

        await self._run(adopt)
        self._wake()

    @property
    def pool(self) -> NodeIPPool | None:
        return self._pool

    async def assign(self, key: AttachmentKey, netns: str, host_veth: str, pod: str,
                     network: str = "", *, wait: float = 0.0
                     ) -> tuple[Assignment | None, bool]:
        """``key``'s assignment: (existing one, False), (new one, True), or, when no address
        came free within ``wait`` seconds, (None, False); a new one is recorded as
        ``network``'s (the CNI network's name). Raises ``PoolBeingDeleted`` when the pool is
        going away."""

        def pick() -> tuple[Assignment | None, bool]:
            existing = self.store.get(key)
            if existing is not None:
                return existing, False
            if self._pool is not None and self._pool.deleting:
                # checked here, on the store's thread, so no pick can pass after the agent
                # has seen the deletion (the operator hands back what stays unused)
                raise PoolBeingDeleted(self._pool.name)
            ips = self._pool.status.ips if self._pool else ()
            now = self.clock.since_boot()
            made = self.store.assign(
                key, netns=netns, host_veth=host_veth, pod=pod, network=network,
                choose=lambda taken, released: choose_address(ips, taken, released, now))
            return made, made is not None

        deadline = time.monotonic() + wait
        while True:
            changed = self._changed
            assignment, created = await self._run(pick)
            remaining = deadline - time.monotonic()
            if assignment is not None or remaining <= 0:
                return assignment, created
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(),
                                       timeout=min(remaining, LOOK_AGAIN_SECONDS))

    @contextlib.asynccontextmanager
    async def holding(self, key: AttachmentKey, *, netns: str, host_veth: str, pod: str,
                      network: str = "", wait: float = 0.0, asks: PodAsks | None = None
                      ) -> AsyncIterator[Held | None]:
        """``key``'s address in ``netns`` for the block's work (building its pair): the one
        it holds or a new one (``assign``), None when none came free within ``wait``.

        One call from the first look to the last word: when the block fails, a new address
        goes back at once (no cooldown: nothing used it); when it succeeds, ``asks`` are
        recorded for the operator. Raises ``AttachedElsewhere`` for a key that holds an
        address in another netns (nothing is released), ``PoolBeingDeleted`` as ``assign``.
        """
        assignment, created = await self.assign(key, netns, host_veth, pod, network,
                                                wait=wait)
        if assignment is None:
            yield None
            return
        if not created and assignment.netns != netns:
            raise AttachedElsewhere(key, assignment.netns)
        try:
            yield Held(assignment, created)
        except BaseException:
            if created:
                await self.release(key, cooldown=False)
            raise
        if asks is not None:
            await self.record_pod_request(assignment.address, pod, asks.public_ip,
                                          asks.backend_pools, asks.pod_uid)
            log.info("event=pod_network_requested address=%s pod=%s pod_uid=%s public_ip=%s "
                     "backend_pools=%s", assignment.address, pod or "-", asks.pod_uid or "-",
                     asks.public_ip or "-", ",".join(asks.backend_pools) or "-")

    async def get(self, key: AttachmentKey) -> Assignment | None:
        return await self._run(lambda: self.store.get(key))

    async def release(self, key: AttachmentKey, cooldown: bool = True) -> Assignment | None:
        """Forget ``key``'s address (with ``cooldown`` it is not reused for a while) and wake
        those waiting for one."""
        seconds = self.cooldown_seconds if cooldown else 0.0
        freed = await self._run(lambda: self.store.release(key, seconds))
        if freed is not None:
            self._wake()
        return freed

    async def assignments(self) -> list[Assignment]:
        return await self._run(self.store.assignments)

    async def usage(self) -> PoolUsage:
        def count() -> PoolUsage:
            return pool_usage(self._pool, self.store.assignments(), self.store.releases(),
                              self.clock.since_boot(), blocks=self._blocks,
                              withheld=self._withheld())

        return await self._run(count)

    async def snapshot(self) -> tuple[PoolUsage, list[Assignment], dict[str, Release]]:
        def read() -> tuple[PoolUsage, list[Assignment], dict[str, Release]]:
            assignments = self.store.assignments()
            released = self.store.releases()
            return (pool_usage(self._pool, assignments, released, self.clock.since_boot(),
                               blocks=self._blocks, withheld=self._withheld()),
                    assignments, released)

        return await self._run(read)

    async def assign_wanted(self, key: AttachmentKey, address: str, netns: str,
                            host_veth: str, pod: str) -> Assignment | None:
        """Record ``address`` for ``key`` if the pool can give it (``choose_wanted``)."""

        def pick() -> Assignment | None:
            ips = self._pool.status.ips if self._pool else ()
            return self.store.assign(
                key, netns=netns, host_veth=host_veth, pod=pod,
                choose=lambda taken, released: choose_wanted(ips, taken, address))

        return await self._run(pick)

    async def rebind(self, key: AttachmentKey, new_key: AttachmentKey, *, netns: str,
                     host_veth: str, pod: str) -> Assignment | None:
        """Hand ``key``'s address to ``new_key`` without freeing it in between."""
        return await self._run(lambda: self.store.rebind(key, new_key, netns=netns,
                                                         host_veth=host_veth, pod=pod))

    def _withheld(self) -> frozenset[str]:
        return frozenset(r.address for r in self.store.pod_requests() if r.withdrawn)

    async def record_pod_request(self, address: str, pod: str, public_ip: str,
                                 backend_pools: Sequence[str], pod_uid: str = "") -> None:
        await self._run(lambda: self.store.record_pod_request(address, pod, public_ip,
                                                              backend_pools, pod_uid))

    async def pod_requests(self) -> list[PodNetworkRequest]:
        """The requests to publish: one per address in the pool, with its ipConfiguration."""
        return await self._run(lambda: publishable_requests(self._pool,
                                                            self.store.pod_requests()))

    async def holder(self, address: str) -> Assignment | None:
        """The attachment holding ``address``, if any."""
        return await self._run(
            lambda: next((a for a in self.store.assignments() if a.address == address), None))
