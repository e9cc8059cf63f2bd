"""The agent's only conversation with Kubernetes: its own NodeIPPool, read and status-applied.

Three requests on the shared small client (``azure_cni.kubeclient``, aiohttp and JSON, no
kubernetes_asyncio): LIST with a field selector on the pool's name, a WATCH from the list's
resourceVersion (read line by line, so 410 Gone and broken connections reach the caller,
which relists), and a server-side apply of the status subresource.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from azure_cni.api.nodeippool import AGENT_FIELD_MANAGER, API_VERSION, PLURAL
from azure_cni.kubeclient import (
    KubeApiError,
    KubeClient,
    KubeConfigError,
    WatchExpired,
    api_path,
    connection,
)

__all__ = ["KubeApiError", "KubeConfigError", "KubePoolApi", "WatchExpired"]


class KubePoolApi:
    """NodeIPPool access for one node's agent."""

    def __init__(self, client: KubeClient) -> None:
        self._client = client

    @classmethod
    async def connect(cls, kubeconfig: str | os.PathLike[str] | None) -> KubePoolApi:
        """From a kubeconfig file (or ``$KUBECONFIG``), or the pod's service account."""
        return cls(KubeClient(connection(kubeconfig), connections=4))

    async def close(self) -> None:
        await self._client.close()

    async def list_pool(self, name: str) -> tuple[dict[str, Any] | None, str]:
        """The pool (or None) and the resourceVersion to watch from."""
        listing = await self._client.get(api_path(API_VERSION, PLURAL),
                                         {"fieldSelector": f"metadata.name={name}"})
        items = listing.get("items") or []
        return (items[0] if items else None), str(listing["metadata"]["resourceVersion"])

    def watch_pool(self, name: str, resource_version: str, timeout_seconds: int = 300
                   ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event type, object) until the server ends the watch; WatchExpired on 410."""
        return self._client.watch(api_path(API_VERSION, PLURAL),
                                  {"fieldSelector": f"metadata.name={name}"},
                                  resource_version, timeout_seconds)

    async def apply_status(self, name: str, body: Mapping[str, Any]) -> None:
        """Server-side apply of the agent's status fields (field manager azure-cni-agent)."""
        await self._client.apply(api_path(API_VERSION, PLURAL, name, subresource="status"),
                                 body, AGENT_FIELD_MANAGER)
