"""The agent as the cluster and an admin see it: NodeIPPool status, the release handshake,
metrics and health, ``azure-cni status``, start-up checks and a clean stop."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import pytest

from azure_cni.agent.exitcodes import AgentExit
from azure_cni.agent.status_cli import agent_get
from azure_cni.api.nodeippool import (
    AGENT_FIELD_MANAGER,
    OPERATOR_FIELD_MANAGER,
    NodeIPPool,
    PoolSpec,
    status_apply_body,
    utcnow,
)
from azure_cni.api.podnet import POD_ANNOTATIONS_CAPABILITY, PUBLIC_IP_ANNOTATION
from azure_cni.datapath.snat import owned_state
from azure_cni.ipam.plan import plan
from azure_cni_sim.node import (
    Kubectl,
    LocalNode,
    delete_pool,
    ipconfig_name,
    pool_addresses,
    publish_pool,
    read_pool,
    simulated_node,
    wait_for_pool_status,
)
from azure_cni_sim.procs import ManagedProcess, wait_for

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


def test_a_rolling_update_keeps_the_conflist_and_the_node_ready(node: LocalNode, kube,
                                                               netns_factory) -> None:
    """Issue 11, defect 4: a graceful stop (a DaemonSet roll) must not take the network
    configuration away: containerd would report the node's network not ready and fail DELs.
    While the agent is away ADD fails with "try again later" (kubelet retries), DEL is
    spooled, and STATUS does not fail the node for a graceful restart."""
    publish_pool(kube.kubectl, node.name, POOL)
    node.start_agent()
    node.wait_ready()
    pods = {c: netns_factory.create(c) for c in ("a", "b")}
    assert node.run_shim("ADD", "a", pods["a"]).returncode == 0
    assert node.stop_agent() == 0
    assert node.conflist_path.exists(), "the conflist stays through a restart"
    assert node.shim_path.exists()
    wait_for_pool_status(kube.kubectl, node.name, "AgentReady=False/Stopped",
                         lambda s: agent_ready(s) == "False/Stopped")
    gap = node.run_shim("ADD", "b", pods["b"])
    assert (gap.returncode, gap.output["code"]) == (1, 11), gap
    assert "not reachable" in gap.output["msg"]
    assert node.run_shim("DEL", "a", pods["a"]).returncode == 0, "spooled"
    status_config = node.plugin_config(cni_version="1.1.0")
    during = node.run_shim("STATUS", config=status_config)
    assert (during.returncode, during.stdout) == (0, ""), during
    node.start_agent()
    node.wait_ready()
    assert node.agent_status()["assignments"] == [], "the spooled DEL was replayed"
    assert node.run_shim("ADD", "b", pods["b"]).returncode == 0, "kubelet's retry works"
    # a crash is not a restart the agent announced: STATUS says so at once
    assert node.stop_agent(kill=True) != 0
    crashed = node.run_shim("STATUS", config=status_config)
    assert (crashed.returncode, crashed.output["code"]) == (1, 50), crashed


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
    assert agent.popen is not None and agent.popen.returncode == AgentExit.NO_HOST_PYTHON
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


def test_cooling_is_published_and_ends_with_the_cooldown(node: LocalNode, kube,
                                                         netns_factory) -> None:
    publish_pool(kube.kubectl, node.name, POOL)
    node.agent_settings["cooldownSeconds"] = 3
    node.start_agent()
    node.wait_ready()
    pods = {c: netns_factory.create(c) for c in ("a", "b")}
    for c, ns in pods.items():
        assert node.run_shim("ADD", c, ns).returncode == 0
    assert node.run_shim("DEL", "a", pods["a"]).returncode == 0
    wait_for_pool_status(kube.kubectl, node.name, "used=1, cooling=1 after a DEL",
                         lambda s: (s.get("used"), s.get("cooling")) == (1, 1))
    # nothing happens on the node when the cooldown ends; the agent republishes anyway
    wait_for_pool_status(kube.kubectl, node.name, "cooling=0 once the cooldown is over",
                         lambda s: (s.get("used"), s.get("cooling")) == (1, 0))
    header, row = kube.kubectl("get", "nodeippool", node.name, "-o", "wide").stdout.splitlines()
    column = header.index("COOLING")
    assert row[column:].split()[0] == "0", (header, row)


class OperatorStandIn:
    """Grows a pool as the operator does: ``plan()`` on the pool as published, then one write
    of the operator's fields. Only growth, from the next free addresses of 198.18.0.0/24."""

    def __init__(self, kubectl: Kubectl, node: str, spec: PoolSpec,
                 addresses: list[str]) -> None:
        self.kubectl, self.node, self.spec = kubectl, node, spec
        self.addresses = list(addresses)
        self.sizes: list[int] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="operator-stand-in")

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.5):
                pool = NodeIPPool.from_object(read_pool(self.kubectl, self.node))
                step = plan(pool.spec, pool.status, utcnow())
                if step.add:
                    last = int(self.addresses[-1].rsplit(".", 1)[1])
                    self.addresses += pool_addresses("198.18.0", last + 1, step.add)
                    publish_pool(self.kubectl, self.node, self.addresses, spec=self.spec)
                    self.sizes.append(len(self.addresses))
        except BaseException as e:  # noqa: BLE001 - reported by __exit__
            self.error = e

    def __enter__(self) -> OperatorStandIn:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(30)
        if self.error is not None and kind is None:
            raise AssertionError(f"the operator stand-in failed: {self.error!r}")


def test_churn_grows_the_pool_instead_of_failing_adds(node: LocalNode, kube,
                                                      netns_factory) -> None:
    """Issue 11, defect 1: a pool of 8 with a warm pool of 1 runs 7 pods; 5 are deleted and 5
    created within the cooldown (a rolling update). The deleted pods' addresses cool down, so
    the pool must grow; counting them as free, it did not, and the ADDs failed."""
    spec = PoolSpec(node.name, min_ips=8, max_ips=32, batch_size=4, min_free_ips=1,
                    max_free_ips=8, release_delay_seconds=3600)
    addresses = pool_addresses("198.18.0", 10, 8)
    publish_pool(kube.kubectl, node.name, addresses, spec=spec)
    node.agent_settings.update({"cooldownSeconds": 300, "addWaitSeconds": 20})
    node.start_agent()
    node.wait_ready()
    with OperatorStandIn(kube.kubectl, node.name, spec, addresses) as operator:
        old = {f"old{i}": netns_factory.create(f"old{i}") for i in range(7)}
        for c, ns in old.items():
            assert node.run_shim("ADD", c, ns).returncode == 0
        wait_for_pool_status(kube.kubectl, node.name, "used=7",
                             lambda s: s.get("used") == 7)
        assert operator.sizes == [], "1 free address meets a warm pool of 1"
        gone = list(old)[2:]
        for c in gone:
            assert node.run_shim("DEL", c, old[c]).returncode == 0
        wait_for_pool_status(kube.kubectl, node.name, "used=2", lambda s: s.get("used") == 2)
        new = [netns_factory.create(f"new{i}") for i in range(5)]
        with ThreadPoolExecutor(5) as threads:
            results = list(threads.map(lambda i: node.run_shim("ADD", f"new{i}", new[i]),
                                       range(5)))
    failed = [r.output for r in results if r.returncode != 0]
    assert not failed, f"ADDs failed although the pool could grow: {failed}"
    assert operator.sizes and operator.sizes[0] == 12, operator.sizes
    cooling = set(addresses[2:7])
    assert not {r.address() for r in results} & cooling, "a cooling address was handed out"


def test_no_pod_is_set_up_before_the_egress_rules_are_in_place(node: LocalNode, kube,
                                                               netns_factory,
                                                               legacy_iptables) -> None:
    """Issue 11, defect 2: fail closed. kube-proxy holds the xtables lock while the node boots
    (legacy backend): no conflist and no pod until the wireserver/IMDS block is in place."""
    publish_pool(kube.kubectl, node.name, POOL)
    legacy_iptables.hold()
    agent = node.start_agent(env=legacy_iptables.env)

    def reason() -> str:
        return str(node.agent_status()["reason"]) if node.socket_path.exists() else ""

    wait_for("the agent to serve and say the egress rules are missing",
             lambda: reason() == "EgressRulesMissing", 60, alive=agent.check_running)
    assert "holding the xtables lock" in node.agent_status()["message"]
    assert not node.conflist_path.exists(), "no conflist before the wireserver block"
    assert agent_get(node.socket_path, "/readyz")[0] == 503
    legacy_iptables.release()
    node.wait_ready(timeout=60)
    assert node.run_shim("ADD", "a", netns_factory.create("a")).returncode == 0

    # later somebody deletes our jump while the lock is held: ADDs stop until it is back
    (jump,) = owned_state(legacy_iptables.run(node.netns, "iptables-save").stdout)[
        "filter_jumps"]
    legacy_iptables.run(node.netns, "iptables", "-D", "FORWARD", *shlex.split(jump))
    legacy_iptables.hold()
    wait_for("the agent's sync to find the rules missing",
             lambda: bool(node.agent_status()["egressProblem"]), 60, alive=agent.check_running)
    pod = netns_factory.create("b")
    refused = node.run_shim("ADD", "b", pod)
    assert (refused.returncode, refused.output["code"]) == (1, 11), refused
    assert "wireserver" in refused.output["msg"]
    status = node.run_shim("STATUS", config=node.plugin_config(cni_version="1.1.0"))
    assert status.output["code"] == 51 and "xtables lock" in status.output["details"]
    legacy_iptables.release()
    wait_for("the agent's sync to put the rules back",
             lambda: not node.agent_status()["egressProblem"], 60, alive=agent.check_running)
    assert owned_state(legacy_iptables.run(node.netns, "iptables-save").stdout)[
        "filter_jumps"] == [jump]
    assert node.run_shim("ADD", "b", pod).returncode == 0


def reaches_the_wireserver(pod: str) -> bool:
    code = ("import socket; s = socket.create_connection(('168.63.129.16', 80), timeout=3); "
            "s.close()")
    return subprocess.run(["ip", "netns", "exec", pod, sys.executable, "-c", code],
                          capture_output=True, check=False, timeout=30).returncode == 0


def test_a_rule_put_above_the_pod_filter_is_undone_by_the_agent(kube, nodeippool_crd,
                                                               netns_factory,
                                                               tmp_path: Path) -> None:
    """Issue 11, defect 10: an ACCEPT inserted above our FORWARD jump (by an admin, another
    add-on) let pods reach the wireserver until the next restart; the agent's periodic sync
    puts the jump first again."""
    fabric = netns_factory.create("fabric")
    subprocess.run(["ip", "-n", fabric, "addr", "add", "168.63.129.16/32", "dev", "lo"],
                   check=True)
    with simulated_node(kube.kubectl, kube.kubeconfig, netns_factory.create, tmp_path / "node",
                        fabric_netns=fabric) as node:
        wireserver = ManagedProcess(
            "wireserver", ["ip", "netns", "exec", fabric, sys.executable, "-m",
                           "azure_cni_sim.echo", "--name", "wireserver", "--port", "80"],
            tmp_path / "wireserver.log", node.owner).start()
        try:
            wait_for("the wireserver stand-in", lambda: "echo_listening" in
                     (tmp_path / "wireserver.log").read_text(), 30,
                     alive=wireserver.check_running)
            publish_pool(kube.kubectl, node.name, POOL)
            node.start_agent()
            node.wait_ready()
            pod = netns_factory.create("pod")
            assert node.run_shim("ADD", "a", pod).returncode == 0
            assert not reaches_the_wireserver(pod)
            subprocess.run(["ip", "netns", "exec", node.netns, "iptables", "-I", "FORWARD",
                            "1", "-j", "ACCEPT"], check=True)
            assert reaches_the_wireserver(pod), "the ACCEPT above the jump bypasses the block"

            def ours_first() -> bool:
                out = subprocess.run(["ip", "netns", "exec", node.netns, "iptables", "-S",
                                      "FORWARD"], capture_output=True, text=True,
                                     check=True).stdout.splitlines()
                return out[1].endswith("-j AZURE-CNI-FORWARD")  # out[0] is the policy

            assert node.agent is not None
            wait_for("the agent's sync to put its jump first again", ours_first, 60,
                     alive=node.agent.check_running)
            assert not reaches_the_wireserver(pod)
        finally:
            wireserver.stop()


def test_annotated_pods_sharing_a_block_keep_the_agents_status_written(
        node: LocalNode, kube, netns_factory) -> None:
    """Pods of one block share its ipConfiguration; the agent's list of their requests must
    still be one the API server accepts, or used, acks and idle blocks stop updating."""
    publish_pool(kube.kubectl, node.name, ["198.18.0.16"], prefix_length=28)
    node.start_agent()
    node.wait_ready()
    config = node.plugin_config(extra={"runtimeConfig": {POD_ANNOTATIONS_CAPABILITY: {
        PUBLIC_IP_ANNOTATION: "web"}}})
    for pod in ("a", "b"):
        added = node.run_shim("ADD", pod, netns_factory.create(pod), config=config,
                              cni_args=f"K8S_POD_NAMESPACE=web;K8S_POD_NAME={pod};"
                                       f"K8S_POD_UID=uid-{pod}")
        assert added.returncode == 0, added
    status = wait_for_pool_status(kube.kubectl, node.name, "used=2 and two requests",
                                  lambda s: s.get("used") == 2
                                  and len(s.get("podRequests") or ()) == 2)
    assert {(r["pod"], r["podUID"], r["ipConfiguration"]) for r in status["podRequests"]} == {
        ("web/a", "uid-a", ipconfig_name("198.18.0.16")),
        ("web/b", "uid-b", ipconfig_name("198.18.0.16"))}
    # and the writes go on: a pod's DEL is counted and its request withdrawn
    assert node.run_shim("DEL", "a", "").returncode == 0
    status = wait_for_pool_status(kube.kubectl, node.name, "used=1",
                                  lambda s: s.get("used") == 1)
    assert [r["pod"] for r in status["podRequests"] if r.get("withdrawn")] == ["web/a"]


def test_pod_requests_nobody_owns_are_dropped_by_the_agents_first_write(
        node: LocalNode, kube, netns_factory) -> None:
    """What a change of the list's key leaves behind: entries stored under the old key keep
    that ownership, which names them no more. The agent's first write to the pool takes them
    over, so its next one drops those it does not publish."""
    publish_pool(kube.kubectl, node.name, POOL)
    node.start_agent()
    node.wait_ready()
    config = node.plugin_config(extra={"runtimeConfig": {POD_ANNOTATIONS_CAPABILITY: {
        PUBLIC_IP_ANNOTATION: "web"}}})
    added = node.run_shim("ADD", "a", netns_factory.create("a"), config=config,
                          cni_args="K8S_POD_NAMESPACE=web;K8S_POD_NAME=a;K8S_POD_UID=uid-a")
    (mine,) = wait_for_pool_status(kube.kubectl, node.name, "the request of pod a",
                                   lambda s: len(s.get("podRequests") or ()) == 1
                                   )["podRequests"]
    assert mine["address"] == added.address()
    assert node.stop_agent() == 0
    # a request the agent forgot, stored when the list was keyed by ipConfiguration: the
    # agent's ownership of it names it by that key, which no longer matches it
    stray = {"address": POOL[5], "ipConfiguration": ipconfig_name(POOL[5]), "pod": "web/gone",
             "publicIP": "web", "withdrawn": True}
    kube.kubectl("apply", "--server-side", f"--field-manager={AGENT_FIELD_MANAGER}",
                 "--subresource=status", "-f", "-", input=json.dumps(status_apply_body(
                     node.name, {"podRequests": [mine, stray]})))
    entry = {".": {}, **{f"f:{k}": {} for k in stray}}
    owned = {"f:status": {"f:podRequests": {
        f'k:{{"ipConfiguration":"{stray["ipConfiguration"]}"}}': entry,
        f'k:{{"address":"{mine["address"]}"}}': {".": {}, **{f"f:{k}": {} for k in mine}}}}}
    kube.kubectl("patch", "nodeippool", node.name, "--type=merge", "-p", json.dumps(
        {"metadata": {"managedFields": [{
            "manager": AGENT_FIELD_MANAGER, "operation": "Apply", "subresource": "status",
            "apiVersion": "azurecni.io/v1alpha1", "fieldsType": "FieldsV1",
            "fieldsV1": owned}]}}))
    node.start_agent()
    node.wait_ready()
    status = wait_for_pool_status(kube.kubectl, node.name, "only the agent's own request",
                                  lambda s: [r["address"] for r in s.get("podRequests") or ()]
                                  == [mine["address"]])
    assert status["podRequests"] == [mine]
    assert f"event=stray_pod_requests_dropped addresses={POOL[5]}" in node.agent_log()


def test_a_recreated_pool_gets_the_agents_status(node: LocalNode, kube) -> None:
    """A Node deleted and registered again (its kubelet does that by itself) gets a new
    NodeIPPool of the same name: the agent must report on it, though its own fields did not
    change."""
    publish_pool(kube.kubectl, node.name, POOL)
    node.start_agent()
    node.wait_ready()
    wait_for_pool_status(kube.kubectl, node.name, "AgentReady=True",
                         lambda s: agent_ready(s) == "True/Serving")
    delete_pool(kube.kubectl, node.name)
    wait_for("the pool to be gone", lambda: kube.kubectl(
        "get", "nodeippool", node.name, check=False).returncode != 0, 30)
    publish_pool(kube.kubectl, node.name, POOL)
    wait_for_pool_status(kube.kubectl, node.name, "AgentReady=True on the new pool",
                         lambda s: agent_ready(s) == "True/Serving" and s.get("used") == 0)
