"""When pools are reconciled: events from kopf, one work queue, a fixed number of workers.

- kopf lists and watches Nodes and NodeIPPools and calls ``pool_event`` and ``node_event``
  (``operator/kopf_events.py``). Per pool the controller keeps the newest object seen and, at
  most, one NIC read handed over by the sweep; per node its uid, resourceVersion and
  providerID. Nothing else: no task, thread or timer per pool.
- Reconciling starts only once both lists are in. kopf's events carry no "listing done", so the
  controller takes one list of its own (pools first, then Nodes) while kopf's events already
  flow; a deletion kopf reports while that list runs is remembered so that the list cannot
  bring the object back.
- Events only store the newest object (by resourceVersion, so a stale event never replaces a
  newer object) and queue the pool if something that matters changed: the spec or a deletion
  at once, the agent's usage after ``usageDebounceSeconds``. The operator's own status writes
  change nothing that matters and queue nothing.
- ``maxConcurrentNodes`` workers take pools from the queue (``workqueue``): a pool is never
  reconciled by two workers at once, and a pool queued while it is reconciled is reconciled
  again right after. A reconcile's outcome may ask to look again later (a release delay, a
  retry after an Azure error): that is a delayed add.
- The NIC sweep replaces per-pool drift timers: every ``driftCheckSeconds`` it lists the
  NICs of each resource group that holds nodes, and of each Uniform scale set with nodes (one
  ARM read per page of NICs instead of one per pool) and queues the pools whose NIC differs
  from their status, handing them what it read. A pool whose NIC it does not find is queued
  to look for it. A NIC whose etag and pool are those of the last sweep that found them
  agreeing is not parsed again: at rest that is every NIC.
- ``drain`` is the clean stop: no new reconcile starts, those under way finish their NIC
  write and status write (within a bound), then the caller releases the Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from azure_cni.aio.backoff import Backoff
from azure_cni.api.nodeippool import IPCONFIG_PREFIX, InvalidPool, NodeIPPool
from azure_cni.api.settings import OperatorSettings, PoolDefaults
from azure_cni.cloud.port import AzureNetwork, CloudError, ListedNic, NicSnapshot
from azure_cni.cloud.providerid import parse_provider_id
from azure_cni.cloud.vmnics import serves
from azure_cni.ipam.podnet import drifted
from azure_cni.operator import metrics
from azure_cni.operator.classes import ClassSync
from azure_cni.operator.kube import KubePools, PoolGone
from azure_cni.operator.reconcile import PoolReconciler
from azure_cni.operator.workqueue import ShutDown, WorkQueue

log = logging.getLogger(__name__)

#: a reconcile that raised (not an Azure error: those are outcomes) is retried after this,
#: doubling per failure up to MAX_BACKOFF
BACKOFF = 1.0
MAX_BACKOFF = 300.0
#: jittered, so pools that failed together (an ARM outage) are not retried together
RECONCILE_BACKOFF = Backoff(first=BACKOFF, most=MAX_BACKOFF, jitter=True)
#: workers creating the pools of new nodes (API server writes, no Azure)
POOL_CREATORS = 4


def version_at_least(candidate: str, current: str) -> bool:
    """Whether resourceVersion ``candidate`` is at least ``current`` (they compare as numbers
    on every API server we know; opaque ones trust arrival order)."""
    try:
        return int(candidate) >= int(current)
    except ValueError:
        return True


def newer(candidate: NodeIPPool, current: NodeIPPool | None) -> bool:
    """Whether ``candidate`` is at least as new as ``current``."""
    return current is None or version_at_least(candidate.resource_version,
                                               current.resource_version)


def interest(pool: NodeIPPool) -> tuple[Any, ...]:
    """What in a pool calls for a reconcile when it changes: the spec (its generation), a
    deletion, and the agent's fields other than its condition (used, acknowledgements, and
    whatever else the agent publishes about usage)."""
    agent = pool.status.agent_fields()
    agent.pop("conditions", None)
    return pool.generation, pool.deleting, tuple(sorted((k, str(v)) for k, v in agent.items()))


def nic_differs(pool: NodeIPPool, nic: NicSnapshot) -> bool:
    """Whether the NIC as listed does not match the pool's recorded view of it."""
    if nic.failed or pool.status.nic is None or pool.status.nic.id.lower() != nic.id.lower():
        return True
    ours = {c.name: c.address for c in nic.secondary(IPCONFIG_PREFIX)}
    if any(not c.succeeded for c in nic.secondary(IPCONFIG_PREFIX)):
        return True
    return ours != {ip.ip_configuration: ip.address for ip in pool.status.ips} or drifted(
        pool.status.pod_networking, nic)


@dataclass(slots=True)
class PoolEntry:
    pool: NodeIPPool
    interest: tuple[Any, ...]
    failures: int = 0
    #: when a reconcile last finished with the NIC read or written (monotonic): a sweep
    #: listing that started before then may show the NIC before that write
    nic_seen: float = 0.0
    #: the NIC's etag and the pool's resourceVersion when a sweep last found the two to
    #: agree: while both are the same, the next sweep has nothing to compare (``sweep``)
    agreed: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class NicHint:
    """What the sweep saw of a node's NIC (None: not found), and when its listing started.

    A hint waits for the pool's next reconcile, which during the fill of thousands of nodes
    is minutes away for most of them: the NIC's document (its JSON, for a write that needs
    no read) is kept compressed, 0.5 KB instead of 1.5 KB a NIC."""

    held: NicSnapshot | None
    listed: float
    document: bytes | None = None

    @classmethod
    def of(cls, nic: NicSnapshot | None, listed: float) -> NicHint:
        if nic is None or nic.document is None:
            return cls(nic, listed)
        return cls(replace(nic, document=None), listed, zlib.compress(nic.document))

    @property
    def nic(self) -> NicSnapshot | None:
        if self.held is None or self.document is None:
            return self.held
        return replace(self.held, document=zlib.decompress(self.document))


@dataclass(frozen=True, slots=True)
class NodeEntry:
    uid: str
    provider_id: str | None
    resource_version: str = ""

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> NodeEntry:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        return cls(str(meta.get("uid") or ""), spec.get("providerID") or None,
                   str(meta.get("resourceVersion") or ""))


def _name_and_version(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("name") or ""), str(meta.get("resourceVersion") or "")


class PoolController:
    """Follows Nodes and NodeIPPools and runs every reconcile of every pool."""

    def __init__(self, reconciler: PoolReconciler, kube: KubePools, azure: AzureNetwork,
                 defaults: PoolDefaults, settings: OperatorSettings) -> None:
        self.reconciler = reconciler
        self.kube = kube
        self.azure = azure
        self.defaults = defaults
        self.settings = settings
        self.queue = WorkQueue()
        self.pools: dict[str, PoolEntry] = {}
        self.nodes: dict[str, NodeEntry] = {}
        #: what the sweep saw of a node's NIC, for the next reconcile of its pool
        self.nic_hints: dict[str, NicHint] = {}
        #: nodes whose pool is to be created (a few workers create them, in order)
        self._creations = WorkQueue()
        self._requested: set[str] = set()
        #: nodes whose pool was deleted while they lived: ask the API server before making
        #: another (a Node whose deletion was missed would otherwise get pools forever)
        self._verify_node: set[str] = set()
        #: while the controller takes its own lists: (kind, name) -> resourceVersion of a
        #: deletion seen meanwhile, so that the list cannot bring the object back
        self._deleted_while_listing: dict[tuple[str, str], str] | None = {}
        #: node groups: pools made from and following their NodeIPPoolClass (one worker)
        self.class_sync = ClassSync(kube, defaults)
        self._class_syncs = WorkQueue()
        self._pools_synced = asyncio.Event()
        self._nodes_synced = asyncio.Event()
        self.synced = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Take both lists, then reconcile until ``drain`` (or cancellation)."""
        tasks: list[asyncio.Task[None]] = []
        try:
            await self.list_everything()
            tasks = await self.begin()
            await asyncio.gather(*tasks)
        finally:
            self.queue.shut_down()
            self._creations.shut_down()
            self._class_syncs.shut_down()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def list_everything(self) -> None:
        """One list of the classes, the pools, then the Nodes (kopf's events flow meanwhile):
        when it returns, the controller knows every class, pool and node."""
        async for page in self.kube.list_classes():
            for obj in page:
                if not self._deleted_meanwhile("class", obj):
                    self.class_event("ADDED", obj)
        async for page in self.kube.list_pools():
            for obj in page:
                if not self._deleted_meanwhile("pool", obj):
                    self.pool_event("ADDED", obj)
        self._pools_synced.set()
        async for page in self.kube.list_nodes():
            for obj in page:
                if not self._deleted_meanwhile("node", obj):
                    await self.node_event("ADDED", obj)
        self._nodes_synced.set()
        self._deleted_while_listing = None
        log.info("event=lists_taken pools=%d nodes=%d", len(self.pools), len(self.nodes))

    def _deleted_meanwhile(self, kind: str, obj: Mapping[str, Any]) -> bool:
        name, version = _name_and_version(obj)
        gone = (self._deleted_while_listing or {}).get((kind, name))
        return gone is not None and version_at_least(gone, version)

    def _note_deletion(self, kind: str, obj: Mapping[str, Any]) -> None:
        if self._deleted_while_listing is not None:
            name, version = _name_and_version(obj)
            self._deleted_while_listing[(kind, name)] = version

    async def begin(self) -> list[asyncio.Task[None]]:
        """Once both lists are in: sweep once, queue every pool, start the workers."""
        # one sweep before any reconcile: new pools find their NIC in the listing instead of
        # one VM read each
        await self.sweep()
        for name in self.pools:
            self.queue.add(name)
        self.synced.set()
        log.info("event=controller_synced pools=%d nodes=%d workers=%d", len(self.pools),
                 len(self.nodes), self.settings.max_concurrent_nodes)
        for name, node in self.nodes.items():
            if name not in self.pools:
                self._create_pool_soon(name, node)
        tasks = [asyncio.create_task(self._creator(), name=f"pool-creator-{i}")
                 for i in range(POOL_CREATORS)]
        tasks.append(asyncio.create_task(self._class_syncer(), name="class-sync"))
        self._classes_changed()
        self._workers = [asyncio.create_task(self._worker(), name=f"worker-{i}")
                         for i in range(max(1, self.settings.max_concurrent_nodes))]
        tasks += self._workers
        tasks.append(asyncio.create_task(self._sweep_forever(), name="nic-sweep"))
        return tasks

    async def drain(self, timeout: float) -> list[str]:
        """Stop taking work; let the reconciles under way finish (NIC write, status write) for
        up to ``timeout`` seconds. Returns the pools whose reconcile had to be cut short."""
        self.queue.shut_down()
        self._creations.shut_down()
        self._class_syncs.shut_down()
        running = [t for t in self._workers if not t.done()]
        if running:
            _, late = await asyncio.wait(running, timeout=timeout)
        else:
            late = set()
        cut = sorted(self.queue.in_progress())
        for task in late:
            task.cancel()
        log.info("event=drained finished=%d cut_short=%s", len(running) - len(late),
                 ",".join(cut) or "none")
        return cut

    def health(self) -> str:
        return (f"{len(self.pools)} pools, {len(self.queue)} queued, "
                f"{self.queue.processing} reconciling")

    # -- watch events ----------------------------------------------------------------------

    def pool_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        try:
            pool = NodeIPPool.from_object(obj)
        except InvalidPool as e:
            log.warning("event=pool_unreadable error=%r", str(e))
            return
        if kind == "DELETED":
            self._note_deletion("pool", obj)
            self._forget(pool.name)
            return
        self.remember(pool)

    def remember(self, pool: NodeIPPool) -> None:
        """Keep ``pool`` if it is the newest seen; queue it if what matters changed.

        The pool a status write returned goes through here too: it may carry an agent update
        whose own watch event, older than our write, will be ignored as stale.
        """
        entry = self.pools.get(pool.name)
        if entry is not None and not newer(pool, entry.pool):
            return  # a stale event: never let it replace what a later write returned
        if entry is not None and pool.resource_version == entry.pool.resource_version:
            return  # the watch event of our own write: the same object, kept already
        wanted = interest(pool)
        if entry is None:
            self._requested.discard(pool.name)
            self.pools[pool.name] = PoolEntry(pool, wanted)
            metrics.POOLS_KNOWN.set(len(self.pools))
            if self.synced.is_set():
                self.queue.add(pool.name)
                self._class_syncs.add(pool.name)
            return
        if self.synced.is_set() and pool.generation != entry.pool.generation:
            self._class_syncs.add(pool.name)
        before, entry.pool, entry.interest = entry.interest, pool, wanted
        if before == wanted or not self.synced.is_set():
            return
        if before[:2] != wanted[:2]:
            self.queue.add(pool.name)  # the spec, or a deletion
        else:
            # the agent's usage: let a burst of its updates settle into one reconcile
            self.queue.add_after(pool.name, self.settings.usage_debounce_seconds)

    def _forget(self, name: str) -> None:
        self.pools.pop(name, None)
        self.queue.forget(name)
        self._requested.discard(name)
        metrics.POOLS_KNOWN.set(len(self.pools))
        metrics.forget_pool(name)
        node = self.nodes.get(name)
        if node is not None and self.synced.is_set():
            # the pool was deleted while its node lives on: every node has a pool (if the
            # Node still exists: its own deletion may have been missed)
            self._verify_node.add(name)
            self._create_pool_soon(name, node)

    async def node_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        name = _name_and_version(obj)[0]
        if not name:
            return
        if kind == "DELETED":
            self._note_deletion("node", obj)
            self._forget_node(name)
            # the owner reference has the garbage collector delete the pool; this is a
            # backstop for clusters without one
            await self.kube.delete_pool(name)
            return
        node = NodeEntry.from_object(obj)
        previous = self.nodes.get(name)
        if previous is not None and previous.uid == node.uid and not version_at_least(
                node.resource_version, previous.resource_version):
            return  # older than what we have (the controller's own list, taken late)
        self.nodes[name] = node
        if self.class_sync.node_labels(name, (obj.get("metadata") or {}).get("labels") or {}) \
                and name in self.pools and self.synced.is_set():
            self._class_syncs.add(name)  # the node may be in another group now
        if name not in self.pools:
            if self._pools_synced.is_set():
                self._create_pool_soon(name, node)
        elif previous is not None and previous.provider_id != node.provider_id:
            self.queue.add(name)

    def _forget_node(self, name: str) -> None:
        """A Node is gone: nothing of it is kept, and a Node of that name that joins later
        (scale-set instance names are reused) gets a pool of its own."""
        self.nodes.pop(name, None)
        self.nic_hints.pop(name, None)
        self.class_sync.forget_node(name)
        self._requested.discard(name)
        self._verify_node.discard(name)
        self._creations.forget(name)

    def _create_pool_soon(self, name: str, node: NodeEntry) -> None:
        if name not in self._requested:
            self._requested.add(name)
            self._creations.add(name)

    async def _creator(self) -> None:
        while True:
            try:
                name = await self._creations.get()
            except ShutDown:
                return
            try:
                node = self.nodes.get(name)
                if node is None or name in self.pools:
                    continue
                if name in self._verify_node:
                    if await self.kube.node_uid(name) != node.uid:
                        log.info("event=node_gone node=%s (its deletion was not seen)", name)
                        self._forget_node(name)
                        continue
                    self._verify_node.discard(name)
                if await self.class_sync.create_pool(name, node.uid):
                    log.info("event=pool_created node=%s", name)
                elif name not in self.pools:
                    self._requested.discard(name)  # no class could make it: a change will
            except Exception as e:  # noqa: BLE001 - retried after a pause
                log.warning("event=pool_create_failed node=%s error=%r", name, e)
                self._creations.add_after(name, 5.0)
            finally:
                self._creations.done(name)

    def class_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        name, version = _name_and_version(obj)
        if kind == "DELETED":
            self._note_deletion("class", obj)
        else:
            known = self.class_sync.classes.get(name)
            if known is not None and not version_at_least(version, known.resource_version):
                return  # older than what we have (the controller's own list, taken late)
        if self.class_sync.class_event(kind, obj) and self.synced.is_set():
            log.info("event=pool_class_changed class=%s kind=%s", name, kind)
            self._classes_changed()

    def _classes_changed(self) -> None:
        """A class came, went or changed: every pool may follow another, and nodes left
        without a pool (several classes selected them) may get one now. Only once every list
        is in (``begin`` calls it then)."""
        for name in self.pools:
            self._class_syncs.add(name)
        for name, node in self.nodes.items():
            if name not in self.pools:
                self._create_pool_soon(name, node)

    async def _class_syncer(self) -> None:
        while True:
            try:
                name = await self._class_syncs.get()
            except ShutDown:
                return
            try:
                entry = self.pools.get(name)
                if entry is not None:
                    await self.class_sync.sync(entry.pool)
            except Exception as e:  # noqa: BLE001 - retried after a pause
                log.warning("event=pool_class_sync_failed pool=%s error=%r", name, e)
                self._class_syncs.add_after(name, 5.0)
            finally:
                self._class_syncs.done(name)

    # -- workers ---------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            try:
                name = await self.queue.get()
            except ShutDown:
                return
            try:
                await self.process(name)
            finally:
                self.queue.done(name)
                metrics.QUEUE_DEPTH.set(len(self.queue))

    async def process(self, name: str) -> None:
        """Reconcile one pool with what the controller knows of it, then schedule the next."""
        entry = self.pools.get(name)
        if entry is None:
            return
        node = self.nodes.get(entry.pool.spec.node_name)
        hint = self.nic_hints.pop(entry.pool.spec.node_name, None)
        if hint is not None and hint.listed < entry.nic_seen:
            hint = None  # listed before our last write: the difference it saw is ours
        try:
            result = await self.reconciler.reconcile(
                entry.pool, node.provider_id if node else None,
                hint.nic if hint is not None else None, look=hint is not None)
        except asyncio.CancelledError:
            raise
        except PoolGone:
            # deleted while it was reconciled (its DELETED event may come later, or never)
            log.info("event=pool_gone pool=%s", name)
            self._forget(name)
            return
        except Exception as e:  # noqa: BLE001 - the API server may be away: retry later
            entry.failures += 1
            delay = RECONCILE_BACKOFF.after(entry.failures)
            log.warning("event=reconcile_crashed pool=%s error=%r retry_in=%.0fs", name, e,
                        delay)
            metrics.RECONCILES.labels("error").inc()
            self.queue.add_after(name, delay)
            return
        entry.failures = 0
        if result.nic is not None:
            entry.nic_seen = time.monotonic()
        outcome = result.outcome
        metrics.RECONCILES.labels("retry" if outcome.failed else "done").inc()
        if result.stored is not None and self.pools.get(name) is entry:
            # (a pool forgotten while it was reconciled stays forgotten)
            self.remember(result.stored)
        if outcome.requeue_after is not None and not outcome.release_finalizer:
            self.queue.add_after(name, outcome.requeue_after)

    # -- the NIC sweep ---------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.drift_check_seconds)
            try:
                await self.sweep()
            except Exception as e:  # noqa: BLE001 - the next sweep tries again
                log.warning("event=nic_sweep_failed error=%r", e)

    async def sweep(self) -> None:
        """List the NICs of every resource group with nodes; queue the pools whose NIC
        differs from their status, with what was read (new nodes' pools get it too)."""
        groups: dict[tuple[str, str], dict[str, str]] = {}
        scale_sets: dict[tuple[str, str], set[str]] = {}
        for name, node in self.nodes.items():
            if not node.provider_id:
                continue
            try:
                vm = parse_provider_id(node.provider_id)
            except CloudError:
                continue  # its pool's reconcile reports it
            key = (vm.subscription_id.lower(), vm.resource_group.lower())
            groups.setdefault(key, {})[vm.id.lower()] = name
            if vm.scale_set is not None:
                scale_sets.setdefault(key, set()).add(vm.scale_set[0].lower())
        for (subscription, resource_group), by_vm in groups.items():
            found: set[str] = set()
            listed = time.monotonic()
            try:
                async for listing in self._nics_of_group(
                        subscription, resource_group,
                        scale_sets.get((subscription, resource_group), set())):
                    node_name = by_vm.get(listing.vm_id.lower())
                    if node_name is None:
                        continue
                    entry = self.pools.get(node_name)
                    if entry is not None and listing.etag and entry.agreed == (
                            listing.etag, entry.pool.resource_version):
                        # neither changed since they last agreed: nothing to parse (the
                        # listing of 5,000 NICs is mostly this, every driftCheckSeconds)
                        found.add(node_name)
                        self.nic_hints.pop(node_name, None)
                        continue
                    nic = listing.snapshot()
                    if not serves(nic, entry.pool.spec.pod_subnet_id if entry else ""):
                        continue
                    found.add(node_name)
                    if entry is None or nic_differs(entry.pool, nic):
                        self.nic_hints[node_name] = NicHint.of(nic, listed)
                        self._queue_after_sweep(node_name)
                    else:
                        entry.agreed = (nic.etag, entry.pool.resource_version)
                        self.nic_hints.pop(node_name, None)
            except CloudError as e:
                metrics.observe_azure_error(e)
                log.warning("event=nic_list_failed subscription=%s resource_group=%s "
                            "error=%s", subscription, resource_group, e)
                continue
            for node_name in set(by_vm.values()) - found:
                self.nic_hints[node_name] = NicHint.of(None, listed)
                self._queue_after_sweep(node_name)
        metrics.NIC_SWEEPS.inc()

    async def _nics_of_group(self, subscription: str, resource_group: str,
                             scale_sets: set[str]) -> AsyncIterator[ListedNic]:
        """The resource group's NICs, then those of its Uniform scale sets with nodes (their
        instances' NICs are not in the group's list)."""
        async for nic in self.azure.list_nics(subscription, resource_group):
            yield nic
        for scale_set in sorted(scale_sets):
            async for nic in self.azure.list_scale_set_nics(subscription, resource_group,
                                                            scale_set):
                yield nic

    def _queue_after_sweep(self, name: str) -> None:
        if self.synced.is_set() and name in self.pools:
            self.queue.add(name)
