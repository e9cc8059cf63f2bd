"""The cluster's Prometheus is configured from the chart's own objects, as the Prometheus
Operator would configure it: the chart rendered with the monitoring values the simulation sets
gives a configuration promtool accepts, scraping both Services' endpoints and loading the
chart's alerts, and Prometheus may read only what that discovery needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from tests.chart.helm import Helm
from tests.chart.promql import alert_rules, promtool

from azure_cni_sim import monitoring

IMAGE = "localhost/prometheus:test"


def chart_objects(tmp_path: Path, kind: str) -> list[dict[str, Any]]:
    objects = Helm(tmp_path / "helm").render({"monitoring": monitoring.CHART_VALUES},
                                             namespace="kube-system")
    return [o for o in objects if o["kind"] == kind]


def test_the_chart_s_monitors_and_rules_give_a_configuration_promtool_accepts(
        tmp_path: Path) -> None:
    monitors = chart_objects(tmp_path, "ServiceMonitor")
    rules = chart_objects(tmp_path, "PrometheusRule")
    assert [m["metadata"]["labels"]["release"] for m in monitors + rules] == \
        [monitoring.SELECTOR["release"]] * 3
    output = monitoring.operator_output(monitors, rules)
    assert output.namespaces == ("kube-system",)
    assert sorted(output.files) == ["kube-system-azure-cni.yaml", "prometheus.yml"]
    for name, text in output.files.items():
        (tmp_path / name).write_text(text)
    config = yaml.safe_load(output.files["prometheus.yml"])
    assert [c["job_name"] for c in config["scrape_configs"]] == [
        "serviceMonitor/kube-system/azure-cni-operator/0",
        "serviceMonitor/kube-system/azure-cni-agent/0"]
    assert {c["scrape_interval"] for c in config["scrape_configs"]} == {"5s"}
    # in the cluster: its own service account, no kubeconfig
    assert all("kubeconfig_file" not in sd for c in config["scrape_configs"]
               for sd in c["kubernetes_sd_configs"])
    assert config["rule_files"] == [f"{monitoring.CONFIG_DIR}/kube-system-azure-cni.yaml"]
    checked = promtool("check", "config", "--syntax-only", tmp_path / "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = promtool("check", "rules", tmp_path / "kube-system-azure-cni.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    loaded = yaml.safe_load(output.files["kube-system-azure-cni.yaml"])
    assert [r["alert"] for g in loaded["groups"] for r in g["rules"]] == \
        [r["alert"] for r in alert_rules()]


def test_prometheus_may_only_read_what_discovery_needs_where_the_monitors_look(
        tmp_path: Path) -> None:
    output = monitoring.operator_output(chart_objects(tmp_path, "ServiceMonitor"), [])
    objects = monitoring.manifests(IMAGE, output)
    kinds = [(o["kind"], o["metadata"].get("namespace")) for o in objects]
    assert kinds == [("Namespace", None), ("ServiceAccount", "monitoring"),
                     ("Role", "kube-system"), ("RoleBinding", "kube-system"),
                     ("ConfigMap", "monitoring"), ("Deployment", "monitoring"),
                     ("Service", "monitoring")]
    role = objects[2]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["services", "pods"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
         "verbs": ["get", "list", "watch"]}]
    assert objects[3]["subjects"] == [{"kind": "ServiceAccount", "name": "prometheus",
                                       "namespace": "monitoring"}]
    assert objects[4]["data"] == output.files
    pod = objects[5]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert f"--config.file={monitoring.CONFIG_DIR}/prometheus.yml" in container["args"]


def test_a_changed_configuration_rolls_the_pod(tmp_path: Path) -> None:
    monitors = chart_objects(tmp_path, "ServiceMonitor")

    def checksum(rules: list[dict[str, Any]]) -> str:
        deployment = monitoring.manifests(IMAGE, monitoring.operator_output(monitors, rules))[-2]
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum([]) != checksum(chart_objects(tmp_path, "PrometheusRule"))
