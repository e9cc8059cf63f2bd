"""ARM's throttling as the emulator models it (arm-api.md §2.3), on a hand-driven clock."""

from __future__ import annotations

import pytest

from azure_cni_sim.throttling import ArmThrottle, BucketSize, RateLimit, operation_kind

SUB = "00000000-0000-0000-0000-000000000001"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def arm(clock: Clock, reads: tuple[float, float] = (250, 25),
        writes: tuple[float, float] = (200, 10)) -> ArmThrottle:
    return ArmThrottle({"reads": BucketSize(*reads), "writes": BucketSize(*writes),
                        "deletes": BucketSize(200, 10)}, clock=clock)


@pytest.mark.parametrize(("method", "kind"), [
    ("GET", "reads"), ("HEAD", "reads"), ("PUT", "writes"), ("PATCH", "writes"),
    ("POST", "writes"), ("DELETE", "deletes")])
def test_methods_are_metered_as_arm_meters_them(method, kind):
    assert operation_kind(method) == kind


def test_a_full_bucket_counts_down_in_the_remaining_headers():
    throttle = arm(Clock())
    seen = [throttle.admit(SUB, "op", "GET").headers for _ in range(3)]
    assert [h["x-ms-ratelimit-remaining-subscription-reads"] for h in seen] == \
        ["249", "248", "247"]
    # the global bucket is 15 times as large and shared by every principal
    assert seen[-1]["x-ms-ratelimit-remaining-subscription-global-reads"] == str(15 * 250 - 3)
    put = throttle.admit(SUB, "op", "PUT").headers
    assert put == {"x-ms-ratelimit-remaining-subscription-writes": "199",
                   "x-ms-ratelimit-remaining-subscription-global-writes": str(15 * 200 - 1)}


def test_an_empty_bucket_refuses_without_taking_and_says_when_to_come_back():
    clock = Clock()
    throttle = arm(clock, writes=(2, 10))
    assert not throttle.admit(SUB, "op", "PUT").refused
    assert not throttle.admit(SUB, "op", "PUT").refused
    refused = throttle.admit(SUB, "op", "PUT")
    assert refused.refused and refused.retry_after == pytest.approx(0.1)
    assert refused.headers["x-ms-ratelimit-remaining-subscription-writes"] == "0"
    # asking again early changes nothing: a refused request is not processed
    clock.now += 0.05
    assert throttle.admit(SUB, "op", "PUT").retry_after == pytest.approx(0.05)
    clock.now += 0.05
    assert not throttle.admit(SUB, "op", "PUT").refused
    # reads have their own bucket
    assert not throttle.admit(SUB, "op", "GET").refused


def test_buckets_refill_at_their_rate_up_to_their_size():
    clock = Clock()
    throttle = arm(clock, reads=(10, 25))
    for _ in range(10):
        throttle.admit(SUB, "op", "GET")
    clock.now += 0.2  # five tokens
    assert [throttle.admit(SUB, "op", "GET").refused for _ in range(6)] == [False] * 5 + [True]
    clock.now += 3600
    assert throttle.admit(SUB, "op", "GET").headers[
        "x-ms-ratelimit-remaining-subscription-reads"] == "9"


def test_each_principal_has_its_bucket_and_all_share_the_global_one():
    throttle = arm(Clock(), reads=(1, 0.001))
    principals = [f"p{i}" for i in range(16)]
    answers = [throttle.admit(SUB, p, "GET") for p in principals]
    # fifteen principals each spend their one token; the sixteenth finds the global empty
    assert [a.refused for a in answers] == [False] * 15 + [True]
    assert throttle.admit(SUB, "p0", "GET").refused  # its own bucket is empty too
    assert not throttle.admit("another-subscription", "p0", "GET").refused


def test_switched_off_it_serves_everything_and_still_reports():
    throttle = arm(Clock(), reads=(1, 0.001))
    throttle.enabled = False
    answers = [throttle.admit(SUB, "op", "GET") for _ in range(3)]
    assert not any(a.refused for a in answers)
    assert answers[-1].headers["x-ms-ratelimit-remaining-subscription-reads"] == "0"


def test_a_requests_per_second_limit():
    clock = Clock()
    limit = RateLimit(clock)
    assert [limit.admit(("vm0", "instance"), 5.0) for _ in range(6)] == [True] * 5 + [False]
    assert limit.admit(("vm1", "instance"), 5.0)
    clock.now += 0.2
    assert limit.admit(("vm0", "instance"), 5.0)
