"""The simulation's Prometheus finds the chart's pods as the Prometheus Operator would: its scrape
configuration comes from the chart's rendered ServiceMonitors, promtool accepts it, and
Prometheus's own Kubernetes discovery against the API server yields exactly the operator's
and the agents' metrics endpoints with the labels the alerts and the dashboard use."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, start_http_server
from tests.chart.helm import Helm
from tests.chart.promql import ALERTS, alert_rules, promtool
from tests.chart.value_sets import MONITORING_ALL_ON

from azure_cni.agent.allocator import PoolUsage
from azure_cni.agent.metrics import AgentMetrics
from azure_cni.api.nodeippool import IPState, PoolIP
from azure_cni.operator import metrics as operator_metrics
from azure_cni_sim.cluster import ExistingCluster, LocalCluster, free_port
from azure_cni_sim.procs import wait_for
from azure_cni_sim.prometheus import (
    EXAMPLE_QUERIES,
    PoolCounts,
    PrometheusAPI,
    PrometheusError,
    PrometheusServer,
    PrometheusUnreachable,
    answered_examples,
    pool_mismatches,
    prometheus_config,
    scrape_configs,
    scrape_problems,
)

OPERATOR_JOB = "serviceMonitor/{ns}/azure-cni-operator/0"
AGENT_JOB = "serviceMonitor/{ns}/azure-cni-agent/0"


def rendered(tmp_path: Path, namespace: str) -> list[dict[str, Any]]:
    return Helm(tmp_path / "helm").render({"monitoring": MONITORING_ALL_ON},
                                          namespace=namespace)


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_service_monitors_translate_to_a_configuration_promtool_accepts(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("")
    configs = scrape_configs(of_kind(rendered(tmp_path, "kube-system"), "ServiceMonitor"),
                             kubeconfig)
    assert [c["job_name"] for c in configs] == [OPERATOR_JOB.format(ns="kube-system"),
                                                AGENT_JOB.format(ns="kube-system")]
    for config in configs:
        assert config["scrape_interval"] == "15s"
        assert config["kubernetes_sd_configs"] == [{
            "role": "endpointslice", "namespaces": {"names": ["kube-system"]},
            "kubeconfig_file": str(kubeconfig)}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(prometheus_config(configs)))
    result = promtool("check", "config", "--syntax-only", path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- against the API server: Prometheus's own discovery ---------------------------------------


@pytest.fixture
def monitored_namespace(kube: LocalCluster | ExistingCluster) -> Iterator[str]:
    namespace = f"azcni-prom-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", namespace)
    try:
        yield namespace
    finally:
        # no kubelet confirms a pod's end: force them, or the namespace never goes
        kube.kubectl("delete", "pods", "--all", "-n", namespace, "--force", "--grace-period=0",
                     check=False)
        kube.kubectl("delete", "namespace", namespace, "--timeout=50s", check=False)


def run_pod_as_kubelet(kube: LocalCluster | ExistingCluster, namespace: str, name: str,
                       node: str, template: dict[str, Any], address: str) -> None:
    """A pod of ``template`` on ``node``, reported Running and Ready at ``address`` (the node's
    own address: both processes run in the host network) as its kubelet would."""
    (container,) = template["spec"]["containers"]
    kube.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": template["metadata"]["labels"]},
        "spec": {"nodeName": node, "hostNetwork": True,
                 "containers": [{"name": container["name"], "image": container["image"]}]}}))
    kube.kubectl("patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge",
                 "-p", json.dumps({"status": {
                     "phase": "Running", "hostIP": address, "podIP": address,
                     "podIPs": [{"ip": address}],
                     "conditions": [{"type": "Ready", "status": "True"}]}}))


def discovered(config: Path, job: str) -> list[dict[str, str]]:
    """The targets ``promtool check service-discovery`` finds for ``job``, after relabeling."""
    result = promtool("check", "service-discovery", "--timeout=10s", config, job)
    assert result.returncode == 0, result.stdout + result.stderr
    return [entry["labels"] for entry in json.loads(result.stdout)
            if entry.get("labels")]


@pytest.mark.cluster
def test_discovery_finds_the_operator_and_every_agent(kube: LocalCluster | ExistingCluster,
                                                      monitored_namespace: str,
                                                      tmp_path: Path) -> None:
    namespace = monitored_namespace
    objects = rendered(tmp_path, namespace)
    # the Services the chart installs; the pods stand in for those of its Deployment and
    # DaemonSet (no kubelet here), with the same labels
    for service in of_kind(objects, "Service"):
        kube.kubectl("apply", "-f", "-", input=json.dumps(service))
    operator = of_kind(objects, "Deployment")[0]["spec"]["template"]
    agent = of_kind(objects, "DaemonSet")[0]["spec"]["template"]
    suffix = uuid.uuid4().hex[:6]
    nodes = {f"azcni-prom-{suffix}-a": "198.18.0.4", f"azcni-prom-{suffix}-b": "198.18.0.5"}
    try:
        for node in nodes:
            kube.kubectl("apply", "-f", "-", input=json.dumps(
                {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}))
        first = next(iter(nodes))
        run_pod_as_kubelet(kube, namespace, "operator-0", first, operator, nodes[first])
        for i, (node, address) in enumerate(nodes.items()):
            run_pod_as_kubelet(kube, namespace, f"agent-{i}", node, agent, address)

        def listed() -> bool:
            out = kube.kubectl("get", "endpointslices", "-n", namespace, "-o", "json").stdout
            return sum(len(s.get("endpoints") or []) for s in json.loads(out)["items"]) == 3

        wait_for("the EndpointSlices of both metrics Services to list the 3 pods", listed, 60)

        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(scrape_configs(
            of_kind(objects, "ServiceMonitor"), kube.kubeconfig))))
        operators = discovered(config, OPERATOR_JOB.format(ns=namespace))
        agents = discovered(config, AGENT_JOB.format(ns=namespace))
    finally:
        for node in nodes:
            kube.kubectl("delete", "node", node, "--ignore-not-found", check=False)

    assert [(t["__address__"], t["job"], t["pod"], t["service"], t["endpoint"]) for t in
            operators] == [(f"{nodes[first]}:9090", "azure-cni-operator", "operator-0",
                            "azure-cni-operator-metrics", "metrics")]
    assert "node" not in operators[0]  # the operator's series bring their own nodeippool
    assert sorted((t["__address__"], t["job"], t["node"], t["namespace"]) for t in agents) == \
        sorted((f"{address}:9091", "azure-cni-agent", node, namespace)
               for node, address in nodes.items())


# -- a real Prometheus: it scrapes the agent's real exposition and loads the shipped rules ----


@pytest.fixture
def agent_endpoint() -> Iterator[tuple[str, AgentMetrics]]:
    """The agent's metrics registry served over HTTP on a free loopback port."""
    metrics = AgentMetrics()
    port = free_port()
    server, thread = start_http_server(port, "127.0.0.1", registry=metrics.registry)
    try:
        yield f"127.0.0.1:{port}", metrics
    finally:
        server.shutdown()
        thread.join(10)


def test_prometheus_scrapes_the_agent_and_loads_the_alerts(
        agent_endpoint: tuple[str, AgentMetrics], tmp_path: Path) -> None:
    address, metrics = agent_endpoint
    metrics.ready.set(1)
    metrics.set_pool(PoolUsage(known=True, allocated=12, used=4, free=5, releasing=2,
                               cooling=1, release_acks=frozenset({"azcni-a", "azcni-b"})))
    metrics.observe("ADD", "ok", 0.004)
    config = prometheus_config(
        [{"job_name": "azure-cni-agent", "scrape_interval": "1s",
          "static_configs": [{"targets": [address], "labels": {"node": "vm0"}}]}],
        rule_files=[ALERTS])
    server = PrometheusServer(tmp_path / "prometheus", config,
                              owner=f"prom-{uuid.uuid4().hex[:8]}").start()
    api = server.api
    try:
        def scraped() -> bool:
            return [float(s["value"][1]) for s in api.query(
                'up{job="azure-cni-agent"}')] == [1.0]

        wait_for(f"Prometheus at {api.url} to scrape the agent at {address}", scraped, 60,
                 interval=0.5, alive=server.process.check_running if server.process else None)
        assert [(t["labels"]["node"], t["health"]) for t in api.active_targets()] == [
            ("vm0", "up")]
        assert api.by_label('azure_cni_agent_pool_addresses{node="vm0"}', "state") == {
            "free": 5.0, "used": 4.0, "cooling": 1.0, "releasing": 2.0}
        groups = api.api_get("rules")["groups"]
        loaded = {r["name"]: r["health"] for g in groups for r in g["rules"]}
        assert sorted(loaded) == sorted(r["alert"] for r in alert_rules())
        assert set(loaded.values()) <= {"ok", "unknown"}
        assert sorted(api.alerting_rules()) == sorted(loaded)
        with pytest.raises(PrometheusError, match="bad_data"):
            api.query("sum(")
    finally:
        server.stop()
    assert server.process is not None and not server.process.running()


@pytest.fixture
def operator_endpoint() -> Iterator[str]:
    """The operator's registry (this process's default one) served on a free loopback port."""
    port = free_port()
    server, thread = start_http_server(port, "127.0.0.1", registry=REGISTRY)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(10)


def test_the_demo_s_checks_compare_prometheus_with_the_pools(
        operator_endpoint: str, agent_endpoint: tuple[str, AgentMetrics],
        tmp_path: Path) -> None:
    pool = f"vm-{uuid.uuid4().hex[:6]}"
    ips = [PoolIP(f"198.18.0.{i}", f"azcni-{i}", IPState.AVAILABLE) for i in range(10, 17)]
    ips.append(PoolIP("198.18.0.17", "azcni-17", IPState.RELEASING))
    operator_metrics.observe_pool(pool, ips, used=3)
    operator_metrics.IS_LEADER.set(1)  # the demo's checks want exactly one leader
    agent_address, agent = agent_endpoint
    agent.ready.set(1)
    agent.set_pool(PoolUsage(known=True, allocated=8, used=3, free=3, releasing=1, cooling=1,
                             release_acks=frozenset({"azcni-17"})))
    agent.observe("ADD", "ok", 0.004)
    config = prometheus_config([
        {"job_name": "azure-cni-operator", "scrape_interval": "1s",
         "static_configs": [{"targets": [operator_endpoint]}]},
        {"job_name": "azure-cni-agent", "scrape_interval": "1s",
         "static_configs": [{"targets": [agent_address], "labels": {"node": pool}}]}])
    server = PrometheusServer(tmp_path / "prometheus", config,
                              owner=f"prom-{uuid.uuid4().hex[:8]}").start()
    api = server.api
    try:
        wait_for("both targets up in Prometheus", lambda: scrape_problems(api, [pool]) == [],
                 60, 0.5)
        # other tests of the session may have left pools in this process's registry: they are
        # reported as unknown to the NodeIPPools given, never as a mismatch of this one
        expected = sorted([pool, "vm-elsewhere"])  # the pool's name is random
        assert scrape_problems(api, [pool, "vm-elsewhere"]) == [
            f"agents up on ['{pool}'], expected on {expected}"]

        def mine(problems: list[str]) -> list[str]:
            return [p for p in problems if p.startswith(f"{pool}:")]

        assert mine(pool_mismatches(api, {pool: PoolCounts(8, 3, 1)})) == []
        assert mine(pool_mismatches(api, {pool: PoolCounts(9, 3, 1)})) == [
            f"{pool}: kubectl get nip says ALLOCATED 9 USED 3 COOLING 1; Prometheus: the "
            "operator's 8 and 3, the agent's used 3 and cooling 1"]
        assert mine(pool_mismatches(api, {pool: PoolCounts(8, 3, 0)})) != []
        assert pool_mismatches(api, {}) != []  # a pool Prometheus knows is missing from nip

        # an ADD after the first scrape: the latency query has a rate to work on
        agent.observe("ADD", "ok", 0.004)
        (allocated, add_latency) = EXAMPLE_QUERIES

        def p99() -> float:
            return api.by_label(add_latency.expr, add_latency.by).get(pool, math.nan)

        wait_for("a p99 of the ADD latency", lambda: not math.isnan(p99()), 60, 0.5)
        assert 0.0025 < p99() <= 0.005  # the bucket the ADDs fell in
        assert api.by_label(allocated.expr, allocated.by)[pool] == 8
        lines = answered_examples(api)
        assert lines[0] == f"{allocated.what}:"
        assert lines[1] == f"  $ curl -s {api.url}/api/v1/query --data-urlencode " \
                           f"'query={allocated.expr}'"
        assert f"{pool} 8" in lines[2].strip().split("   ")
        assert lines[3:5] == [f"{add_latency.what}:",
                              f"  $ curl -s {api.url}/api/v1/query --data-urlencode "
                              f"'query={add_latency.expr}'"]
    finally:
        server.stop()
        operator_metrics.forget_pool(pool)
        operator_metrics.IS_LEADER.set(0)


def test_an_address_where_no_prometheus_answers_is_unreachable_not_an_error_answer() -> None:
    api = PrometheusAPI(f"http://127.0.0.1:{free_port()}")
    assert not api.ready()
    with pytest.raises(PrometheusUnreachable):
        api.query("up")
