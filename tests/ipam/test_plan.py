"""Pool sizing: the peers' cases in our fields, and the properties that keep pods safe."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from azure_cni.api.nodeippool import MAX_SECONDARY_IPS, IPState, PoolIP, PoolSpec, PoolStatus
from azure_cni.ipam.plan import Plan, apply_marks, merge_inventory, plan

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
BASE = int(ipaddress.ip_address("198.18.0.4"))


def pool(n: int, releasing: int = 0, start: int = 0) -> tuple[PoolIP, ...]:
    ips = [PoolIP(str(ipaddress.ip_address(BASE + start + i)), f"azcni-{start + i:04d}")
           for i in range(n)]
    return tuple(PoolIP(ip.address, ip.ip_configuration, IPState.RELEASING)
                 if i < releasing else ip for i, ip in enumerate(ips))


def spec(**kw: int) -> PoolSpec:
    values = {"min_ips": 0, "max_ips": 250, "batch_size": 1, "min_free_ips": 0,
              "max_free_ips": 255, "release_delay_seconds": 0}
    values.update(kw)
    return PoolSpec("node", **values)


# Cilium's calculateNeededIPs vectors (pkg/ipam/node_test.go): (available, used, preAllocate,
# minAllocate, maxAllocate) -> needed. preAllocate is our minFreeIPs, minAllocate our minIPs,
# maxAllocate our maxIPs (0 = no limit = 255), Cilium has no batches (batchSize 1).
@pytest.mark.parametrize(("available", "used", "pre", "min_", "max_", "needed"), [
    (0, 0, 0, 16, 0, 16),
    (8, 4, 8, 0, 0, 4),
    (8, 4, 8, 8, 6, 0),
    (4, 4, 8, 0, 8, 4),
])
def test_cilium_needed_vectors(available, used, pre, min_, max_, needed) -> None:
    s = spec(min_free_ips=pre, min_ips=min(min_, max_ or 255), max_ips=max_ or 255)
    p = plan(s, PoolStatus(ips=pool(available), used=used), NOW)
    assert p.add == needed


# Cilium's calculateExcessIPs vectors: (available, used, preAllocate, minAllocate,
# maxAboveWatermark) -> excess. Our release band is maxFreeIPs = preAllocate + watermark, and
# minIPs is a hard floor: Cilium would release 9 of 17 with minAllocate 16 (dropping to 8),
# and holds back everything up to minAllocate + watermark; we keep exactly the floor.
@pytest.mark.parametrize(("available", "used", "pre", "min_", "maw", "ours", "cilium"), [
    (17, 0, 8, 16, 0, 1, 9),
    (20, 0, 8, 16, 4, 4, 0),
    (21, 0, 8, 0, 4, 9, 9),
    (20, 4, 8, 0, 0, 8, 8),
])
def test_cilium_excess_vectors(available, used, pre, min_, maw, ours, cilium) -> None:
    s = spec(min_free_ips=pre, max_free_ips=pre + maw, min_ips=min_)
    p = plan(s, PoolStatus(ips=pool(available), used=used), NOW)
    assert len(p.mark) == ours
    assert ours == cilium or min_ > 0, "we only differ from Cilium where minIPs is a floor"


def test_azure_cni_v2_example_scales_in_one_step() -> None:
    """ACN's IPAM v2 doc: batch 16, buffer 0.5, 25 pods -> request 48 at once."""
    s = spec(batch_size=16, min_free_ips=8, max_free_ips=24)
    p = plan(s, PoolStatus(ips=pool(32), used=25), NOW)
    assert 32 + p.add == 48


def test_aws_minimum_and_warm_ip_targets() -> None:
    """AWS README: MINIMUM_IP_TARGET 12, WARM_IP_TARGET 2, ten pods -> 12 addresses, idle."""
    s = spec(min_ips=12, min_free_ips=2, max_free_ips=2)
    assert plan(s, PoolStatus(ips=pool(0), used=0), NOW).add == 12
    assert plan(s, PoolStatus(ips=pool(12), used=10), NOW).idle


def test_floor_is_exact_not_rounded_to_batches() -> None:
    """`kubectl scale nodeippool n --replicas=20` means at least 20, not 24."""
    s = spec(min_ips=20, batch_size=8, min_free_ips=0)
    assert plan(s, PoolStatus(ips=pool(0)), NOW).add == 20


def test_warm_pool_grows_in_whole_batches() -> None:
    s = spec(batch_size=8, min_free_ips=8, max_free_ips=24)
    p = plan(s, PoolStatus(ips=pool(16), used=9), NOW)  # free 7
    assert p.add == 8
    p = plan(s, PoolStatus(ips=pool(16), used=16), NOW)  # free 0 -> need 8 -> one batch
    assert p.add == 8
    p = plan(s, PoolStatus(ips=pool(16), used=17), NOW)  # free -1 -> need 9 -> two batches
    assert p.add == 16


# Addresses in their cooldown after a DEL are not free for the agent (issue 11, defect 1).
# The scenario: a pool of 8 (minIPs 8, warm pool of 1, batches of 4) runs 7 pods;
# 5 are deleted and 5 added within the cooldown. Counting the cooling addresses as free, the
# operator saw 6 free and did nothing while every ADD waited and failed.
@pytest.mark.parametrize(("available", "used", "cooling", "add", "marked"), [
    (8, 7, 0, 0, 0),   # 7 pods, 1 free: the warm pool of 1 is met
    (8, 2, 5, 0, 0),   # 5 deleted: 2 used, 5 cooling, 1 free: still met, nothing to release
    (8, 3, 5, 4, 0),   # the first new pod took the free one: grow a batch, not "6 free"
    (12, 7, 5, 4, 0),  # four more pods: free 0 again, grow again
    (12, 3, 5, 0, 0),  # pods gone again: 4 free while 5 cool down, nothing to release
    (12, 3, 0, 0, 1),  # cooldowns over: 9 free > maxFreeIPs 8, one is released
])
def test_cooling_addresses_are_not_free(available, used, cooling, add, marked) -> None:
    s = spec(min_ips=8, batch_size=4, min_free_ips=1, max_free_ips=8)
    p = plan(s, PoolStatus(ips=pool(available), used=used, cooling=cooling), NOW)
    assert (p.add, len(p.mark)) == (add, marked)


def test_growth_stops_at_the_subnet_and_says_so() -> None:
    s = spec(batch_size=8, min_free_ips=8)
    p = plan(s, PoolStatus(ips=pool(8), used=8), NOW, subnet_free=3)
    assert p.add == 3
    assert p.subnet_exhausted and p.short == 5
    assert "subnet has 3 free" in p.reason
    p = plan(s, PoolStatus(ips=pool(8), used=8), NOW, subnet_free=0)
    assert p.add == 0 and p.subnet_exhausted and not p.writes_nic


def test_growth_stops_at_the_nic_limit() -> None:
    s = spec(batch_size=16, min_free_ips=8, max_ips=255)
    p = plan(s, PoolStatus(ips=pool(250), used=250), NOW, nic_capacity=252)
    assert p.add == 2 and p.short == 14 and not p.subnet_exhausted


def test_release_waits_for_the_delay_then_marks_highest_addresses() -> None:
    s = spec(batch_size=8, min_free_ips=8, max_free_ips=16, release_delay_seconds=60)
    status = PoolStatus(ips=pool(32), used=4)  # free 28 > 16
    first = plan(s, status, NOW)
    assert first.mark == () and first.excess_since == NOW
    later = PoolStatus(ips=status.ips, used=4, excess_since=NOW)
    assert plan(s, later, NOW + dt.timedelta(seconds=59)).mark == ()
    p = plan(s, later, NOW + dt.timedelta(seconds=60))
    assert len(p.mark) == 12
    highest = sorted(status.ips, key=lambda ip: int(ipaddress.ip_address(ip.address)))[-12:]
    assert set(p.mark) == {ip.ip_configuration for ip in highest}
    assert p.excess_since is None and not p.writes_nic


def test_excess_that_disappears_resets_the_clock() -> None:
    s = spec(min_free_ips=2, max_free_ips=4, release_delay_seconds=60)
    p = plan(s, PoolStatus(ips=pool(8), used=6, excess_since=NOW), NOW)
    assert p.excess_since is None and p.idle


def test_only_acknowledged_releases_are_removed() -> None:
    s = spec(min_free_ips=0, max_free_ips=255)
    ips = pool(6, releasing=3)
    acks = frozenset({ips[0].ip_configuration, ips[1].ip_configuration, ips[4].ip_configuration})
    p = plan(s, PoolStatus(ips=ips, used=0, release_acks=acks), NOW)
    # ips[4] is Available: an ack for it means nothing
    assert p.remove == (ips[0].ip_configuration, ips[1].ip_configuration)


def test_removal_and_growth_share_one_write() -> None:
    s = spec(batch_size=4, min_free_ips=4, max_free_ips=8)
    ips = pool(8, releasing=2)
    acks = frozenset({ips[0].ip_configuration})
    p = plan(s, PoolStatus(ips=ips, used=6, release_acks=acks), NOW)  # 6 available, free 0
    assert p.add == 4 and p.remove == (ips[0].ip_configuration,)


def test_max_ips_lowered_below_allocation_releases_free_addresses() -> None:
    s = spec(max_ips=10, min_free_ips=0, max_free_ips=255)
    p = plan(s, PoolStatus(ips=pool(16), used=12), NOW)
    assert len(p.mark) == 4  # only the free ones; the rest go when their pods do


def test_merge_adopts_our_orphans_and_reports_drift() -> None:
    previous = pool(3, releasing=1)
    on_nic = {previous[0].ip_configuration: previous[0].address,  # releasing, still there
              previous[2].ip_configuration: previous[2].address,
              "azcni-new": "198.18.0.99"}
    inv = merge_inventory(previous, on_nic)
    assert [ip.ip_configuration for ip in inv.adopted] == ["azcni-new"]
    assert inv.vanished == (previous[1],)
    states = {ip.ip_configuration: ip.state for ip in inv.ips}
    assert states[previous[0].ip_configuration] is IPState.RELEASING
    assert states["azcni-new"] is IPState.AVAILABLE


def test_removed_release_is_not_drift() -> None:
    previous = pool(2, releasing=1)
    inv = merge_inventory(previous, {previous[1].ip_configuration: previous[1].address})
    assert inv.vanished == () and len(inv.ips) == 1


def test_marks_never_turn_releasing_back() -> None:
    ips = pool(3, releasing=1)
    marked = apply_marks(ips, [ips[2].ip_configuration])
    assert [ip.state for ip in marked] == [IPState.RELEASING, IPState.AVAILABLE,
                                           IPState.RELEASING]


# ---------------------------------------------------------------------------------------
# properties

specs = st.builds(
    lambda mn, mx, b, mf, extra, delay: PoolSpec("node", min(mn, mx), mx, b, mf, mf + extra,
                                                 delay),
    mn=st.integers(0, 40), mx=st.integers(1, MAX_SECONDARY_IPS), b=st.integers(1, 32),
    mf=st.integers(0, 40), extra=st.integers(0, 40), delay=st.sampled_from([0, 30]),
)


@st.composite
def statuses(draw: st.DrawFn) -> PoolStatus:
    n = draw(st.integers(0, 80))
    releasing = draw(st.integers(0, n))
    ips = pool(n, releasing)
    acks = draw(st.sets(st.sampled_from([ip.ip_configuration for ip in ips]), max_size=n)
                if ips else st.just(set()))
    return PoolStatus(ips=ips, used=draw(st.integers(0, n + 10)), release_acks=frozenset(acks),
                      cooling=draw(st.integers(0, n)),
                      excess_since=draw(st.sampled_from([None, NOW - dt.timedelta(hours=1)])))


@given(specs, statuses(), st.one_of(st.none(), st.integers(0, 64)), st.integers(0, 255))
@settings(max_examples=300)
def test_property_safety_and_limits(s, status, subnet_free, nic_capacity) -> None:
    p = plan(s, status, NOW, subnet_free=subnet_free, nic_capacity=nic_capacity)
    releasing = {ip.ip_configuration for ip in status.ips if ip.state is IPState.RELEASING}
    available = [ip for ip in status.ips if ip.state is IPState.AVAILABLE]
    # a used or unacknowledged address is never removed
    assert set(p.remove) <= releasing & status.release_acks
    # only Available addresses are marked, never more than are free, never below minIPs
    assert set(p.mark) <= {ip.ip_configuration for ip in available}
    assert len(p.mark) <= max(0, len(available) - status.used - status.cooling)
    assert not p.mark or len(available) - len(p.mark) >= s.min_ips
    # never beyond maxIPs, 255, the NIC's capacity or the subnet's free addresses
    after = len(status.ips) - len(p.remove) + p.add
    if p.add:
        assert after <= min(s.max_ips, MAX_SECONDARY_IPS, nic_capacity)
        assert subnet_free is None or p.add <= subnet_free
    # growth comes in whole batches unless it fills the floor exactly or hits a limit
    if p.add:
        floor_fill = s.min_ips - len(available)
        assert p.add % s.batch_size == 0 or p.add == floor_fill or p.short > 0
    assert not (p.add and p.mark), "never grow and shrink at once"


def _run_to_fixed_point(s: PoolSpec, used_count: int, start: int) -> tuple[PoolStatus, int]:
    """Simulate operator + agent with fixed usage until the plan has nothing to do."""
    status = PoolStatus(ips=pool(start))
    in_use: set[str] = set()
    counter = start
    clock = NOW
    # Demand appears as addresses do (the agent takes each new one), so growth may take one
    # step per batch up to the ceiling; a release is mark -> ack -> remove on top of that.
    steps = min(s.max_ips, MAX_SECONDARY_IPS) // s.batch_size + 10
    for step in range(steps):
        # the agent hands out lowest addresses first and acks unused releasing ones
        avail = [ip for ip in status.ips if ip.state is IPState.AVAILABLE]
        while len(in_use) < used_count and len(in_use) < len(avail):
            in_use.add(next(ip.ip_configuration for ip in avail
                            if ip.ip_configuration not in in_use))
        acks = frozenset(ip.ip_configuration for ip in status.ips
                         if ip.state is IPState.RELEASING and ip.ip_configuration not in in_use)
        status = PoolStatus(ips=status.ips, used=len(in_use), release_acks=acks,
                            excess_since=status.excess_since)
        p: Plan = plan(s, status, clock)
        if p.idle and p.excess_since is None:
            return status, step
        ips = [ip for ip in status.ips if ip.ip_configuration not in set(p.remove)]
        ips += pool(p.add, start=counter)
        counter += p.add
        status = PoolStatus(ips=apply_marks(ips, p.mark), used=status.used,
                            release_acks=status.release_acks, excess_since=p.excess_since)
        clock += dt.timedelta(seconds=s.release_delay_seconds + 1)
    raise AssertionError(f"no fixed point after {steps} steps: {status}")


@given(specs, st.integers(0, 60), st.integers(0, 60))
@settings(max_examples=300)
def test_property_fixed_usage_reaches_a_fixed_point(s, used_count, start) -> None:
    status, _ = _run_to_fixed_point(s, used_count, start)
    available = sum(ip.state is IPState.AVAILABLE for ip in status.ips)
    free = available - status.used
    ceiling = min(s.max_ips, MAX_SECONDARY_IPS)
    # at rest the warm pool is met unless a limit stops it, and there is no excess to release
    assert free >= s.min_free_ips or len(status.ips) >= ceiling
    assert available >= s.min_ips or len(status.ips) >= ceiling
    # ... and nothing is left to release (the same test plan() applies, restated)
    excess = max(free - s.max_free_ips, len(status.ips) - s.max_ips)
    assert min(excess, free, available - s.min_ips) <= 0
