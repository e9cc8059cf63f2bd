"""Spending ARM's request budget: as much as Azure says is there, down to a reserve.

ARM meters each subscription and principal with token buckets (reads 250 + 25/s, writes
200 + 10/s) and says in every response how many requests are left
(``x-ms-ratelimit-remaining-subscription-reads`` / ``-writes``, and ``-global-`` for the
bucket every principal shares). For each subscription and kind the operator keeps an
estimate of that bucket:

- it starts from the configured size (ARM's documented one) and refills at the configured
  rate, never above the size;
- every request sent takes one token from the estimate;
- every response that carries a remaining count resets the estimate to a count ARM cannot
  be below: the remaining count, minus every request ARM may have counted after that one
  (those still unanswered, and those answered since it was sent: concurrent requests reach
  ARM in any order);
- a request waits (in arrival order) while the estimate is below ``reserve + 1``: the
  operator backs off before ARM has to refuse it, and leaves ``reserve`` requests to other
  clients of the same identity;
- a 429 empties the estimate and pauses the kind for its Retry-After; the estimate refills
  from the end of the pause.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

from azure_cni.api.settings import AzureSettings
from azure_cni.cloud.metrics import RATE_LIMIT_WAIT

Kind = Literal["read", "write"]

_SUBSCRIPTION = re.compile(r"/subscriptions/([^/?#]+)", re.IGNORECASE)
#: the longest single sleep while waiting, so that a fresh count can shorten a wait
_RECHECK_SECONDS = 0.25
_EPSILON = 1e-9


def subscription_of(url: str) -> str:
    """The subscription a request URL is about (lower case; "" when it names none)."""
    found = _SUBSCRIPTION.search(url)
    return found.group(1).lower() if found else ""


def remaining_in(headers: Mapping[str, str], kind: Kind) -> float | None:
    """What ARM says is left for ``kind``: the lower of the principal's and the global count."""
    lowered = {k.lower(): v for k, v in headers.items()}
    counts = []
    for name in (f"x-ms-ratelimit-remaining-subscription-{kind}s",
                 f"x-ms-ratelimit-remaining-subscription-global-{kind}s"):
        raw = lowered.get(name)
        if raw is not None:
            try:
                counts.append(float(raw))
            except ValueError:
                continue
    return min(counts) if counts else None


class ArmBudget:
    """The estimate of one ARM bucket (one subscription, one kind) and the queue in front of
    it. Single event loop only."""

    def __init__(self, size: float, refill: float, reserve: float,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if refill <= 0 or size < 1 or not 0 <= reserve < size:
            raise ValueError(f"an ARM budget needs refill > 0, size >= 1 and 0 <= reserve < "
                             f"size (got {refill}, {size}, {reserve})")
        self.size = float(size)
        self.refill = refill
        self.reserve = float(reserve)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(size)
        self._at = clock()
        self._paused_until = 0.0
        self._sent = 0
        self._answers = 0
        #: unanswered ticket -> answers received when it was sent
        self._unanswered: dict[int, int] = {}
        self._turn = asyncio.Lock()  # waiters are served in arrival order

    @property
    def tokens(self) -> float:
        """The estimate of what ARM's bucket holds now."""
        now = self._clock()
        if now > self._at:
            self._tokens = min(self.size, self._tokens + (now - self._at) * self.refill)
            self._at = now
        return self._tokens

    async def acquire(self) -> tuple[int, float]:
        """Wait until a request may go; return its ticket and how long it waited."""
        started = self._clock()
        async with self._turn:
            while True:
                now = self._clock()
                if now < self._paused_until:
                    await self._sleep(min(self._paused_until - now, _RECHECK_SECONDS))
                    continue
                missing = self.reserve + 1.0 - self.tokens
                if missing <= _EPSILON:  # refills summed in floating point land a hair short
                    break
                await self._sleep(min(missing / self.refill, _RECHECK_SECONDS))
            self._tokens -= 1.0
            self._sent += 1
            self._unanswered[self._sent] = self._answers
            return self._sent, self._clock() - started

    def answered(self, ticket: int, remaining: float | None = None,
                 retry_after: float | None = None) -> None:
        """The answer to ``ticket``: ARM's remaining count, or a 429's Retry-After."""
        answers_when_sent = self._unanswered.pop(ticket, self._answers)
        answered_since = self._answers - answers_when_sent
        self._answers += 1
        if retry_after is not None:
            self.tokens  # noqa: B018 - settle the refill up to now first
            self._tokens = min(self._tokens, 0.0)
            self._paused_until = max(self._paused_until, self._clock() + retry_after)
            # after the pause the bucket restarts empty: resuming as a burst would only be
            # refused again
            self._at = max(self._at, self._paused_until)
            return
        if remaining is None:
            return
        self.tokens  # noqa: B018 - settle the refill up to now first
        self._tokens = min(self.size, remaining - answered_since - len(self._unanswered))
        self._at = max(self._at, self._clock())


class ArmBudgets:
    """Every subscription's read and write budget, made on first use from the settings."""

    def __init__(self, settings: AzureSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._budgets: dict[tuple[str, Kind], ArmBudget] = {}

    def budget(self, subscription: str, kind: Kind) -> ArmBudget:
        key = (subscription.lower(), kind)
        found = self._budgets.get(key)
        if found is None:
            b = self._settings.budget(subscription)
            found = ArmBudget(*((b.read_burst, b.read_qps, b.read_reserve) if kind == "read"
                                else (b.write_burst, b.write_qps, b.write_reserve)),
                              clock=self._clock)
            self._budgets[key] = found
        return found

    async def wait(self, url: str, kind: Kind, operation: str) -> tuple[ArmBudget, int]:
        """Wait for the budget of the request to ``url``; record the wait under ``operation``."""
        budget = self.budget(subscription_of(url), kind)
        ticket, waited = await budget.acquire()
        RATE_LIMIT_WAIT.labels(operation=operation).observe(waited)
        return budget, ticket
