"""Where a node's pool comes from: the seam between the agent and what sizes its pool.

The agent hands out addresses, builds datapaths and keeps its store the same way whoever
decided which addresses are in the pool. Two sources sit behind one ``PoolSource``:

- ``NodeIPPoolSource`` (a Kubernetes node): the node's NodeIPPool, written by the operator,
  followed with a list + watch; the agent's fields go back into its status;
- ``imds_source.InstanceMetadataSource`` (a VM without Kubernetes): the NIC's secondary
  addresses as the instance metadata service lists them, read every ``refreshSeconds``;
  there is nothing to write back to, ``azure-cni status`` shows the agent's view.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from azure_cni.agent.kube import WatchExpired
from azure_cni.aio.backoff import Backoff
from azure_cni.api.nodeippool import InvalidPool, NodeIPPool, PoolStatus, status_apply_body

log = logging.getLogger(__name__)

#: called with each new version of the pool; None: there is none
AdoptPool = Callable[[NodeIPPool | None], Awaitable[None]]
#: called with why the pool cannot be read now; "" once it can again
ReportTrouble = Callable[[str], None]


@dataclass(frozen=True)
class PoolHints:
    """How errors and status name the pool, and what they tell an admin to check."""

    #: what the pool is, e.g. "NodeIPPool vm0"
    name: str
    #: what to look at when the pool is not known yet
    when_unknown: str
    #: who adds addresses when none is free
    who_adds: str


@runtime_checkable
class PoolSource(Protocol):
    """The agent's pool, from wherever it comes; see the module docstring."""

    @property
    def hints(self) -> PoolHints: ...

    async def follow(self, adopt: AdoptPool, trouble: ReportTrouble) -> None:
        """Deliver every new version of the pool to ``adopt`` until cancelled. Failures are
        reported to ``trouble`` and retried with backoff; this never returns otherwise."""
        ...

    async def publish(self, fields: Mapping[str, Any]) -> None:
        """Report the agent's own status fields (``PoolStatus.agent_fields()``); idempotent,
        raises when the write failed (the caller retries)."""
        ...

    async def reported(self) -> PoolStatus | None:
        """The pool's status as the source holds it now (None: nothing to read), so an agent
        that cannot open its store keeps what the last one reported instead of erasing it."""
        ...


# -- a Kubernetes node: the NodeIPPool ------------------------------------------------------


class PoolApi(Protocol):
    """What the agent needs from the Kubernetes API (real: ``agent.kube.KubePoolApi``)."""

    async def list_pool(self, name: str) -> tuple[dict[str, Any] | None, str]: ...

    def watch_pool(self, name: str, resource_version: str,
                   timeout_seconds: int = 300) -> AsyncIterator[tuple[str, dict[str, Any]]]: ...

    async def apply_status(self, name: str, body: Mapping[str, Any]) -> None: ...


async def watch_pool_forever(api: PoolApi, name: str,
                             on_pool: Callable[[Mapping[str, Any] | None], Awaitable[None]],
                             max_backoff: float = 30.0,
                             trouble: ReportTrouble = lambda _: None) -> None:
    """Follow one NodeIPPool: list, then watch from the list's resourceVersion; relist after
    410 Gone or any failure (with jittered backoff). ``on_pool(None)``: it does not exist."""
    # jittered: the agents of a whole cluster lose the API server together
    backoff = Backoff(first=1.0, most=max_backoff, jitter=True)
    while True:
        try:
            obj, version = await api.list_pool(name)
            trouble("")
            await on_pool(obj)
            backoff.succeeded()
            while True:
                async for kind, event in api.watch_pool(name, version):
                    version = str((event.get("metadata") or {}).get("resourceVersion")
                                  or version)
                    if kind in ("ADDED", "MODIFIED"):
                        await on_pool(event)
                    elif kind == "DELETED":
                        await on_pool(None)
        except WatchExpired:
            log.info("event=watch_expired; relisting")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - API server restarts, network blips
            delay = backoff.failed()
            log.warning("event=pool_watch_failed error=%r retry_in=%.0fs", e, delay)
            trouble(f"reading NodeIPPool {name} failed: {e!r}")
            await asyncio.sleep(delay)


def nodeippool_hints(node_name: str) -> PoolHints:
    return PoolHints(name=f"NodeIPPool {node_name}",
                     when_unknown="is the azure-cni operator running?",
                     who_adds="the operator")


class NodeIPPoolSource:
    """The node's NodeIPPool through the Kubernetes API (``PoolApi``)."""

    def __init__(self, api: PoolApi, node_name: str) -> None:
        self.api = api
        self.node_name = node_name
        self.hints = nodeippool_hints(node_name)

    async def follow(self, adopt: AdoptPool, trouble: ReportTrouble) -> None:
        async def on_object(obj: Mapping[str, Any] | None) -> None:
            if obj is None:
                await adopt(None)
                return
            try:
                pool = NodeIPPool.from_object(obj)
            except InvalidPool as e:
                log.error("event=pool_invalid error=%s", e)
                return
            await adopt(pool)

        await watch_pool_forever(self.api, self.node_name, on_object, trouble=trouble)

    async def publish(self, fields: Mapping[str, Any]) -> None:
        await self.api.apply_status(self.node_name, status_apply_body(self.node_name, fields))

    async def reported(self) -> PoolStatus | None:
        obj, _ = await self.api.list_pool(self.node_name)
        return NodeIPPool.from_object(obj).status if obj is not None else None
