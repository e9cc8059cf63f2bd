"""The operator's side of the Kubernetes API: NodeIPPools, their status and their Events."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from azure_cni.api.nodeippool import (
    API_VERSION,
    GROUP,
    KIND,
    OPERATOR_FIELD_MANAGER,
    PLURAL,
    VERSION,
    NodeIPPool,
    PoolSpec,
    status_apply_body,
    utcnow,
)

log = logging.getLogger(__name__)

#: cluster-scoped objects get their Events in this namespace (kubectl describe looks there)
EVENT_NAMESPACE = "default"
#: holds a pool until the addresses it handed out have left the NIC
FINALIZER = "azurecni.io/nic-cleanup"


class PoolWriter(Protocol):
    """What reconciling a pool writes back to Kubernetes."""

    async def apply_status(self, name: str, fields: Mapping[str, Any]) -> NodeIPPool:
        """Apply the operator's status fields; return the pool as stored afterwards."""
        ...

    async def post_event(self, pool: NodeIPPool, kind: str, reason: str, message: str
                         ) -> None: ...

    async def add_finalizer(self, name: str) -> None:
        """Hold the pool (``FINALIZER``) until its addresses have left the NIC."""
        ...

    async def remove_finalizer(self, pool: NodeIPPool) -> None:
        """Let the pool go: nothing of it is left on the NIC. A pool already gone is fine."""
        ...


class KubePools:
    """NodeIPPool reads and writes on kubernetes_asyncio, as field manager azure-cni-operator."""

    def __init__(self, api: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)

    async def create_pool(self, node_name: str, node_uid: str, spec: PoolSpec) -> bool:
        """Create the pool of a node, owned by the Node; False if it already exists."""
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": node_name,
                "labels": {"app.kubernetes.io/managed-by": "azure-cni"},
                "finalizers": [FINALIZER],
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node_name,
                                     "uid": node_uid}],
            },
            "spec": spec.to_dict(),
        }
        try:
            await self._custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    async def get_pool(self, name: str) -> NodeIPPool | None:
        try:
            obj = await self._custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return NodeIPPool.from_object(obj)

    async def delete_pool(self, name: str) -> None:
        try:
            await self._custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except ApiException as e:
            if e.status != 404:
                raise

    async def apply_status(self, name: str, fields: Mapping[str, Any]) -> NodeIPPool:
        """Server-side apply of the operator's status fields (the agent owns the others)."""
        # _content_type is honoured at runtime but missing from the library's stubs
        obj = await self._custom.patch_cluster_custom_object_status(  # type: ignore[call-arg]
            GROUP, VERSION, PLURAL, name, status_apply_body(name, fields),
            field_manager=OPERATOR_FIELD_MANAGER, force=True,
            _content_type="application/apply-patch+yaml",
        )
        return NodeIPPool.from_object(obj)

    async def add_finalizer(self, name: str) -> None:
        """Append ``FINALIZER`` (a JSON patch: the other finalizers stay as they are)."""
        patch = [{"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}]
        try:
            await self._custom.patch_cluster_custom_object(  # type: ignore[call-arg]
                GROUP, VERSION, PLURAL, name, patch, _content_type="application/json-patch+json")
        except ApiException as e:
            if e.status != 422:  # no finalizers list yet: create it
                raise
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
        """A Kubernetes Event on the pool; failures are logged, never raised."""
        now = utcnow()
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{pool.name}."),
            involved_object=client.V1ObjectReference(
                api_version=API_VERSION, kind=KIND, name=pool.name, uid=pool.uid or None),
            type=kind, reason=reason, message=message[:1024],
            first_timestamp=now, last_timestamp=now, count=1,
            source=client.V1EventSource(component="azure-cni-operator"),
            reporting_component="azure-cni-operator", reporting_instance="azure-cni-operator",
        )
        try:
            await self._core.create_namespaced_event(EVENT_NAMESPACE, event)
        except ApiException as e:
            log.warning("event=event_post_failed pool=%s reason=%s status=%s", pool.name,
                        reason, e.status)
