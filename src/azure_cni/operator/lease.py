"""Leader election on a ``coordination.k8s.io/v1`` Lease: one operator replica acts, the
others wait to take over.

The rules (those of client-go's leader election, which every Kubernetes controller follows):

- A replica takes the Lease when nobody holds it (no holder, or the holder released it) or
  when the record has not changed for the holder's ``leaseDurationSeconds`` as *this* replica
  observed it. Expiry is judged by local observation, never by comparing the holder's
  ``renewTime`` with our clock, so clock skew between nodes does not matter.
- Every write carries the ``resourceVersion`` it read: two replicas racing for an expired
  Lease cannot both win (the second gets 409 Conflict).
- The holder renews every ``retryPeriodSeconds``. It is leader only while its last successful
  renewal is younger than ``renewDeadlineSeconds``; that deadline is shorter than the lease
  duration, so a leader that cannot renew stops writing (``Leadership.check``) before anyone
  else may take over.
- On a clean stop the holder releases the Lease (no holder, duration 1 s), so a standby takes
  over within one retry period instead of a whole lease duration.

``decide`` is the pure rule; ``LeaseStore`` the API server I/O (plain JSON);
``LeaderElector`` runs both.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from azure_cni.kubeclient import KubeApiError, KubeClient, api_path
from azure_cni.operator import metrics

log = logging.getLogger(__name__)


class NotLeader(RuntimeError):
    """This replica may not write: it does not hold the Lease (or could not renew it)."""


@dataclass(frozen=True)
class LeaseTimings:
    """client-go's defaults: 15 s lease, 10 s renew deadline, 2 s between attempts (the
    settings check ``0 < retry_period < renew_deadline < lease_duration``)."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease as read: who holds it, for how long, and the version any write must match."""

    holder: str
    duration: float
    transitions: int
    resource_version: str
    #: renewTime as the holder wrote it: only used to see that the record changed
    renew_time: str

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> LeaseRecord:
        spec = obj.get("spec") or {}
        meta = obj.get("metadata") or {}
        return cls(holder=str(spec.get("holderIdentity") or ""),
                   duration=float(spec.get("leaseDurationSeconds") or 0),
                   transitions=int(spec.get("leaseTransitions") or 0),
                   resource_version=str(meta.get("resourceVersion") or ""),
                   renew_time=str(spec.get("renewTime") or ""))


class Verdict(enum.Enum):
    TAKE = "take"        # write ourselves in as holder
    RENEW = "renew"      # we hold it: write a fresh renewTime
    WAIT = "wait"        # another replica holds it and has not let it lapse


def decide(record: LeaseRecord | None, me: str, unchanged_for: float) -> Verdict:
    """What a replica does with the Lease as read. ``unchanged_for`` is how long (seconds,
    this replica's clock) the record has looked exactly as it does now."""
    if record is None or not record.holder:
        return Verdict.TAKE
    if record.holder == me:
        return Verdict.RENEW
    if unchanged_for >= record.duration:
        return Verdict.TAKE
    return Verdict.WAIT


def micro_time(at: dt.datetime) -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds."""
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseStore(Protocol):
    """Reading and writing one Lease; writes fail with ``LeaseConflict`` on a stale version."""

    async def read(self) -> LeaseRecord | None: ...

    async def write(self, spec: Mapping[str, Any], resource_version: str | None
                    ) -> LeaseRecord: ...


class LeaseConflict(RuntimeError):
    """Someone else wrote the Lease since we read it (409)."""


class KubeLeaseStore:
    """One Lease through the API server, as plain JSON."""

    def __init__(self, api: KubeClient, namespace: str, name: str) -> None:
        self._api = api
        self.namespace = namespace
        self.name = name

    def _path(self, name: str = "") -> str:
        return api_path("coordination.k8s.io/v1", "leases", name, namespace=self.namespace)

    async def read(self) -> LeaseRecord | None:
        metrics.KUBE_REQUESTS.labels(verb="get", resource="leases").inc()
        try:
            return LeaseRecord.from_object(await self._api.get(self._path(self.name)))
        except KubeApiError as e:
            if e.status == 404:
                return None
            raise

    async def write(self, spec: Mapping[str, Any], resource_version: str | None
                    ) -> LeaseRecord:
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "labels": {"app.kubernetes.io/managed-by": "azure-cni"}},
            "spec": dict(spec)}
        try:
            if resource_version is None:
                metrics.KUBE_REQUESTS.labels(verb="create", resource="leases").inc()
                written = await self._api.create(self._path(), body)
            else:
                body["metadata"]["resourceVersion"] = resource_version
                metrics.KUBE_REQUESTS.labels(verb="update", resource="leases").inc()
                written = await self._api.replace(self._path(self.name), body)
        except KubeApiError as e:
            if e.status == 409:
                raise LeaseConflict(f"lease {self.namespace}/{self.name} changed since it was "
                                    "read") from e
            raise
        return LeaseRecord.from_object(written)


class LeaderElector:
    """Takes, holds and releases one Lease for this replica (``identity``)."""

    def __init__(self, store: LeaseStore, identity: str, timings: LeaseTimings, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.store = store
        self.identity = identity
        self.timings = timings
        self._clock = clock
        self._wall = wall
        self._record: LeaseRecord | None = None
        #: when (our clock) the record last changed, as we saw it
        self._observed_at = 0.0
        #: when (our clock) our last renewal was sent: leadership is counted from there
        self._renewed_at: float | None = None
        self._acquired_at = ""

    # -- the fence ---------------------------------------------------------------------------

    def is_leader(self) -> bool:
        return (self._renewed_at is not None
                and self._clock() - self._renewed_at < self.timings.renew_deadline)

    def check(self) -> None:
        """Raise ``NotLeader`` unless this replica may write now."""
        if not self.is_leader():
            raise NotLeader(f"{self.identity} does not hold the lease (or could not renew it "
                            f"within {self.timings.renew_deadline:g}s): not writing")

    @property
    def holder(self) -> str:
        return self._record.holder if self._record is not None else ""

    # -- one attempt -------------------------------------------------------------------------

    async def try_acquire_or_renew(self) -> bool:
        """One read and, if the rule says so, one write. True if we hold the Lease now."""
        sent = self._clock()
        record = await self.store.read()
        self._observe(record, sent)
        verdict = decide(record, self.identity, sent - self._observed_at)
        if verdict is Verdict.WAIT:
            return False
        now = micro_time(self._wall())
        taking = verdict is Verdict.TAKE
        transitions = (record.transitions if record else 0) + (1 if taking else 0)
        if taking:
            self._acquired_at = now
        spec = {"holderIdentity": self.identity,
                "leaseDurationSeconds": round(self.timings.lease_duration),
                "acquireTime": self._acquired_at or now, "renewTime": now,
                "leaseTransitions": transitions}
        try:
            written = await self.store.write(
                spec, record.resource_version if record is not None else None)
        except LeaseConflict:
            log.info("event=lease_conflict identity=%s", self.identity)
            return False
        self._observe(written, sent)
        # counted from before the read: the others judge expiry from when they saw the
        # previous record, which cannot be later than this
        self._renewed_at = sent
        if taking:
            log.info("event=lease_acquired identity=%s previous_holder=%s transitions=%d",
                     self.identity, record.holder if record else "", transitions)
        return True

    def _observe(self, record: LeaseRecord | None, now: float) -> None:
        changed = (record is None or self._record is None
                   or (record.holder, record.renew_time, record.resource_version)
                   != (self._record.holder, self._record.renew_time,
                       self._record.resource_version))
        if changed:
            self._observed_at = now
        self._record = record

    # -- the loops ---------------------------------------------------------------------------

    async def acquire(self) -> None:
        """Wait, as a standby, until this replica holds the Lease."""
        announced = ""
        while True:
            try:
                if await self.try_acquire_or_renew():
                    metrics.IS_LEADER.set(1)
                    return
            except (KubeApiError, OSError, TimeoutError) as e:
                log.warning("event=lease_read_failed identity=%s error=%r", self.identity, e)
            if self.holder != announced:
                announced = self.holder
                log.info("event=standby identity=%s leader=%s", self.identity, announced)
            await asyncio.sleep(self.timings.retry_period)

    async def hold(self) -> None:
        """Renew every retry period; return when leadership is lost (the renewal deadline
        passed, or another replica holds the Lease)."""
        while True:
            await asyncio.sleep(self.timings.retry_period)
            try:
                held = await asyncio.wait_for(self.try_acquire_or_renew(),
                                              timeout=self.timings.retry_period * 2)
            except (KubeApiError, OSError, TimeoutError) as e:
                log.warning("event=lease_renew_failed identity=%s error=%r", self.identity, e)
                held = self.is_leader()
            if not held or not self.is_leader():
                self._renewed_at = None
                metrics.IS_LEADER.set(0)
                log.error("event=leadership_lost identity=%s holder=%s", self.identity,
                          self.holder)
                return

    async def release(self) -> None:
        """Give the Lease up so that a standby takes over at once (clean stop only)."""
        if self._record is None or self._record.holder != self.identity:
            return
        self._renewed_at = None
        metrics.IS_LEADER.set(0)
        try:
            # read first (as client-go does): the stop cancels the renewal loop, and a renewal
            # the API server applied but whose answer never arrived left our version behind
            record = await self.store.read()
            if record is None or record.holder != self.identity:
                return
            now = micro_time(self._wall())
            spec = {"holderIdentity": "", "leaseDurationSeconds": 1,
                    "acquireTime": self._acquired_at or now, "renewTime": now,
                    "leaseTransitions": record.transitions}
            await self.store.write(spec, record.resource_version)
        except (LeaseConflict, KubeApiError, OSError, TimeoutError) as e:
            log.warning("event=lease_release_failed identity=%s error=%r", self.identity, e)
            return
        log.info("event=lease_released identity=%s", self.identity)
