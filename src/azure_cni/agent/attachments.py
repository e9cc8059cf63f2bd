"""The node's attachments: a pool address held for a key and the veth pair built for it.

One service under both front-ends, the CNI verbs (``cni_handler``) and Docker's network
plugin (``vm.docker_plugin``): the names and MACs of the pair, building it under the key's
address with the address given back when that fails, tearing it down, and a lock per
attachment key so that requests for one attachment run one after the other. Front-ends decide
*which* key and netns; how a pair is built for a held address is decided here, once. The
allocator (``agent.allocator``) holds the addresses: it waits for one to come free, gives a
new one back when the pair cannot be built, and wakes the waiters when one is released.

Netlink work runs on the ``netlink`` thread pool so the event loop stays free; the store's
reads and writes run on the allocator's own thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from azure_cni.agent.allocator import Allocator, PodAsks
from azure_cni.aio.keyed_locks import KeyedLocks
from azure_cni.aio.threads import on_thread
from azure_cni.api.attachment import AttachmentKey
from azure_cni.datapath.names import host_veth_mac, host_veth_name, pod_mac
from azure_cni.datapath.veth import HostVeth, PodNetwork
from azure_cni.ipam.store import Assignment

T = TypeVar("T")


class Datapath(Protocol):
    """What attachments need from the node's datapath (real: ``datapath.veth``)."""

    def ensure_pod_veth(self, pod: PodNetwork) -> None: ...

    def teardown_pod_veth(self, host_veth: str) -> None: ...

    def check_pod_veth(self, pod: PodNetwork) -> list[str]: ...

    def list_host_veths(self) -> list[HostVeth]: ...


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

    async def netlink(self, fn: Callable[..., T], *args: object) -> T:
        """Run a datapath call on the netlink threads."""
        return await on_thread(self.netlink_pool, fn, *args)

    def pod_network(self, key: AttachmentKey, *, netns: str, address: str, ifname: str = "",
                    mac: str = "") -> PodNetwork:
        """The veth pair of ``key``: names and MACs follow from the key alone, so a restarted
        agent finds the same pair; ``ifname`` and ``mac`` override the pod side's."""
        return PodNetwork(
            netns=netns, ifname=ifname or key.ifname, address=address,
            host_veth=host_veth_name(key.container_id, key.ifname),
            host_mac=host_veth_mac(key.container_id, key.ifname),
            pod_mac=mac or pod_mac(key.container_id, key.ifname), mtu=self.mtu)

    async def attach(self, key: AttachmentKey, *, netns: str, pod: str, network: str = "",
                     wait: float = 0.0, asks: PodAsks | None = None) -> Attached | None:
        """Hold an address for ``key`` in ``netns`` and build its pair, under ``key``'s lock;
        None when no address came free within ``wait``. Safe to repeat: a key that holds an
        address keeps it (its pair is checked again); a new address is given back, without a
        cooldown, when its pair cannot be built; ``asks`` are recorded once the pair is
        built. Raises ``AttachedElsewhere`` for a key attached in another netns,
        ``PoolBeingDeleted`` while the pool goes away."""
        # the pair's names follow from the key; its address is what the allocator holds
        named = self.pod_network(key, netns=netns, address="")
        async with self.locks.hold(key), self.allocator.holding(
                key, netns=netns, host_veth=named.host_veth, pod=pod, network=network,
                wait=wait, asks=asks) as held:
            if held is None:
                return None
            pair = replace(named, address=held.assignment.address)
            await self.netlink(self.datapath.ensure_pod_veth, pair)
        return Attached(held.assignment, pair, held.created)

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
