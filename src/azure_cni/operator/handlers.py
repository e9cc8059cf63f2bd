"""kopf handlers: a few lines each, translating events into calls on the scheduler.

- every Node gets a NodeIPPool (owned by the Node, spec from the chart's pool defaults);
- every NodeIPPool gets a daemon that reconciles it (``scheduler.maintain``);
- deleting a pool (or its Node) removes our ipConfigurations from the NIC first (finalizer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from azure_cni.api.nodeippool import GROUP, PLURAL, VERSION, NodeIPPool
from azure_cni.operator.kube import FINALIZER
from azure_cni.operator.runtime import Runtime
from azure_cni.operator.scheduler import RetryLater

log = logging.getLogger(__name__)

_runtime: Runtime | None = None


def runtime() -> Runtime:
    assert _runtime is not None, "the startup handler has not run"
    return _runtime


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _runtime  # noqa: PLW0603 - kopf handlers are module-level by design
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    _runtime = await Runtime.start()


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    if _runtime is not None:
        await _runtime.close()


@kopf.on.probe(id="azure")
def azure_probe(**_: Any) -> str:
    return runtime().health()


@kopf.on.event("", "v1", "nodes")
async def node_event(event: kopf.RawEvent, name: str, uid: str, spec: kopf.Spec,
                     **_: Any) -> None:
    scheduler = runtime().scheduler
    if event["type"] == "DELETED":
        await scheduler.node_deleted(name)
    else:
        await scheduler.node_changed(name, uid, spec.get("providerID"))


@kopf.on.event(GROUP, VERSION, PLURAL)
def pool_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    runtime().scheduler.pool_changed(body, deleted=event["type"] == "DELETED")


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=30.0,
             when=lambda body, **_: not body.get("metadata", {}).get("deletionTimestamp"))
async def maintain_pool(name: str, stopped: kopf.DaemonStopped, **_: Any) -> None:
    stop = asyncio.Event()

    async def relay_stop() -> None:
        await stopped.wait()
        stop.set()

    relay = asyncio.create_task(relay_stop())
    try:
        await runtime().scheduler.maintain(name, stop)
    except RetryLater as e:
        raise kopf.TemporaryError(str(e), delay=e.delay) from e
    finally:
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def release_pool(body: kopf.Body, **_: Any) -> None:
    pool = NodeIPPool.from_object(body)
    rt = runtime()
    result = await rt.reconciler.reconcile(pool, rt.scheduler.provider_ids.get(pool.spec.node_name))
    if not result.outcome.release_finalizer:
        raise kopf.TemporaryError(result.outcome.message,
                                  delay=result.outcome.requeue_after or 10.0)
