"""The operator's pool and subnet series: what Prometheus reads for the alerts and dashboard."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY

from azure_cni.api.nodeippool import IPState, PoolIP
from azure_cni.cloud.port import SubnetInfo, Throttled
from azure_cni.operator import metrics

SUBNET_ID = ("/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Network/"
             "virtualNetworks/hub/subnets/nodes")


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_pool_states_partition_the_inventory_and_used_is_its_own_series() -> None:
    node = f"node-{uuid.uuid4().hex[:6]}"
    ips = [PoolIP(f"198.18.0.{i}", f"azcni-{i}", IPState.AVAILABLE) for i in range(10, 16)]
    ips += [PoolIP("198.18.0.20", "azcni-20", IPState.RELEASING)]
    metrics.observe_pool(node, ips, used=4, short=2)
    pool = "azure_cni_operator_pool_addresses"
    assert sample(pool, nodeippool=node, state="available") == 6
    assert sample(pool, nodeippool=node, state="releasing") == 1
    assert sample("azure_cni_operator_pool_used_addresses", nodeippool=node) == 4
    assert sample("azure_cni_operator_pool_short_addresses", nodeippool=node) == 2

    metrics.forget_pool(node)
    assert sample(pool, nodeippool=node, state="available") is None
    assert sample("azure_cni_operator_pool_used_addresses", nodeippool=node) is None
    metrics.forget_pool(node)  # twice is fine (node and pool deletions both call it)


def test_subnet_series_are_labelled_vnet_slash_subnet() -> None:
    metrics.observe_subnet(SubnetInfo(SUBNET_ID, "10.1.0.0/24", ("10.1.0.0/16",), 200))
    assert sample("azure_cni_operator_subnet_usable_addresses", subnet="hub/nodes") == 251
    assert sample("azure_cni_operator_subnet_free_addresses", subnet="hub/nodes") == 200
    assert metrics.subnet_label("not-an-id") == "not-an-id"


def test_azure_errors_are_counted_by_type() -> None:
    before = sample("azure_cni_operator_azure_errors_total", error="Throttled") or 0.0
    metrics.observe_azure_error(Throttled("slow down", retry_after=3))
    assert sample("azure_cni_operator_azure_errors_total", error="Throttled") == before + 1
