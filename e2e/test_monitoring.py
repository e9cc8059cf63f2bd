"""The cluster's Prometheus, configured from the chart's ServiceMonitors and PrometheusRule as
the Prometheus Operator would, scrapes the operator and the agent of every node, and its pool
series say what ``kubectl get nip`` says, also after pods come and go."""

from __future__ import annotations

import pytest

from azure_cni_sim import workloads
from azure_cni_sim.monitoring import CHART_VALUES
from azure_cni_sim.prometheus import AGENT_JOB, OPERATOR_JOB, PrometheusAPI, leader_instances
from azure_cni_sim.world import World

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def prometheus(world: World) -> PrometheusAPI:
    assert world.prometheus is not None, "the World starts the cluster's Prometheus"
    return world.prometheus


def node_names(world: World) -> list[str]:
    return sorted(world.kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"
                                ).stdout.split())


def test_every_operator_and_agent_target_is_up(world: World, prometheus: PrometheusAPI) -> None:
    # earlier modules restart agents and drain nodes: wait for the targets to come back
    world.wait_prometheus_scrapes_everything()
    up = {(s["metric"]["job"], s["metric"].get("node", "")): s["value"][1]
          for s in prometheus.query(f'up{{job=~"{OPERATOR_JOB}|{AGENT_JOB}"}}')}
    assert up == {(OPERATOR_JOB, ""): "1", **{(AGENT_JOB, node): "1"
                                              for node in node_names(world)}}
    # both operator replicas are scraped; exactly one says it holds the Lease
    operators = [s for s in prometheus.query(f'up{{job="{OPERATOR_JOB}"}}')
                 if s["value"][1] == "1"]
    assert len(operators) == 2, operators
    assert len(leader_instances(prometheus)) == 1
    # found through the chart's ServiceMonitors: their endpoints, the chart's Services
    interval = CHART_VALUES["serviceMonitor"]["interval"]
    for target in prometheus.active_targets():
        job = target["labels"]["job"]
        assert target["labels"]["service"] == f"{job}-metrics"
        assert target["labels"]["namespace"] == "kube-system"
        assert target["scrapeInterval"] == interval
        assert target["scrapePool"] == f"serviceMonitor/kube-system/{job}/0"


def test_the_chart_s_alerts_are_loaded(world: World, prometheus: PrometheusAPI) -> None:
    rules = world.get_json("prometheusrules", "-n", "kube-system")["items"]
    assert len(rules) == 1
    shipped = [r["alert"] for g in rules[0]["spec"]["groups"] for r in g["rules"]]
    assert sorted(prometheus.alerting_rules()) == sorted(shipped)


def test_pool_series_match_kubectl_get_nip_on_every_node_as_pods_come(
        world: World, namespace: str, prometheus: PrometheusAPI) -> None:
    pods = workloads.deploy_web(world, namespace, 3, name="scraped", node="vm1")
    workloads.wait_pools_count_their_pods(world)
    world.wait_prometheus_agrees_with_pools()

    pools = world.pool_counts()
    assert sorted(pools) == node_names(world)
    # the new pods are in what both say: Prometheus follows the pools, not an old scrape
    on_vm1 = sum(p.node == "vm1" for p in workloads.pod_network_pods(world))
    assert pools["vm1"].used == on_vm1 >= len(pods)
    used = prometheus.by_label("azure_cni_operator_pool_used_addresses", "nodeippool")
    assert used["vm1"] == on_vm1
