"""Writes the agent's status fields to its pool: debounced, only when they change.

Only ``used``, ``cooling``, ``releaseAcks``, ``idleBlocks``, ``podRequests`` and the
``AgentReady`` condition are written, by server-side apply under the ``azure-cni-agent``
field manager. A cooldown that ends changes ``cooling`` (and maybe an ack) without any event,
so the reporter also wakes up then (``request_later``) and every ``STATUS_REFRESH_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from azure_cni.agent.pool_source import PoolSource
from azure_cni.aio.backoff import Backoff

log = logging.getLogger(__name__)

STATUS_DEBOUNCE_SECONDS = 1.0
#: recompute the status this often even without events (cooldowns end silently)
STATUS_REFRESH_SECONDS = 10.0


class StatusReporter:
    """Applies the agent's status fields, at most once per debounce interval."""

    def __init__(self, source: PoolSource,
                 compute: Callable[[], Awaitable[dict[str, Any] | None]],
                 debounce: float = STATUS_DEBOUNCE_SECONDS) -> None:
        self.source = source
        self.compute = compute
        self.debounce = debounce
        self._wanted = asyncio.Event()
        self._last: dict[str, Any] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def request(self) -> None:
        self._wanted.set()

    def forget(self) -> None:
        """The pool was replaced (deleted, or recreated under the same name): what was
        written went with the old object, so the next flush writes even unchanged fields."""
        self._last = None
        self._wanted.set()

    def request_later(self, delay: float) -> None:
        """Recompute ``delay`` seconds from now (when a cooldown ends), event or not."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(max(0.0, delay), self.request)

    async def run(self) -> None:
        backoff = Backoff(first=1.0, most=30.0)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wanted.wait(), timeout=STATUS_REFRESH_SECONDS)
                await asyncio.sleep(self.debounce)
                self._wanted.clear()
                try:
                    await self.flush()
                    backoff.succeeded()
                except Exception as e:  # noqa: BLE001 - the API server may be away; keep trying
                    delay = backoff.failed()
                    log.warning("event=status_apply_failed error=%r retry_in=%.0fs", e, delay)
                    await asyncio.sleep(delay)
                    self._wanted.set()
        finally:
            if self._timer is not None:
                self._timer.cancel()

    async def flush(self) -> bool:
        """Apply now if the fields changed; True if something was written."""
        fields = await self.compute()
        if fields is None or fields == self._last:
            return False
        await self.source.publish(fields)
        self._last = fields
        log.info("event=status_applied used=%s cooling=%s acks=%d ready=%s",
                 fields.get("used"), fields.get("cooling"), len(fields.get("releaseAcks") or ()),
                 next((c["status"] for c in fields.get("conditions") or ()), "?"))
        return True
