"""The plugin end to end, executed as a runtime does, against a running agent and a real API
server: pods get pool addresses and reach each other; DEL, CHECK, STATUS, GC and bad input.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from azure_cni.datapath.names import host_veth_name
from azure_cni_sim.node import (
    LocalNode,
    ShimResult,
    pool_addresses,
    publish_pool,
    wait_for_pool_status,
)

pytestmark = [pytest.mark.netns, pytest.mark.cluster]

POOL = pool_addresses("198.18.0", 10, 60)


def ping(netns: str, address: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", netns, "ping", "-c1", "-W2", address],
                          capture_output=True, check=False, timeout=30).returncode == 0


def host_veths(node: LocalNode) -> set[str]:
    out = subprocess.run(["ip", "-n", node.netns, "-o", "link"], capture_output=True,
                         text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
            if ": azv" in line}


def started(node: LocalNode, kube, addresses: list[str] = POOL, **agent: Any) -> None:
    publish_pool(kube.kubectl, node.name, addresses)
    node.agent_settings.update({"cooldownSeconds": 0, **agent})
    node.start_agent()
    node.wait_ready()


def test_fifty_pods_get_distinct_addresses_talk_and_are_freed(node: LocalNode, kube,
                                                              netns_factory) -> None:
    started(node, kube)
    pods = [netns_factory.create(f"p{i}") for i in range(50)]

    def add(i: int) -> ShimResult:
        return node.run_shim("ADD", f"pod{i:03d}", pods[i],
                             cni_args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p{i}")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(add, range(50)))
    for result in results:
        assert result.returncode == 0, result
        assert result.stderr == ""
    addresses = [r.address() for r in results]
    assert len(set(addresses)) == 50
    assert set(addresses) <= set(POOL)
    for i, result in enumerate(results):
        out = result.output
        assert out["cniVersion"] == "1.0.0"
        assert out["interfaces"][1] == {"name": "eth0", "mac": out["interfaces"][1]["mac"],
                                        "sandbox": f"/run/netns/{pods[i]}"}
        assert out["interfaces"][0]["name"] == host_veth_name(f"pod{i:03d}", "eth0")

    def reach(i: int) -> tuple[int, bool, bool]:
        neighbour = addresses[(i + 1) % 50]
        return i, ping(pods[i], neighbour), ping(pods[i], "198.18.0.4")

    with ThreadPoolExecutor(8) as pool:
        for i, to_pod, to_host in pool.map(reach, range(50)):
            assert to_pod, f"pod {i} cannot reach pod {(i + 1) % 50}"
            assert to_host, f"pod {i} cannot reach the host"
    assert ping(node.netns, addresses[0]), "the host reaches a pod"
    status = wait_for_pool_status(kube.kubectl, node.name, "used=50",
                                  lambda s: s.get("used") == 50)
    assert len(status["ips"]) == 60, "the operator's inventory is untouched"

    for i in range(50):
        deleted = node.run_shim("DEL", f"pod{i:03d}", pods[i])
        assert (deleted.returncode, deleted.stdout) == (0, ""), deleted
    for i in range(50):  # the runtime's second DEL, and one with the netns already gone
        assert node.run_shim("DEL", f"pod{i:03d}", pods[i]).returncode == 0
        assert node.run_shim("DEL", f"pod{i:03d}", "").returncode == 0
    assert host_veths(node) == set()
    assert node.agent_status()["assignments"] == []
    wait_for_pool_status(kube.kubectl, node.name, "used=0", lambda s: s.get("used") == 0)
    again = node.run_shim("ADD", "after", pods[0])
    assert again.returncode == 0 and again.address() in POOL


def test_older_cni_versions_get_their_result_shape(node: LocalNode, kube,
                                                   netns_factory) -> None:
    started(node, kube)
    for version, has_ip_version in (("0.3.1", True), ("0.4.0", True), ("1.1.0", False)):
        pod = netns_factory.create("pod")
        result = node.run_shim("ADD", f"v{version}", pod,
                               config=node.plugin_config(cni_version=version))
        assert result.returncode == 0, result
        assert result.output["cniVersion"] == version
        assert ("version" in result.output["ips"][0]) == has_ip_version


def test_check_fails_clearly_when_the_route_is_gone(node: LocalNode, kube,
                                                    netns_factory) -> None:
    started(node, kube)
    pod = netns_factory.create("pod")
    added = node.run_shim("ADD", "c1", pod)
    config = node.plugin_config(extra={"prevResult": added.output})
    checked = node.run_shim("CHECK", "c1", pod, config=config)
    assert (checked.returncode, checked.stdout) == (0, "")
    subprocess.run(["ip", "-n", pod, "route", "del", "default"], check=True)
    checked = node.run_shim("CHECK", "c1", pod, config=config)
    assert checked.returncode == 1
    error = checked.output
    assert error["code"] == 100
    assert "differs from what ADD built" in error["msg"]
    assert "no default route via 169.254.1.1" in error["details"]


def test_gc_frees_attachments_that_are_not_listed(node: LocalNode, kube,
                                                  netns_factory) -> None:
    started(node, kube)
    pods = {c: netns_factory.create(c) for c in ("keep", "gone1", "gone2")}
    addresses = {c: node.run_shim("ADD", c, ns).address() for c, ns in pods.items()}
    gc_config = node.plugin_config(cni_version="1.1.0", extra={
        "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}],
        "cni.dev/attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    collected = node.run_shim("GC", config=gc_config)
    assert (collected.returncode, collected.stdout) == (0, ""), collected
    held = {a["containerID"]: a["address"] for a in node.agent_status()["assignments"]}
    assert held == {"keep": addresses["keep"]}
    assert host_veths(node) == {host_veth_name("keep", "eth0")}
    assert ping(pods["keep"], "198.18.0.4")
    # no list at all (cnitool gc) frees nothing
    bare = node.run_shim("GC", config=node.plugin_config(cni_version="1.1.0"))
    assert bare.returncode == 0 and "frees nothing" in bare.stderr
    assert len(node.agent_status()["assignments"]) == 1


def test_status_is_not_about_a_full_pool(node: LocalNode, kube, netns_factory) -> None:
    """STATUS fails only when the node cannot network pods: a pool that is full this second
    grows, and containerd 2.x would make the node NotReady (and evict) for it."""
    started(node, kube, addresses=["198.18.0.10"])
    status_config = node.plugin_config(cni_version="1.1.0")
    ok = node.run_shim("STATUS", config=status_config)
    assert (ok.returncode, ok.stdout) == (0, "")
    assert node.run_shim("ADD", "c1", netns_factory.create("pod")).returncode == 0
    full = node.run_shim("STATUS", config=status_config)
    assert (full.returncode, full.stdout) == (0, ""), full.output


def test_exhausted_pool_fails_add_with_try_again_then_recovers(node: LocalNode, kube,
                                                               netns_factory) -> None:
    started(node, kube, addresses=["198.18.0.10"], addWaitSeconds=1)
    assert node.run_shim("ADD", "c1", netns_factory.create("pod")).returncode == 0
    pod = netns_factory.create("pod")
    failed = node.run_shim("ADD", "c2", pod)
    assert failed.returncode == 1
    assert failed.output["code"] == 11
    assert "exhausted" in failed.output["msg"]
    publish_pool(kube.kubectl, node.name, ["198.18.0.10", "198.18.0.11"])
    retried = node.run_shim("ADD", "c2", pod)
    assert retried.returncode == 0 and retried.address() == "198.18.0.11"


ENV_ADD = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bad", "CNI_IFNAME": "eth0"}


def bad_input_cases(node: LocalNode, pod: str, good: ShimResult) -> list[tuple[str, dict[str,
                                                                                   str], bytes,
                                                                          int, str]]:
    conf = node.plugin_config()
    netns = f"/run/netns/{pod}"
    foreign = json.loads(json.dumps(good.output).replace(good.address(), "203.0.113.9"))
    return [
        ("malformed JSON", {**ENV_ADD, "CNI_NETNS": netns}, b'{"cniVersion": "1.0.0",', 6,
         "not valid JSON"),
        ("unknown cniVersion", {**ENV_ADD, "CNI_NETNS": netns},
         json.dumps({**conf, "cniVersion": "2.0.0"}).encode(), 1, "2.0.0"),
        ("missing CNI_NETNS on ADD", ENV_ADD, json.dumps(conf).encode(), 4, "CNI_NETNS"),
        ("missing CNI_CONTAINERID", {**ENV_ADD, "CNI_CONTAINERID": "", "CNI_NETNS": netns},
         json.dumps(conf).encode(), 4, "CNI_CONTAINERID"),
        ("wrong socket path", {**ENV_ADD, "CNI_NETNS": netns},
         json.dumps({**conf, "agentSocket": "/run/azure-cni-nowhere/agent.sock"}).encode(), 11,
         "/run/azure-cni-nowhere/agent.sock"),
        ("address outside the pool in prevResult on CHECK",
         {**ENV_ADD, "CNI_COMMAND": "CHECK", "CNI_CONTAINERID": "good", "CNI_NETNS": netns},
         json.dumps({**conf, "prevResult": foreign}).encode(), 7,
         "203.0.113.9, which is not in the pool"),
        ("ADD into a namespace that does not exist",
         {**ENV_ADD, "CNI_NETNS": "/run/netns/azcni-t-no-such"}, json.dumps(conf).encode(), 3,
         "does not exist"),
    ]


def test_bad_input_table(node: LocalNode, kube, netns_factory) -> None:
    started(node, kube)
    pod = netns_factory.create("pod")
    good = node.run_shim("ADD", "good", pod)
    assert good.returncode == 0
    for label, env, stdin, code, words in bad_input_cases(node, pod, good):
        result = node.run_shim(env["CNI_COMMAND"], stdin=stdin, env=env)
        assert result.returncode == 1, label
        error = result.output
        assert error["code"] == code, (label, error)
        assert words in f"{error['msg']} {error['details']}", (label, error)
        assert "Traceback" not in result.stderr, label
    # DEL must succeed; a prevResult naming a foreign address is reported, not obeyed
    foreign = json.loads(json.dumps(good.output).replace(good.address(), "203.0.113.9"))
    other = netns_factory.create("other")
    kept = node.run_shim("ADD", "other", other)
    deleted = node.run_shim("DEL", "good", pod,
                            config=node.plugin_config(extra={"prevResult": foreign}))
    assert (deleted.returncode, deleted.stdout) == (0, "")
    assert "203.0.113.9" in deleted.stderr and "not in the pool" in deleted.stderr
    held = {a["containerID"]: a["address"] for a in node.agent_status()["assignments"]}
    assert held == {"other": kept.address()}
