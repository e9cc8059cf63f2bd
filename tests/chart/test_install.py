"""The chart against a real API server: dry runs, install, upgrade and uninstall with helm."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tests.chart.conftest import Release, install_release, remove_release
from tests.chart.helm import CHART, Helm, parse_manifests
from tests.chart.value_sets import VALUE_SETS

from azure_cni.api.crd import REVISION_ANNOTATION
from azure_cni_sim.cluster import ExistingCluster, LocalCluster
from azure_cni_sim.node import wait_crd_established

pytestmark = pytest.mark.cluster

CRD_NAME = "nodeippools.azurecni.io"
#: seconds a new admission policy may take to be in effect (the API server loads it from its
#: informer, about a second on an idle machine)
POLICY_LOADS_WITHIN = 30.0


@pytest.fixture(scope="module")
def dry_run_namespace(kube: LocalCluster | ExistingCluster, monitoring_crds: None
                      ) -> Iterator[str]:
    """A namespace for server-side dry runs, with the CRD and the Prometheus Operator's CRDs
    (for the monitoring values) applied and Established."""
    kube.kubectl("apply", "-f", str(CHART / "crds"))
    wait_crd_established(kube.kubectl, CRD_NAME)
    namespace = f"azcni-dry-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", namespace)
    try:
        yield namespace
    finally:
        kube.kubectl("delete", "namespace", namespace, "--timeout=60s")


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_chart_passes_server_side_dry_run(kube: LocalCluster | ExistingCluster,
                                                   tmp_path: Path, dry_run_namespace: str,
                                                   name: str) -> None:
    manifest = Helm(tmp_path).template(VALUE_SETS[name], namespace=dry_run_namespace).stdout
    objects = list(parse_manifests(manifest))
    # the helm test's pod runs after the install, with a service account the install made; a
    # dry run creates none, so make those for real (the pod is then checked as it will run)
    for hooked in objects:
        if hooked["kind"] == "Pod" and "helm.sh/hook" in hooked["metadata"].get("annotations", {}):
            account = hooked["spec"]["serviceAccountName"]
            if kube.kubectl("-n", dry_run_namespace, "get", "serviceaccount", account,
                            check=False).returncode != 0:
                kube.kubectl("-n", dry_run_namespace, "create", "serviceaccount", account)
    result = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest)
    accepted = [line for line in result.stdout.splitlines() if "(server dry run)" in line]
    assert len(accepted) == len(objects), result.stdout + result.stderr


def test_monitoring_objects_are_validated_by_the_prometheus_operator_s_schemas(
        kube: LocalCluster | ExistingCluster, tmp_path: Path, dry_run_namespace: str) -> None:
    """The dry run above accepts them; a ServiceMonitor that the CRD's schema refuses shows
    that the API server really checks them against the Prometheus Operator's schemas."""
    objects = Helm(tmp_path).render(VALUE_SETS["monitoring-all-on"],
                                    namespace=dry_run_namespace)
    kinds = {o["kind"] for o in objects}
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds
    (monitor, *_) = [o for o in objects if o["kind"] == "ServiceMonitor"]
    monitor["spec"]["endpoints"][0]["scheme"] = "gopher"
    result = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(monitor),
                          check=False)
    assert result.returncode != 0
    assert "spec.endpoints[0].scheme" in result.stderr, result.stderr


def configmap_settings(kube: LocalCluster | ExistingCluster, release: Release
                       ) -> dict[str, object]:
    out = kube.kubectl("get", "configmap", "-n", release.namespace, "-l",
                       f"app.kubernetes.io/instance={release.name}", "-o", "json").stdout
    (item,) = json.loads(out)["items"]
    settings: dict[str, object] = yaml.safe_load(item["data"]["config.yaml"])
    return settings


def names(kube: LocalCluster | ExistingCluster, kind: str, release: Release,
          namespace: str | None = None) -> list[str]:
    """Names of the release's objects of ``kind`` (cluster-wide kinds without namespace)."""
    where = ["-n", namespace] if namespace else []
    out = kube.kubectl("get", kind, *where, "-l", f"app.kubernetes.io/instance={release.name}",
                       "-o", "jsonpath={.items[*].metadata.name}").stdout
    return sorted(out.split())


def test_install_upgrade_uninstall(kube: LocalCluster | ExistingCluster,
                                   tmp_path: Path) -> None:
    release = install_release(kube, tmp_path, "azcni-lifecycle")
    pool = f"azcni-lifecycle-{uuid.uuid4().hex[:6]}"
    release.nodes.append(pool)
    try:
        # installed: what `helm status` and kubectl show an admin
        status = json.loads(release.helm.run("status", release.name, "-n", release.namespace,
                                             "-o", "json").stdout)
        assert status["info"]["status"] == "deployed"
        assert "kubectl get nodeippools" in status["info"]["notes"]
        crd = json.loads(kube.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
        established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert established["Established"] == "True"
        prefix = "azcni-lifecycle-azure-cni"
        assert names(kube, "deployments", release, release.namespace) == [f"{prefix}-operator"]
        assert names(kube, "daemonsets", release, release.namespace) == [f"{prefix}-agent"]
        assert names(kube, "serviceaccounts", release, release.namespace) == [
            f"{prefix}-agent", f"{prefix}-operator"]
        assert names(kube, "clusterroles", release) == [f"{prefix}-agent", f"{prefix}-operator"]
        assert names(kube, "roles", release, "default") == [f"{prefix}-operator-events"]
        assert names(kube, "validatingadmissionpolicies", release) == [
            f"{prefix}-agent-own-pool", f"{prefix}-scale-is-a-floor"]
        policy = json.loads(kube.kubectl("get", "validatingadmissionpolicy",
                                         f"{prefix}-agent-own-pool", "-o", "json").stdout)
        # the API server type-checked every CEL expression against the CRD's schema
        assert not policy.get("status", {}).get("typeChecking", {}).get("expressionWarnings")
        assert configmap_settings(kube, release)["pool"]["minIPs"] == 0  # type: ignore[index]

        # upgrade: a changed value reaches the ConfigMap and restarts the operator's pods
        def template_checksum() -> str:
            deployment = json.loads(kube.kubectl(
                "get", "deployment", f"{prefix}-operator", "-n", release.namespace, "-o",
                "json").stdout)
            checksum: str = deployment["spec"]["template"]["metadata"]["annotations"][
                "checksum/config"]
            return checksum

        before = template_checksum()
        release.helm.upgrade(release.name, release.namespace, {"pool": {"minIPs": 4}},
                             "--timeout=120s")
        assert configmap_settings(kube, release)["pool"]["minIPs"] == 4  # type: ignore[index]
        assert template_checksum() != before
        history = json.loads(release.helm.run("history", release.name, "-n",
                                              release.namespace, "-o", "json").stdout)
        assert [r["revision"] for r in history] == [1, 2]

        # a pool as the operator leaves it: with its finalizer
        kube.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "azurecni.io/v1alpha1", "kind": "NodeIPPool",
            "metadata": {"name": pool, "finalizers": ["azurecni.io/nic-cleanup"]},
            "spec": {"nodeName": pool}}))

        # uninstall: the chart's objects go; the CRD and the pools stay (README: Uninstalling)
        release.helm.run("uninstall", release.name, "-n", release.namespace, "--timeout=60s")
        for kind in ("deployments", "daemonsets", "configmaps", "serviceaccounts"):
            assert names(kube, kind, release, release.namespace) == [], kind
        for kind in ("clusterroles", "clusterrolebindings", "validatingadmissionpolicies",
                     "validatingadmissionpolicybindings"):
            assert names(kube, kind, release) == [], kind
        assert names(kube, "roles", release, "default") == []
        kube.kubectl("get", "crd", CRD_NAME)
        left = json.loads(kube.kubectl("get", "nodeippool", pool, "-o", "json").stdout)
        assert left["metadata"]["finalizers"] == ["azurecni.io/nic-cleanup"]

        # the README's cleanup of the pools, without an operator to honour the finalizer
        kube.kubectl("patch", "nodeippools", pool, "--type=merge",
                     "-p", '{"metadata":{"finalizers":null}}')
        kube.kubectl("delete", "nodeippool", pool, "--wait=true", "--timeout=60s")
        assert kube.kubectl("get", "nodeippool", pool, check=False).returncode != 0
        # deleting the CRD is the last step there; a dry run proves the command, without
        # taking the CRD away from the other tests of this session
        kube.kubectl("delete", "crd", CRD_NAME, "--dry-run=server")
    finally:
        remove_release(release)


def test_helm_upgrade_says_when_the_clusters_crd_is_not_the_charts(
        kube: LocalCluster | ExistingCluster, tmp_path: Path) -> None:
    """Helm never upgrades crds/: the NOTES compare the cluster's CRD revision with the
    chart's, and the documented command brings it up to date."""
    release = install_release(kube, tmp_path, "azcni-crd")
    try:
        wanted = yaml.safe_load((CHART / "crds" / "azurecni.io_nodeippools.yaml").read_text())[
            "metadata"]["annotations"][REVISION_ANNOTATION]
        upgraded = release.helm.upgrade(release.name, release.namespace, None).stdout
        assert "ACTION NEEDED" not in upgraded, "the cluster's CRD is the chart's"
        # a CRD from an older chart
        kube.kubectl("annotate", "crd", CRD_NAME, f"{REVISION_ANNOTATION}=0123456789abcdef",
                     "--overwrite")
        upgraded = release.helm.upgrade(release.name, release.namespace, None).stdout
        assert "ACTION NEEDED: the NodeIPPool CRD in the cluster (revision 0123456789abcdef)" \
            in upgraded and f"is not this\nchart's ({wanted})" in upgraded
        assert "kubectl apply --server-side --force-conflicts -f <chart directory>/crds/" \
            in upgraded
        kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
        assert "ACTION NEEDED" not in release.helm.upgrade(release.name, release.namespace,
                                                           None).stdout
    finally:
        kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
        remove_release(release)


def test_scaling_a_pool_below_what_it_holds_warns_that_it_is_a_floor(
        release: Release) -> None:
    kube = release.kube
    pool = release.nodes[0]
    kube.kubectl("patch", "nodeippool", pool, "--subresource=status", "--type=merge", "-p",
                 json.dumps({"status": {"allocated": 24}}))
    # The API server applies a new ValidatingAdmissionPolicy once its informer has loaded it
    # and its binding, a moment after the install; scale (to a new floor each time, the only
    # change that warns) until it does, as an admin running kubectl right after helm would.
    deadline = time.monotonic() + POLICY_LOADS_WITHIN
    floor, scales = 12, 1
    while True:
        down = kube.kubectl("scale", "nodeippool", pool, f"--replicas={floor}")
        assert f"nodeippool.azurecni.io/{pool} scaled" in down.stdout
        if down.stderr or time.monotonic() > deadline:
            break
        floor, scales = 23 - floor, scales + 1  # 12, 11, 12, ...: a new floor each time
        time.sleep(0.5)
    print(f"the scale warning came with scale {scales}")
    assert down.stderr.startswith("Warning: "), down.stderr
    assert f"{pool} holds 24 addresses; --replicas (spec.minIPs) is a floor, so {floor} " \
           "releases none" in down.stderr
    assert "lower spec.maxFreeIPs or spec.maxIPs" in down.stderr
    up = kube.kubectl("scale", "nodeippool", pool, "--replicas=30")
    assert "Warning" not in up.stderr, "a floor above what it holds grows the pool: no warning"
    shown = kube.kubectl("get", "nodeippool", pool).stdout.splitlines()
    assert shown[0].split()[1:4] == ["ALLOCATED", "USED", "SCALE-MIN"]
    explained = kube.kubectl("explain", "nodeippool.spec.minIPs").stdout
    assert "kubectl scale nodeippool <node> --replicas=N" in explained.replace("\n", " ")
    kube.kubectl("scale", "nodeippool", pool, "--replicas=0")
