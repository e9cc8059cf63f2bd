"""Per-key locks: exclusive per key, parallel across keys, kept only while in use."""

from __future__ import annotations

import asyncio

from azure_cni.aio.keyed_locks import KeyedLocks


async def test_a_nic_lock_is_exclusive_and_kept_only_while_held_or_awaited():
    locks = KeyedLocks()
    inside: list[str] = []
    order: list[str] = []

    async def write(who: str) -> None:
        async with locks.hold("nic-0"):
            assert not inside, f"{who} entered while {inside} held the lock"
            inside.append(who)
            await asyncio.sleep(0)  # let the others queue up
            order.append(who)
            inside.remove(who)

    await asyncio.gather(write("a"), write("b"), write("c"))
    assert order == ["a", "b", "c"]
    assert len(locks) == 0, "a lock outlived its last writer"


async def test_different_keys_do_not_wait_for_each_other_and_waiters_are_counted():
    locks: KeyedLocks[str] = KeyedLocks()
    async with locks.hold("a"):
        async with locks.hold("b"):  # would deadlock if keys shared a lock
            assert locks.waiting("a") == 0
        queued = asyncio.create_task(_enter(locks, "a"))
        for _ in range(100):
            if locks.waiting("a"):
                break
            await asyncio.sleep(0)
        assert locks.waiting("a") == 1
    await queued
    assert len(locks) == 0


async def _enter(locks: KeyedLocks[str], key: str) -> None:
    async with locks.hold(key):
        pass
