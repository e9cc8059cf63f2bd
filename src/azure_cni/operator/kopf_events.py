"""kopf as the operator's event source: it logs in, lists and watches Nodes, NodeIPPools and
NodeIPPoolClasses (relisting after 410 Gone or a broken stream) and hands every event to the
controller.

The handlers are ``@kopf.on.event`` only: they record the newest object and queue its pool,
nothing else, so kopf keeps no progress or diff-base annotations, adds no finalizer and makes
no write. Everything that decides and writes stays in the controller, the work queue and the
reconcile. The settings below are chosen for 5,000 nodes (docs/design-notes.md, "kopf as the
event source").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Protocol

import kopf

from azure_cni.api.nodeippool import GROUP, PLURAL, VERSION
from azure_cni.api.poolclass import CLASS_PLURAL
from azure_cni.kubeclient import SERVICE_ACCOUNT, service_account_server

log = logging.getLogger(__name__)

#: objects per page of kopf's initial list: one page of 12 KB Nodes is ~1.2 MB of JSON
LIST_CHUNK = 100
#: seconds an idle per-object kopf worker lives; it holds its last raw event meanwhile, so
#: with kopf's default (5 s) the whole initial list of Nodes stays in memory at once
WORKER_IDLE_SECONDS = 0.2


class EventSink(Protocol):
    """What the controller takes from kopf (``kind``: ADDED, MODIFIED or DELETED)."""

    def pool_event(self, kind: str, obj: Mapping[str, Any]) -> None: ...

    def class_event(self, kind: str, obj: Mapping[str, Any]) -> None: ...

    async def node_event(self, kind: str, obj: Mapping[str, Any]) -> None: ...


class NoEssence(kopf.DiffBaseStorage):
    """No diff base: event handlers compare nothing. kopf still builds one for every event
    of every object (``_detect_causes``), by default a deep copy of the whole object, which
    for a Node is its 12 KB of conditions, images and labels, at every kubelet status
    report (16.7 a second at 5,000 nodes), to be thrown away."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def settings() -> kopf.OperatorSettings:
    """kopf as an event source for thousands of objects."""
    s = kopf.OperatorSettings()
    # only the two resources the handlers name: no list and watch of every CRD
    s.scanning.disabled = True
    # the operator posts its own Events; kopf would post one per handler log line
    s.posting.enabled = False
    # leader election is the Lease (operator/lease.py); kopf's peering is not
    s.peering.standalone = True
    s.peering.clusterwide = True
    s.persistence.diffbase_storage = NoEssence()
    s.watching.chunk_size = LIST_CHUNK
    s.queueing.idle_timeout = WORKER_IDLE_SECONDS
    # a watch stream silent for this long is dead: reconnect (bookmarks come every minute)
    s.watching.inactivity_timeout = 70.0
    return s


def _kind(event: Mapping[str, Any]) -> str:
    """kopf marks objects of its initial list with type None; to the controller they are
    ADDED."""
    return str(event.get("type") or "ADDED")


def in_cluster_connection(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    """The pod's service account at the address the kubelet gives every pod
    (``kubeclient.service_account_server``; kopf's own ``kubernetes.default.svc`` would not
    resolve before cluster DNS runs). The token is read anew at every login, as the kubelet
    rotates it."""
    found = service_account_server()
    if found is None:
        return None
    server, token_file = found
    ca = SERVICE_ACCOUNT / "ca.crt"
    return kopf.ConnectionInfo(
        server=server,
        ca_path=str(ca) if ca.exists() else None,
        token=token_file.read_text().strip() or None,
        trust_env=settings.networking.trust_env,
    )


def registry(sink: EventSink) -> kopf.OperatorRegistry:
    """A registry of kopf handlers that feed ``sink``; nothing is registered globally."""
    handlers = kopf.OperatorRegistry()

    @kopf.on.login(registry=handlers)
    def login(*, settings: kopf.OperatorSettings, **kwargs: Any
              ) -> kopf.ConnectionInfo | None:
        # the operator's --kubeconfig becomes KUBECONFIG (operator/main.py)
        if os.environ.get("KUBECONFIG"):
            return kopf.login_with_kubeconfig(settings=settings, **kwargs)
        return in_cluster_connection(settings)

    # Every handler is a coroutine: kopf runs a plain function in a thread pool, where it
    # would change the controller's state and its asyncio queues from another thread than
    # the workers' (and cost a thread hop per event).
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=handlers)
    async def pool_event(*, event: Mapping[str, Any], **_: Any) -> None:
        sink.pool_event(_kind(event), event.get("object") or {})

    @kopf.on.event(GROUP, VERSION, CLASS_PLURAL, registry=handlers)
    async def class_event(*, event: Mapping[str, Any], **_: Any) -> None:
        sink.class_event(_kind(event), event.get("object") or {})

    @kopf.on.event("", "v1", "nodes", registry=handlers)
    async def node_event(*, event: Mapping[str, Any], **_: Any) -> None:
        await sink.node_event(_kind(event), event.get("object") or {})

    return handlers
