"""A work queue with client-go's semantics, for a fixed number of asyncio workers.

- ``add(key)``: the key is processed soon. Adding a key that already waits does nothing
  (coalescing: a burst of events becomes one reconcile).
- A key is never processed by two workers at once. A key added while it is being processed
  waits, and is processed again after ``done(key)``.
- ``add_after(key, seconds)``: the key is added later; of several delayed adds the earliest
  wins, and an ``add`` in the meantime makes it due at once.
- ``forget(key)``: drop any pending add of the key (its object is gone).
- ``shut_down()``: ``get`` raises ``ShutDown`` from then on; keys being processed finish.

Its memory is a few dozen bytes per key that waits, nothing per key that does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable


class ShutDown(Exception):
    """The queue was shut down; workers stop."""


class WorkQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ready: deque[str] = deque()
        #: keys that wait to be processed (in _ready, or held back while they are processed)
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        #: key -> earliest time a delayed add falls due
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        """Keys waiting (now or later)."""
        return len(self._dirty | self._due.keys())

    @property
    def processing(self) -> int:
        return len(self._processing)

    def in_progress(self) -> set[str]:
        """The keys being processed right now."""
        return set(self._processing)

    def add(self, key: str) -> None:
        if self._closed:
            return
        self._due.pop(key, None)
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._ready.append(key)
            self._changed.set()

    def add_after(self, key: str, seconds: float) -> None:
        if self._closed:
            return
        if seconds <= 0:
            self.add(key)
            return
        if key in self._dirty:
            return  # it runs sooner than that anyway
        due = self._clock() + seconds
        if self._due.get(key, float("inf")) <= due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._seq), key))
        self._changed.set()

    def forget(self, key: str) -> None:
        """Drop a pending (delayed or ready) add of ``key``; a running one finishes."""
        self._due.pop(key, None)
        if key in self._dirty:
            self._dirty.discard(key)
            if key not in self._processing:
                self._ready.remove(key)

    def _promote(self) -> float | None:
        """Move due keys to the ready queue; return the seconds until the next one."""
        now = self._clock()
        while self._heap:
            due, _, key = self._heap[0]
            if self._due.get(key) != due:  # superseded by an earlier due, or forgotten
                heapq.heappop(self._heap)
                continue
            if due > now:
                return due - now
            heapq.heappop(self._heap)
            del self._due[key]
            self.add(key)
        return None

    async def get(self) -> str:
        """The next key to process; the caller must call ``done(key)`` when finished."""
        while True:
            if self._closed:
                raise ShutDown
            wait = self._promote()
            if self._ready:
                key = self._ready.popleft()
                self._dirty.discard(key)
                self._processing.add(key)
                return key
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=wait)

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:  # added again while it was processed
            self._ready.append(key)
            self._changed.set()

    def shut_down(self) -> None:
        self._closed = True
        self._changed.set()
