"""The operator's writes to the Kubernetes API: pools, their status, their finalizer and
their Events; and the one list of Nodes and pools it takes itself before reconciling.

Watching is kopf's (``operator/kopf_events.py``). Requests here send and read plain JSON where
the answer is not needed as an object, so no client model is built for them. Every request is
counted in ``azure_cni_operator_kube_requests_total``; every write first asks the ``fence``
(the leader Lease: ``operator/lease.py``) whether this replica may write.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from azure_cni.api.nodeippool import (
    API_VERSION,
    CLASS_FIELD_MANAGER,
    CLASS_LABEL,
    GROUP,
    KIND,
    OPERATOR_FIELD_MANAGER,
    PLURAL,
    VERSION,
    NodeIPPool,
    PoolSpec,
    status_apply_body,
)
from azure_cni.api.poolclass import CLASS_PLURAL, ClassPlan
from azure_cni.kubeevents import EventRecorder, ObjectRef, shared_recorder
from azure_cni.operator import metrics

log = logging.getLogger(__name__)

#: cluster-scoped objects get their Events in this namespace (kubectl describe looks there)
EVENT_NAMESPACE = "default"
#: holds a pool until the addresses it handed out have left the NIC
FINALIZER = "azurecni.io/nic-cleanup"
#: objects per page of an initial list (bounds the memory a list of 5,000 Nodes takes)
LIST_PAGE = 100

#: asked before every write; raises when this replica may not write (not the leader)
Fence = Callable[[], None]


def _open_fence() -> None:
    """Writes are always allowed (one replica, or a test)."""


def _count(verb: str, resource: str) -> None:
    metrics.KUBE_REQUESTS.labels(verb=verb, resource=resource).inc()


class PoolGone(LookupError):
    """The pool no longer exists (404): whatever was to be written about it is moot."""


async def list_pages(lister: Callable[..., Awaitable[Any]], resource: str
                     ) -> AsyncIterator[list[dict[str, Any]]]:
    """Every object of a resource, a page of ``LIST_PAGE`` at a time, as plain JSON (no
    client models; nothing is kept but what the caller takes from each page)."""
    token: str | None = None
    while True:
        _count("list", resource)
        kwargs: dict[str, Any] = {"limit": LIST_PAGE, "_preload_content": False}
        if token:
            kwargs["_continue"] = token
        response = await lister(**kwargs)
        try:
            body = await response.read()
            if response.status == 404:
                raise ApiException(status=404, reason=(
                    f"the API server does not serve {resource}: is its "
                    "CustomResourceDefinition installed? helm install and upgrade never "
                    "upgrade CRDs (see the chart README): "
                    f"{body[:200].decode(errors='replace')}"))
            if not 200 <= response.status <= 299:
                raise ApiException(status=response.status,
                                   reason=f"listing {resource}: "
                                          f"{body[:512].decode(errors='replace')}")
            page = json.loads(body)
        finally:
            response.release()
        yield list(page.get("items") or ())
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return


async def _unread(request: Awaitable[Any]) -> None:
    """Send a request whose answer is not needed (``_preload_content=False``): only its
    status is looked at, and an error raised as the client would raise it."""
    response = await request
    try:
        if not 200 <= response.status <= 299:
            body = (await response.read())[:512].decode(errors="replace")
            raise ApiException(status=response.status, reason=body)
    finally:
        response.release()


class PoolWriter(Protocol):
    """What reconciling a pool writes back to Kubernetes."""

    async def apply_status(self, name: str, fields: Mapping[str, Any]) -> NodeIPPool:
        """Apply the operator's status fields; return the pool as stored afterwards."""
        ...

    async def post_event(self, pool: NodeIPPool, kind: str, reason: str, message: str
                         ) -> None: ...

    async def post_pod_event(self, namespace: str, pod: str, kind: str, reason: str,
                             message: str) -> None:
        """A Kubernetes Event on a pod (per-pod Azure networking); never raises."""
        ...

    async def add_finalizer(self, name: str) -> None:
        """Hold the pool (``FINALIZER``) until its addresses have left the NIC."""
        ...

    async def remove_finalizer(self, pool: NodeIPPool) -> None:
        """Let the pool go: nothing of it is left on the NIC. A pool already gone is fine."""
        ...


class KubePools:
    """NodeIPPool reads and writes on kubernetes_asyncio, as field manager azure-cni-operator."""

    def __init__(self, api: client.ApiClient, fence: Fence = _open_fence) -> None:
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._fence = fence

    def list_nodes(self) -> AsyncIterator[list[dict[str, Any]]]:
        return list_pages(self._core.list_node, "nodes")

    def list_pools(self) -> AsyncIterator[list[dict[str, Any]]]:
        async def lister(**kwargs: Any) -> Any:
            return await self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kwargs)

        return list_pages(lister, PLURAL)

    def list_classes(self) -> AsyncIterator[list[dict[str, Any]]]:
        async def lister(**kwargs: Any) -> Any:
            return await self._custom.list_cluster_custom_object(GROUP, VERSION, CLASS_PLURAL,
                                                                 **kwargs)

        return list_pages(lister, CLASS_PLURAL)

    async def node_uid(self, name: str) -> str | None:
        """The uid of the Node ``name`` as the API server has it now, None if it is gone."""
        _count("get", "nodes")
        try:
            response: Any = await self._core.read_node(name, _preload_content=False)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        try:
            obj = json.loads(await response.read())
        finally:
            response.release()
        return str((obj.get("metadata") or {}).get("uid") or "") or None

    async def create_pool(self, node_name: str, node_uid: str, spec: PoolSpec,
                          pool_class: str = "") -> bool:
        """Create the pool of a node, owned by the Node (labelled with the NodeIPPoolClass it
        comes from, if any); False if it already exists."""
        labels = {"app.kubernetes.io/managed-by": "azure-cni",
                  **({CLASS_LABEL: pool_class} if pool_class else {})}
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": node_name,
                "labels": labels,
                "finalizers": [FINALIZER],
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node_name,
                                     "uid": node_uid}],
            },
            "spec": spec.to_dict(),
        }
        self._fence()
        _count("create", PLURAL)
        try:
            await _unread(self._custom.create_cluster_custom_object(
                GROUP, VERSION, PLURAL, body, _preload_content=False))
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    async def get_pool(self, name: str) -> NodeIPPool | None:
        _count("get", PLURAL)
        try:
            obj = await self._custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return NodeIPPool.from_object(obj)

    async def delete_pool(self, name: str) -> None:
        self._fence()
        _count("delete", PLURAL)
        try:
            await self._custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except ApiException as e:
            if e.status != 404:
                raise

    async def apply_status(self, name: str, fields: Mapping[str, Any]) -> NodeIPPool:
        """Server-side apply of the operator's status fields (the agent owns the others);
        ``PoolGone`` if the pool no longer exists."""
        self._fence()
        _count("patch", f"{PLURAL}/status")
        try:
            # _content_type is honoured at runtime but missing from the library's stubs
            obj = await self._custom.patch_cluster_custom_object_status(  # type: ignore[call-arg]
                GROUP, VERSION, PLURAL, name, status_apply_body(name, fields),
                field_manager=OPERATOR_FIELD_MANAGER, force=True,
                _content_type="application/apply-patch+yaml",
            )
        except ApiException as e:
            if e.status == 404:
                raise PoolGone(f"NodeIPPool {name} no longer exists") from e
            raise
        return NodeIPPool.from_object(obj)

    async def follow_class(self, name: str, plan: ClassPlan) -> None:
        """Write what ``plan`` says: the spec fields and label (one merge patch), then the
        ``PoolClass`` condition (server-side apply under the class sync's own field manager,
        so the reconcile's status writes never remove it). A pool gone is fine."""
        try:
            if plan.spec or plan.label is not None:
                patch: dict[str, Any] = {}
                if plan.spec:
                    patch["spec"] = dict(plan.spec)
                if plan.label is not None:
                    patch["metadata"] = {"labels": {CLASS_LABEL: plan.label or None}}
                self._fence()
                _count("patch", PLURAL)
                await _unread(self._custom.patch_cluster_custom_object(  # type: ignore[call-arg]
                    GROUP, VERSION, PLURAL, name, patch,
                    _content_type="application/merge-patch+json", _preload_content=False))
            if plan.condition is not None or plan.clear:
                conditions = [plan.condition.to_dict()] if plan.condition is not None else []
                self._fence()
                _count("patch", f"{PLURAL}/status")
                await _unread(
                    self._custom.patch_cluster_custom_object_status(  # type: ignore[call-arg]
                        GROUP, VERSION, PLURAL, name,
                        status_apply_body(name, {"conditions": conditions}),
                        field_manager=CLASS_FIELD_MANAGER, force=True,
                        _content_type="application/apply-patch+yaml", _preload_content=False))
        except ApiException as e:
            if e.status != 404:
                raise

    async def add_finalizer(self, name: str) -> None:
        """Append ``FINALIZER`` (a JSON patch: the other finalizers stay as they are)."""
        patch = [{"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}]
        self._fence()
        _count("patch", PLURAL)
        try:
            await self._custom.patch_cluster_custom_object(  # type: ignore[call-arg]
                GROUP, VERSION, PLURAL, name, patch, _content_type="application/json-patch+json")
        except ApiException as e:
            if e.status != 422:  # no finalizers list yet: create it
                raise
            _count("patch", PLURAL)
            await self._custom.patch_cluster_custom_object(  # type: ignore[call-arg]
                GROUP, VERSION, PLURAL, name,
                [{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}],
                _content_type="application/json-patch+json")

    async def remove_finalizer(self, pool: NodeIPPool) -> None:
        """Remove ``FINALIZER`` at the index we saw it, tested first so no other is touched."""
        if FINALIZER not in pool.finalizers:
            return
        index = pool.finalizers.index(FINALIZER)
        patch = [{"op": "test", "path": f"/metadata/finalizers/{index}", "value": FINALIZER},
                 {"op": "remove", "path": f"/metadata/finalizers/{index}"}]
        self._fence()
        _count("patch", PLURAL)
        try:
            await self._custom.patch_cluster_custom_object(  # type: ignore[call-arg]
                GROUP, VERSION, PLURAL, pool.name, patch,
                _content_type="application/json-patch+json")
        except ApiException as e:
            if e.status == 404:
                return
            if e.status == 422:  # the list changed since we saw it: read it again
                fresh = await self.get_pool(pool.name)
                if fresh is not None and fresh.finalizers != pool.finalizers:
                    await self.remove_finalizer(fresh)
                return
            raise

    async def post_event(self, pool: NodeIPPool, kind: str, reason: str, message: str
                         ) -> None:
        """A Kubernetes Event on the pool (repeats aggregate into one); never raises."""
        await self._recorder().record(ObjectRef(API_VERSION, KIND, pool.name, uid=pool.uid),
                                      kind, reason, message, action="Reconcile")

    def _recorder(self) -> EventRecorder:
        """The process's Event recorder (repeats aggregate into one Event with a series)."""
        return shared_recorder(self._core.api_client,  # type: ignore[attr-defined]
                               "azure-cni-operator", lambda verb: _count(verb, "events"))

    async def post_node_event(self, node: str, kind: str, reason: str, message: str) -> None:
        """A Kubernetes Event on a Node (when there is no pool to put it on); never raises."""
        await self._recorder().record(ObjectRef("v1", "Node", node), kind, reason, message,
                                      action="Reconcile")

    async def post_pod_event(self, namespace: str, pod: str, kind: str, reason: str,
                             message: str) -> None:
        """An Event on a pod, in its namespace (the pod's uid is not needed: kubectl describe
        matches Events by kind, namespace and name); repeats aggregate; never raises."""
        await self._recorder().record(ObjectRef("v1", "Pod", pod, namespace=namespace), kind,
                                      reason, message, action="PodNetworking")
