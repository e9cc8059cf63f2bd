"""Nodes under disruption: a crashed kubelet and containerd, an agent roll by ``helm upgrade``,
and a node drained and deleted (then joining again, as a replaced VM would)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from azure_cni_sim import workloads
from azure_cni_sim.procs import wait_for
from azure_cni_sim.tools import find_tool
from azure_cni_sim.vnet import ONPREM_HOST
from azure_cni_sim.world import NAMESPACE, World

pytestmark = pytest.mark.e2e

REPLICAS = 9


@pytest.fixture(scope="module")
def web(world: World, namespace: str) -> list[workloads.RunningPod]:
    return workloads.deploy_web(world, namespace, REPLICAS)


def on(pods: list[workloads.RunningPod], vm: str) -> list[workloads.RunningPod]:
    return [p for p in pods if p.node == vm]


@dataclass
class ReadinessLog:
    """Samples, every half second, whether each node is Ready and its agent pod is ready."""

    world: World
    node_down: dict[str, float] = field(default_factory=dict)
    agent_down: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sample(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.5):
            now = time.monotonic()
            nodes = self.world.get_json("nodes")["items"]
            agents = self.world.get_json("pods", "-n", NAMESPACE, "-l",
                                         "app.kubernetes.io/component=agent")["items"]
            for node in nodes:
                name = node["metadata"]["name"]
                ready = any(c["type"] == "Ready" and c["status"] == "True"
                            for c in node["status"].get("conditions", []))
                agent_ready = any(
                    a["spec"].get("nodeName") == name and all(
                        s.get("ready") for s in a["status"].get("containerStatuses", [{}]))
                    and not a["metadata"].get("deletionTimestamp") for a in agents)
                if not ready:
                    self.node_down[name] = self.node_down.get(name, 0) + now - last
                if not agent_ready:
                    self.agent_down[name] = self.agent_down.get(name, 0) + now - last
            last = now

    @classmethod
    @contextlib.contextmanager
    def watching(cls, world: World) -> Iterator[ReadinessLog]:
        log = cls(world)
        sampler = threading.Thread(target=log._sample, daemon=True)
        sampler.start()
        try:
            yield log
        finally:
            log._stop.set()
            sampler.join(10)


def test_a_gc_for_another_network_leaves_running_pods_untouched(
        world: World, namespace: str, web: list[workloads.RunningPod]) -> None:
    """A GC is about one network: a second conflist of this plugin, or a runtime that
    collects each network, sends one whose list names only that network's attachments. (Seen
    live before the fix: such a GC took every web pod of the node off the network.)"""
    vm, node = "vm1", world.nodes["vm1"]
    victims = on(web, vm)
    assert victims, f"no web pod on {vm}"
    held = {(a["containerID"], a["address"])
            for a in workloads.agent_status(world, vm)["assignments"]}
    conflist = json.loads(node.exec("cat", "/etc/cni/net.d/10-azure.conflist").stdout)
    others = [{"containerID": "0" * 64, "ifname": "net1"}]
    config = {**conflist["plugins"][0], "cniVersion": "1.1.0", "name": "other-net",
              "cni.dev/valid-attachments": others, "cni.dev/attachments": others}
    shim = f"/opt/cni/bin/{conflist['plugins'][0]['type']}"
    collected = node.exec("env", "CNI_COMMAND=GC", "CNI_PATH=/opt/cni/bin", shim,
                          input=json.dumps(config), check=False)
    assert (collected.returncode, collected.stdout) == (0, ""), collected
    logs = world.kubectl("logs", "-n", NAMESPACE, workloads.agent_pod(world, vm)).stdout
    assert "event=gc network=other-net kept=1 freed=0" in logs, "the agent served that GC"
    for pod in victims:
        assert workloads.onprem_get(world, f"http://{pod.ip}:{workloads.WEB_PORT}"
                                    f"{workloads.WHOAMI}") == {"pod": pod.name,
                                                               "seen": ONPREM_HOST}, pod
    after = {(a["containerID"], a["address"])
             for a in workloads.agent_status(world, vm)["assignments"]}
    assert after == held, "the agent freed attachments of another network"
    running = workloads.running_pods(world, "app=web", namespace, REPLICAS)
    assert {p.name: p.ip for p in on(running, vm)} == {p.name: p.ip for p in victims}


def test_kill_9_of_kubelet_and_containerd_keeps_pods_networking(
        world: World, namespace: str, web: list[workloads.RunningPod]) -> None:
    vm, node = "vm1", world.nodes["vm1"]
    victims, peer = on(web, vm), on(web, "vm0")[0]
    before = {p.name: p.ip for p in victims}
    node.kill("kubelet")
    node.kill("containerd")
    # the pods' datapath is the kernel's, and their containers' shims outlive containerd
    for pod in victims:
        assert workloads.ping(world, peer, pod.ip), f"{pod} unreachable while {vm} is down"
    node.start_containerd()
    node.start_kubelet()
    world.wait_nodes_ready()
    after = workloads.running_pods(world, "app=web", namespace, REPLICAS)
    assert {p.name: p.ip for p in on(after, vm)} == before, "pods changed or moved"
    restarts = world.get_json("pods", "-n", namespace, "--field-selector",
                              f"spec.nodeName={vm}")["items"]
    assert all(s["restartCount"] == 0 for p in restarts
               for s in p["status"]["containerStatuses"])
    for pod in victims:
        assert workloads.ping(world, peer, pod.ip)
        assert pod.ip in world.nic_addresses(vm)
    workloads.wait_pools_count_their_pods(world)
    held = {a["address"] for a in workloads.agent_status(world, vm)["assignments"]}
    assert set(before.values()) <= held, "the agent lost track of a pod's address"


def test_helm_upgrade_rolls_the_agents_while_pods_keep_working(
        world: World, namespace: str, web: list[workloads.RunningPod]) -> None:
    assert world.cluster is not None
    source, target = on(web, "vm0")[0], on(web, "vm2")[0]
    agents_before = set(world.kubectl("get", "pods", "-n", NAMESPACE, "-l",
                                      "app.kubernetes.io/component=agent", "-o", "name"
                                      ).stdout.split())
    # 5 pings a second across the roll, from a pod on vm0 to one on vm2
    ping = subprocess.Popen(
        [str(find_tool("kubectl")), f"--kubeconfig={world.cluster.kubeconfig}", "exec", "-n",
         namespace, source.name, "--", "ping", "-i", "0.2", "-w", "300", target.ip],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with ReadinessLog.watching(world) as readiness:
            started = time.monotonic()
            world.upgrade_chart(agent={"cooldownSeconds": 20.0})
            # pods created during the roll: started, or retried by kubelet until they are
            world.kubectl("scale", "deployment/web", "-n", namespace,
                          f"--replicas={REPLICAS + 6}")
            world.wait_rollout("daemonset/azure-cni-agent", NAMESPACE, timeout=300)
            world.wait_rollout("deployment/web", namespace, timeout=240)
            rolled = time.monotonic() - started
            world.wait_nodes_ready()
    finally:
        ping.terminate()  # (the ping in the pod goes with the test's namespace)
        out, _ = ping.communicate(timeout=30)
    agents_after = set(world.kubectl("get", "pods", "-n", NAMESPACE, "-l",
                                     "app.kubernetes.io/component=agent", "-o", "name"
                                     ).stdout.split())
    assert len(agents_after) == 3 and not agents_after & agents_before, "the agents did not roll"
    # busybox ping prints a line per reply, with the request's sequence number
    replies = [int(seq) for seq in re.findall(r"seq=(\d+)", out)]
    assert replies, out[-500:]
    sent, received = max(replies) + 1, len(set(replies))
    assert sent >= rolled * 4, f"{sent} pings in a {rolled:.0f}s roll"
    assert sent - received <= 5, f"{sent - received} of {sent} pings lost across the roll"
    for vm, down in readiness.node_down.items():
        # the node may be NotReady only while its agent restarts (plus kubelet's ~10 s to
        # notice the runtime's network is ready again)
        assert down <= readiness.agent_down.get(vm, 0) + 15, (
            f"{vm} NotReady for {down:.0f}s, its agent down {readiness.agent_down.get(vm)}")
    workloads.running_pods(world, "app=web", namespace, REPLICAS + 6)
    world.kubectl("scale", "deployment/web", "-n", namespace, f"--replicas={REPLICAS}")
    workloads.running_pods(world, "app=web", namespace, REPLICAS, timeout=120)


def test_drain_and_delete_a_node_then_it_joins_again(
        world: World, namespace: str, web: list[workloads.RunningPod]) -> None:
    vm, node = "vm2", world.nodes["vm2"]
    primary = world.vms[vm].primary_ip
    violations: list[str] = []
    stop = threading.Event()

    def watch() -> None:  # an address must not leave the NIC while a pod still has it
        while not stop.wait(0.3):
            with_pods = {p.ip: p.name for p in workloads.pod_network_pods(world)
                         if p.node == vm and p.ip}
            nic = set(world.nic_addresses(vm))
            violations.extend(f"{ip} left the NIC while {name} had it"
                              for ip, name in with_pods.items() if ip not in nic)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        world.kubectl("drain", vm, "--ignore-daemonsets", "--delete-emptydir-data",
                      "--timeout=180s", timeout=200)
        moved = workloads.running_pods(world, "app=web", namespace, REPLICAS, timeout=120)
        assert on(moved, vm) == [] and {p.node for p in moved} == {"vm0", "vm1"}
        # the VM leaves the cluster: its kubelet stops (a running kubelet would register
        # its Node again at once), and the admin deletes the Node
        node.kill("kubelet")
        world.kubectl("delete", "node", vm)
        wait_for(f"{vm}'s NodeIPPool to be deleted (its finalizer done)",
                 lambda: world.kubectl("get", "nip", vm, check=False).returncode != 0, 60)
        wait_for(f"{vm}'s NIC to hold only its primary address",
                 lambda: world.nic_addresses(vm) == (primary,), 30)
    finally:
        stop.set()
        watcher.join(10)
    assert violations == []
    # the VM's kubelet starts again and registers it: a fresh Node and pool
    node.start_kubelet()
    world.wait_nodes_ready(timeout=180)
    world.wait_pools_ready()
    again = world.pool(vm)
    assert again.status.allocated > 0 and again.status.nic is not None
    assert set(world.nic_addresses(vm)) > {primary}
