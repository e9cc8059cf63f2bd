"""Blocking work (netlink, sqlite, iptables) on an executor's threads, off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")


async def on_thread(executor: Executor, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on one of ``executor``'s threads; the loop serves others meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
