"""Workloads on the simulated cluster, and what they observe: the demo's and the e2e tests'.

``web`` is a Deployment of the ``sim-app`` image (busybox httpd) spread over the nodes, behind a
NodePort Service (which has a ClusterIP too). Each pod answers ``GET /cgi-bin/whoami`` with its
name and the address the request came from, and has busybox's ``wget``, ``ping`` and
``nslookup`` for requests of its own, run with ``kubectl exec`` as a user would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.mgmt.network.models import NetworkSecurityGroup

from azure_cni_sim.procs import wait_for
from azure_cni_sim.world import NAMESPACE, World

WEB_PORT = 8080
WHOAMI = "/cgi-bin/whoami"


@dataclass(frozen=True)
class RunningPod:
    name: str
    namespace: str
    node: str
    ip: str
    phase: str


def web_manifests(image: str, name: str = "web", replicas: int = 6,
                  namespace: str = "default", node: str | None = None) -> str:
    """A Deployment spread evenly over the schedulable nodes (or all on ``node``) and its
    NodePort Service, as YAML."""
    placement = f"nodeSelector: {{kubernetes.io/hostname: {node}}}" if node else f"""\
topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: DoNotSchedule
          # a cordoned (draining) node is not a place to spread to
          nodeTaintsPolicy: Honor
          labelSelector:
            matchLabels: {{app: {name}}}"""
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {namespace}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      terminationGracePeriodSeconds: 2
      {placement}
      containers:
        - name: web
          image: {image}
          imagePullPolicy: IfNotPresent
          ports:
            - {{containerPort: {WEB_PORT}}}
          readinessProbe:
            tcpSocket: {{port: {WEB_PORT}}}
            periodSeconds: 2
          resources:
            requests: {{cpu: 5m, memory: 8Mi}}
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
spec:
  type: NodePort
  selector: {{app: {name}}}
  ports:
    - {{port: 80, targetPort: {WEB_PORT}}}
"""


def pods(world: World, selector: str, namespace: str = "default") -> list[RunningPod]:
    """The pods a label selector matches, with their node and address."""
    items = world.get_json("pods", "-n", namespace, "-l", selector)["items"]
    return [RunningPod(p["metadata"]["name"], namespace, p["spec"].get("nodeName", ""),
                       p["status"].get("podIP", ""), p["status"].get("phase", ""))
            for p in items if not p["metadata"].get("deletionTimestamp")]


def service(world: World, name: str, namespace: str = "default") -> tuple[str, int]:
    """A Service's ClusterIP and its first port's NodePort."""
    svc = world.get_json("service", name, "-n", namespace)
    return svc["spec"]["clusterIP"], int(svc["spec"]["ports"][0].get("nodePort") or 0)


def http_get(world: World, pod: RunningPod, url: str, timeout: int = 3) -> dict[str, Any] | None:
    """GET ``url`` from inside ``pod``; the JSON answer, or None if nothing answered."""
    # busybox 1.35's own wget -T crashes: bound it with its timeout applet instead
    out = world.exec_in(pod.name, "timeout", str(timeout), "wget", "-q", "-O-", url,
                        namespace=pod.namespace, timeout=timeout + 20)
    if out.returncode != 0 or not out.stdout.strip():
        return None
    answer: dict[str, Any] = json.loads(out.stdout)
    return answer


def first_answer(world: World, pod: RunningPod, url: str, timeout: float = 60
                 ) -> dict[str, Any] | None:
    """GET ``url`` from inside ``pod`` until something answers; that answer, or None if
    nothing did within ``timeout``. A new Service answers once each node's kube-proxy has
    programmed it, which can be seconds after its DNS name resolves on a loaded machine."""
    answer: dict[str, Any] | None = None

    def answered() -> bool:
        nonlocal answer
        answer = http_get(world, pod, url)
        return answer is not None

    with contextlib.suppress(TimeoutError):
        wait_for(f"an answer from {url} in {pod.name}", answered, timeout, interval=1)
    return answer


def ping(world: World, pod: RunningPod, address: str, count: int = 1) -> bool:
    out = world.exec_in(pod.name, "ping", "-c", str(count), "-W", "2", address,
                        namespace=pod.namespace, timeout=count * 3 + 20)
    return out.returncode == 0


def resolve(world: World, pod: RunningPod, name: str) -> list[str]:
    """The addresses ``nslookup`` finds for ``name`` from inside ``pod`` (its cluster DNS)."""
    out = world.exec_in(pod.name, "nslookup", name, namespace=pod.namespace)
    answer = out.stdout.split(f"Name:\t{name}", 1)
    if out.returncode != 0 or len(answer) < 2:
        return []
    return re.findall(r"Address:\s*([0-9.]+)\s*$", answer[1], flags=re.MULTILINE)


def onprem_get(world: World, url: str, timeout: int = 3) -> dict[str, Any] | None:
    """GET ``url`` from the on-premises host; the JSON answer, or None."""
    assert world.fabric is not None
    return curl_json(world.fabric.onprem_ns, url, timeout=timeout)


def curl_json(netns: str, url: str, *, host: str | None = None,
              timeout: int = 3) -> dict[str, Any] | None:
    """GET ``url`` with curl in the network namespace ``netns`` (with ``host`` as the Host
    header); the JSON answer, or None if nothing answered."""
    header = ("-H", f"Host: {host}") if host else ()
    # -f: an HTTP error (a proxy with no route yet) is no answer, not a JSON document
    out = subprocess.run(["ip", "netns", "exec", netns, "curl", "-sf", "-m", str(timeout),
                          *header, url], capture_output=True, text=True, check=False,
                         timeout=timeout + 10)
    if out.returncode != 0 or not out.stdout.strip():
        return None
    answer: dict[str, Any] = json.loads(out.stdout)
    return answer


def nsg_blocking_onprem(world: World, resource_group: str, name: str, port: int) -> str:
    """An NSG (made by an admin through azure-mgmt-network) whose one rule, ``no-onprem-web``,
    denies TCP ``port`` from the on-premises range; returns its ID, to attach to a NIC or a
    subnet."""
    rule = {"priority": 100, "direction": "Inbound", "access": "Deny", "protocol": "Tcp",
            "sourceAddressPrefix": "198.19.0.0/16", "sourcePortRange": "*",
            "destinationAddressPrefix": "*", "destinationPortRange": str(port)}
    body = NetworkSecurityGroup({"location": "eastus", "properties": {"securityRules": [
        {"name": "no-onprem-web", "properties": rule}]}})
    with world.network_client() as client:
        nsg = client.network_security_groups.begin_create_or_update(
            resource_group, name, body).result()
    return str(nsg.id)


def agent_pod(world: World, node: str) -> str:
    """The name of the azure-cni agent pod on ``node``."""
    items = world.get_json("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=agent",
                           "--field-selector", f"spec.nodeName={node}")["items"]
    running = [p["metadata"]["name"] for p in items
               if not p["metadata"].get("deletionTimestamp")]
    if not running:
        raise LookupError(f"no azure-cni agent pod on {node}")
    return str(running[0])


@contextlib.contextmanager
def agent_paused(world: World, node: str) -> Iterator[int]:
    """The agent process of ``node`` stopped (SIGSTOP) for the block, then continued: to hold
    a fault on the node that the agent would repair before a slow check sees it. The process
    is the one whose command is the agent's, in the node's network namespace (the chart runs
    it there), so another world's agents on this machine are never touched."""
    ours = os.stat(f"/run/netns/{world.nodes[node].netns}").st_ino
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            command = (proc / "cmdline").read_bytes().split(b"\0")
            if any(part.endswith(b"azure-cni-agent") for part in command[:2]) and \
                    os.stat(proc / "ns" / "net").st_ino == ours:
                found.append(int(proc.name))
    if len(found) != 1:
        raise AssertionError(f"expected one agent process in {node}'s namespace, found {found}")
    os.kill(found[0], signal.SIGSTOP)
    try:
        yield found[0]
    finally:
        os.kill(found[0], signal.SIGCONT)


def agent_status(world: World, node: str, timeout: float = 60) -> dict[str, Any]:
    """``azure-cni status -o json`` on the node, as an admin runs it in the agent's pod (a
    kubelet that just restarted refuses exec until it has synced its pods: retried)."""
    out: subprocess.CompletedProcess[str] | None = None

    def answered() -> bool:
        nonlocal out
        with contextlib.suppress(LookupError):
            out = world.exec_in(agent_pod(world, node), "azure-cni", "status", "-o", "json",
                                "--config", "/etc/azure-cni/config.yaml", namespace=NAMESPACE)
        return out is not None and bool(out.stdout.strip())

    try:
        wait_for(f"azure-cni status on {node}", answered, timeout, interval=1)
    except TimeoutError as e:
        raise TimeoutError(f"{e}: {out.stderr.strip() if out else 'no agent pod'}") from None
    assert out is not None
    status: dict[str, Any] = json.loads(out.stdout)
    return status


def pod_network_pods(world: World) -> list[RunningPod]:
    """Every pod with an address of its own (not the host's), in every namespace."""
    items = world.get_json("pods", "-A")["items"]
    return [RunningPod(p["metadata"]["name"], p["metadata"]["namespace"],
                       p["spec"].get("nodeName", ""), p["status"].get("podIP", ""),
                       p["status"].get("phase", ""))
            for p in items if not p["spec"].get("hostNetwork")
            and p["status"].get("phase") in ("Pending", "Running")]


def deploy_web(world: World, namespace: str, replicas: int, *, name: str = "web",
               node: str | None = None, timeout: float = 240) -> list[RunningPod]:
    """The ``web`` Deployment (and its Service) in ``namespace``, rolled out; its pods."""
    world.kubectl("apply", "-f", "-", input=web_manifests(
        world.images["sim-app"].image, name=name, replicas=replicas, namespace=namespace,
        node=node))
    world.wait_rollout(f"deployment/{name}", namespace, timeout=timeout)
    return running_pods(world, f"app={name}", namespace, replicas)


def running_pods(world: World, selector: str, namespace: str, count: int,
                 timeout: float = 60) -> list[RunningPod]:
    """Exactly ``count`` pods of ``selector``, all Running with an address (old ones gone)."""
    found: list[RunningPod] = []

    def settled() -> bool:
        nonlocal found
        found = pods(world, selector, namespace)
        return len(found) == count and all(p.phase == "Running" and p.ip for p in found)

    wait_for(f"{count} Running pods of {selector} in {namespace}", settled, timeout,
             interval=1)
    return found


def wait_pools_count_their_pods(world: World, timeout: float = 90) -> None:
    """Until every pool's ``status.used`` equals the pods on its node that have an address of
    their own: the agent's store and the API agree."""
    seen: dict[str, tuple[int, int]] = {}

    def agree() -> bool:
        pods = pod_network_pods(world)
        for vm in world.vms:
            used = world.pool(vm).status.used
            running = sum(p.node == vm and bool(p.ip) for p in pods)
            seen[vm] = (used, running)
        return all(used == running for used, running in seen.values())

    try:
        wait_for("every pool's used to equal its node's pods", agree, timeout, interval=1)
    except TimeoutError as e:
        raise AssertionError(f"{e}; (used, pods) per node: {seen}") from None
