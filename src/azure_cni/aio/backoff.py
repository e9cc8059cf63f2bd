"""Exponential backoff: how long to wait after each failure in a row.

One implementation for every retry loop (the pool watch, the status writer, the egress
chains, the instance metadata poll, the operator's reconcile queue), so they all double the
same way, stop at a ceiling and, where many callers would retry together, spread out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays that start at ``first`` and double per failure up to ``most``.

    With ``jitter`` each delay is drawn from [0.5, 1.5) times the nominal one, so the agents
    of a whole cluster that lost the API server at once do not come back at once.
    """

    first: float = 1.0
    most: float = 30.0
    jitter: bool = False
    _next: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._next = self.first

    @property
    def pending(self) -> float:
        """The nominal delay the next failure gets (without jitter)."""
        return self._next

    def failed(self) -> float:
        """A failure: the delay to wait before the next try."""
        delay = self._next
        self._next = min(self._next * 2, self.most)
        return self._spread(delay)

    def succeeded(self) -> None:
        """A success: the next failure starts over at ``first``."""
        self._next = self.first

    def after(self, failures: int) -> float:
        """The delay after ``failures`` failures in a row (for callers that count them)."""
        delay = min(self.most, self.first * 2 ** max(0, failures - 1))
        return self._spread(delay)

    def _spread(self, delay: float) -> float:
        return delay * (0.5 + random.random()) if self.jitter else delay
