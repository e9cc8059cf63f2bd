"""What the monitoring values render: nothing while they are off; with them on, Services and
ServiceMonitors that find exactly the operator's and agents' pods, the shipped alerts and
dashboard verbatim, and agents that serve their metrics on the node's address."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from tests.chart.helm import Helm, find
from tests.chart.promql import ALERTS, DASHBOARD
from tests.chart.value_sets import MONITORING_ALL_ON, VALUE_SETS

MONITORING_KINDS = {"Service", "ServiceMonitor", "PodMonitor", "PrometheusRule"}
ALL_OFF = {"monitoring": {key: {"enabled": False} for key in MONITORING_ALL_ON}}


def kinds_and_names(objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objects}


def pod_template(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    template: dict[str, Any] = next(o for o in objects if o["kind"] == kind)["spec"]["template"]
    return template


def agent_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = pod_template(objects, "DaemonSet")["spec"]["containers"][0]
    return container


def test_monitoring_off_renders_nothing_extra(helm: Helm) -> None:
    for values in ({}, ALL_OFF):
        objects = helm.render(values)
        assert not [o for o in objects if o["kind"] in MONITORING_KINDS]
        assert [o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"] == [
            "azure-cni-config"]
        for kind in ("Deployment", "DaemonSet"):
            annotations = pod_template(objects, kind)["metadata"].get("annotations", {})
            assert not [a for a in annotations if a.startswith("prometheus.io/")]
        agent = agent_container(objects)
        assert not [a for a in agent["command"] if a.startswith("--metrics-address")]
        assert "ports" not in agent
        assert "NODE_IP" not in {e["name"] for e in agent["env"]}
    assert helm.render(ALL_OFF) == helm.render({})


def test_every_monitoring_value_on(helm: Helm) -> None:
    objects = helm.render(VALUE_SETS["monitoring-all-on"])
    extra = kinds_and_names(objects) - kinds_and_names(helm.render({}))
    assert extra == {
        ("Service", "azure-cni-operator-metrics"), ("Service", "azure-cni-agent-metrics"),
        ("ServiceMonitor", "azure-cni-operator"), ("ServiceMonitor", "azure-cni-agent"),
        ("PrometheusRule", "azure-cni"), ("ConfigMap", "azure-cni-dashboard")}


@pytest.mark.parametrize("component", ["operator", "agent"])
def test_service_monitor_finds_the_component_s_pods_on_their_metrics_port(
        helm: Helm, component: str) -> None:
    objects = helm.render(VALUE_SETS["monitoring-all-on"])
    monitor = find(objects, "ServiceMonitor", f"-{component}")
    service = find(objects, "Service", f"-{component}-metrics")
    kind = "Deployment" if component == "operator" else "DaemonSet"
    pod_labels = pod_template(objects, kind)["metadata"]["labels"]
    # ServiceMonitor -> Service (same namespace, labels) -> pods (selector)
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["kube-system"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
        "labels"].items()
    other = "agent" if component == "operator" else "operator"
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= find(
        objects, "Service", f"-{other}-metrics")["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["clusterIP"] == "None"
    port = {"operator": 9090, "agent": 9091}[component]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": port, "targetPort": port,
                                         "protocol": "TCP"}]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == (
        "metrics", "/metrics", "15s")
    relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
    # the alerts select on these job names
    assert relabel["job"]["replacement"] == f"azure-cni-{component}"
    assert ("node" in relabel) == (component == "agent")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_prometheus_rule_is_the_shipped_rules_file(helm: Helm) -> None:
    rule = find(helm.render(VALUE_SETS["monitoring-all-on"]), "PrometheusRule", "")
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_config_map_holds_the_shipped_dashboard(helm: Helm) -> None:
    values = {"monitoring": {"grafanaDashboard": {"enabled": True, "namespace": "grafana"}}}
    configmap = find(helm.render(values), "ConfigMap", "-dashboard")
    assert configmap["metadata"]["namespace"] == "grafana"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (document,) = configmap["data"].values()
    assert json.loads(document) == json.loads(DASHBOARD.read_text())


@pytest.mark.parametrize("switch", ["service", "serviceMonitor", "scrapeAnnotations"])
def test_a_scraped_agent_also_serves_on_the_node_s_address(helm: Helm, switch: str) -> None:
    values = {"agent": {"metricsPort": 9811}, "monitoring": {switch: {"enabled": True}}}
    objects = helm.render(values)
    agent = agent_container(objects)
    assert "--metrics-address=$(NODE_IP)" in agent["command"]
    assert {e["name"]: e for e in agent["env"]}["NODE_IP"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "status.hostIP"}}
    assert agent["ports"] == [{"name": "metrics", "containerPort": 9811, "protocol": "TCP"}]
    # the kubelet's probes stay on loopback
    assert {agent[p]["httpGet"]["host"] for p in ("startupProbe", "livenessProbe",
                                                   "readinessProbe")} == {"127.0.0.1"}


def test_rules_and_dashboard_alone_do_not_open_the_agent_s_port(helm: Helm) -> None:
    values = {"monitoring": {"prometheusRule": {"enabled": True},
                             "grafanaDashboard": {"enabled": True}}}
    assert "ports" not in agent_container(helm.render(values))


def test_scrape_annotations_name_each_process_s_metrics_port(helm: Helm) -> None:
    values = {"operator": {"metricsPort": 9809}, "agent": {"metricsPort": 9811},
              "monitoring": {"scrapeAnnotations": {"enabled": True}}}
    objects = helm.render(values)
    for kind, port in (("Deployment", "9809"), ("DaemonSet", "9811")):
        annotations = pod_template(objects, kind)["metadata"]["annotations"]
        assert {k: v for k, v in annotations.items() if k.startswith("prometheus.io/")} == {
            "prometheus.io/scrape": "true", "prometheus.io/port": port,
            "prometheus.io/path": "/metrics"}
    assert not [o for o in objects if o["kind"] in MONITORING_KINDS]


@pytest.mark.parametrize(("values", "message"), [
    ({"monitoring": {"serviceMonitor": {"enabled": "yes"}}},
     "at '/monitoring/serviceMonitor/enabled': got string, want boolean"),
    ({"monitoring": {"serviceMonitor": {"interval": "30"}}},
     "at '/monitoring/serviceMonitor/interval': '30' does not match pattern"),
    ({"monitoring": {"podMonitor": {"enabled": True}}},
     "at '/monitoring': additional properties 'podMonitor' not allowed"),
    ({"monitoring": {"grafanaDashboard": {"namespace": "Grafana"}}},
     "at '/monitoring/grafanaDashboard/namespace': 'Grafana' does not match pattern"),
])
def test_bad_monitoring_values_are_refused(helm: Helm, values: dict[str, Any],
                                           message: str) -> None:
    result = helm.template(values, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
