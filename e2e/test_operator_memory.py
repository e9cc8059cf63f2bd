"""The operator pod's memory, read from the running pod as an admin would, against what the
chart requests for it.

The chart requests memory for the operator from what it measured (``operatorDeployment.
resources``); a pod that uses more than it requests is the first evicted when its node runs
short of memory. ``bench/operator_scale.py --against-demo`` records the same reading next to
the benchmark's figure for the same pool count.
"""

from __future__ import annotations

import json

import pytest

from azure_cni_sim.crispec import parse_quantity
from azure_cni_sim.procstat import memory_of
from azure_cni_sim.world import NAMESPACE, World

pytestmark = pytest.mark.e2e


def test_the_operator_pod_uses_no_more_memory_than_the_chart_requests(world: World) -> None:
    deployment = world.get_json("deployment", "-n", NAMESPACE, "azure-cni-operator")
    (spec,) = deployment["spec"]["template"]["spec"]["containers"]
    requested = parse_quantity(spec["resources"]["requests"]["memory"])
    pods = world.component_pods("operator")
    assert pods, "no operator pod is running"
    for pod, node in pods.items():
        in_pod = world.pod_memory(pod)  # kubectl exec <pod> -- cat /proc/1/status

        # the same process seen from its node: crictl's PID of the container, /proc here
        (container,) = json.loads(world.nodes[node].crictl(
            "ps", "--pod", _sandbox(world, node, pod), "--name", "operator", "-o", "json"
        ).stdout)["containers"]
        pid = int(json.loads(world.nodes[node].crictl("inspect", container["id"]).stdout
                             )["info"]["pid"])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"azure-cni-operator" in f.read(), "the pod's main process is the operator"
        on_host = memory_of(pid)
        assert in_pod.peak_kib <= on_host.peak_kib <= in_pod.peak_kib * 21 // 20, \
            f"{pod}: {in_pod} inside the pod, {on_host} on its node"

        assert in_pod.peak_kib * 1024 <= requested, (
            f"{pod} peaked at {in_pod.peak_mb} MB (now {in_pod.rss_mb} MB) with "
            f"{len(world.vms)} pools; the chart requests {int(requested) // 2**20} MiB")


def _sandbox(world: World, node: str, pod: str) -> str:
    """The CRI sandbox id of ``pod`` on ``node``."""
    (sandbox,) = world.nodes[node].crictl("pods", "--name", pod, "--namespace", NAMESPACE,
                                          "-q").stdout.split()
    return sandbox
