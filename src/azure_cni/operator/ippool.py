"""Reconciling one NodeIPPool: observe the NIC, plan, apply in one NIC write, write status.

Everything here is testable without kopf: the Azure side is the ``AzureNetwork`` port, the
Kubernetes side a ``PoolWriter``. ``handlers.py`` only translates outcomes into kopf's terms.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from azure_cni.api.nodeippool import (
    IPCONFIG_PREFIX,
    MAX_SECONDARY_IPS,
    Condition,
    ConditionType,
    InvalidPool,
    IPState,
    NicInfo,
    NodeIPPool,
    PoolIP,
    PoolStatus,
    set_condition,
    utcnow,
)
from azure_cni.cloud.port import (
    AddressInUse,
    AuthFailed,
    AzureNetwork,
    CloudError,
    Conflict,
    InvalidProviderID,
    NewIPConfiguration,
    NicLimitExceeded,
    NicSnapshot,
    NotFound,
    SubnetFull,
    SubnetInfo,
    Throttled,
    Unsupported,
    VMRef,
)
from azure_cni.cloud.providerid import parse_provider_id
from azure_cni.ipam.plan import Inventory, Plan, apply_marks, merge_inventory, plan
from azure_cni.operator import metrics
from azure_cni.operator.kube import PoolWriter

log = logging.getLogger(__name__)

NORMAL, WARNING = "Normal", "Warning"


@dataclass(frozen=True)
class Outcome:
    """How a reconcile ended, in terms the caller can schedule on."""

    #: Azure (or a conflict) asked us to wait this long before trying again
    retry_after: float | None = None
    #: nothing failed, but come back after this long (a release delay is running)
    requeue_after: float | None = None
    message: str = ""
    #: the pool as stored after our status write, when there was one
    pool: NodeIPPool | None = None


def new_ipconfig_name() -> str:
    """A fresh ipConfiguration name: ours by its prefix, never reused."""
    return f"{IPCONFIG_PREFIX}{secrets.token_hex(5)}"


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


def _ours(nic: NicSnapshot) -> dict[str, str]:
    return {c.name: c.address for c in nic.secondary(IPCONFIG_PREFIX)
            if c.succeeded and c.address}


def _summary(addresses: Iterable[str], limit: int = 8) -> str:
    items = list(addresses)
    text = ", ".join(items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


class PoolReconciler:
    """Keeps each node's NIC pool at its planned size. One instance serves every pool."""

    def __init__(
        self,
        azure: AzureNetwork,
        pools: PoolWriter,
        *,
        max_concurrency: int = 20,
        clock: Callable[[], dt.datetime] = utcnow,
        subnet_ttl: float = 10.0,
    ) -> None:
        self.azure = azure
        self.pools = pools
        self.subnets = SubnetCache(azure, subnet_ttl)
        self._slots = asyncio.Semaphore(max_concurrency)
        self._clock = clock

    # -- the main loop body ----------------------------------------------------------------

    async def reconcile(self, pool: NodeIPPool, provider_id: str | None) -> Outcome:
        """Observe, plan, apply and record one pool. Never raises for Azure errors."""
        try:
            pool.spec.validate()
        except InvalidPool as e:
            return Outcome(message=str(e), pool=await self._fail(pool, "InvalidSpec", str(e)))
        if not provider_id:
            msg = f"node {pool.spec.node_name} has no spec.providerID (yet); waiting for it"
            return Outcome(message=msg, pool=await self._fail(pool, "NoProviderID", msg,
                                                              warn=False))
        try:
            vm = parse_provider_id(provider_id)
        except InvalidProviderID as e:
            return Outcome(message=str(e),
                           pool=await self._fail(pool, "InvalidProviderID", str(e)))
        async with self._slots:
            try:
                nic = await self._observe_nic(pool, vm)
                subnet = await self.subnets.get(nic.primary.subnet_id)
            except CloudError as e:
                return await self._azure_failed(pool, e, "reading the NIC")
            return await self._converge(pool, nic, subnet)

    async def _observe_nic(self, pool: NodeIPPool, vm: VMRef) -> NicSnapshot:
        """The node's NIC: by its known ID (one read), else through its VM (two)."""
        known = pool.status.nic.id if pool.status.nic else ""
        if known:
            try:
                nic = await self.azure.get_nic(known)
            except NotFound:
                pass  # the NIC was replaced: find the VM's current one
            else:
                if nic.vm_id.lower() == vm.id.lower():
                    return nic
        return await self.azure.get_vm_nic(vm)

    async def _converge(self, pool: NodeIPPool, nic: NicSnapshot, subnet: SubnetInfo
                        ) -> Outcome:
        now = self._clock()
        if any(not c.succeeded for c in nic.secondary(IPCONFIG_PREFIX)):
            # an earlier write (ours, before a restart) is still being provisioned
            return Outcome(retry_after=2.0, message=f"NIC {nic.name} is still updating")
        inventory = merge_inventory(pool.status.ips, _ours(nic))
        # Addresses that vanished behind our back are put back on the NIC, same name and
        # same address (Static), so the pods using them keep working.
        restore = tuple(PoolIP(ip.address, ip.ip_configuration, IPState.AVAILABLE)
                        for ip in inventory.vanished)
        planned = replace(pool.status, ips=tuple(sorted(
            inventory.ips + restore, key=lambda ip: int(ipaddress.ip_address(ip.address)))))
        others = len(nic.secondary()) - len(nic.secondary(IPCONFIG_PREFIX))
        p = plan(pool.spec, planned, now,
                 subnet_free=subnet.free_addresses, nic_capacity=MAX_SECONDARY_IPS - others)
        adds = [NewIPConfiguration(ip.ip_configuration, ip.address) for ip in restore]
        adds += [NewIPConfiguration(new_ipconfig_name()) for _ in range(p.add)]
        written = nic
        if adds or p.remove:
            started = time.monotonic()
            try:
                written = await self.azure.update_ip_configurations(nic.id, adds, p.remove)
            except AddressInUse as e:
                # a vanished address was taken by someone else: give it up and say so
                for ip in restore:
                    await self.pools.post_event(
                        pool, WARNING, "AddressLost",
                        f"{ip.address} ({ip.ip_configuration}) was removed from NIC {nic.name} "
                        f"outside azure-cni and is now used elsewhere; pods using it lost "
                        f"their address: {e}")
                written_pool = await self._write_status(pool, nic, subnet, ips=inventory.ips, p=p,
                                                        note=str(e))
                return Outcome(retry_after=1.0, message=str(e), pool=written_pool)
            except CloudError as e:
                metrics.observe_write(p.add, len(p.remove), time.monotonic() - started, e)
                return await self._azure_failed(pool, e, "writing the NIC", plan_=p)
            metrics.observe_write(p.add, len(p.remove), time.monotonic() - started, None)
            self.subnets.consumed(nic.primary.subnet_id, len(adds) - len(p.remove))
        after = merge_inventory(planned.ips, _ours(written))
        ips = apply_marks(after.ips, p.mark)
        await self._report(pool, nic_name=nic.name, inventory=inventory, restore=restore, p=p,
                           written=written)
        stored = await self._write_status(pool, written, subnet, ips=ips, p=p)
        metrics.observe_pool(pool.name, ips, pool.status.used, p.short)
        if p.excess_since is not None:
            elapsed = (now - p.excess_since).total_seconds()
            return Outcome(requeue_after=max(1.0, pool.spec.release_delay_seconds - elapsed),
                           message=p.reason, pool=stored)
        return Outcome(message=p.reason, pool=stored)

    async def release_all(self, pool: NodeIPPool, provider_id: str | None) -> None:
        """Remove every ipConfiguration of ours from the node's NIC (pool or node deleted).

        A VM or NIC that is already gone counts as done. Other Azure errors propagate, so the
        caller keeps its finalizer and retries.
        """
        nic_id = pool.status.nic.id if pool.status.nic else ""
        try:
            if not nic_id and provider_id:
                nic_id = (await self.azure.get_vm_nic(parse_provider_id(provider_id))).id
            if not nic_id:
                log.info("event=release_all_skipped pool=%s reason=no_nic_known", pool.name)
                return
            names = [ip.ip_configuration for ip in pool.status.ips]
            nic = await self.azure.get_nic(nic_id)
            names = sorted(set(names) | set(_ours(nic)) |
                           {c.name for c in nic.secondary(IPCONFIG_PREFIX)})
            if names:
                await self.azure.update_ip_configurations(nic_id, remove=names)
                metrics.RELEASED.inc(len(names))
                log.info("event=released_all pool=%s nic=%s count=%d", pool.name, nic_id,
                         len(names))
        except (NotFound, InvalidProviderID):
            log.info("event=release_all_done pool=%s reason=vm_or_nic_gone", pool.name)
        metrics.forget_pool(pool.name)

    # -- status, events and errors ---------------------------------------------------------

    async def _report(self, pool: NodeIPPool, *, nic_name: str, inventory: Inventory,
                      restore: tuple[PoolIP, ...], p: Plan, written: NicSnapshot) -> None:
        adopted = inventory.adopted
        if adopted:
            await self.pools.post_event(
                pool, NORMAL, "Adopted",
                f"found {len(adopted)} azure-cni ipConfigurations on NIC {nic_name} not yet in "
                f"the pool (an interrupted earlier write): {_summary(a.address for a in adopted)}")
        if restore:
            await self.pools.post_event(
                pool, WARNING, "DriftRepaired",
                f"re-added {len(restore)} ipConfigurations removed from NIC {nic_name} outside "
                f"azure-cni: {_summary(f'{r.address} ({r.ip_configuration})' for r in restore)}")
        if p.add:
            before = set(_ours(written)) - {r.ip_configuration for r in restore}
            known = {ip.ip_configuration for ip in pool.status.ips}
            new = sorted((a for n, a in _ours(written).items() if n in before - known),
                         key=ipaddress.ip_address)
            await self.pools.post_event(
                pool, NORMAL, "Allocated",
                f"added {p.add} addresses to NIC {nic_name} in one write ({p.reason}): "
                f"{_summary(new)}")
        if p.mark:
            await self.pools.post_event(
                pool, NORMAL, "Releasing",
                f"marked {len(p.mark)} free addresses for release ({p.reason}); they leave the "
                f"NIC once the node agent confirms they are unused")
        if p.remove:
            await self.pools.post_event(
                pool, NORMAL, "Released",
                f"removed {len(p.remove)} acknowledged addresses from NIC {nic_name}")
        if p.subnet_exhausted and not _cond_true(pool, ConditionType.SUBNET_EXHAUSTED):
            await self.pools.post_event(pool, WARNING, "SubnetExhausted",
                                        f"the subnet cannot supply more addresses: {p.reason}")

    async def _write_status(self, pool: NodeIPPool, nic: NicSnapshot, subnet: SubnetInfo, *,
                            ips: tuple[PoolIP, ...], p: Plan, note: str = ""
                            ) -> NodeIPPool | None:
        conditions = set_condition(pool.status.conditions, Condition(
            ConditionType.PROVISIONED, True, "NicFound",
            f"NIC {nic.name}, primary {nic.primary.address}, subnet {subnet.cidr}",
            observed_generation=pool.generation))
        if note:
            ready = Condition(ConditionType.READY, False, "NicWriteFailed", note)
        elif p.short > 0:
            ready = Condition(ConditionType.READY, False, "Limited",
                              f"{p.short} addresses short of the warm target: {p.reason}")
        elif p.add > 0:
            ready = Condition(ConditionType.READY, True, "Scaled", p.reason)
        else:
            ready = Condition(ConditionType.READY, True, "WarmPoolReady",
                              p.reason or "the pool holds its warm target")
        conditions = set_condition(conditions, replace(ready, observed_generation=pool.generation))
        conditions = set_condition(conditions, Condition(
            ConditionType.SUBNET_EXHAUSTED, p.subnet_exhausted,
            "SubnetFull" if p.subnet_exhausted else "SubnetHasSpace",
            f"subnet {subnet.cidr}: {subnet.free_addresses} addresses free"
            if subnet.free_addresses is not None else f"subnet {subnet.cidr}"))
        status = PoolStatus(
            nic=NicInfo(nic.id, nic.primary.address or "", nic.primary.subnet_id, subnet.cidr,
                        subnet.vnet_address_space),
            ips=ips, excess_since=p.excess_since, observed_generation=pool.generation,
            conditions=conditions)
        return await self._apply_if_changed(pool, status)

    async def _apply_if_changed(self, pool: NodeIPPool, status: PoolStatus
                                ) -> NodeIPPool | None:
        fields = status.operator_fields()
        if fields == pool.status.operator_fields() and (
                pool.status.observed_generation == pool.generation):
            return None
        return await self.pools.apply_status(pool.name, fields)

    async def _fail(self, pool: NodeIPPool, reason: str, message: str, *, warn: bool = True
                    ) -> NodeIPPool | None:
        """Record that the pool cannot be provisioned (and why) without touching its ips."""
        previous = pool.status.condition(ConditionType.PROVISIONED)
        conditions = set_condition(pool.status.conditions, Condition(
            ConditionType.PROVISIONED, False, reason, message, observed_generation=pool.generation))
        conditions = set_condition(conditions, Condition(
            ConditionType.READY, False, reason, message, observed_generation=pool.generation))
        status = replace(pool.status, conditions=conditions,
                         observed_generation=pool.generation)
        stored = await self._apply_if_changed(pool, status)
        if warn and (previous is None or previous.reason != reason or previous.status):
            await self.pools.post_event(pool, WARNING, reason, message)
        log.warning("event=pool_not_provisioned pool=%s reason=%s message=%r", pool.name,
                    reason, message)
        return stored

    async def _azure_failed(self, pool: NodeIPPool, error: CloudError, doing: str,
                            plan_: Plan | None = None) -> Outcome:
        detail = f"Azure refused {doing}: {error}"
        metrics.observe_azure_error(error)
        if isinstance(error, Throttled):
            await self.pools.post_event(pool, WARNING, "AzureThrottled",
                                        f"{detail}; retrying in {error.retry_after:.0f}s")
            return Outcome(retry_after=max(1.0, error.retry_after), message=detail)
        if isinstance(error, Conflict):
            return Outcome(retry_after=5.0, message=detail)
        if isinstance(error, SubnetFull):
            conditions = set_condition(pool.status.conditions, Condition(
                ConditionType.SUBNET_EXHAUSTED, True, "SubnetFull", str(error)))
            conditions = set_condition(conditions, Condition(
                ConditionType.READY, False, "SubnetFull", detail,
                observed_generation=pool.generation))
            stored = await self._apply_if_changed(pool, replace(pool.status,
                                                                conditions=conditions))
            if not _cond_true(pool, ConditionType.SUBNET_EXHAUSTED):
                await self.pools.post_event(pool, WARNING, "SubnetExhausted", detail)
            if pool.status.nic is not None:
                self.subnets.forget(pool.status.nic.subnet_id)
            # no retry storm: a subnet frees up slowly (minutes), look again in a minute
            return Outcome(retry_after=60.0, message=detail, pool=stored)
        reason, delay = {
            NicLimitExceeded: ("NicLimit", 300.0),
            NotFound: ("NotFound", 60.0),
            AuthFailed: ("AzureAuthFailed", 120.0),
            Unsupported: ("Unsupported", None),
        }.get(type(error), ("AzureError", 30.0))
        stored = await self._fail(pool, reason, detail)
        return Outcome(retry_after=delay, message=detail, pool=stored)


def _cond_true(pool: NodeIPPool, ctype: ConditionType) -> bool:
    c = pool.status.condition(ctype)
    return c is not None and c.status
