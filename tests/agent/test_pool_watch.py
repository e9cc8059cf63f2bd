"""Following the NodeIPPool: relist after 410 Gone and after broken connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from azure_cni.agent.kube import WatchExpired
from azure_cni.agent.pool_source import watch_pool_forever


def pool(version: str, used: int = 0) -> dict[str, Any]:
    return {"metadata": {"name": "n1", "resourceVersion": version}, "status": {"used": used}}


class ScriptedApi:
    """Lists and watches that follow a script; records where each watch started."""

    def __init__(self, lists: list[Any], watches: list[list[Any]]) -> None:
        self.lists, self.watches = lists, watches
        self.watched_from: list[str] = []

    async def list_pool(self, name: str) -> tuple[dict[str, Any] | None, str]:
        item = self.lists.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    async def watch_pool(self, name: str, resource_version: str,
                         timeout_seconds: int = 300) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        self.watched_from.append(resource_version)
        if not self.watches:
            await asyncio.Event().wait()  # a quiet watch
        for event in self.watches.pop(0):
            if isinstance(event, BaseException):
                raise event
            yield event

    async def apply_status(self, name: str, body: Mapping[str, Any]) -> None:
        raise AssertionError("not used here")


async def follow(api: ScriptedApi, until: int) -> list[Any]:
    seen: list[Any] = []
    done = asyncio.Event()

    async def on_pool(obj: Mapping[str, Any] | None) -> None:
        seen.append(None if obj is None else obj["metadata"]["resourceVersion"])
        if len(seen) >= until:
            done.set()

    task = asyncio.create_task(watch_pool_forever(api, "n1", on_pool, max_backoff=0.01))
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        task.cancel()
    return seen


async def test_events_and_deletion() -> None:
    api = ScriptedApi([(pool("1"), "1")],
                      [[("MODIFIED", pool("2")), ("DELETED", pool("3")),
                        ("ADDED", pool("4"))]])
    assert await follow(api, 4) == ["1", "2", None, "4"]


async def test_410_gone_relists_and_resumes_from_the_new_list() -> None:
    api = ScriptedApi([(pool("1"), "1"), (pool("9"), "9")],
                      [[("MODIFIED", pool("2")), WatchExpired("too old")]])
    assert await follow(api, 3) == ["1", "2", "9"]
    await asyncio.sleep(0)
    assert api.watched_from[:2] == ["1", "9"]


async def test_a_watch_that_ends_resumes_from_the_last_version_seen() -> None:
    api = ScriptedApi([(pool("1"), "1")], [[("MODIFIED", pool("5"))], [("MODIFIED", pool("6"))]])
    assert await follow(api, 3) == ["1", "5", "6"]
    assert api.watched_from[:2] == ["1", "5"]


async def test_connection_failures_are_retried() -> None:
    api = ScriptedApi([ConnectionError("refused"), OSError("reset"), (None, "7")],
                      [[("ADDED", pool("8"))]])
    assert await follow(api, 2) == [None, "8"]
