"""One pod through the real containerd 1.6 (Debian's) and crictl, with a hostPort through
the chained portmap plugin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from azure_cni_sim.node import LocalNode, pool_addresses, publish_pool
from azure_cni_sim.procs import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.cluster]

POOL = pool_addresses("198.18.0", 10, 8)


def pod_config(workdir: Path, cgroup_parent: str) -> Path:
    path = workdir / "pod.json"
    path.write_text(json.dumps({
        "metadata": {"name": "web", "namespace": "shop", "uid": "web-uid-1", "attempt": 1},
        "hostname": "web", "log_directory": str(workdir / "pod-logs"),
        "port_mappings": [{"protocol": 0, "container_port": 8080, "host_port": 18080}],
        "linux": {"cgroup_parent": f"/{cgroup_parent}"},
    }))
    return path


def netns_files() -> set[str]:
    return {p.name for p in Path("/run/netns").iterdir() if p.name.startswith("cni-")}


def test_containerd_runs_a_pod_with_a_pool_address_and_a_host_port(
        node: LocalNode, kube, containerd, tmp_path: Path) -> None:
    publish_pool(kube.kubectl, node.name, POOL)
    before = netns_files()
    assert not containerd.network_ready(), "no conflist yet: containerd's network is not ready"
    node.start_agent()
    node.wait_ready()
    wait_for("containerd to load the conflist the agent installed", containerd.network_ready,
             60)

    pod_id = containerd.crictl("runp", str(pod_config(tmp_path, containerd.cgroup_parent))
                               ).stdout.strip()
    inspected = json.loads(containerd.crictl("inspectp", pod_id).stdout)
    address = inspected["status"]["network"]["ip"]
    assert address in POOL
    (netns,) = [n["path"] for n in inspected["info"]["runtimeSpec"]["linux"]["namespaces"]
                if n["type"] == "network"]
    inside = subprocess.run(["nsenter", f"--net={netns}", "ip", "-4", "addr", "show", "eth0"],
                            capture_output=True, text=True, check=True).stdout
    assert f"inet {address}/32" in inside
    (held,) = node.agent_status()["assignments"]
    assert (held["address"], held["pod"], held["netns"]) == (address, "shop/web", netns)
    result = inspected["info"]["cniResult"]["Interfaces"]["eth0"]
    assert result["IPConfigs"][0]["IP"] == address

    # something listening in the pod's network namespace answers on the node's hostPort
    server = subprocess.Popen(
        ["nsenter", f"--net={netns}", sys.executable, "-c",
         "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, "
         "socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 8080)); s.listen(); print('ready', "
         "flush=True)\nwhile True:\n  c,a=s.accept(); c.sendall(b'hello from the pod'); "
         "c.close()"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = ("import socket; c=socket.create_connection(('198.18.0.4', 18080), timeout=5);"
                  " print(c.recv(100).decode())")
        reply = subprocess.run(["ip", "netns", "exec", node.netns, sys.executable, "-c", client],
                               capture_output=True, text=True, check=False, timeout=30)
        assert reply.stdout.strip() == "hello from the pod", reply.stderr
        nat = subprocess.run(["ip", "netns", "exec", node.netns, "iptables-save", "-t", "nat"],
                             capture_output=True, text=True, check=True).stdout
        assert f"--to-destination {address}:8080" in nat, "portmap's DNAT uses our address"
    finally:
        server.kill()
        server.wait()

    containerd.crictl("stopp", pod_id)
    containerd.crictl("rmp", pod_id)
    assert node.agent_status()["assignments"] == []
    assert netns_files() == before
    assert "event=del" in node.agent_log()
