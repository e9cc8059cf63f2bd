"""Prometheus metrics of the operator (the Azure call latencies live in azure_cni.cloud).

Per-pool series carry the label ``nodeippool`` (the pool's name, which is its node's name),
not ``node``: scrape configurations commonly give every target a ``node`` label of their own
(the node the operator runs on), which would rename ours to ``exported_node``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from azure_cni.api.nodeippool import IPState, PoolIP
from azure_cni.cloud.armjson import usable_addresses
from azure_cni.cloud.port import CloudError, SubnetInfo

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
SUBNET_FREE = Gauge("azure_cni_operator_subnet_free_addresses",
                    "Addresses of a subnet not assigned to any ipConfiguration, as last read "
                    "from Azure minus what the operator took since", ["subnet"])
SUBNET_USABLE = Gauge("azure_cni_operator_subnet_usable_addresses",
                      "Addresses of a subnet that can be assigned (its size minus the five "
                      "Azure reserves)", ["subnet"])
AZURE_ERRORS = Counter(
    "azure_cni_operator_azure_errors_total",
    "Pool reconciles that Azure failed, by error type (Throttled, AuthFailed, SubnetFull, "
    "NotFound, Conflict, NicLimitExceeded, CloudError, ...)", ["error"])
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
IS_LEADER = Gauge("azure_cni_operator_leader",
                  "1 while this operator replica holds the leader Lease and may write, else 0")


def observe_write(added: int, removed: int, seconds: float, error: Exception | None) -> None:
    kind = "allocate" if added and not removed else "release" if removed and not added else (
        "allocate_and_release")
    NIC_WRITES.labels(kind, "success" if error is None else type(error).__name__).observe(seconds)
    if error is None:
        ALLOCATED.inc(added)
        RELEASED.inc(removed)


class _PoolCounts(NamedTuple):
    available: int
    releasing: int
    used: int
    short: int


class _PoolSeries(Collector):
    """The per-pool gauges, rendered at scrape time from four numbers per pool.

    A labelled ``Gauge`` keeps an object, a lock and a label tuple per series: about 2.8 KB
    for a pool's four series, 14 MB at 5,000 nodes. These are the same series from a dict
    of small tuples (about 100 bytes a pool).
    """

    def __init__(self) -> None:
        self.pools: dict[str, _PoolCounts] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        addresses = GaugeMetricFamily(
            "azure_cni_operator_pool_addresses",
            "Addresses on a node's NIC by their NodeIPPool state (available or releasing); "
            "the sum is the pool's ALLOCATED column", labels=["nodeippool", "state"])
        used = GaugeMetricFamily(
            "azure_cni_operator_pool_used_addresses",
            "Addresses of a node's pool in use by pods, as its agent reports (USED)",
            labels=["nodeippool"])
        short = GaugeMetricFamily(
            "azure_cni_operator_pool_short_addresses",
            "Addresses a node's warm pool wants but cannot get (maxIPs, the NIC's 255 slots or "
            "the subnet)", labels=["nodeippool"])
        for name, counts in list(self.pools.items()):
            addresses.add_metric([name, "available"], counts.available)
            addresses.add_metric([name, "releasing"], counts.releasing)
            used.add_metric([name], counts.used)
            short.add_metric([name], counts.short)
        yield from (addresses, used, short)


_POOLS = _PoolSeries()
REGISTRY.register(_POOLS)


def observe_pool(node: str, ips: Iterable[PoolIP], used: int, short: int = 0) -> None:
    releasing = available = 0
    for ip in ips:
        if ip.state is IPState.RELEASING:
            releasing += 1
        else:
            available += 1
    _POOLS.pools[node] = _PoolCounts(available, releasing, used, short)


def forget_pool(node: str) -> None:
    _POOLS.pools.pop(node, None)


def subnet_label(subnet_id: str) -> str:
    """``<vnet>/<subnet>`` from a subnet's resource ID (a bounded, readable label value)."""
    parts = [p for p in subnet_id.split("/") if p]
    lowered = [p.lower() for p in parts]
    try:
        vnet = parts[lowered.index("virtualnetworks") + 1]
        subnet = parts[lowered.index("subnets") + 1]
    except (ValueError, IndexError):
        return subnet_id
    return f"{vnet}/{subnet}"


def observe_subnet(subnet: SubnetInfo) -> None:
    label = subnet_label(subnet.id)
    with contextlib.suppress(ValueError):
        SUBNET_USABLE.labels(label).set(usable_addresses(subnet.cidr))
    if subnet.free_addresses is not None:
        SUBNET_FREE.labels(label).set(subnet.free_addresses)


def observe_azure_error(error: CloudError) -> None:
    AZURE_ERRORS.labels(type(error).__name__).inc()
