"""NIC address changes, announced to in-process callbacks and to the admin API's event feed."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any

from azure_cni_sim.armstate import NicChange

log = logging.getLogger(__name__)

NicChangeCallback = Callable[[str, str, tuple[str, ...], tuple[str, ...]], Awaitable[None] | None]

#: events kept for ``GET /_sim/events`` followers
FEED_LENGTH = 10000


class NicChangeFeed:
    """Subscribers and a numbered event log; ``lock`` is the emulator's state lock."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._callbacks: list[NicChangeCallback] = []
        self._events: list[dict[str, Any]] = []
        self._seq = 0
        self._signal: asyncio.Condition | None = None

    def bind(self) -> None:
        """Attach to the running loop (the emulator's)."""
        self._signal = asyncio.Condition()

    def subscribe(self, callback: NicChangeCallback) -> Callable[[], None]:
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    async def publish(self, changes: Sequence[NicChange]) -> None:
        if not changes:
            return
        with self._lock:
            callbacks = list(self._callbacks)
            for change in changes:
                self._seq += 1
                self._events.append({"seq": self._seq, **asdict(change)})
            del self._events[:-FEED_LENGTH]
        for change in changes:
            log.info("event=nic_addresses_changed nic=%s added=%d removed=%d addresses=%d",
                     change.nic_id, len(set(change.new) - set(change.old)),
                     len(set(change.old) - set(change.new)), len(change.new))
            for callback in callbacks:
                try:
                    result = callback(change.nic_id, change.vm_id, change.old, change.new)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("event=nic_change_callback_failed nic=%s", change.nic_id)
        if self._signal is not None:
            async with self._signal:
                self._signal.notify_all()

    async def wait(self, after: int, timeout: float) -> dict[str, Any]:
        """Changes numbered above ``after``, waiting up to ``timeout`` for the first."""
        def newer() -> list[dict[str, Any]]:
            with self._lock:
                return [e for e in self._events if e["seq"] > after]

        found = newer()
        if not found and timeout > 0 and self._signal is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout), self._signal:
                    await self._signal.wait_for(lambda: bool(newer()))
            found = newer()
        with self._lock:
            last = self._seq
        return {"events": found, "last": last}
