"""One asyncio lock per key, kept only while someone holds or waits for it.

A lock per key ever seen would grow without end (every NIC written, every attachment made);
this map holds a key only while it is in use.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class KeyedLocks(Generic[K]):
    """Requests for one key run one after the other; different keys run in parallel."""

    def __init__(self) -> None:
        self._locks: dict[K, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]

    def waiting(self, key: K) -> int:
        """How many wait for ``key`` while someone holds it."""
        lock, users = self._locks.get(key, (None, [0]))
        return users[0] - 1 if lock is not None and lock.locked() else 0

    def __len__(self) -> int:
        return len(self._locks)
