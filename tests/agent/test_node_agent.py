"""The agent as the cluster and an admin see it: NodeIPPool status, the release handshake,
metrics and health, ``azure-cni status``, start-up checks and a clean stop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from azure_cni.agent.status_cli import agent_get
from azure_cni.api.nodeippool import AGENT_FIELD_MANAGER, OPERATOR_FIELD_MANAGER
from azure_cni_sim.node import (
    LocalNode,
    ipconfig_name,
    pool_addresses,
    publish_pool,
    read_pool,
    wait_for_pool_status,
)
from azure_cni_sim.procs import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.cluster]

POOL = pool_addresses("198.18.0", 10, 8)
#: the simulated VM's primary address (azure_cni_sim.node.simulated_node's default)
NODE_ADDRESS = "198.18.0.4"


def agent_ready(status: dict) -> str | None:
    for condition in status.get("conditions") or ():
        if condition["type"] == "AgentReady":
            return f"{condition['status']}/{condition['reason']}"
    return None


def test_status_is_the_agents_fields_only_by_server_side_apply(node: LocalNode, kube,
                                                               netns_factory) -> None:
    publish_pool(kube.kubectl, node.name, POOL)
    node.start_agent()
    node.wait_ready()
    for c in ("a", "b", "c"):
        assert node.run_shim("ADD", c, netns_factory.create(c)).returncode == 0
    status = wait_for_pool_status(kube.kubectl, node.name, "used=3 and AgentReady=True",
                                  lambda s: s.get("used") == 3
                                  and agent_ready(s) == "True/Serving")
    assert [ip["address"] for ip in status["ips"]] == POOL
    assert status["nic"]["subnetCIDR"] == "198.18.0.0/24"
    assert status["releaseAcks"] == []
    managed = read_pool(kube.kubectl, node.name, managed_fields=True)["metadata"][
        "managedFields"]
    agent_fields = [m for m in managed if m["manager"] == AGENT_FIELD_MANAGER]
    assert len(agent_fields) == 1 and agent_fields[0]["operation"] == "Apply"
    assert agent_fields[0]["subresource"] == "status"
    owned = json.dumps(agent_fields[0]["fieldsV1"])
    assert '"f:used"' in owned and "AgentReady" in owned
    assert '"f:ips"' not in owned and '"f:nic"' not in owned
    # the operator keeps writing its fields; the agent's survive
    publish_pool(kube.kubectl, node.name, pool_addresses("198.18.0", 10, 9))
    status = wait_for_pool_status(kube.kubectl, node.name, "9 addresses",
                                  lambda s: len(s.get("ips") or ()) == 9)
    assert status["used"] == 3 and agent_ready(status) == "True/Serving"
    operators = [m["manager"] for m in read_pool(kube.kubectl, node.name, managed_fields=True)
                 ["metadata"]["managedFields"]]
    assert OPERATOR_FIELD_MANAGER in operators


def test_release_handshake(node: LocalNode, kube, netns_factory) -> None:
    publish_pool(kube.kubectl, node.name, POOL)
    node.agent_settings["cooldownSeconds"] = 2
    node.start_agent()
    node.wait_ready()
    pods = {c: netns_factory.create(c) for c in ("a", "b")}
    got = {c: node.run_shim("ADD", c, ns).address() for c, ns in pods.items()}
    assert got == {"a": POOL[0], "b": POOL[1]}
    # the operator wants to release .10 (in use by a) and .17 (never used)
    publish_pool(kube.kubectl, node.name, POOL, releasing=[POOL[0], POOL[7]])
    status = wait_for_pool_status(kube.kubectl, node.name, f"an ack for {POOL[7]}",
                                  lambda s: s.get("releaseAcks") == [ipconfig_name(POOL[7])])
    assert ipconfig_name(POOL[0]) not in status["releaseAcks"], "a is still using it"
    # no new pod gets an address being released
    later = [node.run_shim("ADD", f"n{i}", netns_factory.create(f"n{i}")).address()
             for i in range(5)]
    assert POOL[0] not in later and POOL[7] not in later
    deleted = node.run_shim("DEL", "a", pods["a"])
    assert deleted.returncode == 0
    status = wait_for_pool_status(
        kube.kubectl, node.name, f"acks for {POOL[0]} and {POOL[7]} once a is gone and the "
        "cooldown is over",
        lambda s: sorted(s.get("releaseAcks") or ()) == sorted([ipconfig_name(POOL[0]),
                                                                ipconfig_name(POOL[7])]))
    # the operator removes the acked addresses; the acks disappear with them
    publish_pool(kube.kubectl, node.name, POOL[1:7])
    wait_for_pool_status(kube.kubectl, node.name, "no acks", lambda s: not s.get("releaseAcks"))


def test_metrics_health_and_the_status_command(node: LocalNode, kube, netns_factory) -> None:
    publish_pool(kube.kubectl, node.name, POOL)
    node.agent_settings["metricsPort"] = 9191
    # as the chart starts it when Prometheus scrapes it: also on the node's own address
    node.start_agent("--metrics-address", NODE_ADDRESS)
    node.wait_ready()
    pod = netns_factory.create("pod")
    assert node.run_shim("ADD", "web", pod, cni_args="K8S_POD_NAMESPACE=shop;"
                                                     "K8S_POD_NAME=web-1").returncode == 0
    assert node.run_shim("DEL", "gone", "").returncode == 0

    def http_get(path: str, host: str = "127.0.0.1") -> tuple[int, str]:
        code = ("import sys,urllib.request,urllib.error\n"
                "try:\n"
                f"    r=urllib.request.urlopen('http://{host}:9191{path}', timeout=5)\n"
                "    print(r.status); print(r.read().decode())\n"
                "except urllib.error.HTTPError as e:\n"
                "    print(e.code); print(e.read().decode())\n")
        out = subprocess.run(["ip", "netns", "exec", node.netns, sys.executable, "-c", code],
                             capture_output=True, text=True, check=True, timeout=30).stdout
        status, _, body = out.partition("\n")
        return int(status), body

    status, body = http_get("/healthz")
    assert (status, body.strip()) == (200, "ok")
    status, body = http_get("/readyz")
    assert (status, body.strip()) == (200, "ok")
    status, metrics = http_get("/metrics")
    assert status == 200
    assert 'azure_cni_cni_requests_total{command="ADD",result="ok"} 1.0' in metrics
    assert 'azure_cni_cni_requests_total{command="DEL",result="ok"} 1.0' in metrics
    assert 'azure_cni_cni_request_duration_seconds_bucket{command="ADD",le="10.0"} 1.0' \
        in metrics
    wait_for("the pool gauges to show one used address",
             lambda: 'azure_cni_agent_pool_addresses{state="used"} 1.0' in http_get("/metrics")[1],
             20)
    _, metrics = http_get("/metrics")
    assert 'azure_cni_agent_pool_addresses{state="free"} 7.0' in metrics
    assert 'azure_cni_agent_pool_addresses{state="releasing"} 0.0' in metrics
    assert 'azure_cni_agent_pool_addresses{state="cooling"} 0.0' in metrics
    status, scraped = http_get("/metrics", NODE_ADDRESS)
    assert status == 200 and 'azure_cni_agent_ready 1.0' in scraped

    cli = Path(sys.executable).with_name("azure-cni")
    shown = subprocess.run([str(cli), "status", "--socket", str(node.socket_path)],
                           capture_output=True, text=True, check=False, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert f"node:    {node.name}" in shown.stdout
    assert "pool:    8 allocated, 1 used, 7 free" in shown.stdout
    assert "198.18.0.10" in shown.stdout and "shop/web-1" in shown.stdout

    assert node.stop_agent() == 0
    down = subprocess.run([str(cli), "status", "--socket", str(node.socket_path)],
                          capture_output=True, text=True, check=False, timeout=30)
    assert down.returncode == 1
    assert "agent is not running on this node" in down.stderr \
        or "does not answer" in down.stderr


def test_clean_stop_withdraws_the_conflist_and_reports_it(node: LocalNode, kube) -> None:
    publish_pool(kube.kubectl, node.name, POOL)
    node.start_agent()
    node.wait_ready()
    assert node.shim_path.exists() and node.conflist_path.exists()
    assert node.stop_agent() == 0
    assert not node.conflist_path.exists()
    assert node.shim_path.exists(), "the shim stays so runtimes can still spool DELs"
    wait_for_pool_status(kube.kubectl, node.name, "AgentReady=False/Stopped",
                         lambda s: agent_ready(s) == "False/Stopped")


def test_no_conflist_before_the_pool_exists(node: LocalNode, kube) -> None:
    agent = node.start_agent()
    wait_for("the agent's socket", node.socket_path.exists, 30, alive=agent.check_running)
    wait_for("the agent to find no NodeIPPool",
             lambda: node.agent_status()["reason"] == "NoPool", 30, alive=agent.check_running)
    status = node.agent_status()
    assert not status["ready"] and "does not exist" in status["message"]
    assert not node.conflist_path.exists()
    # alive (no restart loop while the operator catches up) but not ready for pods
    assert agent_get(node.socket_path, "/healthz")[0] == 200
    code, body = agent_get(node.socket_path, "/readyz")
    assert code == 503 and b"NoPool" in body
    publish_pool(kube.kubectl, node.name, POOL)
    node.wait_ready()


def test_missing_host_python_stops_the_agent_with_a_condition(node: LocalNode, kube) -> None:
    publish_pool(kube.kubectl, node.name, POOL)
    node.agent_settings["hostPython"] = "/usr/bin/python-not-here"
    agent = node.start_agent()
    wait_for("the agent to give up", lambda: not agent.running(), 60)
    assert agent.popen is not None and agent.popen.returncode == 2
    assert "/usr/bin/python-not-here does not exist on the host" in node.agent_log()
    status = wait_for_pool_status(kube.kubectl, node.name, "AgentReady=False/HostPythonMissing",
                                  lambda s: agent_ready(s) == "False/HostPythonMissing")
    assert not node.conflist_path.exists()
    assert status


def test_agent_never_touches_the_pool_spec(node: LocalNode, kube, netns_factory) -> None:
    publish_pool(kube.kubectl, node.name, POOL)
    before = read_pool(kube.kubectl, node.name)["spec"]
    node.start_agent()
    node.wait_ready()
    assert node.run_shim("ADD", "a", netns_factory.create("a")).returncode == 0
    wait_for_pool_status(kube.kubectl, node.name, "used=1", lambda s: s.get("used") == 1)
    assert read_pool(kube.kubectl, node.name)["spec"] == before
