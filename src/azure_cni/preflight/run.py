"""Gathering what the cluster preflight checks: the cluster's Nodes and NodeIPPools, and
Azure with the operator's credential (a node's own checks: ``preflight.node``).

The one user of kubernetes_asyncio left (the operator and the agent use the small client,
``azure_cni.kubeclient``): the preflight is a short-lived Helm hook Job, where that client's
memory does not matter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from azure_cni.api.nodeippool import GROUP, PLURAL, VERSION
from azure_cni.api.settings import Settings
from azure_cni.cloud.azure import AzureAdapter
from azure_cni.kubeclient import KubeConfigError
from azure_cni.preflight.azure import azure_findings
from azure_cni.preflight.cluster import NodeFacts, cluster_findings, vm_of
from azure_cni.preflight.findings import Finding

PAGE = 500


async def connect(kubeconfig: str | None = None) -> client.ApiClient:
    """A kubernetes_asyncio client from ``kubeconfig``, else ``$KUBECONFIG``, else the pod's
    service account."""
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


async def check_cluster(settings: Settings, kubeconfig: str | None, *, azure: bool = True,
                        adapter: Callable[[], AzureAdapter] | None = None) -> list[Finding]:
    """The cluster's checks, and with ``azure`` the operator identity's, per node."""
    api = await connect(kubeconfig)
    try:
        nodes = await _list(lambda **kw: client.CoreV1Api(api).list_node(**kw))
        try:
            pools = await _list(lambda **kw: client.CustomObjectsApi(api)
                                .list_cluster_custom_object(GROUP, VERSION, PLURAL, **kw))
        except ApiException as e:
            if e.status != 404:  # no CRD yet: before installing
                raise
            pools = []
    finally:
        await api.close()
    by_name = {str(p["metadata"]["name"]): p for p in pools}
    facts = [NodeFacts.from_objects(n, by_name.get(str(n["metadata"]["name"]))) for n in nodes]
    findings = cluster_findings(facts, settings.pool.max_ips)
    if azure:
        vms = [(f.name, vm) for f in facts if (vm := vm_of(f)) is not None]
        made = adapter() if adapter is not None else AzureAdapter(settings.azure)
        try:
            findings += await azure_findings(made, vms, settings)
        finally:
            await made.close()
    return findings


async def _list(lister: Callable[..., Any]) -> list[dict[str, Any]]:
    """Every object of a list, page by page, as plain JSON."""
    items: list[dict[str, Any]] = []
    token = ""
    while True:
        kwargs: dict[str, Any] = {"limit": PAGE, "_preload_content": False}
        if token:
            kwargs["_continue"] = token
        response = await lister(**kwargs)
        try:
            body = await response.read()
            if not 200 <= response.status <= 299:
                raise ApiException(status=response.status, reason=body[:300].decode())
            page = json.loads(body)
        finally:
            response.release()
        items += page.get("items") or []
        token = (page.get("metadata") or {}).get("continue") or ""
        if not token:
            return items
