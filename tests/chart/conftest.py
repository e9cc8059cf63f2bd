"""Fixtures for the chart tests: a private helm, and the chart installed on the API server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.chart.helm import Helm
from tests.chart.tokens import create_pod_on_node, service_account_kubeconfig

from azure_cni_sim.cluster import ExistingCluster, LocalCluster
from azure_cni_sim.node import wait_crd_established
from azure_cni_sim.tools import find_tool

#: the Prometheus Operator's CRDs the chart's monitoring values create objects of
MONITORING_CRDS = ("servicemonitors", "podmonitors", "prometheusrules")


@pytest.fixture(scope="session")
def monitoring_crds(kube: LocalCluster | ExistingCluster) -> Iterator[None]:
    """The Prometheus Operator's CRDs, from its pinned module (hack/build-tools.sh copies them
    into the tool cache), Established on the API server; removed again if this made them."""
    crd_dir = find_tool("prometheus-operator-crds")
    made = []
    for plural in MONITORING_CRDS:
        name = f"{plural}.monitoring.coreos.com"
        if kube.kubectl("get", "crd", name, check=False).returncode != 0:
            kube.kubectl("apply", "--server-side", "-f",
                         str(crd_dir / f"monitoring.coreos.com_{plural}.yaml"))
            made.append(name)
        wait_crd_established(kube.kubectl, name)
    try:
        yield
    finally:
        for name in made:
            kube.kubectl("delete", "crd", name, "--timeout=60s", check=False)


@pytest.fixture
def helm(tmp_path: Path) -> Helm:
    """The pinned helm with a throwaway home, for rendering only."""
    return Helm(tmp_path / "helm-home")


@dataclass
class Release:
    """The chart installed by a test: where, and as which service accounts."""

    kube: LocalCluster | ExistingCluster
    helm: Helm
    name: str
    namespace: str
    #: node names created for this release's tests (each has a NodeIPPool of the same name)
    nodes: list[str] = field(default_factory=list)

    def service_account(self, component: str) -> str:
        """The name of the chart's service account of ``component`` (operator or agent)."""
        out = self.kube.kubectl("get", "serviceaccounts", "-n", self.namespace, "-l",
                                f"app.kubernetes.io/instance={self.name},"
                                f"app.kubernetes.io/component={component}",
                                "-o", "jsonpath={.items[*].metadata.name}").stdout.split()
        assert len(out) == 1, f"expected one {component} service account, found {out}"
        return out[0]

    def user(self, service_account: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{service_account}"

    def add_node(self, name: str) -> None:
        """A Node and its NodeIPPool, as a kubelet and the operator would have created them."""
        objs = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}},
                {"apiVersion": "azurecni.io/v1alpha1", "kind": "NodeIPPool",
                 "metadata": {"name": name}, "spec": {"nodeName": name}}]
        for obj in objs:
            self.kube.kubectl("apply", "-f", "-", input=json.dumps(obj))
        self.nodes.append(name)


def install_release(kube: LocalCluster | ExistingCluster, home: Path, name: str,
                    values: dict[str, object] | None = None) -> Release:
    """``helm install`` into a fresh namespace; the CRD must be Established before returning."""
    release = Release(kube, Helm(home, kube.kubeconfig), name,
                      f"azcni-chart-{uuid.uuid4().hex[:8]}")
    release.helm.install(name, release.namespace, values, "--timeout=120s")
    wait_crd_established(kube.kubectl, "nodeippools.azurecni.io")
    return release


def remove_release(release: Release) -> None:
    """Uninstall and delete everything the test made: nodes, pools, their Events, the namespace
    (pods bound to nodes are force-deleted: with no kubelet, nothing would confirm their end)."""
    kube = release.kube
    release.helm.uninstall(release.name, release.namespace)
    kube.kubectl("delete", "pods", "--all", "-n", release.namespace, "--force",
                 "--grace-period=0", "--ignore-not-found", check=False)
    for node in release.nodes:
        kube.kubectl("patch", "nodeippool", node, "--type=merge",
                     "-p", '{"metadata":{"finalizers":null}}', check=False)
        kube.kubectl("delete", "nodeippool", node, "--ignore-not-found", "--wait=false",
                     check=False)
        kube.kubectl("delete", "node", node, "--ignore-not-found", "--wait=false", check=False)
        # Events about the pool, posted by the tests' tokens or the operator, in `default`
        kube.kubectl("delete", "events", "-n", "default", "--field-selector",
                     f"involvedObject.name={node}", "--ignore-not-found", check=False)
    kube.kubectl("delete", "namespace", release.namespace, "--ignore-not-found",
                 "--timeout=60s")


@pytest.fixture(scope="module")
def release(kube: LocalCluster | ExistingCluster,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """The chart installed with default values as release ``azure-cni``, with two nodes."""
    rel = install_release(kube, tmp_path_factory.mktemp("helm-home"), "azure-cni")
    try:
        suffix = uuid.uuid4().hex[:6]
        rel.add_node(f"azcni-chart-{suffix}-a")
        rel.add_node(f"azcni-chart-{suffix}-b")
        yield rel
    finally:
        remove_release(rel)


def agent_kubeconfig(release: Release, tmp_path: Path, node: str) -> Path:
    """The agent of ``node`` as the kubelet would run it: a token bound to a pod on the node."""
    pod = f"agent-{uuid.uuid4().hex[:8]}"
    create_pod_on_node(release.kube.kubeconfig, release.namespace, pod, node,
                       release.service_account("agent"))
    return service_account_kubeconfig(release.kube.kubeconfig, release.namespace,
                                      release.service_account("agent"),
                                      tmp_path / f"agent-{node}.kubeconfig", pod=pod)
