"""Choosing addresses and counting the pool (pure), and the allocator's ordering guarantee."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from azure_cni.agent.allocator import Allocator, choose_address, pool_usage
from azure_cni.api.attachment import AttachmentKey
from azure_cni.api.nodeippool import IPState, NodeIPPool, PoolIP, PoolSpec, PoolStatus
from azure_cni.ipam.store import Assignment, Clock, Release

A, R = IPState.AVAILABLE, IPState.RELEASING


def ips(*entries: tuple[str, IPState]) -> tuple[PoolIP, ...]:
    return tuple(PoolIP(a, "azcni-" + a.replace(".", "-"), s) for a, s in entries)


def held(*addresses: str) -> list[Assignment]:
    return [Assignment(AttachmentKey(f"c{i}", "eth0"), a, "n", f"azv{i}", "", 0.0)
            for i, a in enumerate(addresses)]


NOW = 1000.0


@pytest.mark.parametrize(("pool", "taken", "released", "expected"), [
    (ips(), set(), {}, None),
    (ips(("10.0.0.1", A)), set(), {}, "10.0.0.1"),
    (ips(("10.0.0.1", A), ("10.0.0.2", A)), {"10.0.0.1"}, {}, "10.0.0.2"),
    # never hand out an address being released
    (ips(("10.0.0.1", R), ("10.0.0.2", A)), set(), {}, "10.0.0.2"),
    (ips(("10.0.0.1", R)), set(), {}, None),
    # cooling down: skipped until its time is over
    (ips(("10.0.0.1", A)), set(), {"10.0.0.1": Release(990.0, 1020.0)}, None),
    (ips(("10.0.0.1", A)), set(), {"10.0.0.1": Release(900.0, 930.0)}, "10.0.0.1"),
    # never used before wins over released long ago; then least recently released
    (ips(("10.0.0.1", A), ("10.0.0.2", A)), set(), {"10.0.0.1": Release(1.0, 2.0)},
     "10.0.0.2"),
    (ips(("10.0.0.1", A), ("10.0.0.2", A)), set(),
     {"10.0.0.1": Release(500.0, 530.0), "10.0.0.2": Release(400.0, 430.0)}, "10.0.0.2"),
])
def test_choose_address(pool, taken, released, expected) -> None:
    assert choose_address(pool, frozenset(taken), released, NOW) == expected


def pool_of(*entries: tuple[str, IPState]) -> NodeIPPool:
    return NodeIPPool("n1", PoolSpec("n1"), PoolStatus(ips=ips(*entries)))


def test_pool_usage_counts_and_acks() -> None:
    pool = pool_of(("10.0.0.1", A), ("10.0.0.2", A), ("10.0.0.3", A), ("10.0.0.4", R),
                   ("10.0.0.5", R), ("10.0.0.6", R))
    usage = pool_usage(pool, held("10.0.0.1", "10.0.0.5", "10.9.9.9"),
                       {"10.0.0.2": Release(990.0, 1020.0), "10.0.0.6": Release(990.0, 1020.0)},
                       NOW)
    assert (usage.allocated, usage.used, usage.free, usage.releasing, usage.cooling) == \
        (6, 3, 1, 3, 1)
    # .4 is unused: acked; .5 is in use and .6 cooling down: not yet
    assert usage.release_acks == {"azcni-10-0-0-4"}
    assert usage.outside_pool == ("10.9.9.9",)
    # in 20 s the cooldowns of .2 and .6 end: cooling and the acks change without an event
    assert usage.cooldown_ends_in == 20.0
    assert pool_usage(pool, held(), {}, NOW).cooldown_ends_in is None


def test_pool_usage_without_a_pool() -> None:
    usage = pool_usage(None, held("10.0.0.1"), {}, NOW)
    assert not usage.known and usage.free == 0 and usage.used == 1


async def test_allocator_assigns_once_per_key_and_sees_pool_updates(tmp_path: Path) -> None:
    clock = [NOW]
    allocator = Allocator(tmp_path / "ipam.db", cooldown_seconds=30,
                          clock=Clock(since_boot=lambda: clock[0]))
    await allocator.open()
    try:
        key = AttachmentKey("c1", "eth0")
        assert await allocator.assign(key, "n", "azv1", "") == (None, False), "no pool yet"
        await allocator.set_pool(pool_of(("10.0.0.1", A), ("10.0.0.2", A)))
        first, created = await allocator.assign(key, "n", "azv1", "")
        assert created and first is not None and first.address == "10.0.0.1"
        again, created = await allocator.assign(key, "n", "azv1", "")
        assert again == first and not created
        await allocator.set_pool(pool_of(("10.0.0.1", A), ("10.0.0.2", R)))
        other, _ = await allocator.assign(AttachmentKey("c2", "eth0"), "n", "azv2", "")
        assert other is None, "the only other address is being released"
        assert (await allocator.usage()).release_acks == {"azcni-10-0-0-2"}
        await allocator.release(key)
        usage = await allocator.usage()
        assert (usage.used, usage.cooling, usage.free) == (0, 1, 0)
        clock[0] += 31
        assert (await allocator.usage()).free == 1
    finally:
        await allocator.close()


async def test_an_address_that_changes_under_a_known_ipconfig_name(tmp_path: Path) -> None:
    """Somebody changes the private IP of ipconfig X on the NIC; the operator's next write
    shows X with the new address. The pod holding the old one keeps it (it is never handed
    out again while held), the new one is free, and X's acknowledgement follows the address
    X has now."""
    x, y = "azcni-x", "azcni-y"

    def pool(*entries: tuple[str, str, IPState]) -> NodeIPPool:
        return NodeIPPool("n1", PoolSpec("n1"), PoolStatus(
            ips=tuple(PoolIP(a, name, state) for a, name, state in entries)))

    allocator = Allocator(tmp_path / "ipam.db", cooldown_seconds=0)
    await allocator.open()
    try:
        await allocator.set_pool(pool(("10.0.0.1", x, A), ("10.0.0.2", y, A)))
        first, _ = await allocator.assign(AttachmentKey("c1", "eth0"), "n", "azv1", "")
        assert first is not None and first.address == "10.0.0.1"
        await allocator.set_pool(pool(("10.0.0.9", x, A), ("10.0.0.2", y, A)))
        usage = await allocator.usage()
        assert (usage.used, usage.free, usage.outside_pool) == (1, 2, ("10.0.0.1",))
        got = set()
        for n in (2, 3, 4):
            made, _ = await allocator.assign(AttachmentKey(f"c{n}", "eth0"), "n", f"azv{n}", "")
            got.add(made.address if made else None)
        assert got == {"10.0.0.9", "10.0.0.2", None}, "never 10.0.0.1, which c1 still holds"
        # X is marked for release while its new address is in use: no acknowledgement ...
        await allocator.set_pool(pool(("10.0.0.9", x, R), ("10.0.0.2", y, A)))
        assert (await allocator.usage()).release_acks == frozenset()
        holder = next(a.key for a in await allocator.assignments() if a.address == "10.0.0.9")
        await allocator.release(holder)
        # ... and once that address is free X is acknowledged, c1's old address or not
        assert (await allocator.usage()).release_acks == {x}
    finally:
        await allocator.close()


# -- blocks (issue 14) --------------------------------------------------------------------------

#: two /28 blocks of the subnet 10.0.0.0/24 (.16/28 and .32/28): every address is the pod's
BLOCKS = (PoolIP("10.0.0.16", "azcni-b1", A, 28), PoolIP("10.0.0.32", "azcni-b2", A, 28))


def block_pool(*entries: PoolIP) -> NodeIPPool:
    return NodeIPPool("n1", PoolSpec("n1"), PoolStatus(ips=entries))


def test_a_block_is_acked_only_when_every_address_in_it_is_unused() -> None:
    """The operator marked block 2 while a pod still used one of its 16 addresses."""
    marked = (BLOCKS[0], PoolIP("10.0.0.32", "azcni-b2", R, 28))
    expanded = NodeIPPool("n1", PoolSpec("n1"),
                          block_pool(*marked).status.by_address())
    half_used = pool_usage(expanded, held("10.0.0.1", "10.0.0.40"), {}, NOW)
    assert half_used.release_acks == frozenset()
    assert (half_used.allocated, half_used.releasing, half_used.free) == (32, 16, 16)
    cooling = pool_usage(expanded, held(), {"10.0.0.47": Release(990.0, 1020.0)}, NOW)
    assert cooling.release_acks == frozenset(), "an address still cooling holds the block"
    assert pool_usage(expanded, held(), {}, NOW).release_acks == {"azcni-b2"}


async def test_the_agent_hands_out_single_addresses_from_its_blocks(tmp_path: Path) -> None:
    allocator = Allocator(tmp_path / "ipam.db", cooldown_seconds=0)
    await allocator.open()
    try:
        await allocator.set_pool(block_pool(*BLOCKS))
        got = []
        for n in range(33):
            made, _ = await allocator.assign(AttachmentKey(f"c{n}", "eth0"), "n", f"azv{n}", "")
            got.append(made.address if made else None)
        assert got[:32] == [f"10.0.0.{i}" for i in range(16, 48)], "lowest block first"
        assert got[32] is None, "32 addresses, 32 pods"
    finally:
        await allocator.close()


async def test_agent_restart_with_blocks_in_the_store(tmp_path: Path) -> None:
    """Pods on both blocks, the agent restarts on the same store: every assignment is still
    there, nothing is handed out twice, and the block the operator marks meanwhile is acked
    only once its last pod is gone."""
    store = tmp_path / "ipam.db"
    first = Allocator(store, cooldown_seconds=0)
    await first.open()
    try:
        await first.set_pool(block_pool(*BLOCKS))
        before = {}
        for n in range(20):
            made, _ = await first.assign(AttachmentKey(f"c{n}", "eth0"), "n", f"azv{n}", "")
            assert made is not None
            before[made.key] = made.address
    finally:
        await first.close()

    second = Allocator(store, cooldown_seconds=0)
    await second.open()
    try:
        await second.set_pool(block_pool(BLOCKS[0], PoolIP("10.0.0.32", "azcni-b2", R, 28)))
        assert {a.key: a.address for a in await second.assignments()} == before
        # block 2 (.32-.47) holds c16..c19: no ack, and none of its addresses is handed out
        assert (await second.usage()).release_acks == frozenset()
        extra, _ = await second.assign(AttachmentKey("new", "eth0"), "n", "azvnew", "")
        assert extra is None, "block 1 is full and block 2 is being released"
        for key, address in before.items():
            if ipaddress.ip_address(address) >= ipaddress.ip_address("10.0.0.32"):
                await second.release(key)
        assert (await second.usage()).release_acks == {"azcni-b2"}
    finally:
        await second.close()


def test_blocks_with_no_address_used_or_cooling_are_reported_idle() -> None:
    pool = NodeIPPool("n1", PoolSpec("n1"), block_pool(*BLOCKS).status.by_address())
    names = frozenset({"azcni-b1", "azcni-b2"})
    assert pool_usage(pool, held(), {}, NOW, blocks=names).idle_blocks == names
    assert pool_usage(pool, held("10.0.0.40"), {}, NOW, blocks=names).idle_blocks == {"azcni-b1"}
    cooling = {"10.0.0.17": Release(990.0, 1020.0)}
    assert pool_usage(pool, held(), cooling, NOW, blocks=names).idle_blocks == {"azcni-b2"}
