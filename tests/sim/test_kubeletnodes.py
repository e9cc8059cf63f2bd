"""Node objects as kubelet writes them, and its status reports, against a real API server."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from azure_cni_sim.cluster import LocalCluster
from azure_cni_sim.kubeletnodes import (
    StatusReporter,
    kubelet_node,
    register_nodes,
    status_report,
)
from azure_cni_sim.procs import wait_for


def test_a_node_is_as_big_as_a_kubelet_writes_it() -> None:
    node = kubelet_node("vm00042", "azure:///subscriptions/s/resourceGroups/rg/providers/"
                        "Microsoft.Compute/virtualMachines/vm00042", "198.18.0.42")
    assert len(json.dumps(node)) >= 8 * 1024
    status = node["status"]
    assert [c["type"] for c in status["conditions"]] == [
        "MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
    assert {"type": "InternalIP", "address": "198.18.0.42"} in status["addresses"]
    assert len(status["images"]) <= 50  # kubelet's nodeStatusMaxImages
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "vm00042"


def test_a_status_report_moves_every_heartbeat() -> None:
    moment = datetime(2026, 12, 7, 5, 0, 0, tzinfo=UTC)
    report = status_report(moment)["status"]
    assert {c["lastHeartbeatTime"] for c in report["conditions"]} == {"2026-12-07T05:00:00Z"}
    assert [c["type"] for c in report["$setElementOrder/conditions"]] == \
        [c["type"] for c in report["conditions"]]


def heartbeats(kube: LocalCluster, name: str) -> set[str]:
    node: dict[str, Any] = json.loads(kube.kubectl("get", "node", name, "-o", "json").stdout)
    return {c["lastHeartbeatTime"] for c in node["status"]["conditions"]}


@pytest.mark.cluster
def test_registered_nodes_keep_their_status_and_report_at_the_pace_asked(
        kube: LocalCluster) -> None:
    if not isinstance(kube, LocalCluster):
        pytest.skip("needs the local control plane (it writes Nodes as an admin)")
    names = [f"kn-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    register_nodes(kube, [kubelet_node(n, f"azure:///vms/{n}", f"198.18.1.{i + 1}")
                          for i, n in enumerate(names)], workers=2)
    try:
        stored = json.loads(kube.kubectl("get", "node", names[0], "-o", "json").stdout)
        assert len(json.dumps(stored)) >= 8 * 1024, "the API server kept the status"
        assert stored["status"]["nodeInfo"]["kubeletVersion"].startswith("v1.")
        before = {n: heartbeats(kube, n) for n in names}
        time.sleep(1.1)  # heartbeats have a resolution of one second
        reporter = StatusReporter(kube, names, period=3.0).start()
        try:
            wait_for("every node to report once", lambda: all(
                heartbeats(kube, n) != before[n] for n in names), 30)
        finally:
            reporter.stop()
        assert reporter.failed == 0 and reporter.sent >= len(names)
        assert reporter.summary()["per_second"] == 1.0
    finally:
        kube.kubectl("delete", "node", *names, "--wait=false", check=False)
