"""The simulated cluster's monitoring, as an admin who runs the Prometheus Operator has it.

- The Prometheus Operator's CRDs for ServiceMonitor and PrometheusRule, from its pinned module
  (``hack/build-tools.sh prometheus-operator-crds``), so that the chart's
  ``monitoring.serviceMonitor`` and ``monitoring.prometheusRule`` values install as they do on
  a cluster with kube-prometheus-stack.
- Prometheus as a pod (namespace ``monitoring``, the pinned build from
  ``hack/build-images.sh prometheus``) on a pool address like any pod, configured as the
  Prometheus Operator configures it: the ServiceMonitors and PrometheusRules in the cluster
  that carry ``SELECTOR`` become its scrape configurations (``prometheus.scrape_configs``) and
  its rule files. It finds the operator's and the agents' pods itself, through the API server,
  as a service account that may read only what that discovery needs.
- A portal from the host's loopback to its Service, through a node (kube-proxy routes the
  ClusterIP there), for the user's curl and the tests: the machine is never routed to the VNet.

The Prometheus Operator itself is not run (it would be one more Go build in the demo's
first-run budget): the configuration is generated once, when Prometheus starts, where the
operator regenerates it on every change of a selected object.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from azure_cni_sim.cluster import LocalCluster, free_port
from azure_cni_sim.node import wait_crd_established
from azure_cni_sim.procs import ManagedProcess, wait_for
from azure_cni_sim.prometheus import (
    PrometheusAPI,
    monitored_namespaces,
    prometheus_config,
    scrape_configs,
)
from azure_cni_sim.tools import find_tool

NAMESPACE = "monitoring"
NAME = "prometheus"
PORT = 9090
#: what this Prometheus selects ServiceMonitors and PrometheusRules by (kube-prometheus-stack's
#: selects ``release: <its release>``); the chart's ``monitoring.serviceMonitor.labels`` and
#: ``monitoring.prometheusRule.labels`` carry it
SELECTOR = {"release": "prometheus"}
#: the chart's monitoring values of a cluster scraped by this Prometheus, as an admin with the
#: Prometheus Operator sets them (a short interval: a demo, not a fleet)
CHART_VALUES: dict[str, Any] = {
    "serviceMonitor": {"enabled": True, "labels": SELECTOR, "interval": "5s"},
    "prometheusRule": {"enabled": True, "labels": SELECTOR}}
#: the Prometheus Operator's CRDs of the objects this Prometheus is configured from
CRDS = ("servicemonitors", "prometheusrules")
CONFIG_DIR = "/etc/prometheus"


def install_crds(cluster: LocalCluster) -> None:
    """The ServiceMonitor and PrometheusRule CRDs, Established."""
    crd_dir = find_tool("prometheus-operator-crds")
    for plural in CRDS:
        cluster.kubectl("apply", "--server-side", "-f",
                        str(crd_dir / f"monitoring.coreos.com_{plural}.yaml"))
    for plural in CRDS:
        wait_crd_established(cluster.kubectl, f"{plural}.monitoring.coreos.com")


def selected(cluster: LocalCluster) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ServiceMonitors and PrometheusRules in the cluster that carry ``SELECTOR``."""
    selector = ",".join(f"{key}={value}" for key, value in SELECTOR.items())

    def of_kind(kind: str) -> list[dict[str, Any]]:
        out = cluster.kubectl("get", kind, "-A", "-l", selector, "-o", "json").stdout
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return sorted(items, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))

    return of_kind("servicemonitors"), of_kind("prometheusrules")


@dataclass(frozen=True)
class OperatorOutput:
    """What the Prometheus Operator would generate from the selected objects."""

    #: ConfigMap data: ``prometheus.yml`` and one rules file per PrometheusRule
    files: dict[str, str]
    #: the namespaces whose Services and pods Prometheus discovers
    namespaces: tuple[str, ...]


def operator_output(service_monitors: Iterable[Mapping[str, Any]],
                    prometheus_rules: Iterable[Mapping[str, Any]]) -> OperatorOutput:
    """The in-cluster configuration of these ServiceMonitors and PrometheusRules."""
    monitors = list(service_monitors)
    rules = {f"{r['metadata']['namespace']}-{r['metadata']['name']}.yaml":
             yaml.safe_dump(r["spec"], sort_keys=False) for r in prometheus_rules}
    config = prometheus_config(scrape_configs(monitors), scrape_interval="30s",
                               rule_files=[Path(CONFIG_DIR) / name for name in rules])
    namespaces = sorted({ns for m in monitors for ns in monitored_namespaces(m)})
    return OperatorOutput({"prometheus.yml": yaml.safe_dump(config, sort_keys=False), **rules},
                          tuple(namespaces))


def manifests(image: str, generated: OperatorOutput) -> list[dict[str, Any]]:
    """Prometheus's objects: its namespace, service account and discovery rights, its
    configuration, the Deployment and the Service."""
    labels = {"app.kubernetes.io/name": NAME}
    meta = {"name": NAME, "namespace": NAMESPACE, "labels": labels}
    checksum = hashlib.sha256(json.dumps(generated.files, sort_keys=True).encode()).hexdigest()
    discovery: list[dict[str, Any]] = []
    for namespace in generated.namespaces:
        role = {"name": f"{NAMESPACE}-{NAME}", "namespace": namespace, "labels": labels}
        discovery += [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": role,
             "rules": [
                 {"apiGroups": [""], "resources": ["services", "pods"],
                  "verbs": ["get", "list", "watch"]},
                 {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                  "verbs": ["get", "list", "watch"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": role,
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                         "name": role["name"]},
             "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]}]
    container = {
        "name": NAME, "image": image, "imagePullPolicy": "IfNotPresent",
        "args": [f"--config.file={CONFIG_DIR}/prometheus.yml",
                 "--storage.tsdb.path=/prometheus", "--storage.tsdb.retention.time=1d",
                 f"--web.listen-address=:{PORT}"],
        "ports": [{"name": "web", "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/-/ready", "port": "web"}, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/-/healthy", "port": "web"},
                          "periodSeconds": 10, "failureThreshold": 6},
        "resources": {"requests": {"cpu": "50m", "memory": "100Mi"},
                      "limits": {"memory": "1Gi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                         {"name": "data", "mountPath": "/prometheus"}]}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        *discovery,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": generated.files},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "replicas": 1,
            # one TSDB: never two pods writing it
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {"checksum/config": checksum}},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65534,
                                        "runAsGroup": 65534, "fsGroup": 65534,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [{"name": "config", "configMap": {"name": NAME}},
                                {"name": "data", "emptyDir": {}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {
            "selector": labels,
            "ports": [{"name": "web", "port": PORT, "targetPort": "web", "protocol": "TCP"}]}},
    ]


def start_prometheus(cluster: LocalCluster, image: str, *, via_netns: str, workdir: Path,
                     owner: str, timeout: float = 180) -> PrometheusAPI:
    """Deploy Prometheus configured from the cluster's selected objects, and open a portal on
    the host's loopback to its Service through ``via_netns`` (a node's network namespace);
    return its API once it answers there."""
    objects = manifests(image, operator_output(*selected(cluster)))
    cluster.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": objects}))
    cluster.kubectl("rollout", "status", f"deployment/{NAME}", "-n", NAMESPACE,
                    f"--timeout={int(timeout)}s", timeout=timeout + 10)
    cluster_ip = cluster.kubectl("get", "service", NAME, "-n", NAMESPACE, "-o",
                                 "jsonpath={.spec.clusterIP}").stdout.strip()
    port = free_port()
    portal = ManagedProcess("prometheus-portal", [
        sys.executable, "-m", "azure_cni_sim.portal",
        "--target", f"{via_netns}@{cluster_ip}:{PORT}", "--listen", f"127.0.0.1:{port}"],
        workdir / "prometheus-portal.log", owner).start()
    api = PrometheusAPI(f"http://127.0.0.1:{port}")
    wait_for(f"Prometheus to answer at {api.url} (its Service {cluster_ip}:{PORT})", api.ready,
             60, interval=0.5, alive=portal.check_running)
    return api

