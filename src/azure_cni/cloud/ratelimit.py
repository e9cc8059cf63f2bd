"""Client-side token buckets: one for Azure reads, one for writes, as ARM meters them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from azure_cni.api.settings import AzureSettings
from azure_cni.cloud.metrics import RATE_LIMIT_WAIT

Kind = Literal["read", "write"]


class TokenBucket:
    """``burst`` tokens, refilled at ``qps`` per second; callers queue in arrival order.

    A caller that must wait reserves its token at once (the bucket goes into debt), so
    concurrent callers are spaced ``1/qps`` apart instead of all waking together.
    """

    def __init__(self, qps: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs qps > 0 and burst >= 1 (got {qps}, {burst})")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        #: tokens accrue from this instant on; it lies in the future while the bucket is paused
        self._updated = clock()

    def _refill(self) -> float:
        now = self._clock()
        if now > self._updated:
            self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.qps)
            self._updated = now
        return now

    @property
    def available(self) -> float:
        """Tokens in the bucket now (negative while callers are queued)."""
        self._refill()
        return self._tokens

    def reserve(self) -> float:
        """Take a token, possibly one not yet refilled; return the seconds to wait for it."""
        now = self._refill()
        self._tokens -= 1.0
        return max(now, self._updated) + max(0.0, -self._tokens) / self.qps - now

    def refund(self) -> None:
        """Give back a reserved token the caller did not use."""
        self._refill()
        self._tokens = min(float(self.burst), self._tokens + 1.0)

    def try_take(self) -> float:
        """Take a token if one is there now and return 0; else take nothing, return the wait."""
        now = self._refill()
        wait = max(self._updated - now, 0.0) + max(0.0, 1.0 - self._tokens) / self.qps
        if wait > 0:
            return wait
        self._tokens -= 1.0
        return 0.0

    def pause(self, seconds: float) -> None:
        """Hand out nothing for ``seconds`` (the server said Retry-After), then restart empty.

        Restarting empty matters: after a 429 the server's bucket is empty too, so callers
        resume at ``qps`` rather than as one burst that would be throttled again.
        """
        now = self._refill()
        self._tokens = min(self._tokens, 0.0)
        self._updated = max(self._updated, now + seconds)

    async def acquire(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> float:
        """Wait for a token; return how long that took."""
        wait = self.reserve()
        if wait > 0:
            try:
                await sleep(wait)
            except asyncio.CancelledError:
                self.refund()
                raise
        return wait


class ApiRateLimiter:
    """The read and write buckets of one Azure client, with every wait observed as a metric."""

    def __init__(self, read: TokenBucket, write: TokenBucket) -> None:
        self.read = read
        self.write = write

    @classmethod
    def from_settings(cls, settings: AzureSettings) -> ApiRateLimiter:
        return cls(TokenBucket(settings.read_qps, settings.read_burst),
                   TokenBucket(settings.write_qps, settings.write_burst))

    def bucket(self, kind: Kind) -> TokenBucket:
        return self.read if kind == "read" else self.write

    async def wait(self, kind: Kind, operation: str) -> float:
        """Wait for a token of ``kind``; record the wait under ``operation``."""
        waited = await self.bucket(kind).acquire()
        RATE_LIMIT_WAIT.labels(operation=operation).observe(waited)
        return waited
