"""The local control plane is a real Kubernetes API server at the pinned version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from azure_cni_sim.cluster import ClusterState, ControlPlaneNetwork, LocalCluster
from azure_cni_sim.node import wait_crd_established
from azure_cni_sim.procs import owned_pids
from azure_cni_sim.vnet import Fabric

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.sim-test.azurecni.io
spec:
  group: sim-test.azurecni.io
  scope: Cluster
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size: {type: integer, minimum: 1}
      additionalPrinterColumns:
        - {name: SIZE, type: integer, jsonPath: .spec.size}
"""


def pinned_kubernetes_version() -> str:
    for line in (ROOT / "hack" / "tools" / "versions.env").read_text().splitlines():
        if line.startswith("KUBERNETES_VERSION="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("KUBERNETES_VERSION missing from hack/tools/versions.env")


def test_crd_established_and_objects_created_with_kubectl(kube) -> None:
    kube.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    wait_crd_established(kube.kubectl, "widgets.sim-test.azurecni.io")
    name = f"w-{uuid.uuid4().hex[:6]}"
    manifest = json.dumps({"apiVersion": "sim-test.azurecni.io/v1", "kind": "Widget",
                           "metadata": {"name": name}, "spec": {"size": 3}})
    kube.kubectl("create", "-f", "-", input=manifest)
    listing = kube.kubectl("get", "widgets").stdout
    header, *rows = listing.splitlines()
    assert header.split() == ["NAME", "SIZE"]
    assert any(r.split()[:2] == [name, "3"] for r in rows), listing
    # the schema is enforced by the real server
    bad = json.dumps({"apiVersion": "sim-test.azurecni.io/v1", "kind": "Widget",
                      "metadata": {"name": name + "-bad"}, "spec": {"size": 0}})
    refused = kube.kubectl("create", "-f", "-", input=bad, check=False)
    assert refused.returncode != 0
    assert "spec.size" in refused.stderr
    kube.kubectl("delete", "crd", "widgets.sim-test.azurecni.io")


def test_server_reports_the_pinned_version(kube) -> None:
    if not isinstance(kube, LocalCluster):
        pytest.skip("KUBECONFIG points at a cluster of its own version")
    version = json.loads(kube.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == pinned_kubernetes_version()
    assert version["clientVersion"]["gitVersion"] == pinned_kubernetes_version()


def test_controller_manager_runs_garbage_collection(kube) -> None:
    """Owner references are honoured: the NodeIPPool-per-Node contract relies on it."""
    owner = f"gc-owner-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "configmap", owner)
    uid = kube.kubectl("get", "configmap", owner, "-o", "jsonpath={.metadata.uid}").stdout
    dependent = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": owner + "-dep", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": owner, "uid": uid}]}})
    kube.kubectl("create", "-f", "-", input=dependent)
    kube.kubectl("delete", "configmap", owner)
    kube.kubectl("wait", "--for=delete", f"configmap/{owner}-dep", "--timeout=60s")


def test_the_api_server_restarts_on_the_same_port_with_its_data(tmp_path) -> None:
    """The chaos campaign's API server outage: kill -9, then the same flags, port and etcd."""
    with LocalCluster(tmp_path / "cluster", controller_manager=False) as cluster:
        cluster.kubectl("create", "namespace", "made-before")
        cluster.kill_api_server()
        assert cluster.kubectl("get", "namespaces", check=False, timeout=20).returncode != 0
        cluster.start_api_server()
        names = cluster.kubectl("get", "namespaces", "-o", "name").stdout.split()
        assert "namespace/made-before" in names


def test_cli_up_and_down(tmp_path) -> None:
    state_dir = tmp_path / "cli-cluster"
    cli = [sys.executable, "-m", "azure_cni_sim.cli", "cluster"]
    up = subprocess.run([*cli, "up", "--state-dir", str(state_dir), "--no-controller-manager"],
                        capture_output=True, text=True, timeout=180, check=False)
    assert up.returncode == 0, up.stderr
    state = ClusterState.read(state_dir)
    assert f"export KUBECONFIG={state.kubeconfig}" in up.stdout
    try:
        nodes = subprocess.run(
            [str(ROOT / ".cache/tools/bin/kubectl"), "get", "--raw", "/readyz"],
            env={**os.environ, "KUBECONFIG": state.kubeconfig},
            capture_output=True, text=True, timeout=30, check=False)
        assert nodes.stdout.strip() == "ok", nodes.stderr
        again = subprocess.run([*cli, "up", "--state-dir", str(state_dir)],
                               capture_output=True, text=True, timeout=60, check=False)
        assert again.returncode == 1
        assert "already up" in again.stderr
    finally:
        down = subprocess.run([*cli, "down", "--state-dir", str(state_dir)],
                              capture_output=True, text=True, timeout=60, check=False)
    assert down.returncode == 0, down.stderr
    assert owned_pids(state.owner) == []
    assert not state_dir.exists()


@pytest.fixture(scope="module")
def vnet_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A control plane on its own subnet of a fabric, as the real-node World runs it."""
    workdir = tmp_path_factory.mktemp("vnet-cluster")
    owner = f"vnet-cluster-{uuid.uuid4().hex[:8]}"
    fabric = Fabric(f"azc{uuid.uuid4().hex[:4]}", "198.18.0.0/22", workdir / "fabric",
                    owner).create()
    cluster = None
    try:
        netns = fabric.add_appliance("cp", "198.18.8.4/24")
        client = fabric.add_appliance("cl", "198.18.9.4/24")
        cluster = LocalCluster(workdir / "cluster", owner=owner,
                               network=ControlPlaneNetwork(netns, "198.18.8.4")).start()
        yield cluster, client
    finally:
        if cluster is not None:
            cluster.stop()
        fabric.destroy()


@pytest.mark.netns
def test_vnet_control_plane_advertises_its_vnet_address(vnet_cluster, tmp_path) -> None:
    cluster, client = vnet_cluster
    assert cluster.server.startswith("https://127.0.0.1:"), "the host goes through a portal"
    assert cluster.internal_server == "https://198.18.8.4:6443"
    slices = json.loads(cluster.kubectl("get", "endpointslices", "-n", "default", "-l",
                                        "kubernetes.io/service-name=kubernetes",
                                        "-o", "json").stdout)["items"]
    assert [e["addresses"] for s in slices for e in s["endpoints"]] == [["198.18.8.4"]]
    # another namespace on the VNet reaches it at that address, and trusts it with the CA
    probe = subprocess.run(["ip", "netns", "exec", client, "curl", "-sS", "-m", "5",
                            "--cacert", str(cluster.ca_path), f"{cluster.internal_server}/readyz"],
                           capture_output=True, text=True, timeout=30, check=False)
    assert probe.stdout == "ok", probe.stderr


@pytest.mark.netns
def test_vnet_control_plane_confines_each_node_to_its_own_objects(vnet_cluster,
                                                                   tmp_path) -> None:
    cluster, _ = vnet_cluster

    def as_node(node: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        kubeconfig = cluster.client_kubeconfig(
            tmp_path / f"{node}.kubeconfig", f"system:node:{node}", "system:nodes",
            server=cluster.server)
        return subprocess.run([str(ROOT / ".cache/tools/bin/kubectl"),
                               f"--kubeconfig={kubeconfig}", *args], input=input,
                              capture_output=True, text=True, timeout=30, check=False)

    for node in ("vm-a", "vm-b"):
        created = as_node(node, "create", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}))
        assert created.returncode == 0, created.stderr
    # NodeRestriction: a kubelet changes its own Node only
    assert as_node("vm-a", "label", "node", "vm-a", "sim-test=yes").returncode == 0
    other = as_node("vm-a", "label", "node", "vm-b", "sim-test=yes")
    assert other.returncode != 0 and "forbidden" in other.stderr, other.stderr
    # the Node authorizer: no Secret a pod of the node does not use
    cluster.kubectl("create", "secret", "generic", "sim-test-secret", "--from-literal=k=v")
    secret = as_node("vm-a", "get", "secret", "sim-test-secret")
    assert secret.returncode != 0 and "forbidden" in secret.stderr, secret.stderr
    cluster.kubectl("delete", "secret", "sim-test-secret")


@pytest.mark.netns
def test_vnet_control_plane_schedules_pods(vnet_cluster) -> None:
    cluster, _ = vnet_cluster
    node = f"sched-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}))
    capacity = {"pods": "10", "cpu": "2", "memory": "4Gi"}
    cluster.kubectl("patch", "node", node, "--subresource=status", "--type=merge", "-p",
                    json.dumps({"status": {"capacity": capacity, "allocatable": capacity}}))
    cluster.kubectl("run", "sched-test", "--image=example.invalid/none", "--restart=Never",
                    "--overrides", json.dumps({"spec": {
                        "nodeSelector": {"kubernetes.io/hostname": node},
                        "tolerations": [{"operator": "Exists"}]}}))
    cluster.kubectl("label", "node", node, f"kubernetes.io/hostname={node}", "--overwrite")
    bound = cluster.kubectl("wait", "pod/sched-test", "--for=jsonpath={.spec.nodeName}=" + node,
                            "--timeout=60s", check=False)
    assert bound.returncode == 0, bound.stderr
    cluster.kubectl("delete", "pod", "sched-test", "--wait=false")
