"""Azure's server-side throttling, as the emulator models it: token buckets that refuse.

This is the server's view, written from Microsoft's description of ARM's regional
throttling (arm-api.md §2.3, azure-features.md §4), and deliberately shares no code with the
client-side limiter in ``azure_cni.cloud``: the emulator is what checks that limiter.

- A bucket holds ``size`` tokens and refills at ``refill`` tokens per second. A request takes
  one token or is refused; a refused request takes nothing ("your request isn't processed and
  a new retry value is returned"), and is told the whole seconds until a token is back.
- ARM keeps one bucket per subscription, service principal and operation type (reads,
  writes, deletes), plus a global bucket per subscription and operation type shared by every
  principal, 15 times as large. A request must find a token in both. Every response says what
  is left in ``x-ms-ratelimit-remaining-subscription-<kind>`` and
  ``x-ms-ratelimit-remaining-subscription-global-<kind>``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["reads", "writes", "deletes"]

#: "global subscription limits that are equivalent to 15 times the individual service
#: principal limits" (ARM throttling documentation)
GLOBAL_FACTOR = 15


def operation_kind(method: str) -> Kind:
    """How ARM meters an HTTP method."""
    method = method.upper()
    if method in ("GET", "HEAD"):
        return "reads"
    return "deletes" if method == "DELETE" else "writes"


@dataclass
class ServerBucket:
    """One bucket as the server keeps it: no debt, no reservations."""

    size: float
    refill: float
    tokens: float = field(default=-1.0)
    at: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.size

    def level(self, now: float) -> float:
        if now > self.at:
            self.tokens = min(self.size, self.tokens + (now - self.at) * self.refill)
            self.at = now
        return self.tokens

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0 if one is there now); takes nothing."""
        level = self.level(now)
        # a hair of tolerance: refills summed in floating point land just short of a token
        return 0.0 if level >= 1.0 - 1e-9 else (1.0 - level) / self.refill

    def take(self) -> None:
        self.tokens -= 1.0


@dataclass(frozen=True)
class Verdict:
    """The throttling answer for one request: headers always, and a wait if it is refused."""

    headers: dict[str, str]
    #: seconds until the request could be served; 0 when it was served
    retry_after: float = 0.0

    @property
    def refused(self) -> bool:
        return self.retry_after > 0


@dataclass(frozen=True)
class BucketSize:
    size: float
    refill: float


class ArmThrottle:
    """Per-principal and global buckets of one emulated ARM region."""

    def __init__(self, limits: dict[Kind, BucketSize], *, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.enabled = enabled
        self._clock = clock
        self._buckets: dict[tuple[str, str, Kind], ServerBucket] = {}

    def _bucket(self, subscription: str, principal: str, kind: Kind) -> ServerBucket:
        key = (subscription.lower(), principal, kind)
        bucket = self._buckets.get(key)
        if bucket is None:
            limit = self.limits[kind]
            factor = GLOBAL_FACTOR if principal == "" else 1
            bucket = ServerBucket(limit.size * factor, limit.refill * factor, at=self._clock())
            self._buckets[key] = bucket
        return bucket

    def admit(self, subscription: str, principal: str, method: str) -> Verdict:
        """Take a token from the principal's and the global bucket, or refuse the request."""
        kind = operation_kind(method)
        mine = self._bucket(subscription, principal, kind)
        shared = self._bucket(subscription, "", kind)
        now = self._clock()
        wait = max(mine.wait(now), shared.wait(now)) if self.enabled else 0.0
        if wait == 0.0:
            mine.take()
            shared.take()
        headers = {
            f"x-ms-ratelimit-remaining-subscription-{kind}": str(max(0, math.floor(mine.tokens))),
            f"x-ms-ratelimit-remaining-subscription-global-{kind}":
                str(max(0, math.floor(shared.tokens))),
        }
        return Verdict(headers, wait)


class RateLimit:
    """A plain requests-per-second limit (IMDS: 5 per second per VM)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], ServerBucket] = {}

    def admit(self, key: tuple[str, str], per_second: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None or bucket.refill != per_second:
            bucket = ServerBucket(max(1.0, math.floor(per_second)), per_second, at=self._clock())
            self._buckets[key] = bucket
        if bucket.wait(self._clock()) > 0:
            return False
        bucket.take()
        return True
