"""Connecting the operator to the Kubernetes API (the agent has its own small client,
``agent.kube``, without kubernetes_asyncio's models)."""

from __future__ import annotations

import os

from kubernetes_asyncio import client, config


class KubeConfigError(RuntimeError):
    """Neither a kubeconfig nor an in-cluster service account could be used."""


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
