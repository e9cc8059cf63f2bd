"""Connecting to the Kubernetes API, for the operator and the node agent alike."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException


class KubeConfigError(RuntimeError):
    """Neither a kubeconfig nor an in-cluster service account could be used."""


class WatchExpired(RuntimeError):
    """The server no longer has the resourceVersion the watch started from (410 Gone)."""


async def watch_events(response: Any) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event type, object) from a watch response read raw (``_preload_content=False``),
    until the server ends it; WatchExpired on 410, ApiException on another ERROR event.
    The response is released when the iteration ends."""
    try:
        async for line in response.content:
            if not line.strip():
                continue
            event = json.loads(line)
            kind = str(event.get("type"))
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise WatchExpired(str(obj.get("message")))
                raise ApiException(status=obj.get("code"), reason=str(obj.get("message")))
            yield kind, obj
    finally:
        response.release()


async def connect(kubeconfig: str | None = None) -> client.ApiClient:
    """An API client from ``kubeconfig``, else ``$KUBECONFIG``, else the pod's service account."""
    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    try:
        if path:
            await config.load_kube_config(config_file=path, client_configuration=configuration)
        else:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
    except config.ConfigException as e:
        where = path or "the in-cluster service account"
        raise KubeConfigError(f"cannot use {where} to reach the Kubernetes API: {e}") from e
    return client.ApiClient(configuration)
