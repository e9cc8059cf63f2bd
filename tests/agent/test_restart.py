"""The agent killed in the middle of a burst of ADDs, restarted, and refusing to start when
its store and the host disagree."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor, as_completed

import pytest

from azure_cni.datapath.names import host_veth_name
from azure_cni_sim.node import (
    LocalNode,
    ShimResult,
    pool_addresses,
    publish_pool,
    wait_for_pool_status,
)
from azure_cni_sim.procs import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.cluster]

POOL = pool_addresses("198.18.0", 10, 120)


def host_veths(node: LocalNode) -> set[str]:
    out = subprocess.run(["ip", "-n", node.netns, "-o", "link"], capture_output=True,
                         text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
            if ": azv" in line}


def ping(netns: str, address: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", netns, "ping", "-c1", "-W2", address],
                          capture_output=True, check=False, timeout=30).returncode == 0


def held(node: LocalNode) -> dict[str, str]:
    return {a["containerID"]: a["address"] for a in node.agent_status()["assignments"]}


def test_kill_9_during_100_parallel_adds(node: LocalNode, kube, netns_factory) -> None:
    publish_pool(kube.kubectl, node.name, POOL)
    node.agent_settings.update({"cooldownSeconds": 0})
    node.start_agent()
    node.wait_ready()
    config = node.plugin_config()
    pods = {f"c{i:03d}": netns_factory.create(f"p{i}") for i in range(100)}
    results: dict[str, ShimResult] = {}
    with ThreadPoolExecutor(16) as pool:
        futures = {pool.submit(node.run_shim, "ADD", c, ns, config=config): c
                   for c, ns in pods.items()}
        killed = False
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if len(results) == 30 and not killed:
                node.stop_agent(kill=True)
                killed = True
    assert killed
    ok = {c: r.address() for c, r in results.items() if r.returncode == 0}
    failed = {c for c, r in results.items() if r.returncode != 0}
    assert len(ok) >= 30 and failed, f"the kill should land mid-burst ({len(ok)} succeeded)"
    for c in failed:
        assert results[c].output["code"] == 11, results[c]
    assert len(set(ok.values())) == len(ok), "an address was given twice"

    node.start_agent()
    node.wait_ready()
    recorded = held(node)
    for c, address in ok.items():
        assert recorded[c] == address, f"{c} lost its address across the restart"
    assert len(set(recorded.values())) == len(recorded)
    for c in list(ok)[:10]:
        assert ping(pods[c], "198.18.0.4"), f"{c}'s network broke across the restart"

    # the runtime garbage-collects what it never got a result for
    gc = node.run_shim("GC", config=node.plugin_config(cni_version="1.1.0", extra={
        "cni.dev/valid-attachments": [{"containerID": c, "ifname": "eth0"} for c in ok]}))
    assert gc.returncode == 0, gc
    assert held(node) == ok, "GC leaves exactly the pods that got a result"
    assert host_veths(node) == {host_veth_name(c, "eth0") for c in ok}, "no veth leaked"

    retried = {c: node.run_shim("ADD", c, pods[c], config=config) for c in sorted(failed)}
    for c, result in retried.items():
        assert result.returncode == 0, (c, result)
    everyone = [*ok.values(), *(r.address() for r in retried.values())]
    assert len(everyone) == 100 and len(set(everyone)) == 100
    wait_for_pool_status(kube.kubectl, node.name, "used=100", lambda s: s.get("used") == 100)


def test_del_while_the_agent_is_down_is_replayed(node: LocalNode, kube, netns_factory) -> None:
    publish_pool(kube.kubectl, node.name, POOL[:10])
    node.start_agent()
    node.wait_ready()
    config = node.plugin_config()
    pods = {c: netns_factory.create(c) for c in ("a", "b", "c")}
    for c, ns in pods.items():
        assert node.run_shim("ADD", c, ns, config=config).returncode == 0
    assert node.stop_agent() == 0
    assert node.conflist_path.exists(), "a restart keeps the conflist: DELs still come"
    for c in ("a", "b"):
        deleted = node.run_shim("DEL", c, pods[c], config=config)
        assert (deleted.returncode, deleted.stdout) == (0, ""), deleted
        assert "del_spooled" in deleted.stderr
    node.start_agent()
    node.wait_ready()
    assert set(held(node)) == {"c"}
    assert host_veths(node) == {host_veth_name("c", "eth0")}
    assert list((node.state_dir / "spool").iterdir()) == []


def start_and_expect_refusal(node: LocalNode) -> str:
    agent = node.start_agent()
    wait_for("the agent to refuse to start", lambda: not agent.running(), 60)
    assert agent.popen is not None and agent.popen.returncode == 3, node.agent_log()
    assert not node.conflist_path.exists()
    return node.agent_log()


@pytest.mark.parametrize(("intruder", "address", "words"), [
    ("other-pod", "198.18.0.10", "two pods may share it"),  # c1's address on another veth
    ("lost-pod", "198.18.0.50", "which the store does not know"),
])
def test_refuses_to_start_rather_than_hand_out_a_duplicate(node: LocalNode, kube,
                                                           netns_factory, intruder: str,
                                                           address: str, words: str) -> None:
    publish_pool(kube.kubectl, node.name, POOL[:60])
    node.start_agent()
    node.wait_ready()
    assert node.run_shim("ADD", "c1", netns_factory.create("pod")).address() == "198.18.0.10"
    assert node.stop_agent() == 0
    veth = host_veth_name(intruder, "eth0")
    subprocess.run(["ip", "-n", node.netns, "link", "add", veth, "type", "veth", "peer", "name",
                    "intruder-peer"], check=True)
    subprocess.run(["ip", "-n", node.netns, "link", "set", veth, "up"], check=True)
    subprocess.run(["ip", "-n", node.netns, "route", "add", f"{address}/32", "dev", veth,
                    "metric", "100"], check=True)
    log = start_and_expect_refusal(node)
    assert "refusing to start" in log and words in log and address in log
    status = wait_for_pool_status(
        kube.kubectl, node.name, "AgentReady=False/RecoveryFailed",
        lambda s: any(c["type"] == "AgentReady" and c["reason"] == "RecoveryFailed"
                      for c in s.get("conditions") or ()))
    (condition,) = [c for c in status["conditions"] if c["type"] == "AgentReady"]
    assert condition["status"] == "False" and words in condition["message"]
    # the admin removes the intruder: the agent starts and keeps c1's address
    subprocess.run(["ip", "-n", node.netns, "link", "del", veth], check=True)
    node.start_agent()
    node.wait_ready()
    assert held(node) == {"c1": "198.18.0.10"}


def test_pods_gone_while_the_agent_was_down_are_freed_at_start(node: LocalNode, kube,
                                                               netns_factory) -> None:
    """As after a node reboot: the pods' namespaces (and veths) vanished without any DEL."""
    publish_pool(kube.kubectl, node.name, POOL[:10])
    node.start_agent()
    node.wait_ready()
    gone, alive = netns_factory.create("gone"), netns_factory.create("alive")
    assert node.run_shim("ADD", "gone", gone).returncode == 0
    assert node.run_shim("ADD", "alive", alive).returncode == 0
    assert node.stop_agent() == 0
    subprocess.run(["ip", "netns", "del", gone], check=True)
    node.start_agent()
    node.wait_ready()
    assert set(held(node)) == {"alive"}
    assert "event=vanished_pod_freed container=gone" in node.agent_log()
