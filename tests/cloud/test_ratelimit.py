"""Token buckets, driven by a fake clock so the arithmetic is exact and the test instant."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from azure_cni.api.settings import AzureSettings
from azure_cni.cloud.ratelimit import ApiRateLimiter, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_burst_passes_then_callers_are_spaced_by_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(qps=5, burst=3, clock=clock)
    waits = [bucket.reserve() for _ in range(6)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.2, 0.4, 0.6])


def test_tokens_refill_up_to_the_burst_only():
    clock = FakeClock()
    bucket = TokenBucket(qps=10, burst=2, clock=clock)
    bucket.reserve()
    bucket.reserve()
    clock.now += 60
    assert bucket.available == 2
    assert [bucket.reserve() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.1])


def test_try_take_takes_nothing_when_it_would_have_to_wait():
    clock = FakeClock()
    bucket = TokenBucket(qps=4, burst=1, clock=clock)
    assert bucket.try_take() == 0.0
    assert bucket.try_take() == pytest.approx(0.25)
    assert bucket.try_take() == pytest.approx(0.25)  # the refusal took no token
    clock.now += 0.25
    assert bucket.try_take() == 0.0


def test_a_pause_holds_every_caller_and_restarts_without_a_burst():
    clock = FakeClock()
    bucket = TokenBucket(qps=10, burst=10, clock=clock)
    bucket.pause(2.0)
    assert bucket.try_take() == pytest.approx(2.1)
    # after the pause callers come at the rate, not as a burst of ten
    assert [bucket.reserve() for _ in range(3)] == pytest.approx([2.1, 2.2, 2.3])


async def test_acquire_sleeps_for_its_reservation():
    clock = FakeClock()
    bucket = TokenBucket(qps=2, burst=1, clock=clock)
    assert await bucket.acquire(clock.sleep) == 0.0
    assert await bucket.acquire(clock.sleep) == pytest.approx(0.5)
    assert clock.slept == pytest.approx([0.5])


async def test_a_cancelled_wait_gives_its_token_back():
    bucket = TokenBucket(qps=0.001, burst=1)
    bucket.reserve()
    waiter = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bucket.available == pytest.approx(0.0, abs=0.01)


def test_buckets_refuse_nonsense():
    with pytest.raises(ValueError, match="qps > 0"):
        TokenBucket(qps=0, burst=1)
    with pytest.raises(ValueError, match="burst >= 1"):
        TokenBucket(qps=1, burst=0)


async def test_reads_and_writes_have_separate_buckets_and_every_wait_is_observed():
    limiter = ApiRateLimiter.from_settings(AzureSettings(read_qps=100, read_burst=1,
                                                         write_qps=100, write_burst=1))
    name = "azure_cni_azure_api_rate_limit_duration_seconds_count"
    before = REGISTRY.get_sample_value(name, {"operation": "test.read"}) or 0.0
    assert await limiter.wait("read", "test.read") == 0.0
    assert await limiter.wait("write", "test.write") == 0.0  # the read did not use it up
    assert await limiter.wait("read", "test.read") > 0.0
    assert REGISTRY.get_sample_value(name, {"operation": "test.read"}) == before + 2
