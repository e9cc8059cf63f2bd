"""Leader election: the pure rule, and two electors sharing one Lease on a manual clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from azure_cni.operator.lease import (
    LeaderElector,
    LeaseConflict,
    LeaseRecord,
    LeaseTimings,
    NotLeader,
    Verdict,
    decide,
)

TIMINGS = LeaseTimings(lease_duration=15, renew_deadline=10, retry_period=2)


def record(holder: str, duration: float = 15) -> LeaseRecord:
    return LeaseRecord(holder, duration, 0, "1", "2026-12-07T00:00:00.000000Z")


@pytest.mark.parametrize(("lease", "unchanged_for", "verdict"), [
    (None, 0, Verdict.TAKE),                       # no Lease yet
    (record(""), 0, Verdict.TAKE),                 # released by its holder
    (record("me"), 0, Verdict.RENEW),              # ours
    (record("me"), 100, Verdict.RENEW),            # ours, even if we were slow
    (record("other"), 0, Verdict.WAIT),            # held
    (record("other"), 14.9, Verdict.WAIT),         # held, about to lapse
    (record("other"), 15, Verdict.TAKE),           # not renewed for its duration
    (record("other", duration=1), 1, Verdict.TAKE),  # released with duration 1
])
def test_the_rule(lease: LeaseRecord | None, unchanged_for: float, verdict: Verdict) -> None:
    assert decide(lease, "me", unchanged_for) is verdict


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class MemoryLease:
    """One Lease as the API server keeps it: a version that every write must match."""

    obj: dict[str, Any] | None = None
    version: int = 0
    down: bool = False
    writes: list[str] = field(default_factory=list)

    async def read(self) -> LeaseRecord | None:
        if self.down:
            raise OSError("API server unreachable")
        return LeaseRecord.from_object(self.obj) if self.obj is not None else None

    async def write(self, spec: Mapping[str, Any], resource_version: str | None
                    ) -> LeaseRecord:
        if self.down:
            raise OSError("API server unreachable")
        current = str(self.version) if self.obj is not None else None
        if resource_version != current:
            raise LeaseConflict("stale")
        self.version += 1
        self.obj = {"metadata": {"resourceVersion": str(self.version)}, "spec": dict(spec)}
        self.writes.append(str(spec["holderIdentity"]))
        return LeaseRecord.from_object(self.obj)


def elector(lease: MemoryLease, name: str, clock: Clock) -> LeaderElector:
    return LeaderElector(lease, name, TIMINGS, clock=clock,
                         wall=lambda: dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
                         + dt.timedelta(seconds=clock.now))


async def test_one_replica_leads_and_the_other_takes_over_only_after_the_lease_lapses(
        ) -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    assert a.is_leader() and not b.is_leader() and b.holder == "a"
    for _ in range(10):  # a renews every 2 s: b never gets it
        clock.now += 2
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
    # a dies (kill -9): nothing renews. b waits the whole lease duration from the last
    # change it saw, then takes over
    died = clock.now
    while not await b.try_acquire_or_renew():
        clock.now += 2
    assert clock.now - died >= 15
    assert b.is_leader() and lease.writes[-1] == "b"
    assert LeaseRecord.from_object(lease.obj or {}).transitions == 2


async def test_a_leader_that_cannot_renew_stops_writing_before_anyone_may_take_over() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    a.check()  # may write
    lease.down = True  # a is cut off from the API server; b is not (b reads the last state)
    clock.now += 9.9
    a.check()
    clock.now += 0.2  # 10.1 s after a's last renewal: its renew deadline passed
    with pytest.raises(NotLeader):
        a.check()
    lease.down = False
    # b has seen no change for 10.1 s: not yet; a no longer writes, and b waits until 15 s
    assert not await b.try_acquire_or_renew()
    clock.now += 5
    assert await b.try_acquire_or_renew()
    assert not a.is_leader() and b.is_leader()


async def test_a_released_lease_is_taken_at_once() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert not a.is_leader()
    with pytest.raises(NotLeader):
        a.check()
    clock.now += 0.1
    assert await b.try_acquire_or_renew()


async def test_a_renewal_cut_short_at_shutdown_does_not_keep_the_lease_from_being_released(
        ) -> None:
    """The stop cancels the renewal loop: a renewal the API server applied but whose answer
    never arrived leaves the elector with an old resourceVersion. The release still goes
    through (as client-go's, it reads the Lease first)."""
    lease, clock = MemoryLease(), Clock()
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    assert await a.try_acquire_or_renew()
    record = await lease.read()
    assert record is not None
    await lease.write({"holderIdentity": "a", "leaseDurationSeconds": 15,
                       "renewTime": "later"}, record.resource_version)  # answer lost
    await a.release()
    assert lease.writes[-1] == "", "released"
    clock.now += 0.1
    assert await b.try_acquire_or_renew()


async def test_two_replicas_racing_for_a_lapsed_lease_cannot_both_win() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b, c = (elector(lease, n, clock) for n in "abc")
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    assert not await c.try_acquire_or_renew()
    clock.now += 16
    # b and c read the same lapsed record; whoever writes second gets a conflict
    read_b = await lease.read()
    assert read_b is not None
    assert await b.try_acquire_or_renew()
    stale = LeaseRecord.from_object({"metadata": {"resourceVersion": read_b.resource_version},
                                     "spec": {"holderIdentity": "c"}})
    with pytest.raises(LeaseConflict):
        await lease.write({"holderIdentity": "c"}, stale.resource_version)
    assert not await c.try_acquire_or_renew()  # c now sees b's fresh record
    assert b.is_leader() and not c.is_leader()


async def test_a_new_process_does_not_trust_the_lease_its_previous_self_held() -> None:
    """A restarted container has a new identity: it waits like any standby."""
    lease, clock = MemoryLease(), Clock()
    assert await elector(lease, "pod-1_aaaa", clock).try_acquire_or_renew()
    again = elector(lease, "pod-1_bbbb", clock)
    assert not await again.try_acquire_or_renew()
    clock.now += 15
    assert await again.try_acquire_or_renew()
