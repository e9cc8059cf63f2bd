"""The work queue keeps client-go's promises, on a hand-driven clock."""

from __future__ import annotations

import asyncio

import pytest

from azure_cni.operator.workqueue import ShutDown, WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_adds_of_a_waiting_key_coalesce() -> None:
    q = WorkQueue()
    for _ in range(50):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    assert [await q.get(), await q.get()] == ["a", "b"]


async def test_a_key_is_never_handed_to_two_workers_at_once() -> None:
    q = WorkQueue()
    q.add("a")
    assert await q.get() == "a"
    q.add("a")  # it changed while a worker holds it
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(q.get(), 0.05)
    q.done("a")
    assert await asyncio.wait_for(q.get(), 1) == "a", "the re-add was lost"
    q.done("a")
    assert len(q) == 0


async def test_delayed_adds_fall_due_and_the_earliest_wins() -> None:
    clock = Clock()
    q = WorkQueue(clock)
    q.add_after("a", 30)
    q.add_after("a", 10)
    q.add_after("a", 60)
    q.add_after("b", 20)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(q.get(), 0.05)
    clock.now += 10
    assert await asyncio.wait_for(q.get(), 1) == "a"
    q.done("a")
    clock.now += 10
    assert await asyncio.wait_for(q.get(), 1) == "b"
    q.done("b")
    clock.now += 100
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(q.get(), 0.05)  # "a" ran once, not three times


async def test_an_add_makes_a_delayed_key_due_at_once() -> None:
    clock = Clock()
    q = WorkQueue(clock)
    q.add_after("a", 60)
    q.add("a")
    assert await asyncio.wait_for(q.get(), 1) == "a"
    q.done("a")
    clock.now += 61
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(q.get(), 0.05)


async def test_a_waiting_worker_wakes_for_a_delayed_add_made_after_it_slept() -> None:
    q = WorkQueue()
    waiting = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.add_after("a", 0.05)
    assert await asyncio.wait_for(waiting, 2) == "a"


async def test_forget_drops_pending_adds() -> None:
    clock = Clock()
    q = WorkQueue(clock)
    q.add("a")
    q.add_after("b", 5)
    q.forget("a")
    q.forget("b")
    clock.now += 10
    assert len(q) == 0
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(q.get(), 0.05)


async def test_shut_down_releases_every_worker() -> None:
    q = WorkQueue()
    workers = [asyncio.create_task(q.get()) for _ in range(3)]
    await asyncio.sleep(0)
    q.shut_down()
    for w in workers:
        with pytest.raises(ShutDown):
            await asyncio.wait_for(w, 1)


async def test_many_workers_process_each_key_once_per_round() -> None:
    q = WorkQueue()
    seen: list[str] = []
    running: set[str] = set()

    async def worker() -> None:
        while True:
            try:
                key = await q.get()
            except ShutDown:
                return
            assert key not in running
            running.add(key)
            seen.append(key)
            await asyncio.sleep(0.001)
            running.discard(key)
            q.done(key)

    tasks = [asyncio.create_task(worker()) for _ in range(8)]
    for _ in range(3):
        for i in range(100):
            q.add(f"k{i}")
        await asyncio.sleep(0.01)
    while len(q) or q.processing:
        await asyncio.sleep(0.01)
    q.shut_down()
    await asyncio.gather(*tasks)
    assert set(seen) == {f"k{i}" for i in range(100)}
    assert len(seen) <= 300
