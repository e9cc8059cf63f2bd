"""Backoff: doubles per failure up to its ceiling, starts over after a success."""

from __future__ import annotations

import pytest

from azure_cni.aio.backoff import Backoff


def test_doubles_to_the_ceiling_and_starts_over_after_a_success() -> None:
    backoff = Backoff(first=1.0, most=5.0)
    assert [backoff.failed() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.succeeded()
    assert backoff.failed() == 1.0


@pytest.mark.parametrize(("failures", "delay"), [(0, 5.0), (1, 5.0), (2, 10.0), (3, 20.0),
                                                 (7, 300.0), (50, 300.0)])
def test_a_count_of_failures_gives_the_same_delays(failures: int, delay: float) -> None:
    assert Backoff(first=5.0, most=300.0).after(failures) == delay


def test_jitter_spreads_each_delay_around_the_nominal_one() -> None:
    backoff = Backoff(first=10.0, most=10.0, jitter=True)
    delays = [backoff.failed() for _ in range(200)]
    assert all(5.0 <= d < 15.0 for d in delays)
    assert len(set(delays)) > 1, "jitter that never varies spreads nothing"
