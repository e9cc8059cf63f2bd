"""The agent's status write: debounced, only on change, only the agent's fields."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from azure_cni.agent import status_reporter
from azure_cni.agent.pool_source import NodeIPPoolSource
from azure_cni.agent.status_reporter import StatusReporter
from azure_cni.api.nodeippool import AGENT_FIELD_MANAGER


class RecordingApi:
    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []
        self.fail = 0

    async def apply_status(self, name: str, body: Mapping[str, Any]) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("API server away")
        self.applied.append({"name": name, **body})


def source(api: RecordingApi) -> NodeIPPoolSource:
    return NodeIPPoolSource(api, "node-a")  # type: ignore[arg-type]


async def test_bursts_are_coalesced_and_unchanged_fields_not_rewritten() -> None:
    api = RecordingApi()
    used = [0]

    async def compute() -> dict[str, Any]:
        return {"used": used[0], "releaseAcks": [], "conditions": []}

    reporter = StatusReporter(source(api), compute, debounce=0.2)
    task = asyncio.create_task(reporter.run())
    try:
        for n in range(1, 21):  # twenty pods start within the debounce window
            used[0] = n
            reporter.request()
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.5)
        assert [a["status"]["used"] for a in api.applied] == [20]
        body = api.applied[0]
        assert body["kind"] == "NodeIPPool" and body["metadata"] == {"name": "node-a"}
        assert set(body["status"]) == {"used", "releaseAcks", "conditions"}
        reporter.request()
        await asyncio.sleep(0.4)
        assert len(api.applied) == 1, "nothing changed, nothing written"
    finally:
        task.cancel()


async def test_failed_writes_are_retried() -> None:
    api = RecordingApi()
    api.fail = 1

    async def compute() -> dict[str, Any]:
        return {"used": 1, "releaseAcks": [], "conditions": []}

    reporter = StatusReporter(source(api), compute, debounce=0.05)
    task = asyncio.create_task(reporter.run())
    try:
        reporter.request()
        for _ in range(100):
            if api.applied:
                break
            await asyncio.sleep(0.05)
        assert api.applied and api.applied[0]["status"]["used"] == 1
    finally:
        task.cancel()


async def test_a_cooldown_that_ends_is_reported_without_an_event(monkeypatch) -> None:
    """Nothing happens on the node when a cooldown ends, but ``cooling`` changes then."""
    monkeypatch.setattr(status_reporter, "STATUS_REFRESH_SECONDS", 3600.0)
    api = RecordingApi()
    ends = asyncio.get_running_loop().time() + 0.3

    async def compute() -> dict[str, Any]:
        left = ends - asyncio.get_running_loop().time()
        if left > 0:
            reporter.request_later(left)
        return {"used": 0, "cooling": 1 if left > 0 else 0, "releaseAcks": [],
                "conditions": []}

    reporter = StatusReporter(source(api), compute, debounce=0.01)
    task = asyncio.create_task(reporter.run())
    try:
        reporter.request()
        for _ in range(600):
            if len(api.applied) == 2:
                break
            await asyncio.sleep(0.05)
        assert [a["status"]["cooling"] for a in api.applied] == [1, 0]
    finally:
        task.cancel()


def test_field_manager_is_the_agents() -> None:
    assert AGENT_FIELD_MANAGER == "azure-cni-agent"
