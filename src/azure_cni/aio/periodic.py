"""Periodic jobs: run a coroutine every so often, for as long as the task lives."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def every(seconds: float, job: Callable[[], Awaitable[object]], *,
                name: str = "") -> None:
    """Run ``job`` every ``seconds`` (the first time after one period), forever.

    A failing run is logged and the next one comes on time: a periodic job is a sweep that
    catches up by itself. Cancel the task to stop it.
    """
    label = name or getattr(job, "__name__", "job")
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except Exception as e:  # noqa: BLE001 - a periodic job retries next time
            log.warning("event=periodic_job_failed job=%s error=%r", label, e)
