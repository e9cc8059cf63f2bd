"""The kopf handlers as kopf calls them: what reaches the controller, and where."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

# kopf calls every handler through this (the same path as in a running operator)
from kopf._core.actions.invocation import invoke

from azure_cni.operator import kopf_events


class ThreadRecorder:
    """An event sink that notes the thread each event reached it on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    def pool_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        self.calls.append(("pool", kind, threading.get_ident()))

    def class_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        self.calls.append(("class", kind, threading.get_ident()))

    async def node_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        self.calls.append(("node", kind, threading.get_ident()))


async def test_every_event_reaches_the_controller_on_the_event_loops_thread() -> None:
    """kopf runs a handler that is a plain function in a thread pool: the controller's pools
    and its asyncio work queue would then change under the workers' feet, from another
    thread (a stale pool event could replace the object a status write just returned)."""
    sink = ThreadRecorder()
    registry = kopf_events.registry(sink)
    for handler in registry._watching.get_all_handlers():
        await invoke(handler.fn, settings=kopf_events.settings(),
                     kwargs={"event": {"type": "MODIFIED", "object": {"metadata": {}}}})
    assert sorted(kind for kind, _, _ in sink.calls) == ["class", "node", "pool"]
    assert {thread for _, _, thread in sink.calls} == {threading.get_ident()}, sink.calls
