"""The local control plane is a real Kubernetes API server at the pinned version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from azure_cni_sim.cluster import ClusterState, LocalCluster
from azure_cni_sim.procs import owned_pids

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
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                 "crd/widgets.sim-test.azurecni.io")
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
