"""The node's attachments: a pool address recorded for a key and a veth pair built for it.

One service under both front-ends, the CNI verbs (``cni_handler``) and Docker's network
plugin (``vm.docker_plugin``): the wait for a free address, the names and MACs of the pair,
building it with the address given back when that fails, tearing it down, releasing the
address and waking those that wait for one, and a lock per attachment key so that requests
for one attachment run one after the other. Front-ends decide *which* key and netns; how an
address is held and a pair is built is decided here, once.

Netlink work runs on the ``netlink`` thread pool so the event loop stays free; the store's
reads and writes run on the allocator's own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol, TypeVar

from azure_cni.agent.allocator import Allocator
from azure_cni.aio.keyed_locks import KeyedLocks
from azure_cni.api.attachment import AttachmentKey
from azure_cni.datapath.names import host_veth_mac, host_veth_name, pod_mac
from azure_cni.datapath.veth import HostVeth, PodNetwork
from azure_cni.ipam.store import Assignment

T = TypeVar("T")
#: cooldowns end without any event, so a waiting request looks again at least this often
LOOK_AGAIN_SECONDS = 1.0


class Datapath(Protocol):
    """What attachments need from the node's datapath (real: ``datapath.veth``)."""

    def ensure_pod_veth(self, pod: PodNetwork) -> None: ...

    def teardown_pod_veth(self, host_veth: str) -> None: ...

    def check_pod_veth(self, pod: PodNetwork) -> list[str]: ...

    def list_host_veths(self) -> list[HostVeth]: ...


class AttachedElsewhere(Exception):
    """The key holds an address already, for another network namespace."""

    def __init__(self, key: AttachmentKey, netns: str) -> None:
        super().__init__(f"{key} is attached in {netns}")
        self.netns = netns


@dataclass(frozen=True)
class Attached:
    """An attachment whose pair is in place: its address, its pair, and whether it is new."""

    assignment: Assignment
    pod: PodNetwork
    created: bool


class Attachments:
    """Addresses held by keys, and the veth pairs built for them, on one node."""

    def __init__(self, *, allocator: Allocator, datapath: Datapath, netlink: Executor,
                 mtu: int) -> None:
        self.allocator = allocator
        self.datapath = datapath
        self.netlink_pool = netlink
        self.mtu = mtu
        self.locks: KeyedLocks[AttachmentKey] = KeyedLocks()
        self._pool_changed = asyncio.Event()

    async def netlink(self, fn: Callable[..., T], *args: object) -> T:
        """Run a datapath call on the netlink threads."""
        return await asyncio.get_running_loop().run_in_executor(self.netlink_pool, fn, *args)

    def pool_changed(self) -> None:
        """Wake the requests waiting for a free address (new pool, released address)."""
        self._pool_changed.set()
        self._pool_changed = asyncio.Event()

    def pod_network(self, key: AttachmentKey, *, netns: str, address: str, ifname: str = "",
                    mac: str = "") -> PodNetwork:
        """The veth pair of ``key``: names and MACs follow from the key alone, so a restarted
        agent finds the same pair; ``ifname`` and ``mac`` override the pod side's."""
        return PodNetwork(
            netns=netns, ifname=ifname or key.ifname, address=address,
            host_veth=host_veth_name(key.container_id, key.ifname),
            host_mac=host_veth_mac(key.container_id, key.ifname),
            pod_mac=mac or pod_mac(key.container_id, key.ifname), mtu=self.mtu)

    async def reserve(self, key: AttachmentKey, *, netns: str, pod: str, network: str = "",
                   wait: float = 0.0) -> tuple[Assignment | None, bool]:
        """``key``'s address: (the one it holds, False), (a new one, True), or, when no
        address came free within ``wait`` seconds, (None, False). Raises
        ``PoolBeingDeleted`` when the pool is going away."""
        veth = host_veth_name(key.container_id, key.ifname)
        deadline = time.monotonic() + wait
        while True:
            changed = self._pool_changed
            assignment, created = await self.allocator.assign(key, netns, veth, pod, network)
            remaining = deadline - time.monotonic()
            if assignment is not None or remaining <= 0:
                return assignment, created
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(),
                                       timeout=min(remaining, LOOK_AGAIN_SECONDS))

    async def attach(self, key: AttachmentKey, *, netns: str, pod: str, network: str = "",
                     wait: float = 0.0) -> Attached | None:
        """Hold an address for ``key`` in ``netns`` and build its pair, under ``key``'s lock;
        None when no address came free within ``wait``. Safe to repeat: a key that holds an
        address keeps it (its pair is checked again); a new address is given back, without a
        cooldown, when its pair cannot be built. Raises ``AttachedElsewhere`` for a key
        attached in another netns, ``PoolBeingDeleted`` while the pool goes away."""
        async with self.locks.hold(key):
            assignment, created = await self.reserve(key, netns=netns, pod=pod, network=network,
                                                  wait=wait)
            if assignment is None:
                return None
            if not created and assignment.netns != netns:
                raise AttachedElsewhere(key, assignment.netns)
            pair = self.pod_network(key, netns=netns, address=assignment.address)

            async def give_back() -> None:
                await self.release(key, cooldown=False)

            await self.build(pair, undo=give_back if created else None)
        return Attached(assignment, pair, created)

    async def build(self, pod: PodNetwork, *,
                    undo: Callable[[], Awaitable[object]] | None = None) -> None:
        """Build (or confirm) the veth pair; if that fails, ``undo`` gives the address back
        to where it came from before the error goes on."""
        try:
            await self.netlink(self.datapath.ensure_pod_veth, pod)
        except BaseException:
            if undo is not None:
                await undo()
            raise

    async def teardown(self, host_veth: str) -> None:
        """Remove a pair (nothing if it is gone already)."""
        await self.netlink(self.datapath.teardown_pod_veth, host_veth)

    async def release(self, key: AttachmentKey, *, cooldown: bool = True
                      ) -> Assignment | None:
        """Forget ``key``'s address (with ``cooldown`` it is not reused for a while) and wake
        those waiting for one."""
        freed = await self.allocator.release(key, cooldown=cooldown)
        if freed is not None:
            self.pool_changed()
        return freed
