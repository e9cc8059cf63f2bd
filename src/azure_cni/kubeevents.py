"""Kubernetes Events that aggregate repeats (``events.k8s.io/v1``), as client-go's event
recorder (``k8s.io/client-go/tools/events``) does, and that name the pod which reported them.

An Event is *isomorphic* to an earlier one when its type, action, reason, reporting controller
and instance, and regarding object are the same (the note is not compared: the first note
stands for the series, as in client-go). For each such key:

- the first occurrence is created;
- the second, while the key is known, patches that Event with
  ``series: {count: 2, lastObservedTime}``;
- later ones only count; the count reaches the API server when the series is refreshed
  (every ``REFRESH_SECONDS``), when it finishes (no repeat for ``FINISH_SECONDS``: the key is
  forgotten and the next occurrence is a new Event) and when the recorder closes.

``kubectl describe`` shows such an Event once, as "(x12 over 3m)". A transient error retried
every few seconds is therefore one Event and one patch, not one Event per retry.
``reportingInstance`` is the reporting pod's name (the chart passes it as ``POD_NAME`` from the
downward API; in the host network the host name would be the node's).

The decisions are the pure ``SeriesCache``; ``EventRecorder`` does the I/O. A failed request
is logged and dropped, never raised: an Event must not fail the work it reports on.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from azure_cni.kubeclient import KubeApiError, KubeClient, api_path

log = logging.getLogger(__name__)

#: a series with no repeat for this long is finished (client-go's finishTime)
FINISH_SECONDS = 6 * 60.0
#: an ongoing series' count is sent at least this often (client-go's refreshTime)
REFRESH_SECONDS = 30 * 60.0
#: how often the recorder looks for series to refresh or finish
TICK_SECONDS = 30.0
#: Events of cluster-scoped objects live here (kubectl describe looks there)
CLUSTER_SCOPED_NAMESPACE = "default"
#: the API server's limit on ``note``
NOTE_LIMIT = 1024
#: the downward-API variable with the reporting pod's name
POD_NAME_ENV = "POD_NAME"


@dataclass(frozen=True)
class ObjectRef:
    """What an Event is about (``regarding``)."""

    api_version: str
    kind: str
    name: str
    namespace: str = ""
    uid: str = ""

    def to_dict(self) -> dict[str, str]:
        ref = {"apiVersion": self.api_version, "kind": self.kind, "name": self.name}
        if self.namespace:
            ref["namespace"] = self.namespace
        if self.uid:
            ref["uid"] = self.uid
        return ref


@dataclass(frozen=True)
class EventKey:
    type: str
    action: str
    reason: str
    regarding: ObjectRef


class Send(enum.Enum):
    CREATE = "create"
    PATCH_SERIES = "patch_series"
    NOTHING = "nothing"


@dataclass
class Series:
    """One Event as recorded, and how often it happened."""

    name: str
    namespace: str
    first_seen: float
    last_seen: float
    count: int = 1
    #: the count the API server has
    sent_count: int = 1
    sent_at: float = 0.0


@dataclass
class SeriesCache:
    """Which request each occurrence needs (pure: the caller passes the time)."""

    finish_seconds: float = FINISH_SECONDS
    refresh_seconds: float = REFRESH_SECONDS
    entries: dict[EventKey, Series] = field(default_factory=dict)

    def observe(self, key: EventKey, now: float, name: str, namespace: str
                ) -> tuple[Send, Series]:
        """Record one occurrence; ``name`` names a new Event when one is needed."""
        known = self.entries.get(key)
        if known is None or now - known.last_seen > self.finish_seconds:
            series = Series(name, namespace, first_seen=now, last_seen=now, sent_at=now)
            self.entries[key] = series
            return Send.CREATE, series
        known.count += 1
        known.last_seen = now
        # the second occurrence starts the series; later ones wait for a refresh or the end
        return (Send.PATCH_SERIES if known.count == 2 else Send.NOTHING), known

    def due(self, now: float) -> list[tuple[EventKey, Series]]:
        """Series whose count the API server should get now: finished (no repeat for
        ``finish_seconds``) or not sent for ``refresh_seconds``. Finished keys and single
        Events past ``finish_seconds`` are forgotten."""
        due = []
        for key, series in list(self.entries.items()):
            finished = now - series.last_seen > self.finish_seconds
            if series.count > series.sent_count and (
                    finished or now - series.sent_at >= self.refresh_seconds):
                due.append((key, series))
            if finished:
                del self.entries[key]
        return due

    def unsent(self) -> list[tuple[EventKey, Series]]:
        """Every series with counts the API server does not have yet (at close)."""
        return [(k, s) for k, s in self.entries.items() if s.count > s.sent_count]


def micro_time(when: float) -> str:
    """RFC 3339 with microseconds, as ``MicroTime`` is written."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def reporting_instance() -> str:
    """This pod's name (downward API), else the host name."""
    return os.environ.get(POD_NAME_ENV) or socket.gethostname()


def event_body(series: Series, key: EventKey, note: str, controller: str, instance: str
               ) -> dict[str, Any]:
    """The ``events.k8s.io/v1`` Event of a new series (pure)."""
    return {
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": series.name, "namespace": series.namespace},
        "eventTime": micro_time(series.first_seen),
        "reportingController": controller, "reportingInstance": instance[:128],
        "action": key.action[:128], "reason": key.reason[:128], "type": key.type,
        "regarding": key.regarding.to_dict(), "note": note[:NOTE_LIMIT],
    }


def series_patch(series: Series) -> dict[str, Any]:
    """The merge patch that brings an Event's series up to date (pure)."""
    return {"series": {"count": series.count, "lastObservedTime": micro_time(series.last_seen)}}


class EventRecorder:
    """Records Events through the API server for one reporting controller and instance."""

    def __init__(self, api: KubeClient, *, controller: str, instance: str | None = None,
                 clock: Callable[[], float] = time.time,
                 on_request: Callable[[str], None] | None = None,
                 cache: SeriesCache | None = None, tick_seconds: float = TICK_SECONDS) -> None:
        self._api = api
        self.controller = controller
        self.instance = instance or reporting_instance()
        self._clock = clock
        self._on_request = on_request or (lambda verb: None)
        self.cache = cache or SeriesCache()
        #: the note of each series' first Event, for a series whose Event was deleted
        self._notes: dict[EventKey, str] = {}
        self._tick_seconds = tick_seconds
        self._ticker: asyncio.Task[None] | None = None
        self._locks: dict[EventKey, asyncio.Lock] = {}

    async def record(self, regarding: ObjectRef, type: str, reason: str, note: str,
                     action: str) -> None:
        """One occurrence of an Event about ``regarding``; never raises."""
        key = EventKey(type, action, reason, regarding)
        namespace = regarding.namespace or CLUSTER_SCOPED_NAMESPACE
        # one request at a time per key: a series patch must not overtake its Event's create
        async with self._locks.setdefault(key, asyncio.Lock()):
            send, series = self.cache.observe(key, self._clock(),
                                              f"{regarding.name}.{time.time_ns():x}", namespace)
            if send is Send.CREATE:
                self._notes[key] = note
                await self._create(event_body(series, key, note, self.controller,
                                              self.instance))
            elif send is Send.PATCH_SERIES:
                await self._patch(key, series)
        self._ensure_ticker()

    async def flush(self) -> None:
        """Send the counts of series that are due (see ``SeriesCache.due``)."""
        for key, series in self.cache.due(self._clock()):
            async with self._locks.setdefault(key, asyncio.Lock()):
                await self._patch(key, series)
        for key in set(self._notes) - set(self.cache.entries):
            del self._notes[key]
            self._locks.pop(key, None)

    async def close(self) -> None:
        """Stop the ticker and send every count the API server does not have yet."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for key, series in self.cache.unsent():
            async with self._locks.setdefault(key, asyncio.Lock()):
                await self._patch(key, series)

    def _ensure_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(
                self._tick(), name="event-series")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._tick_seconds)
            await self.flush()

    async def _create(self, body: dict[str, Any]) -> bool:
        self._on_request("create")
        try:
            await self._api.create(_path(body["metadata"]["namespace"]), body)
            return True
        except KubeApiError as e:
            log.warning("event=event_post_failed regarding=%s/%s reason=%s status=%s",
                        body["regarding"]["kind"], body["regarding"]["name"], body["reason"],
                        e.status)
        except (TimeoutError, OSError) as e:
            log.warning("event=event_post_failed regarding=%s/%s reason=%s error=%r",
                        body["regarding"]["kind"], body["regarding"]["name"], body["reason"], e)
        return False

    async def _patch(self, key: EventKey, series: Series) -> None:
        self._on_request("patch")
        try:
            await self._api.merge_patch(_path(series.namespace, series.name),
                                        series_patch(series))
            sent = True
        except KubeApiError as e:
            sent = False
            if e.status == 404:
                # the Event expired (the API server keeps Events for an hour by default) or
                # was deleted: create it again, with its series
                body = {**event_body(series, key, self._notes.get(key, key.reason),
                                     self.controller, self.instance), **series_patch(series)}
                sent = await self._create(body)
            else:
                log.warning("event=event_series_update_failed event=%s/%s status=%s",
                            series.namespace, series.name, e.status)
        except (TimeoutError, OSError) as e:
            sent = False
            log.warning("event=event_series_update_failed event=%s/%s error=%r",
                        series.namespace, series.name, e)
        if sent:
            series.sent_count = series.count
            series.sent_at = self._clock()


def _path(namespace: str, name: str = "") -> str:
    return api_path("events.k8s.io/v1", "events", name, namespace=namespace)


_SHARED: weakref.WeakKeyDictionary[KubeClient, EventRecorder] = weakref.WeakKeyDictionary()


def shared_recorder(api: KubeClient, controller: str,
                    on_request: Callable[[str], None] | None = None) -> EventRecorder:
    """The one recorder of ``api``'s process for ``controller``, made on first use (for
    callers that cannot be handed one; a process should rather make one at start-up and
    close it at shutdown)."""
    recorder = _SHARED.get(api)
    if recorder is None:
        recorder = _SHARED[api] = EventRecorder(api, controller=controller,
                                                on_request=on_request)
    return recorder
