"""When each pool is reconciled: on spec changes, on the agent's usage (debounced), on a timer.

One ``maintain`` loop per pool (a kopf daemon) owns every action on that pool, so two
reconciles of the same pool never overlap. Watch events only record the newest object and,
if something that matters changed, wake the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from azure_cni.api.nodeippool import InvalidPool, NodeIPPool
from azure_cni.api.settings import PoolDefaults
from azure_cni.operator import metrics
from azure_cni.operator.kube import KubePools
from azure_cni.operator.reconcile import PoolReconciler

log = logging.getLogger(__name__)


class RetryLater(Exception):
    """Azure asked us to wait; the caller reschedules the pool after ``delay`` seconds."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


@dataclass(frozen=True)
class _Interest:
    """The parts of a pool whose change calls for a reconcile."""

    generation: int
    used: int
    acks: frozenset[str]


def _newer(candidate: NodeIPPool, current: NodeIPPool | None) -> bool:
    if current is None:
        return True
    try:
        return int(candidate.resource_version) >= int(current.resource_version)
    except ValueError:  # opaque versions: trust arrival order
        return True


class PoolScheduler:
    """Keeps the newest view of every pool and node, and runs the per-pool loops."""

    def __init__(
        self,
        reconciler: PoolReconciler,
        pools: KubePools,
        defaults: PoolDefaults,
        *,
        drift_check_seconds: float = 60.0,
        debounce_seconds: float = 1.0,
    ) -> None:
        self.reconciler = reconciler
        self.pools = pools
        self.defaults = defaults
        self.drift_check_seconds = drift_check_seconds
        self.debounce_seconds = debounce_seconds
        self.provider_ids: dict[str, str] = {}
        self.latest: dict[str, NodeIPPool] = {}
        self._interest: dict[str, _Interest] = {}
        self._triggers: dict[str, asyncio.Event] = {}
        self._existing: set[str] = set()

    # -- nodes -----------------------------------------------------------------------------

    async def node_changed(self, name: str, uid: str, provider_id: str | None) -> None:
        """A Node appeared or changed: make sure it has a pool, wake it if its VM changed."""
        previous = self.provider_ids.get(name)
        if provider_id:
            self.provider_ids[name] = provider_id
        if name not in self._existing:
            created = await self.pools.create_pool(name, uid, self.defaults.spec_for(name))
            self._existing.add(name)
            if created:
                log.info("event=pool_created node=%s", name)
        if provider_id and previous != provider_id:
            self.wake(name)

    async def node_deleted(self, name: str) -> None:
        """The owner reference lets the garbage collector delete the pool; this is a backstop."""
        self.provider_ids.pop(name, None)
        await self.pools.delete_pool(name)

    # -- pools -----------------------------------------------------------------------------

    def pool_changed(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        try:
            pool = NodeIPPool.from_object(body)
        except InvalidPool as e:
            log.warning("event=pool_unreadable error=%r", str(e))
            return
        if deleted:
            self._forget(pool.name)
            return
        self._existing.add(pool.name)
        self._remember(pool)

    def _remember(self, pool: NodeIPPool) -> None:
        if not _newer(pool, self.latest.get(pool.name)):
            return
        self.latest[pool.name] = pool
        interest = _Interest(pool.generation, pool.status.used, pool.status.release_acks)
        if self._interest.get(pool.name) != interest:
            self._interest[pool.name] = interest
            self.wake(pool.name)

    def _forget(self, name: str) -> None:
        self.latest.pop(name, None)
        self._interest.pop(name, None)
        self._existing.discard(name)

    def wake(self, name: str) -> None:
        trigger = self._triggers.get(name)
        if trigger is not None:
            trigger.set()

    async def maintain(self, name: str, stop: asyncio.Event) -> None:
        """Reconcile one pool whenever it is woken or its timer expires, until ``stop``."""
        trigger = self._triggers.setdefault(name, asyncio.Event())
        trigger.set()
        first = True
        timeout = 0.0
        try:
            while not stop.is_set():
                woken = await _wait_either(trigger, stop, timeout)
                if stop.is_set():
                    return
                if woken and not first:
                    # let a burst of agent updates settle into one reconcile
                    await _wait_either(stop, stop, self.debounce_seconds)
                first = False
                trigger.clear()
                pool = self.latest.get(name) or await self.pools.get_pool(name)
                if pool is None:
                    return
                result = await self.reconciler.reconcile(
                    pool, self.provider_ids.get(pool.spec.node_name))
                outcome = result.outcome
                if result.stored is not None:
                    self._remember(result.stored)
                if outcome.failed and outcome.requeue_after is not None:
                    metrics.RECONCILES.labels("retry").inc()
                    raise RetryLater(outcome.message, outcome.requeue_after)
                metrics.RECONCILES.labels("done").inc()
                timeout = min(outcome.requeue_after or self.drift_check_seconds,
                              self.drift_check_seconds)
        finally:
            self._triggers.pop(name, None)


async def _wait_either(a: asyncio.Event, b: asyncio.Event, timeout: float) -> bool:
    """Wait until either event is set or ``timeout`` passes; True if one was set."""
    if a.is_set() or b.is_set():
        return True
    waiters = {asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())}
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await w
    return bool(done)
