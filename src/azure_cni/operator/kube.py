"""The operator's writes to the Kubernetes API: pools, their status, their finalizer and
their Events; and the one list of Nodes and pools it takes itself before reconciling.

Watching is kopf's (``operator/kopf_events.py``); requests here are plain JSON on the small
client (``azure_cni.kubeclient``). Every request is counted in
``azure_cni_operator_kube_requests_total``; every write first asks the ``fence`` (the leader
Lease: ``operator/lease.py``) whether this replica may write.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

from azure_cni.api.nodeippool import (
    API_VERSION,
    CLASS_FIELD_MANAGER,
    CLASS_LABEL,
    KIND,
    OPERATOR_FIELD_MANAGER,
    PLURAL,
    NodeIPPool,
    PoolSpec,
    status_apply_body,
)
from azure_cni.api.poolclass import CLASS_PLURAL, ClassPlan
from azure_cni.kubeclient import KubeApiError, KubeClient, api_path
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


async def list_pages(api: KubeClient, path: str, resource: str
                     ) -> AsyncIterator[list[dict[str, Any]]]:
    """Every object of a resource, a page of ``LIST_PAGE`` at a time (nothing is kept but
    what the caller takes from each page)."""
    token = ""
    while True:
        _count("list", resource)
        params = {"limit": str(LIST_PAGE), **({"continue": token} if token else {})}
        try:
            page = await api.get(path, params)
        except KubeApiError as e:
            if e.status != 404:
                raise
            raise KubeApiError(404, (
                f"the API server does not serve {resource}: is its CustomResourceDefinition "
                "installed? helm install and upgrade never upgrade CRDs (see the chart "
                f"README): {e.body[:200]}")) from e
        yield list(page.get("items") or ())
        token = str((page.get("metadata") or {}).get("continue") or "")
        if not token:
            return


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
    """NodeIPPool reads and writes as plain JSON, as field manager azure-cni-operator."""

    def __init__(self, api: KubeClient, fence: Fence = _open_fence) -> None:
        self._api = api
        self._fence = fence

    def list_nodes(self) -> AsyncIterator[list[dict[str, Any]]]:
        return list_pages(self._api, api_path("v1", "nodes"), "nodes")

    def list_pools(self) -> AsyncIterator[list[dict[str, Any]]]:
        return list_pages(self._api, api_path(API_VERSION, PLURAL), PLURAL)

    def list_classes(self) -> AsyncIterator[list[dict[str, Any]]]:
        return list_pages(self._api, api_path(API_VERSION, CLASS_PLURAL), CLASS_PLURAL)

    async def node_uid(self, name: str) -> str | None:
        """The uid of the Node ``name`` as the API server has it now, None if it is gone."""
        _count("get", "nodes")
        try:
            obj = await self._api.get(api_path("v1", "nodes", name))
        except KubeApiError as e:
            if e.status == 404:
                return None
            raise
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
            await self._api.create(api_path(API_VERSION, PLURAL), body)
        except KubeApiError as e:
            if e.status == 409:
                return False
            raise
        return True

    async def get_pool(self, name: str) -> NodeIPPool | None:
        _count("get", PLURAL)
        try:
            obj = await self._api.get(api_path(API_VERSION, PLURAL, name))
        except KubeApiError as e:
            if e.status == 404:
                return None
            raise
        return NodeIPPool.from_object(obj)

    async def delete_pool(self, name: str) -> None:
        self._fence()
        _count("delete", PLURAL)
        try:
            await self._api.delete(api_path(API_VERSION, PLURAL, name))
        except KubeApiError as e:
            if e.status != 404:
                raise

    async def apply_status(self, name: str, fields: Mapping[str, Any]) -> NodeIPPool:
        """Server-side apply of the operator's status fields (the agent owns the others);
        ``PoolGone`` if the pool no longer exists."""
        self._fence()
        _count("patch", f"{PLURAL}/status")
        try:
            obj = await self._api.apply(
                api_path(API_VERSION, PLURAL, name, subresource="status"),
                status_apply_body(name, fields), OPERATOR_FIELD_MANAGER)
        except KubeApiError as e:
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
                await self._api.merge_patch(api_path(API_VERSION, PLURAL, name), patch)
            if plan.condition is not None or plan.clear:
                conditions = [plan.condition.to_dict()] if plan.condition is not None else []
                self._fence()
                _count("patch", f"{PLURAL}/status")
                await self._api.apply(
                    api_path(API_VERSION, PLURAL, name, subresource="status"),
                    status_apply_body(name, {"conditions": conditions}), CLASS_FIELD_MANAGER)
        except KubeApiError as e:
            if e.status != 404:
                raise

    async def add_finalizer(self, name: str) -> None:
        """Append ``FINALIZER`` (a JSON patch: the other finalizers stay as they are)."""
        path = api_path(API_VERSION, PLURAL, name)
        self._fence()
        _count("patch", PLURAL)
        try:
            await self._api.json_patch(path, [{"op": "add", "path": "/metadata/finalizers/-",
                                               "value": FINALIZER}])
        except KubeApiError as e:
            if e.status != 422:  # no finalizers list yet: create it
                raise
            _count("patch", PLURAL)
            await self._api.json_patch(path, [{"op": "add", "path": "/metadata/finalizers",
                                               "value": [FINALIZER]}])

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
            await self._api.json_patch(api_path(API_VERSION, PLURAL, pool.name), patch)
        except KubeApiError as e:
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
        return shared_recorder(self._api, "azure-cni-operator",
                               lambda verb: _count(verb, "events"))

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
