"""Reconciling one NodeIPPool, top to bottom: observe -> decide -> write the NIC -> record.

The decision is :func:`azure_cni.ipam.decide.decide` (pure). This module only carries it
out: it reads what the decision asks for, makes at most one NIC write, and records the
outcome with at most one status write plus its Events. Azure is the ``AzureNetwork`` port and
Kubernetes a ``PoolWriter``, so all of it runs in unit tests without a cluster.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from azure_cni.api.nodeippool import IPCONFIG_PREFIX, NodeIPPool, utcnow
from azure_cni.api.settings import PodNetworkingSettings
from azure_cni.cloud.port import (
    AzureNetwork,
    CloudError,
    MissingProviderID,
    NicSnapshot,
    NotFound,
    SubnetFull,
    SubnetInfo,
    VMRef,
)
from azure_cni.cloud.providerid import parse_provider_id
from azure_cni.cloud.vmnics import serves
from azure_cni.ipam.decide import Decision, Observation, Outcome, decide, observation_failed
from azure_cni.operator import metrics
from azure_cni.operator.kube import FINALIZER, PoolWriter

log = logging.getLogger(__name__)


def new_ipconfig_name() -> str:
    """A fresh ipConfiguration name: ours by its prefix, never reused."""
    return f"{IPCONFIG_PREFIX}{secrets.token_hex(5)}"


@dataclass(frozen=True)
class Result:
    """How a reconcile ended: the decision's outcome and the pool as stored afterwards."""

    outcome: Outcome
    #: the pool as the API server returned it after our status write, if there was one
    stored: NodeIPPool | None = None
    #: the NIC as last seen (written or read), for the caller's bookkeeping
    nic: NicSnapshot | None = None


class SubnetCache:
    """Subnet capacity shared by every node in it, read at most once per ``ttl`` seconds."""

    def __init__(self, azure: AzureNetwork, ttl: float = 10.0) -> None:
        self._azure = azure
        self._ttl = ttl
        self._entries: dict[str, tuple[SubnetInfo, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, subnet_id: str) -> SubnetInfo:
        key = subnet_id.lower()
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            entry = self._entries.get(key)
            if entry is None or time.monotonic() - entry[1] > self._ttl:
                entry = (await self._azure.get_subnet(subnet_id), time.monotonic())
                self._entries[key] = entry
                metrics.observe_subnet(entry[0])
            return entry[0]

    def consumed(self, subnet_id: str, delta: int) -> None:
        """Account for addresses we just took (positive) or gave back (negative)."""
        key = subnet_id.lower()
        entry = self._entries.get(key)
        if entry is not None and entry[0].free_addresses is not None:
            info = replace(entry[0], free_addresses=max(0, entry[0].free_addresses - delta))
            self._entries[key] = (info, entry[1])
            metrics.observe_subnet(info)

    def forget(self, subnet_id: str) -> None:
        self._entries.pop(subnet_id.lower(), None)


class PoolReconciler:
    """Carries out decisions for every pool; holds no per-pool state of its own."""

    def __init__(
        self,
        azure: AzureNetwork,
        pools: PoolWriter,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        new_name: Callable[[], str] = new_ipconfig_name,
        subnet_ttl: float = 10.0,
        pod_networking: PodNetworkingSettings | None = None,
        fence: Callable[[], None] = lambda: None,
    ) -> None:
        self.azure = azure
        self.pools = pools
        #: raises when this replica may not write (it lost the leader Lease)
        self.fence = fence
        self.pod_networking = pod_networking or PodNetworkingSettings()
        self.subnets = SubnetCache(azure, subnet_ttl)
        self._clock = clock
        self._new_name = new_name

    async def reconcile(self, pool: NodeIPPool, provider_id: str | None,
                        nic: NicSnapshot | None = None, *, look: bool = False) -> Result:
        """One reconcile of ``pool``. ``nic`` is a recent read of its NIC if the caller has
        one; ``look`` reads the NIC even when the decision would not need it (a drift check).
        Azure errors end up in the outcome, never raised."""
        if nic is not None and not serves(nic, pool.spec.pod_subnet_id):
            nic = None  # a read of the VM's other NIC (a sweep before the pool existed)
        obs = Observation(pool, self._clock(), pod_networking=self.pod_networking)
        decision = None if nic is not None or look else decide(obs, self._new_name)
        if decision is None or decision.read_nic:
            try:
                if nic is None:
                    nic = await self._observe_nic(pool, provider_id)
                obs = replace(obs, nic=nic, moved=await self._recorded_nic_elsewhere(pool, nic),
                              subnet=await self.subnets.get(nic.primary.subnet_id))
            except CloudError as e:
                metrics.observe_azure_error(e)
                return await self._record(pool, observation_failed(obs, e))
            decision = decide(obs, self._new_name)
        if decision.look_up:
            obs = replace(obs, tags=await self._read_tags(decision.look_up))
            decision = decide(obs, self._new_name)
        if decision.write is None:
            assert decision.outcome is not None
            return await self._record(pool, decision.outcome, obs.nic)
        if FINALIZER not in pool.finalizers and not pool.deleting:
            # a pool an admin created: it must not vanish while the NIC holds its addresses
            await self.pools.add_finalizer(pool.name)
        self.fence()
        outcome, written = await self._write_nic(decision)
        return await self._record(pool, outcome, written or obs.nic)

    async def _observe_nic(self, pool: NodeIPPool, provider_id: str | None) -> NicSnapshot:
        """The node's NIC for the pool (``spec.podSubnetID``'s, else the primary): by its
        known ID (one read), else through its VM (two, or one more per NIC of the VM)."""
        known = pool.status.nic.id if pool.status.nic else ""
        vm: VMRef | None = None
        if provider_id:
            vm = parse_provider_id(provider_id)
        if known:
            try:
                nic = await self.azure.get_nic(known)
            except NotFound:
                if vm is None:
                    raise
            else:
                if vm is None or (nic.vm_id.lower() == vm.id.lower()
                                  and serves(nic, pool.spec.pod_subnet_id)):
                    return nic
        if vm is None:
            raise MissingProviderID(f"node {pool.spec.node_name} has no spec.providerID (yet); "
                                    "waiting for it")
        return await self.azure.get_vm_nic(vm, pool.spec.pod_subnet_id)

    async def _read_tags(self, resource_ids: Sequence[str]
                         ) -> dict[str, Mapping[str, str] | CloudError]:
        """The tags of each resource (one read each, at once), or the error reading it: a
        resource that cannot be read is that pod's problem, never the node's."""
        async def one(resource_id: str) -> Mapping[str, str] | CloudError:
            try:
                return await self.azure.get_tags(resource_id)
            except CloudError as e:
                metrics.observe_azure_error(e)
                return e

        found = await asyncio.gather(*(one(r) for r in resource_ids))
        return {r.lower(): f for r, f in zip(resource_ids, found, strict=True)}

    async def _recorded_nic_elsewhere(self, pool: NodeIPPool,
                                      nic: NicSnapshot) -> NicSnapshot | None:
        """The NIC the pool recorded, if the node has ``nic`` now and the recorded one still
        exists (moved to another VM). One read, only when the node's NIC changed."""
        known = pool.status.nic.id if pool.status.nic else ""
        if not known or known.lower() == nic.id.lower():
            return None
        try:
            return await self.azure.get_nic(known)
        except NotFound:
            return None

    async def _write_nic(self, decision: Decision) -> tuple[Outcome, NicSnapshot | None]:
        """The decision's one NIC write, and its outcome."""
        write, nic = decision.write, decision.obs.nic
        assert write is not None and nic is not None
        started = time.monotonic()
        try:
            written = await self.azure.update_ip_configurations(
                nic, write.add, write.remove, reapply=write.reapply,
                features=dict(write.features))
        except CloudError as e:
            metrics.observe_azure_error(e)
            metrics.observe_write(len(write.add), len(write.remove),
                                  time.monotonic() - started, e)
            if isinstance(e, SubnetFull):
                self.subnets.forget(nic.primary.subnet_id)
            return decision.failed(e), None
        metrics.observe_write(len(write.add), len(write.remove), time.monotonic() - started,
                              None)
        self.subnets.consumed(nic.primary.subnet_id, decision.address_delta)
        return decision.settle(written), written

    async def _record(self, pool: NodeIPPool, outcome: Outcome,
                      nic: NicSnapshot | None = None) -> Result:
        """The outcome's status write, Events and finalizer, each at most once."""
        self.fence()
        stored = None
        if outcome.release_finalizer:
            await self.pools.remove_finalizer(pool)
            metrics.forget_pool(pool.name)
        elif outcome.status is not None:
            stored = await self.pools.apply_status(pool.name, outcome.status.operator_fields())
        for event in outcome.events:
            await self.pools.post_event(pool, str(event.type), event.reason, event.message)
        for pod_event in outcome.pod_events:
            await self.pools.post_pod_event(pod_event.namespace, pod_event.pod, pod_event.type,
                                            pod_event.reason, pod_event.message)
        if outcome.failed:
            log.warning("event=reconcile_failed pool=%s retry_in=%s message=%r", pool.name,
                        outcome.requeue_after, outcome.message)
        elif outcome.ips and not outcome.release_finalizer:
            metrics.observe_pool(pool.name, outcome.ips, pool.status.used, outcome.short)
        return Result(outcome, stored, nic)
