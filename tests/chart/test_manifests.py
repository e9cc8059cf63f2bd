"""What the chart renders: security defaults, credentials, host paths, and deploy/ in sync."""

from __future__ import annotations

import base64
import json
import posixpath
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.chart.helm import CHART, ROOT, Helm, HelmFailed, find
from tests.chart.value_sets import (
    CLIENT_ID,
    CLIENT_SECRET,
    TENANT_ID,
    VALUE_SETS,
    expected_settings_file,
)

from azure_cni.api.nodeippool import AGENT_CONDITIONS


def pod_spec(objects: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    spec: dict[str, Any] = find(objects, kind, suffix)["spec"]["template"]["spec"]
    return spec


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# -- deploy/ is the chart rendered with its defaults ----------------------------------------

def test_deploy_manifests_are_the_rendered_chart(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "hack" / "render-manifests.sh"), str(tmp_path)], check=True,
                   capture_output=True, text=True, timeout=120)
    rendered = sorted(p.name for p in tmp_path.glob("*.yaml"))
    checked_in = sorted(p.name for p in (ROOT / "deploy").glob("*.yaml"))
    assert rendered == checked_in, "deploy/ has other files than hack/render-manifests.sh " \
                                   f"writes: {checked_in} vs {rendered}"
    assert "daemonset.yaml" in rendered
    for name in rendered:
        assert (ROOT / "deploy" / name).read_text() == (tmp_path / name).read_text(), (
            f"deploy/{name} differs from the chart: regenerate with hack/render-manifests.sh")


# -- credentials ------------------------------------------------------------------------------

def test_client_secret_appears_only_in_the_secret(helm: Helm) -> None:
    objects = helm.render(VALUE_SETS["service-principal-secret-created"])
    encoded = base64.b64encode(CLIENT_SECRET.encode()).decode()
    holders = [f"{o['kind']}/{o['metadata']['name']}" for o in objects
               if CLIENT_SECRET in json.dumps(o) or encoded in json.dumps(o)]
    secret = find(objects, "Secret", "-azure-credentials")
    assert holders == [f"Secret/{secret['metadata']['name']}"]
    assert secret["data"]["AZURE_CLIENT_SECRET"] == encoded
    assert base64.b64decode(secret["data"]["AZURE_TENANT_ID"]).decode() == TENANT_ID
    assert base64.b64decode(secret["data"]["AZURE_CLIENT_ID"]).decode() == CLIENT_ID

    settings = yaml.safe_load(find(objects, "ConfigMap", "-config")["data"]["config.yaml"])
    assert CLIENT_ID not in json.dumps(settings) and TENANT_ID not in json.dumps(settings)

    operator = pod_spec(objects, "Deployment", "-operator")["containers"][0]
    env = env_of(operator)
    for var in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"):
        assert "value" not in env[var]
        assert env[var]["valueFrom"] == {"secretKeyRef": {"name": secret["metadata"]["name"],
                                                          "key": var}}
    # the agent never holds Azure credentials
    agent = pod_spec(objects, "DaemonSet", "-agent")["containers"][0]
    assert not [name for name in env_of(agent) if name.startswith("AZURE_")]


def test_existing_secret_is_referenced_not_created(helm: Helm) -> None:
    objects = helm.render(VALUE_SETS["service-principal-existing-secret"])
    assert not [o for o in objects if o["kind"] == "Secret"]
    env = env_of(pod_spec(objects, "Deployment", "-operator")["containers"][0])
    assert {env[v]["valueFrom"]["secretKeyRef"]["name"]
            for v in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")} == {"azure-sp"}


def test_workload_identity_is_an_annotation_and_a_pod_label(helm: Helm) -> None:
    objects = helm.render(VALUE_SETS["workload-identity"])
    account = find(objects, "ServiceAccount", "-operator")
    assert account["metadata"]["annotations"] == {
        "azure.workload.identity/client-id": CLIENT_ID,
        "azure.workload.identity/tenant-id": TENANT_ID}
    labels = find(objects, "Deployment", "-operator")["spec"]["template"]["metadata"]["labels"]
    assert labels["azure.workload.identity/use"] == "true"
    assert not [o for o in objects if o["kind"] == "Secret"]
    # the webhook injects the AZURE_* variables; the chart adds none
    env = env_of(pod_spec(objects, "Deployment", "-operator")["containers"][0])
    assert not [name for name in env if name.startswith("AZURE_")]


@pytest.mark.parametrize("name", ["defaults", "managed-identity"])
def test_other_credentials_add_no_identity_wiring(helm: Helm, name: str) -> None:
    objects = helm.render(VALUE_SETS[name])
    assert "annotations" not in find(objects, "ServiceAccount", "-operator")["metadata"]
    labels = find(objects, "Deployment", "-operator")["spec"]["template"]["metadata"]["labels"]
    assert "azure.workload.identity/use" not in labels
    assert not [o for o in objects if o["kind"] == "Secret"]


# -- the operator -----------------------------------------------------------------------------

def test_operator_is_a_leader_and_a_standby_unprivileged(helm: Helm) -> None:
    values = VALUE_SETS["custom-pools-and-paths"]
    objects = helm.render(values)
    deployment = find(objects, "Deployment", "-operator")
    assert deployment["spec"]["replicas"] == 2
    # one replica at a time, no surge: with hostNetwork a new pod needs an old one's ports
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    pdb = find(objects, "PodDisruptionBudget", "-operator")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    spec = deployment["spec"]["template"]["spec"]
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"] == deployment["spec"]["selector"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "privileged": False, "capabilities": {"drop": ["ALL"]}}
    assert container["command"] == ["azure-cni-operator", "--config=/etc/azure-cni/config.yaml",
                                    "--log-level=info"]
    # the Lease's holder names the pod; the Lease lives in the pod's namespace
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
           for e in container["env"]}
    assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"
    assert spec["terminationGracePeriodSeconds"] > values.get("operator", {}).get(
        "drainSeconds", 20.0)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": values["operator"]["healthPort"],
                     "metrics": values["operator"]["metricsPort"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
            "effect": "NoSchedule"} in spec["tolerations"]
    assert not [v for v in spec["volumes"] if "hostPath" in v]


# -- the agent --------------------------------------------------------------------------------

def test_agent_has_only_the_capabilities_it_needs(helm: Helm) -> None:
    objects = helm.render()
    daemonset = find(objects, "DaemonSet", "-agent")
    spec = daemonset["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"],
                                        "add": ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]}
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsUser"] == 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["hostPID"] is False and spec["hostIPC"] is False
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert daemonset["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 1,
                                                                    "maxSurge": 0}
    assert container["command"] == ["azure-cni-agent", "--config=/etc/azure-cni/config.yaml",
                                    "--node-name=$(NODE_NAME)", "--log-level=info",
                                    "--host-root=/host"]
    assert env_of(container)["NODE_NAME"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "spec.nodeName"}}


@pytest.mark.parametrize("name", ["defaults", "custom-pools-and-paths"])
def test_agent_mounts_exactly_the_host_paths_of_its_settings(helm: Helm, name: str) -> None:
    values = VALUE_SETS[name]
    agent = expected_settings_file(values)["agent"]
    objects = helm.render(values)
    spec = pod_spec(objects, "DaemonSet", "-agent")
    (container,) = spec["containers"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    socket_dir = posixpath.dirname(agent["socketPath"])
    state_dir, bin_dir, conf_dir = agent["stateDir"], agent["cniBinDir"], agent["cniConfDir"]
    python_dir = posixpath.dirname(agent["hostPython"])
    assert sorted(host_paths.values()) == sorted(
        [socket_dir, state_dir, bin_dir, conf_dir, python_dir, "/var/run/netns",
         "/run/xtables.lock", "/proc/sys/net"])
    # the settings' paths mean the same in the container as on the host
    for path in (socket_dir, state_dir, bin_dir, conf_dir):
        (volume,) = [n for n, p in host_paths.items() if p == path]
        assert mounts[volume]["mountPath"] == path
        assert not mounts[volume].get("readOnly")
    assert mounts["netns"] == {"name": "netns", "mountPath": "/var/run/netns",
                               "readOnly": True, "mountPropagation": "HostToContainer"}
    assert mounts["host-python-dir"]["readOnly"] is True
    assert mounts["host-python-dir"]["mountPath"] == "/host" + python_dir
    assert mounts["host-proc-sys-net"]["mountPath"] == "/host/proc/sys/net"
    port = agent["metricsPort"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["host"] == "127.0.0.1"
        assert container[probe]["httpGet"]["port"] == port


def test_changing_a_setting_rolls_both_workloads(helm: Helm) -> None:
    def checksums(values: dict[str, Any]) -> list[str]:
        objects = helm.render(values)
        return [find(objects, kind, suffix)["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"] for kind, suffix in (("Deployment", "-operator"),
                                                    ("DaemonSet", "-agent"))]

    before = checksums({})
    assert checksums({}) == before
    after = checksums({"pool": {"minIPs": 4}})
    assert all(a != b for a, b in zip(after, before, strict=True))
    # a deployment-only value does not restart the processes for nothing
    assert checksums({"agentDaemonSet": {"maxUnavailable": 2}}) == before


# -- RBAC and admission, as rendered ------------------------------------------------------------

def test_no_role_grants_secrets_wildcards_or_node_writes(helm: Helm) -> None:
    for obj in helm.render(VALUE_SETS["service-principal-secret-created"]):
        if obj["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in obj["rules"]:
            where = f"{obj['kind']}/{obj['metadata']['name']}: {rule}"
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], where
            assert "secrets" not in rule["resources"], where
            assert not ("nodes" in rule["resources"]
                        and set(rule["verbs"]) - {"get", "list", "watch"}), where


def test_operator_may_post_events_where_it_posts_them(helm: Helm) -> None:
    from azure_cni.kubeevents import CLUSTER_SCOPED_NAMESPACE

    objects = helm.render(namespace="azure-cni-system")
    namespaces = {o["metadata"]["namespace"] for o in objects if o["kind"] == "Role"
                  and o["metadata"]["name"].endswith("-operator-events")}
    # the operator posts every pool Event there, and may post nowhere else
    assert namespaces == {CLUSTER_SCOPED_NAMESPACE}


def test_events_on_pods_are_granted_only_with_per_pod_networking_on(helm: Helm) -> None:
    def pod_event_roles(values: dict[str, Any] | None) -> list[dict[str, Any]]:
        return [o for o in helm.render(values) if o["kind"] == "ClusterRole"
                and o["metadata"]["name"].endswith("-operator-pod-events")]

    assert pod_event_roles(None) == []
    (role,) = pod_event_roles({"podNetworking": {"resourceGroups": ["pod-ips"],
                                                 "publicIPNamespaces": ["web"]}})
    assert role["rules"] == [{"apiGroups": ["events.k8s.io"], "resources": ["events"],
                              "verbs": ["create", "patch"]}]
    # a resource group granted to one namespace alone turns it on too
    (_,) = pod_event_roles({"podNetworking": {"namespaceResourceGroups": {"web": ["web-ips"]},
                                              "publicIPNamespaces": ["web"]}})
    with pytest.raises(HelmFailed, match="podNetworking"):
        helm.render({"podNetworking": {"publicIPs": ["web"]}})


def test_admission_policy_guards_every_status_field_the_agent_does_not_own(helm: Helm) -> None:
    crd = yaml.safe_load((CHART / "crds" / "azurecni.io_nodeippools.yaml").read_text())
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    agent_fields = {"used", "cooling", "releaseAcks", "idleBlocks", "podRequests",
                    "conditions"}
    policy = find(helm.render(), "ValidatingAdmissionPolicy", "-agent-own-pool")
    expressions = " ".join(v["expression"] for v in policy["spec"]["validations"])
    for name in sorted(set(status["properties"]) - agent_fields):
        assert f"object.?status.?{name} == oldObject.?status.?{name}" in expressions, name
    (agent_condition,) = AGENT_CONDITIONS
    assert f"c.type != '{agent_condition}'" in expressions
    assert policy["spec"]["failurePolicy"] == "Fail"
    binding = find(helm.render(), "ValidatingAdmissionPolicyBinding", "-agent-own-pool")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"],
                               "validationActions": ["Deny"]}


def test_no_custom_resource_field_can_hold_a_credential() -> None:
    """NodeIPPools are readable by every agent: nothing in their schema may carry a secret."""
    crd = yaml.safe_load((CHART / "crds" / "azurecni.io_nodeippools.yaml").read_text())

    def names(schema: dict[str, Any]) -> list[str]:
        found = []
        for key, sub in schema.get("properties", {}).items():
            found.append(key)
            found += names(sub)
            found += names(sub.get("items", {}))
        return found

    fields = names(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    assert "primaryIP" in fields  # the walk reaches nested status fields
    assert not [f for f in fields
                if re.search(r"secret|password|token|credential|key$", f, re.IGNORECASE)]
