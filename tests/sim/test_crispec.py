"""The chart's containers as kubelet would hand them to the CRI (``crispec``), on the chart as
``helm template`` renders it, plus the translation's own rules in tables."""

from __future__ import annotations

import copy
from fractions import Fraction
from typing import Any

import pytest
import yaml

from azure_cni_sim import crispec
from azure_cni_sim.chartrun import render_chart

POD = crispec.PodIdentity(name="azure-cni-operator-abcde", namespace="kube-system",
                          uid="0000-1111", node_name="vm7", host_ip="198.18.0.7")
IMAGE = "localhost/azure-cni:dev-test"
SERVICE = crispec.service_env("127.0.0.1", 6443)


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    values = {"image": {"repository": "localhost/azure-cni", "tag": "dev-test"},
              "operator": {"metricsPort": 19090, "healthPort": 18080}}
    return render_chart(values, tmp_path_factory.mktemp("chart"))


def config_for(manifests: list[dict[str, Any]], kind: str, name: str
               ) -> tuple[crispec.Workload, dict[str, Any]]:
    workload = crispec.find_workload(manifests, kind, name)
    env = crispec.container_env(workload, POD, manifests, SERVICE)
    return workload, crispec.container_config(workload, image=IMAGE, env=env, mounts=[],
                                              log_path="x.log", image_user=(65532, 65532))


def test_the_operator_runs_as_the_chart_says(manifests: list[dict[str, Any]]) -> None:
    workload, config = config_for(manifests, "Deployment", "operator")
    assert config["command"] == ["azure-cni-operator", "--config=/etc/azure-cni/config.yaml",
                                 "--log-level=info"]
    sc = config["linux"]["security_context"]
    assert (sc["run_as_user"], sc["run_as_group"]) == ({"value": 65532}, {"value": 65532})
    assert sc["readonly_rootfs"] and sc["no_new_privs"] and not sc["privileged"]
    assert sc["capabilities"] == {"add_capabilities": [], "drop_capabilities": ["ALL"]}
    assert sc["seccomp"] == {"profile_type": crispec.SECCOMP_RUNTIME_DEFAULT}
    assert sc["namespace_options"]["network"] == crispec.NAMESPACE_NODE  # hostNetwork: true
    assert config["linux"]["resources"] == {"cpu_shares": 51,  # 50m
                                            "memory_limit_in_bytes": 512 * 2**20}
    envs = {e["key"]: e["value"] for e in config["envs"]}
    assert envs["POD_NAMESPACE"] == "kube-system"
    assert envs["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert crispec.probe_url(workload) == "http://127.0.0.1:18080/healthz"


def test_the_operator_mounts_its_settings_tmp_and_token(manifests: list[dict[str, Any]]
                                                       ) -> None:
    workload = crispec.find_workload(manifests, "Deployment", "operator")
    volumes = crispec.plan_volumes(workload, "kube-system", manifests)
    mounts = {m.container_path: m for m in crispec.plan_mounts(workload)}
    config = volumes[mounts["/etc/azure-cni"].volume]
    assert config.kind == "configMap" and mounts["/etc/azure-cni"].read_only
    settings = yaml.safe_load(config.files["config.yaml"][0])
    assert settings["operator"]["healthPort"] == 18080
    assert volumes[mounts["/tmp"].volume].kind == "emptyDir"
    assert not mounts["/tmp"].read_only
    token = mounts[crispec.SERVICE_ACCOUNT_DIR]
    assert token.read_only and volumes[token.volume].kind == "serviceAccountToken"
    assert workload.service_account == "azure-cni-operator"


def test_the_agent_gets_its_node_name_capabilities_and_host_paths(
        manifests: list[dict[str, Any]]) -> None:
    workload, config = config_for(manifests, "DaemonSet", "agent")
    assert "--node-name=vm7" in config["command"]  # $(NODE_NAME) from spec.nodeName
    sc = config["linux"]["security_context"]
    assert sc["run_as_user"] == {"value": 0}
    assert sc["capabilities"]["add_capabilities"] == ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]
    volumes = crispec.plan_volumes(workload, "kube-system", manifests)
    host_paths = {v.host_path for v in volumes.values() if v.kind == "hostPath"}
    assert {"/etc/cni/net.d", "/opt/cni/bin", "/var/run/netns"} <= host_paths
    netns = next(m for m in crispec.plan_mounts(workload) if m.container_path == "/var/run/netns")
    assert netns.propagation == crispec.PROPAGATION["HostToContainer"] and netns.read_only


def test_a_field_it_does_not_implement_is_refused(manifests: list[dict[str, Any]]) -> None:
    changed = copy.deepcopy(manifests)
    deployment = next(o for o in changed if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "procMount"] = "Unmasked"
    workload = crispec.find_workload(changed, "Deployment", "operator")
    with pytest.raises(crispec.Unsupported, match="procMount"):
        crispec.security_context(workload, None)


def test_run_as_non_root_refuses_root() -> None:
    workload = crispec.Workload("Deployment", "x", {"securityContext": {"runAsNonRoot": True}},
                                {"name": "c"})
    with pytest.raises(crispec.Unsupported, match="runAsNonRoot"):
        crispec.run_as(workload, (0, 0))
    assert crispec.run_as(workload, (1000, 1000)) == (1000, 1000)


@pytest.mark.parametrize(("text", "expected"), [
    ("50m", Fraction(1, 20)), ("1", 1), ("1.5", Fraction(3, 2)), ("192Mi", 192 * 2**20),
    ("512Mi", 536870912), ("1Gi", 2**30), ("500M", 500 * 10**6), ("129886128Ki", 129886128 * 1024),
    (2, 2), ("1e3", 1000),
])
def test_parse_quantity(text: str | int, expected: Fraction | int) -> None:
    assert crispec.parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["", "12Q", "Mi", "1..5"])
def test_parse_quantity_refuses_what_is_not_one(text: str) -> None:
    with pytest.raises(crispec.Unsupported):
        crispec.parse_quantity(text)


@pytest.mark.parametrize(("resources", "expected"), [
    ({}, {}),
    ({"requests": {"cpu": "50m"}}, {"cpu_shares": 51}),
    ({"requests": {"cpu": "1m"}}, {"cpu_shares": 2}),  # kubelet's minimum
    ({"limits": {"cpu": "500m", "memory": "64Mi"}},  # a limit alone is also the request
     {"cpu_shares": 512, "cpu_period": 100_000, "cpu_quota": 50_000,
      "memory_limit_in_bytes": 64 * 2**20}),
])
def test_resources(resources: dict[str, Any], expected: dict[str, int]) -> None:
    assert crispec.resources({"resources": resources}) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("--node-name=$(NODE_NAME)", "--node-name=vm7"),
    ("$(UNDEFINED)", "$(UNDEFINED)"),
    ("$$(NODE_NAME)", "$(NODE_NAME)"),
    ("cost: $$5", "cost: $5"),
    ("$(NODE_NAME)-$(NODE_NAME)", "vm7-vm7"),
])
def test_expand(text: str, expected: str) -> None:
    assert crispec.expand(text, {"NODE_NAME": "vm7"}) == expected


def test_env_entries_see_the_ones_before_them_and_key_refs_resolve() -> None:
    container = {"name": "c", "env": [
        {"name": "A", "value": "a"}, {"name": "B", "value": "$(A)-b"},
        {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        {"name": "O", "valueFrom": {"configMapKeyRef": {"name": "m", "key": "x",
                                                        "optional": True}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}
    workload = crispec.Workload("Deployment", "w", {"hostNetwork": True}, container)
    objects = [{"kind": "Secret", "metadata": {"name": "s", "namespace": "kube-system"},
                "data": {"k": "c2VjcmV0"}}]
    env = crispec.container_env(workload, POD, objects, {})
    assert env == {"A": "a", "B": "a-b", "S": "secret", "IP": "198.18.0.7"}


def test_a_missing_config_map_is_an_error_unless_optional() -> None:
    spec = {"volumes": [{"name": "v", "configMap": {"name": "absent"}}],
            "automountServiceAccountToken": False}
    workload = crispec.Workload("Deployment", "w", spec, {"name": "c"})
    with pytest.raises(crispec.Unsupported, match="absent"):
        crispec.plan_volumes(workload, "ns", [])
    spec["volumes"][0]["configMap"]["optional"] = True
    assert crispec.plan_volumes(workload, "ns", [])["v"].files == {}
