"""The agent's only conversation with Kubernetes: its own NodeIPPool, read and status-applied.

Uses kubernetes_asyncio. The watch is done by hand on the raw response (list, then watch from
the list's resourceVersion with a field selector on the pool's name), so 410 Gone and broken
connections are visible to the caller, which relists.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from azure_cni.api.nodeippool import AGENT_FIELD_MANAGER, GROUP, PLURAL, VERSION
from azure_cni.kubeclient import connect, watch_events

log = logging.getLogger(__name__)


class KubePoolApi:
    """NodeIPPool access for one node's agent."""

    def __init__(self, api_client: client.ApiClient, request_timeout: float = 30.0) -> None:
        self._api_client = api_client
        self._custom = client.CustomObjectsApi(api_client)
        self._timeout = request_timeout

    @classmethod
    async def connect(cls, kubeconfig: Path | None) -> KubePoolApi:
        """From a kubeconfig file, or the pod's service account when there is none."""
        return cls(await connect(str(kubeconfig) if kubeconfig is not None else None))

    async def close(self) -> None:
        await self._api_client.close()

    async def list_pool(self, name: str) -> tuple[dict[str, Any] | None, str]:
        """The pool (or None) and the resourceVersion to watch from."""
        listing = await self._custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, field_selector=f"metadata.name={name}",
            _request_timeout=self._timeout)
        items = listing.get("items") or []
        return (items[0] if items else None), str(listing["metadata"]["resourceVersion"])

    async def watch_pool(self, name: str, resource_version: str,
                         timeout_seconds: int = 300) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event type, object) until the server ends the watch; WatchExpired on 410."""
        response = await self._custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, field_selector=f"metadata.name={name}", watch=True,
            resource_version=resource_version, allow_watch_bookmarks=True,
            timeout_seconds=timeout_seconds, _preload_content=False,
            _request_timeout=timeout_seconds + 30)
        async for event in watch_events(response):
            yield event

    async def apply_status(self, name: str, body: Mapping[str, Any]) -> None:
        """Server-side apply of the agent's status fields (field manager azure-cni-agent)."""
        # the stubs omit _content_type, which the client honours (and JSON-encodes the body)
        await self._custom.patch_cluster_custom_object_status(  # type: ignore[call-arg]
            GROUP, VERSION, PLURAL, name, dict(body), field_manager=AGENT_FIELD_MANAGER,
            force=True, _content_type="application/apply-patch+yaml",
            _request_timeout=self._timeout)
