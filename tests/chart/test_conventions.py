"""What admins expect of a chart: it works as a subchart, its security contexts can be tightened
but never loosened, the log level is a value, extra CNI plugins can be chained, the cluster
autoscaler is told what the pods are, the preflight is its Helm test, and an uninstall mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.chart.helm import CHART, Helm, HelmFailed, find, parse_manifests
from tests.chart.helm import pinned_kubernetes_version as kube_version
from tests.chart.test_manifests import env_of, pod_spec

BANDWIDTH = {"type": "bandwidth", "capabilities": {"bandwidth": True}}


def test_the_chart_works_as_a_subchart_with_global_values(helm: Helm, tmp_path: Path) -> None:
    parent = tmp_path / "platform"
    (parent / "charts").mkdir(parents=True)
    (parent / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "platform", "version": "1.0.0",
        "dependencies": [{"name": "azure-cni", "version": "0.1.0",
                          "repository": f"file://{CHART}"}]}))
    (parent / "values.yaml").write_text(yaml.safe_dump({
        "global": {"imageRegistry": "myregistry.azurecr.io", "labels": {"team": "net"}},
        "azure-cni": {"pool": {"maxIPs": 110}, "agentDaemonSet": {"logLevel": "debug"}}}))
    helm.run("dependency", "update", str(parent))
    lint = helm.run("lint", "--strict", str(parent), f"--kube-version={kube_version()}")
    assert "0 chart(s) failed" in lint.stdout, lint.stdout
    rendered = helm.run("template", "platform", str(parent), "--namespace", "kube-system",
                        f"--kube-version={kube_version()}").stdout
    objects = list(parse_manifests(rendered))
    config = yaml.safe_load(find(objects, "ConfigMap", "-config")["data"]["config.yaml"])
    assert config["pool"]["maxIPs"] == 110, "the parent's values reach the subchart"
    agent = pod_spec(objects, "DaemonSet", "-agent")["containers"][0]
    assert "--log-level=debug" in agent["command"]
    # and a global value the schema does not know is still refused inside the subchart
    with pytest.raises(HelmFailed, match="maxIPs"):
        helm.run("template", "platform", str(parent), "--set", "azure-cni.pool.maxIPs=300")


def test_log_levels_are_values_and_only_known_ones(helm: Helm) -> None:
    objects = helm.render({"operatorDeployment": {"logLevel": "debug"},
                           "agentDaemonSet": {"logLevel": "warning"}})
    operator = pod_spec(objects, "Deployment", "-operator")["containers"][0]
    agent = pod_spec(objects, "DaemonSet", "-agent")["containers"][0]
    assert "--log-level=debug" in operator["command"]
    assert "--log-level=warning" in agent["command"]
    with pytest.raises(HelmFailed, match="logLevel"):
        helm.render({"operatorDeployment": {"logLevel": "verbose"}})


@pytest.mark.parametrize(("values", "pod", "container"), [
    ({"podSecurityContext": {"runAsUser": 10001, "runAsGroup": 10001,
                             "seccompProfile": {"type": "Localhost",
                                                "localhostProfile": "azure-cni.json"}},
      "securityContext": {"seLinuxOptions": {"type": "spc_t"}}},
     {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
      "seccompProfile": {"type": "Localhost", "localhostProfile": "azure-cni.json"}},
     {"seLinuxOptions": {"type": "spc_t"}, "allowPrivilegeEscalation": False,
      "readOnlyRootFilesystem": True, "privileged": False, "capabilities": {"drop": ["ALL"]}}),
])
def test_operator_security_contexts_can_be_tightened(helm: Helm, values: dict[str, Any],
                                                     pod: dict[str, Any],
                                                     container: dict[str, Any]) -> None:
    spec = pod_spec(helm.render({"operatorDeployment": values}), "Deployment", "-operator")
    assert spec["securityContext"] == pod
    assert spec["containers"][0]["securityContext"] == container


@pytest.mark.parametrize(("values", "refused"), [
    ({"operatorDeployment": {"podSecurityContext": {"runAsUser": 0}}}, "runAsUser"),
    ({"operatorDeployment": {"podSecurityContext": {"runAsNonRoot": False}}}, "runAsNonRoot"),
    ({"operatorDeployment": {"securityContext": {"privileged": True}}}, "privileged"),
    ({"operatorDeployment": {"securityContext": {"allowPrivilegeEscalation": True}}},
     "allowPrivilegeEscalation"),
    ({"operatorDeployment": {"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}},
     "capabilities"),
    ({"operatorDeployment": {"securityContext": {"readOnlyRootFilesystem": False}}},
     "readOnlyRootFilesystem"),
    ({"operatorDeployment": {"podSecurityContext": {"seccompProfile": {"type": "Unconfined"}}}},
     "seccompProfile/type"),
    ({"agentDaemonSet": {"securityContext": {"capabilities": {"add": ["ALL"]}}}},
     "capabilities"),
    ({"agentDaemonSet": {"securityContext": {"privileged": True}}}, "privileged"),
    ({"agentDaemonSet": {"podSecurityContext": {"fsGroup": 1000}}}, "fsGroup"),
    ({"agentDaemonSet": {"podSecurityContext": {"appArmorProfile": {"type": "Unconfined"}}}},
     "appArmorProfile/type"),
])
def test_security_contexts_cannot_be_loosened(helm: Helm, values: dict[str, Any],
                                              refused: str) -> None:
    with pytest.raises(HelmFailed, match=refused):
        helm.render(values)


def test_agent_security_context_keeps_its_user_and_capabilities(helm: Helm) -> None:
    spec = pod_spec(helm.render({"agentDaemonSet": {
        "podSecurityContext": {"appArmorProfile": {"type": "RuntimeDefault"}},
        "securityContext": {"seLinuxOptions": {"level": "s0:c123,c456"}}}}),
        "DaemonSet", "-agent")
    assert spec["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"},
                                       "appArmorProfile": {"type": "RuntimeDefault"}}
    security = spec["containers"][0]["securityContext"]
    assert security["seLinuxOptions"] == {"level": "s0:c123,c456"}
    assert security["runAsUser"] == 0 and security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"],
                                        "add": ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]}


def test_extra_plugins_reach_the_agents_settings(helm: Helm) -> None:
    objects = helm.render({"agent": {"extraPlugins": [BANDWIDTH]}})
    config = yaml.safe_load(find(objects, "ConfigMap", "-config")["data"]["config.yaml"])
    assert config["agent"]["extraPlugins"] == [BANDWIDTH]
    for bad in ([{"capabilities": {}}], [{"type": "portmap"}], [{"type": "../sh"}]):
        with pytest.raises(HelmFailed, match="extraPlugins"):
            helm.render({"agent": {"extraPlugins": bad}})


def test_the_cluster_autoscaler_knows_what_the_pods_are(helm: Helm) -> None:
    objects = helm.render()
    agent = find(objects, "DaemonSet", "-agent")["spec"]["template"]["metadata"]
    operator = find(objects, "Deployment", "-operator")["spec"]["template"]["metadata"]
    assert agent["annotations"]["cluster-autoscaler.kubernetes.io/daemonset-pod"] == "true"
    assert operator["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "true"


def test_the_operator_knows_its_pod_name_for_its_events(helm: Helm) -> None:
    operator = pod_spec(helm.render(), "Deployment", "-operator")["containers"][0]
    assert env_of(operator)["POD_NAME"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}}


@pytest.mark.parametrize("credential", [
    {"azure": {"credential": "managedIdentity", "managedIdentityClientID":
               "11111111-2222-3333-4444-555555555555"}},
    {"azure": {"credential": "servicePrincipal"},
     "credentials": {"servicePrincipal": {"existingSecret": "azure-sp"}}},
    {"azure": {"credential": "workloadIdentity"},
     "credentials": {"workloadIdentity": {"clientID": "11111111-2222-3333-4444-555555555555"}}},
])
def test_the_helm_test_is_the_preflight_with_the_operators_identity(
        helm: Helm, credential: dict[str, Any]) -> None:
    values = {**credential, "operatorDeployment": {"extraVolumes": [
        {"name": "arm-ca", "configMap": {"name": "arm-ca"}}], "extraVolumeMounts": [
        {"name": "arm-ca", "mountPath": "/etc/arm-ca", "readOnly": True}]}}
    objects = helm.render(values)
    (test,) = [o for o in objects if o["kind"] == "Pod"]
    assert test["metadata"]["annotations"]["helm.sh/hook"] == "test"
    operator = pod_spec(objects, "Deployment", "-operator")
    spec = test["spec"]
    # the operator's identity, settings, network, placement and confinement
    for key in ("serviceAccountName", "hostNetwork", "securityContext", "volumes",
                "tolerations", "nodeSelector"):
        assert spec[key] == operator[key], key
    (container,) = spec["containers"]
    assert container["command"][:3] == ["azure-cni", "preflight",
                                        "--config=/etc/azure-cni/config.yaml"]
    assert container["env"] == operator["containers"][0]["env"]
    assert container["volumeMounts"] == operator["containers"][0]["volumeMounts"]
    assert container["securityContext"] == operator["containers"][0]["securityContext"]
    workload = test["metadata"]["labels"].get("azure.workload.identity/use")
    assert (workload == "true") == (credential["azure"]["credential"] == "workloadIdentity")


def test_uninstall_mode_cleans_the_nodes_and_waits(helm: Helm) -> None:
    spec = pod_spec(helm.render({"agentDaemonSet": {"uninstall": True}}), "DaemonSet",
                    "-agent")
    (container,) = spec["containers"]
    assert {"--uninstall", "--purge", "--wait"} <= set(container["command"])
    assert "readinessProbe" not in container and "livenessProbe" not in container


def test_no_advice_to_reuse_values() -> None:
    root = CHART.parents[1]
    for doc in (CHART / "README.md", CHART / "templates" / "NOTES.txt",
                root / "docs" / "install-azure.md"):
        for line in doc.read_text().splitlines():
            assert "--reuse-values" not in line or "not `--reuse-values`" in line, (doc, line)
