"""Prometheus metrics of the operator (the Azure call latencies live in azure_cni.cloud)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from azure_cni.api.nodeippool import IPState, PoolIP

ALLOCATED = Counter("azure_cni_operator_ip_allocations_total",
                    "Addresses added to NICs as secondary ipConfigurations")
RELEASED = Counter("azure_cni_operator_ip_releases_total",
                   "Addresses removed from NICs after the node agent acknowledged them")
NIC_WRITES = Histogram(
    "azure_cni_operator_nic_write_duration_seconds",
    "One NIC write (adds and removals together), including the long-running operation",
    ["kind", "outcome"],
    buckets=(0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300),
)
POOL_IPS = Gauge("azure_cni_operator_pool_ips", "Addresses of a node's pool by state",
                 ["node", "state"])
RECONCILES = Counter("azure_cni_operator_reconciles_total", "Pool reconciles by outcome",
                     ["outcome"])
KUBE_REQUESTS = Counter("azure_cni_operator_kube_requests_total",
                        "Requests the operator made to the Kubernetes API (a watch counts once)",
                        ["verb", "resource"])
QUEUE_DEPTH = Gauge("azure_cni_operator_queue_depth",
                    "Pools waiting to be reconciled (now or after a delay)")
NIC_SWEEPS = Counter("azure_cni_operator_nic_sweeps_total",
                     "Sweeps that listed every node's NIC to find drift")
POOLS_KNOWN = Gauge("azure_cni_operator_pools", "NodeIPPools the operator follows")


def observe_write(added: int, removed: int, seconds: float, error: Exception | None) -> None:
    kind = "allocate" if added and not removed else "release" if removed and not added else (
        "allocate_and_release")
    NIC_WRITES.labels(kind, "success" if error is None else type(error).__name__).observe(seconds)
    if error is None:
        ALLOCATED.inc(added)
        RELEASED.inc(removed)


def observe_pool(node: str, ips: Iterable[PoolIP], used: int) -> None:
    ips = list(ips)
    releasing = sum(ip.state is IPState.RELEASING for ip in ips)
    POOL_IPS.labels(node, "available").set(len(ips) - releasing)
    POOL_IPS.labels(node, "releasing").set(releasing)
    POOL_IPS.labels(node, "used").set(used)


def forget_pool(node: str) -> None:
    for state in ("available", "releasing", "used"):
        with contextlib.suppress(KeyError):
            POOL_IPS.remove(node, state)
