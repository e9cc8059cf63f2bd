"""The chart's values: the settings file they render, their schema, and their documentation."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml
from tests.chart.helm import CHART, ROOT, Helm, find, pinned_kubernetes_version
from tests.chart.value_sets import (
    SETTINGS_SECTIONS,
    STANDALONE_ONLY_SECTIONS,
    VALUE_SETS,
    expected_settings_file,
)

from azure_cni.api.settings import (
    Settings,
    settings_from_mapping,
    settings_to_mapping,
)

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def typed(value: Any) -> Any:
    """``value`` with every scalar paired with its type, so 10 and 10.0 and True differ."""
    if isinstance(value, Mapping):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


def test_settings_sections_of_values_are_the_code_defaults() -> None:
    code = settings_to_mapping(Settings())
    assert set(code) == set(SETTINGS_SECTIONS) | set(STANDALONE_ONLY_SECTIONS)
    for section in SETTINGS_SECTIONS:
        assert typed(VALUES[section]) == typed(code[section]), (
            f"values.yaml section {section!r} differs from azure_cni.api.settings; "
            "copy the code's keys and defaults into charts/azure-cni/values.yaml")


def schema_leaves(schema: Mapping[str, Any], prefix: str = "",
                  values: Any = None) -> Iterator[str]:
    """Dotted paths of the values the schema describes one by one: objects with properties
    are descended into where values.yaml sets their keys; free-form objects such as
    resources, and objects empty by default such as the security contexts, are one value."""
    values = VALUES if values is None and not prefix else values
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        default = values.get(key) if isinstance(values, Mapping) else None
        if "properties" in sub and default != {}:
            yield from schema_leaves(sub, path + ".", default)
        else:
            yield path


def value_at(values: Mapping[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        node = node[part]
    return node


def test_every_schema_value_has_a_default_in_values_yaml() -> None:
    missing = []
    for path in schema_leaves(SCHEMA):
        try:
            value_at(VALUES, path)
        except KeyError:
            missing.append(path)
    assert not missing, f"described in values.schema.json but absent from values.yaml: {missing}"


def test_every_value_is_in_the_chart_readme() -> None:
    readme = (CHART / "README.md").read_text()
    undocumented = [p for p in schema_leaves(SCHEMA) if f"`{p}`" not in readme]
    assert not undocumented, f"charts/azure-cni/README.md does not list: {undocumented}"


def test_readme_defaults_match_values_yaml() -> None:
    """Each README row `key` | `default` shows the default values.yaml really has."""
    readme = (CHART / "README.md").read_text()
    rows = re.findall(r"^\| `([\w.]+)` \| `([^`]*)` \|", readme, re.MULTILINE)
    assert len(rows) > 50, "the README's values table was not found"
    wrong = {}
    for path, shown in rows:
        actual = value_at(VALUES, path)
        if yaml.safe_load(shown) != actual and shown != json.dumps(actual):
            wrong[path] = (shown, actual)
    assert not wrong, f"README default differs from values.yaml (shown, actual): {wrong}"


def test_lint_strict_passes(helm: Helm) -> None:
    result = helm.run("lint", "--strict", str(CHART),
                      f"--kube-version={pinned_kubernetes_version()}")
    assert "0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_configmap_is_the_settings_file(helm: Helm, name: str) -> None:
    values = VALUE_SETS[name]
    configmap = find(helm.render(values), "ConfigMap", "-config")
    document = yaml.safe_load(configmap["data"]["config.yaml"])
    assert set(document) == set(SETTINGS_SECTIONS)
    # what the operator and the agent will load, equal to code defaults + the admin's values
    assert settings_from_mapping(document) == settings_from_mapping(
        expected_settings_file(values))


# Values an admin could plausibly get wrong, and the words helm answers with.
BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("maxIPs above a NIC's capacity", {"pool": {"maxIPs": 256}},
     "at '/pool/maxIPs': maximum: got 256, want 255"),
    ("batch of zero", {"pool": {"batchSize": 0}}, "at '/pool/batchSize': minimum: got 0, want 1"),
    ("negative floor", {"pool": {"minIPs": -1}}, "at '/pool/minIPs': minimum: got -1, want 0"),
    ("count as text", {"pool": {"minIPs": "ten"}}, "at '/pool/minIPs': got string, want integer"),
    ("release delay over a day", {"pool": {"releaseDelaySeconds": 90000}},
     "at '/pool/releaseDelaySeconds': maximum: got 90,000, want 86,400"),
    ("misspelt pool key", {"pool": {"maxIP": 10}},
     "at '/pool': additional properties 'maxIP' not allowed"),
    ("replicas without leader election",
     {"operatorDeployment": {"replicas": 2}, "operator": {"leaderElection": False}},
     "operatorDeployment.replicas is 2 but operator.leaderElection is false"),
    ("drain longer than the grace period", {"operator": {"drainSeconds": 40}},
     "operator.drainSeconds (40) must be below operatorDeployment."
     "terminationGracePeriodSeconds (30)"),
    ("lease timings out of order", {"operator": {"renewDeadlineSeconds": 20}},
     "retryPeriodSeconds (2) < renewDeadlineSeconds (20) < leaseDurationSeconds (15)"),
    ("unknown credential", {"azure": {"credential": "password"}},
     "at '/azure/credential': value must be one of 'default', 'managedIdentity', "
     "'workloadIdentity', 'servicePrincipal'"),
    ("workload identity without client ID", {"azure": {"credential": "workloadIdentity"}},
     "at '/credentials/workloadIdentity/clientID': minLength: got 0, want 1"),
    ("service principal without secret", {"azure": {"credential": "servicePrincipal"}},
     "at '/credentials/servicePrincipal/existingSecret': minLength: got 0, want 1"),
    ("service principal missing its secret value",
     {"azure": {"credential": "servicePrincipal"},
      "credentials": {"servicePrincipal": {"tenantID": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                                           "clientID": "0b5d7e33-6c2a-4e1e-9d7c-3f2a1b4c5d6e"}}},
     "at '/credentials/servicePrincipal/clientSecret': minLength: got 0, want 1"),
    ("client ID that is not a GUID", {"azure": {"managedIdentityClientID": "my-identity"}},
     "at '/azure/managedIdentityClientID': 'my-identity' does not match pattern"),
    ("endpoint without scheme", {"azure": {"armEndpoint": "management.azure.com"}},
     "at '/azure/armEndpoint': 'management.azure.com' does not match pattern"),
    ("zero QPS", {"azure": {"writeQPS": 0}}, "at '/azure/writeQPS': minimum: got 0, want 0.001"),
    ("prefix length 33", {"snat": {"nonMasqueradeCIDRs": ["10.0.0.0/33"]}},
     "at '/snat/nonMasqueradeCIDRs/0': '10.0.0.0/33' does not match pattern"),
    ("address octet 300", {"snat": {"nonMasqueradeCIDRs": ["10.0.0.300/8"]}},
     "at '/snat/nonMasqueradeCIDRs/0': '10.0.0.300/8' does not match pattern"),
    ("CIDRs as one string", {"snat": {"nonMasqueradeCIDRs": "10.0.0.0/8"}},
     "at '/snat/nonMasqueradeCIDRs': got string, want array"),
    ("SNAT switch as text", {"snat": {"enabled": "no"}},
     "at '/snat/enabled': got string, want boolean"),
    ("port out of range", {"operator": {"healthPort": 70000}},
     "at '/operator/healthPort': maximum: got 70,000, want 65,535"),
    ("relative socket path", {"agent": {"socketPath": "run/agent.sock"}},
     "at '/agent/socketPath': 'run/agent.sock' does not match pattern"),
    ("MTU beyond jumbo", {"agent": {"mtu": 10000}},
     "at '/agent/mtu': maximum: got 10,000, want 9,216"),
    ("pull policy", {"image": {"pullPolicy": "Sometimes"}},
     "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'"),
    ("digest that is a tag", {"image": {"digest": "latest"}},
     "at '/image/digest': 'latest' does not match pattern"),
    ("no agent may be down", {"agentDaemonSet": {"maxUnavailable": 0}},
     "at '/agentDaemonSet/maxUnavailable': minimum: got 0, want 1"),
    ("percentage above 100", {"agentDaemonSet": {"maxUnavailable": "150%"}},
     "at '/agentDaemonSet/maxUnavailable': '150%' does not match pattern"),
    # cross-field rules: JSON schema cannot compare two fields, templates/_validate.tpl does
    ("floor above ceiling", {"pool": {"minIPs": 20, "maxIPs": 10}},
     "pool.minIPs (20) must not exceed pool.maxIPs (10)"),
    ("warm pool floor above its ceiling", {"pool": {"minFreeIPs": 30, "maxFreeIPs": 24}},
     "pool.minFreeIPs (30) must not exceed pool.maxFreeIPs (24)"),
    ("a reserve of the whole bucket", {"azure": {"writeReserve": 200}},
     "azure.writeReserve (200) must be below azure.writeBurst (200)"),
    ("a subscription key that is not a budget", {"azure": {"subscriptions": {"s": {"x": 1}}}},
     "at '/azure/subscriptions/s': additional properties 'x' not allowed"),
]


@pytest.mark.parametrize(("values", "message"), [(v, m) for _, v, m in BAD_VALUES],
                         ids=[case for case, _, _ in BAD_VALUES])
def test_bad_values_are_refused_with_a_clear_message(helm: Helm, values: dict[str, Any],
                                                     message: str) -> None:
    result = helm.template(values, check=False)
    assert result.returncode != 0, f"helm accepted {values}"
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(("doc", "message"), [
    ({"pool": {"minIPs": 20, "maxIPs": 10}},
     r"pool.minIPs \(20\) must not exceed pool.maxIPs \(10\)"),
    ({"pool": {"minFreeIPs": 30, "maxFreeIPs": 24}}, r"minFreeIPs \(30\) must not exceed"),
    ({"azure": {"writeReserve": 200}}, r"writeReserve \(200\) must be at least 0 and below"),
    ({"azure": {"subscriptions": {"s": {"readReserve": 300}}}},
     r"azure.subscriptions.s: readReserve \(300\)"),
])
def test_cross_field_rules_are_also_the_settings_loaders(doc: dict[str, Any],
                                                         message: str) -> None:
    """The chart's render-time check repeats a rule the operator itself enforces at start-up
    (the settings loader raises the pool's own ValueError, which the entry points report)."""
    with pytest.raises(ValueError, match=message):
        settings_from_mapping(doc)


def test_admission_policy_refuses_clusters_whose_tokens_name_no_node(helm: Helm) -> None:
    result = helm.run("template", "azure-cni", str(CHART), "--kube-version=1.31.4",
                      check=False)
    assert result.returncode != 0
    assert "admissionPolicy.enabled needs Kubernetes 1.32 or later (found v1.31.4)" \
        in result.stderr
    helm.run("template", "azure-cni", str(CHART), "--kube-version=1.31.4",
             "--set", "admissionPolicy.enabled=false")


def test_chart_ships_the_generated_crds_byte_for_byte() -> None:
    generated = sorted((ROOT / "deploy" / "crds").iterdir())
    assert [p.name for p in generated] == ["azurecni.io_nodeippoolclasses.yaml",
                                           "azurecni.io_nodeippools.yaml"]
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == [p.name for p in generated]
    for crd in generated:
        assert (CHART / "crds" / crd.name).read_bytes() == crd.read_bytes(), (
            "charts/azure-cni/crds/ differs from deploy/crds/: run hack/render-manifests.sh")


def test_chart_commands_are_console_scripts_of_the_package(helm: Helm) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    objects = helm.render()
    commands = {c["command"][0]
                for kind, suffix in (("Deployment", "-operator"), ("DaemonSet", "-agent"))
                for c in find(objects, kind, suffix)["spec"]["template"]["spec"]["containers"]}
    assert commands == {"azure-cni-operator", "azure-cni-agent"}
    assert commands <= set(scripts), f"not console scripts in pyproject.toml: {commands}"


def test_containerfile_user_is_the_operators(helm: Helm) -> None:
    """The image's default user is the one the operator's pod runs as (non-root)."""
    containerfile = (ROOT / "Containerfile").read_text()
    (user,) = re.findall(r"^USER (\d+):\d+$", containerfile, re.MULTILINE)
    operator = find(helm.render(), "Deployment", "-operator")["spec"]["template"]["spec"]
    assert operator["securityContext"]["runAsUser"] == int(user) != 0
    # the package itself, with the pinned constraints (options such as --no-compile aside)
    assert re.search(r"pip install (--[\w-]+ )*\.", containerfile), containerfile
    assert "PIP_CONSTRAINT=/src/constraints.txt" in containerfile


def test_image_tag_defaults_to_app_version_and_digest_pins(helm: Helm) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())

    def images(values: dict[str, Any]) -> set[str]:
        objs = helm.render(values)
        return {c["image"] for kind in ("Deployment", "DaemonSet")
                for o in objs if o["kind"] == kind
                for c in o["spec"]["template"]["spec"]["containers"]}

    assert images({}) == {f"localhost/azure-cni:{chart['appVersion']}"}
    digest = "sha256:" + "ab" * 32
    assert images({"image": {"repository": "example.azurecr.io/azure-cni", "tag": "9.9",
                             "digest": digest}}) == {f"example.azurecr.io/azure-cni@{digest}"}



def test_pool_classes_become_node_ip_pool_classes(helm: Helm) -> None:
    pods = ("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/"
            "vnet/subnets/pods")
    classes = [{"name": "gpu", "nodeSelector": {"matchLabels": {"agentpool": "gpu"}},
                "pool": {"podSubnetID": pods, "maxIPs": 64}},
               {"name": "rest", "nodeSelector": {}}]
    rendered = [o for o in helm.render({"poolClasses": classes})
                if o["kind"] == "NodeIPPoolClass"]
    assert [(o["metadata"]["name"], o["spec"]) for o in rendered] == [
        ("gpu", {"nodeSelector": {"matchLabels": {"agentpool": "gpu"}},
                 "pool": {"podSubnetID": pods, "maxIPs": 64}}),
        ("rest", {"nodeSelector": {}})]
    assert not [o for o in helm.render() if o["kind"] == "NodeIPPoolClass"]
    bad = helm.template({"poolClasses": [{"name": "x", "nodeSelector": {},
                                          "pool": {"podSubnetID": "pods"}}]}, check=False)
    assert bad.returncode != 0 and "podSubnetID" in bad.stderr, bad.stderr
