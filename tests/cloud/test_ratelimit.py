"""The ARM budget, on a hand-driven clock so the arithmetic is exact and the test instant."""

from __future__ import annotations

import asyncio

import pytest

from azure_cni.api.settings import AzureSettings
from azure_cni.cloud.ratelimit import ArmBudget, ArmBudgets, remaining_in, subscription_of


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def budget(size: float = 10, refill: float = 10, reserve: float = 0) -> tuple[ArmBudget,
                                                                              FakeClock]:
    clock = FakeClock()
    return ArmBudget(size, refill, reserve, clock=clock, sleep=clock.sleep), clock


async def test_it_spends_down_to_the_reserve_then_waits_for_the_refill() -> None:
    b, _ = budget(size=10, refill=10, reserve=2)
    for _ in range(8):
        _, waited = await b.acquire()
        assert waited == 0
    _, waited = await b.acquire()
    assert waited == pytest.approx(0.1)  # one token at 10/s
    assert b.tokens == pytest.approx(2.0)  # the reserve is never spent


async def test_a_remaining_count_is_lowered_by_whatever_arm_may_have_counted_since() -> None:
    b, _ = budget(size=200, refill=10)
    tickets = [(await b.acquire())[0] for _ in range(5)]
    assert b.tokens == 195
    # four others are unanswered: ARM may have counted them after this answer's count
    b.answered(tickets[1], remaining=100)
    assert b.tokens == 100 - 4
    # one answer came since ticket 5 was sent, and three are still out
    b.answered(tickets[4], remaining=50)
    assert b.tokens == 50 - 1 - 3
    # concurrent requests reach ARM in any order: an answer counted before others that were
    # answered first still only bounds what is left from below
    b.answered(tickets[2], remaining=90)
    assert b.tokens == 90 - 2 - 2
    b.answered(tickets[0], remaining=0)
    assert b.tokens == 0 - 3 - 1


async def test_a_count_never_lifts_the_estimate_above_the_bucket() -> None:
    b, _ = budget(size=10)
    ticket, _ = await b.acquire()
    b.answered(ticket, remaining=2999)  # a global count, say
    assert b.tokens == 10


async def test_a_429_empties_the_estimate_and_pauses_for_retry_after() -> None:
    b, clock = budget(size=10, refill=10)
    ticket, _ = await b.acquire()
    b.answered(ticket, retry_after=3.0)
    started = clock.now
    await b.acquire()
    assert clock.now - started >= 3.0
    assert clock.now - started == pytest.approx(3.1)  # then one token's refill


async def test_waiters_are_served_in_arrival_order() -> None:
    b, _ = budget(size=1, refill=1)
    await b.acquire()
    order: list[int] = []

    async def one(i: int) -> None:
        await b.acquire()
        order.append(i)

    await asyncio.gather(*(one(i) for i in range(5)))
    assert order == [0, 1, 2, 3, 4]


def test_the_lower_of_the_principals_and_the_global_count_is_what_is_left() -> None:
    headers = {"x-ms-ratelimit-remaining-subscription-writes": "150",
               "X-Ms-Ratelimit-Remaining-Subscription-Global-Writes": "12",
               "x-ms-ratelimit-remaining-subscription-reads": "x"}
    assert remaining_in(headers, "write") == 12
    assert remaining_in(headers, "read") is None
    assert remaining_in({}, "write") is None


def test_each_subscription_has_its_own_budget_and_overrides() -> None:
    settings = AzureSettings(write_reserve=20, subscriptions={"AAA": {"writeReserve": 150,
                                                                      "writeQPS": 5}})
    budgets = ArmBudgets(settings)
    special = budgets.budget("aaa", "write")
    plain = budgets.budget("bbb", "write")
    assert (special.reserve, special.refill, special.size) == (150, 5, 200)
    assert (plain.reserve, plain.refill) == (20, 10)
    assert budgets.budget("AAA", "write") is special
    assert budgets.budget("aaa", "read").size == 250
    assert subscription_of("https://management.azure.com/subscriptions/AAA/providers/x") == "aaa"
    assert subscription_of("https://login/x") == ""


def test_nonsense_budgets_are_refused() -> None:
    for size, refill, reserve in ((10, 0, 0), (0, 1, 0), (10, 1, 10), (10, 1, -1)):
        with pytest.raises(ValueError):
            ArmBudget(size, refill, reserve)
