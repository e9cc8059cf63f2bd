"""Chaos campaign: azure-cni's promises under kills, ARM faults, API server trouble and churn.

One simulated VM runs the product as it runs on a node, minus kubelet: the real operator
processes (two replicas, as the chart runs them: one leads through the Lease, one stands by,
each with a managed identity of its own so that ARM tells their writes apart) against the ARM
emulator (over HTTPS, through the azure-mgmt SDK) and a real API
server; the real agent in the VM's network namespace; the installed ``azure-vnet`` shim
executed once per CNI call exactly as containerd executes it, into a real network namespace
per pod. The bench plays the runtime (``Runtime``): it retries a failed ADD with a new sandbox
after tearing the failed one down with DEL, and retries DEL until it succeeds, as kubelet and
containerd do. Kubelet itself, containerd and kube-proxy would only add load on this 2-core
machine: none of the promises checked here goes through them (the CNI calls they make are the
ones the bench makes).

Faults, each for a number of rounds (fixed seed, bounded waits):

- ``agent_kill``: kill -9 of the agent during 100 parallel CNI calls (50 ADDs of new pods, 50
  DELs of the previous round's), at a random moment; it is started again at once;
- ``leader_kill``: kill -9 of the leading operator replica from the emulator's NIC-change
  hook, i.e. after ARM committed the NIC write and before the leader could record it in the
  pool's status; rounds alternate growth (24 pods added) and release (the same pods deleted).
  The standby's first reconcile (its first request to ARM: it stands by without one) must come
  within the Lease duration + 5 s of the kill (``late_takeover`` otherwise); then the killed
  replica's container starts again and stands by;
- ARM faults on the node's NIC, same workload: ``throttle_storm`` (429 with Retry-After),
  ``server_error`` (500/503), ``lro_failed`` (the write is accepted, then its operation ends
  Failed), ``ipconfig_failed`` (one of the pool's ipConfigurations left in provisioningState
  Failed), ``precondition_race`` (a second writer commits right after each read, so the
  conditional write gets 412), ``subnet_full`` (another tenant fills the subnet: the pods
  deleted meanwhile must still be released, the pods added cannot get an address), and
  ``slow_lro`` (operations that poll InProgress for seconds, on a slow ARM);
- ``api_restart`` (kill -9 of kube-apiserver for a few seconds during the workload) and
  ``watch_drop`` (every TCP connection to the API server cut, so every watch drops);
- ``churn``: 250 pods created and deleted in waves of 50 on the node;
- per-pod public IPs and backend pools (issue 22), pods asking by annotation for a public IP
  of their own, a backend pool, or both (tagged for their namespace, in the operator's
  policy): ``podnet_operator_kill`` kills the leading operator replica -9 right after ARM
  committed a NIC write that changed what a pod's address carries (before it could record
  it), and in alternate rounds deletes the pods while the standby waits for the Lease;
  ``podnet_agent_kill`` kills the agent -9 during 40 CNI calls of annotated pods. Unannotated
  pods then take the freed addresses.

In every round of every fault, each write of the node's NIC must come from the process that
held the leader Lease at that moment (``nic_write_by_non_leader``, from a log of the Lease's
terms polled beside the campaign and the principal ARM saw on each write). After every round
the invariants of ``azure_cni_sim.invariants`` are checked (duplicates at
once; leaks, orphans, acknowledged addresses on the NIC and settling after a bounded wait for
the system to converge) and their violations counted. bench/results/chaos.json has one count
per invariant and per fault, the rounds completed and whether each fault really happened.
The exit status is 1 if anything was violated or a fault never happened.

    .venv/bin/python bench/chaos.py [--seed 11] [--scale 1.0]   (as root: network namespaces)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from azure_cni.agent.status_cli import AgentDown  # noqa: E402
from azure_cni.api.nodeippool import NodeIPPool  # noqa: E402
from azure_cni.api.podnet import (  # noqa: E402
    BACKEND_POOLS_ANNOTATION,
    NAMESPACES_TAG,
    POD_ANNOTATIONS_CAPABILITY,
    PUBLIC_IP_ANNOTATION,
)
from azure_cni.api.settings import OperatorSettings  # noqa: E402
from azure_cni_sim.arm import ArmConfig, ArmEmulator, VmInfo  # noqa: E402
from azure_cni_sim.cluster import LocalCluster  # noqa: E402
from azure_cni_sim.invariants import (  # noqa: E402
    INVARIANTS,
    Findings,
    Life,
    Observation,
    Pod,
    Record,
    Write,
    check,
    interface_address,
    nic_view,
    writes_by_non_leaders,
)
from azure_cni_sim.launch import operator_settings, start_operator  # noqa: E402
from azure_cni_sim.node import LocalNode, api_port_of, apply_crd, setup_host_nic  # noqa: E402
from azure_cni_sim.procs import ManagedProcess, stop_owned, wait_for  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "chaos.json"
SUBNET = "198.18.0.0/24"
#: where the VMs whose managed identities the operator's replicas use sit
OPERATOR_SUBNET = "198.18.1.0/24"
#: pools that move: batches of 8, 8..16 free, released 2 s after they became excess
POOL = {"batchSize": 8, "minFreeIPs": 8, "maxFreeIPs": 16, "maxIPs": 200,
        "releaseDelaySeconds": 2}
#: the production default is 30 s; 5 s lets twenty rounds of churn reuse addresses
COOLDOWN_SECONDS = 5
OPERATOR = {"driftCheckSeconds": 3, "usageDebounceSeconds": 0.3}
#: how long the runtime keeps retrying a pod's sandbox before it gives up on it
ADD_DEADLINE = 120.0
#: how long a round waits for the system to converge before counting what is left
SETTLE_SECONDS = 90.0
#: rounds per fault at --scale 1
ROUNDS = {"agent_kill": 20, "leader_kill": 20, "throttle_storm": 3, "server_error": 3,
          "lro_failed": 3, "ipconfig_failed": 3, "precondition_race": 3, "subnet_full": 2,
          "slow_lro": 3, "api_restart": 3, "watch_drop": 3, "churn": 1,
          "podnet_operator_kill": 6, "podnet_agent_kill": 6}
#: why each fault runs at the level it does
LEVELS = {
    "agent_kill": "agent + shim + real netns + API server (+ operator growing the pool): the "
                  "kill hits the agent between store, netlink and answer; kubelet adds nothing "
                  "but load",
    "leader_kill": "two operator replicas + ARM emulator + API server, with the agent "
                   "publishing real usage: the kill lands between ARM's commit and the status "
                   "write; the chart's Lease timings",
    "arm": "operator + ARM emulator (faults injected by the emulator on the node's NIC), pods "
           "through the agent so the pool must grow and shrink during the fault",
    "api": "kube-apiserver killed and restarted on the same etcd, or every connection to it "
           "cut: both the operator's and the agent's watches drop",
    "churn": "agent + shim + operator: 250 pods in waves of 50 on one node",
    "podnet": "operator + ARM emulator (public IPs and a load balancer tagged for the pods' "
              "namespace) + agent + shim: pods ask by annotation, passed by the runtime as "
              "containerd passes them; the kills land after ARM committed what an address "
              "carries",
}
#: invariants counted as soon as a round's workload is done, not only once it settled
AT_ONCE = ("duplicate", "unasked_feature")
#: the namespace of the campaign's pods, the only one the operator's policy lets ask
NAMESPACE = "chaos"
#: public IPs for pods (one pod each at a time) and a load balancer with two pools
PUBLIC_IPS = 16
POD_POOLS = ("web-a", "web-b")
#: the chart's Lease timings (the operator's defaults): a standby takes over a Lease not
#: renewed for this long
LEASE_SECONDS = OperatorSettings().lease_duration_seconds
#: the standby's first reconcile after the leader's kill -9, at the latest (issue 21)
TAKEOVER_BOUND = LEASE_SECONDS + 5
LEASE_PATH = ("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/"
              f"{OperatorSettings().lease_name}")
#: checked in every round beside the invariants
CAMPAIGN_CHECKS = ("nic_write_by_non_leader", "late_takeover")


def log(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", flush=True)


# -- the operator's replicas and their Lease ---------------------------------------------------


@dataclass
class Replica:
    """One pod of the operator's Deployment: a managed identity of its own (a VM's, so that
    ARM's request log names the writer), its own ports, settings and log."""

    name: str
    vm: VmInfo
    settings: dict[str, Any]
    process: ManagedProcess | None = None
    lives: list[Life] = field(default_factory=list)

    @property
    def life(self) -> Life:
        return self.lives[-1]


class LeaseLog:
    """The leader Lease's terms, polled from the API server: (acquired at, holder).

    Every holder keeps a term for the whole Lease duration at least, so a poll every 0.2 s
    sees every term.
    """

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.terms: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="lease-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def holder(self) -> str:
        return self.terms[-1][1] if self.terms else ""

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            try:
                status, body = self.cluster.get(LEASE_PATH)
            except OSError:
                continue  # the API server is down (api_restart): the Lease cannot change
            if status != 200:
                continue
            spec = json.loads(body).get("spec", {})
            holder, acquired = spec.get("holderIdentity") or "", spec.get("acquireTime")
            if not holder or not acquired:
                continue
            at = datetime.fromisoformat(acquired.replace("Z", "+00:00")).timestamp()
            if not self.terms or self.terms[-1] != (at, holder):
                self.terms.append((at, holder))


# -- the product on one simulated VM ---------------------------------------------------------


class Stack:
    """API server, ARM emulator, operator and one node's agent, as on a real node."""

    def __init__(self, workdir: Path, run_id: str) -> None:
        self.workdir = workdir
        self.run_id = run_id
        self.owner = uuid.uuid4().hex
        self.cluster = LocalCluster(workdir / "cluster", controller_manager=False,
                                    owner=self.owner)
        self.emulator = ArmEmulator(ArmConfig(lro_polls=1, put_retry_after=0))
        self.netns = f"azcni-c{run_id}-host"
        self.vm: VmInfo | None = None
        self.neighbour: VmInfo | None = None
        self.node: LocalNode | None = None
        self.replicas: list[Replica] = []
        self.lease = LeaseLog(self.cluster)
        #: armed: the NIC-change hook kills this replica (the leader when it was armed)
        self.kill_on_write: Replica | None = None
        self.operator_killed = threading.Event()
        #: armed: the network-policy hook kills this replica (the leader when it was armed),
        #: once a pod's public IP or pool membership changed in ARM
        self.kill_on_policy: Replica | None = None
        self.public_ips: list[str] = []
        self.backend_pools: list[str] = []

    def start(self) -> None:
        self.cluster.start()
        apply_crd(self.cluster.kubectl)
        self.emulator.start()
        vnet = self.emulator.add_vnet("chaos", "198.18.0.0/16",
                                      {"nodes": SUBNET, "operators": OPERATOR_SUBNET})
        self.vm = self.emulator.add_vm(f"chaos-{self.run_id}", vnet.subnet_ids["nodes"])
        self.neighbour = self.emulator.add_vm(f"tenant-{self.run_id}", vnet.subnet_ids["nodes"])
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.vm.name},
                "spec": {"providerID": self.vm.provider_id}}
        self.cluster.kubectl("create", "-f", "-", input=json.dumps(node))
        self.emulator.on_nic_change(self._on_nic_change)
        self.emulator.on_network_policy(self._on_policy_change)
        pod_networking = self.make_pod_networking()
        for name in ("operator-a", "operator-b"):
            vm = self.emulator.add_vm(f"{name}-{self.run_id}", vnet.subnet_ids["operators"])
            settings = operator_settings(self.emulator, pool=POOL, operator=OPERATOR)
            settings["podNetworking"] = pod_networking
            self.replicas.append(Replica(name, vm, settings))
        self.lease.start()
        for replica in self.replicas:
            self.start_replica(replica)
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        setup_host_nic(self.netns, primary_cidr=f"{self.vm.primary_ip}/24",
                       gateway="198.18.0.1")
        self.node = LocalNode(name=self.vm.name, netns=self.netns, workdir=self.workdir / "node",
                              kubeconfig=self.cluster.kubeconfig,
                              api_port=api_port_of(self.cluster.kubeconfig),
                              agent_settings={"cooldownSeconds": COOLDOWN_SECONDS})
        self.node.link_reference_plugins()
        self.node.start_portal()
        self.start_agent()

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
            stop_owned(self.node.owner)
        for replica in self.replicas:
            if replica.process is not None:
                replica.process.stop()
        self.lease.stop()
        self.emulator.stop()
        self.cluster.stop()
        subprocess.run(["ip", "netns", "del", self.netns], check=False, capture_output=True)

    # -- processes ---------------------------------------------------------------------------

    def start_replica(self, replica: Replica) -> None:
        """Start the replica's process (again), as its pod's container; it stands by until it
        wins the Lease."""
        pod = f"{replica.name}-{len(replica.lives)}"
        # its life begins before the process does: it may win the Lease and write before
        # start_operator has seen it healthy
        replica.lives.append(Life(pod, f"vm/{replica.vm.name}", time.time()))
        replica.process = start_operator(self.workdir / pod, self.cluster.kubeconfig,
                                         self.emulator, replica.settings, owner=self.owner,
                                         identity_vm=replica.vm.name, pod_name=pod)

    def life_of(self, holder: str) -> Life | None:
        """The process that named itself ``holder`` in the Lease (pod name and a suffix)."""
        return next((life for r in self.replicas for life in r.lives
                     if holder.startswith(f"{life.pod}_")), None)

    def leader(self, timeout: float = TAKEOVER_BOUND + 30) -> Replica:
        """The replica whose running process holds the Lease (waits for one)."""
        def running_holder() -> Replica | None:
            life = self.life_of(self.lease.holder())
            return next((r for r in self.replicas if r.lives and r.life is life
                         and life.ended is None), None)

        wait_for("a running operator replica holding the Lease",
                 lambda: running_holder() is not None, timeout, interval=0.2)
        leader = running_holder()
        assert leader is not None
        return leader

    def writes_by_non_leaders(self, since: float, until: float) -> list[str]:
        """Writes of the node's NIC in [since, until) that did not come from the process
        holding the Lease at that moment."""
        assert self.vm is not None
        # a write is its writer's when it was sent: a writer killed while ARM answered (the
        # network-policy hook runs before the answer) still wrote while it led
        writes = [Write(r.received, r.principal)
                  for r in self.emulator.requests("PUT", self.vm.nic_id)
                  if since <= r.received < until]
        return writes_by_non_leaders(writes, list(self.lease.terms),
                                     [life for r in self.replicas for life in r.lives])

    def start_agent(self) -> None:
        assert self.node is not None
        self.node.start_agent()
        self.node.wait_ready(120)

    def kill_agent(self) -> None:
        assert self.node is not None
        self.node.stop_agent(kill=True)

    def _on_nic_change(self, nic_id: str, vm_id: str, old: tuple[str, ...],
                       new: tuple[str, ...]) -> None:
        """Runs on the emulator's loop after ARM committed a NIC write, before the operator's
        last poll is answered: the operator cannot have recorded it yet."""
        assert self.vm is not None
        target = self.kill_on_write
        if nic_id.lower() != self.vm.nic_id.lower() or target is None:
            return
        self.kill_on_write = None
        self._kill(target)

    def _kill(self, target: Replica) -> None:
        """kill -9 of the replica's process, noting when its life ended."""
        assert target.process is not None
        os.kill(target.process.pid, signal.SIGKILL)
        target.lives[-1] = dataclasses.replace(target.life, ended=time.time())
        self.operator_killed.set()

    # -- per-pod public IPs and backend pools --------------------------------------------------

    def make_pod_networking(self) -> dict[str, Any]:
        """Public IPs and a Standard load balancer (a frontend and a rule per pool, so that
        the SDN balances to the pool's members) for the pods, tagged for their namespace, in
        a resource group of their own; the operator's ``podNetworking`` settings for them."""
        self.emulator.add_resource_group("pips")
        tag = {NAMESPACES_TAG: NAMESPACE}
        with self.emulator.network_client() as client:
            create = client.public_ip_addresses.begin_create_or_update
            self.public_ips = [str(create("pips", f"pod-ip-{i:02d}", {
                "location": "eastus", "sku": {"name": "Standard"}, "tags": tag}).result().id)
                for i in range(PUBLIC_IPS)]
            front = create("pips", "lb-front", {"location": "eastus",
                                                "sku": {"name": "Standard"}}).result()
            lb_id = front.id.replace("publicIPAddresses/lb-front", "loadBalancers/chaos-lb")
            lb = client.load_balancers.begin_create_or_update("pips", "chaos-lb", {
                "location": "eastus", "sku": {"name": "Standard"}, "tags": tag, "properties": {
                    "frontendIPConfigurations": [{"name": "fe", "properties": {
                        "publicIPAddress": {"id": front.id}}}],
                    "backendAddressPools": [{"name": p} for p in POD_POOLS],
                    "loadBalancingRules": [{"name": p, "properties": {
                        "frontendIPConfiguration": {"id": f"{lb_id}/frontendIPConfigurations/fe"},
                        "backendAddressPool": {"id": f"{lb_id}/backendAddressPools/{p}"},
                        "protocol": "Tcp", "frontendPort": 80 + i, "backendPort": 8080}}
                        for i, p in enumerate(POD_POOLS)]}}).result()
            self.backend_pools = [str(p.id) for p in lb.backend_address_pools]
        return {"resourceGroups": ["pips"], "publicIPNamespaces": [NAMESPACE],
                "loadBalancerNamespaces": [NAMESPACE]}

    def _on_policy_change(self, policy: object) -> None:
        """Runs on the emulator's loop once ARM committed a change of what the SDN enforces (a
        public IP's NAT, a pool's members), before the request that made it is answered: the
        operator that wrote it cannot have recorded it."""
        target, self.kill_on_policy = self.kill_on_policy, None
        if target is not None:
            self._kill(target)

    # -- what the invariants look at ---------------------------------------------------------

    def pool(self) -> NodeIPPool:
        assert self.vm is not None
        out = self.cluster.kubectl("get", "nodeippool", self.vm.name, "-o", "json")
        return NodeIPPool.from_object(json.loads(out.stdout))

    def records(self) -> list[Record]:
        assert self.node is not None
        return [Record(self.node.name, a["containerID"], a["address"])
                for a in self.node.agent_status()["assignments"]]

    def subnet_free(self) -> int:
        assert self.vm is not None
        with self.emulator.state_lock:
            return self.emulator.state.subnets[self.vm.subnet_id.lower()].free_count()

    def observe(self, runtime: Runtime) -> Observation:
        assert self.vm is not None and self.node is not None
        pods = [Pod(self.node.name, p.container, interface_address(p.netns), p.asked)
                for p in runtime.running()]
        return Observation(pods=pods, records=self.records(), pools=[self.pool()],
                           nics=[nic_view(self.vm.name, self.emulator.nic(self.vm.nic_id))],
                           subnet_free=self.subnet_free(),
                           gave_up=[(self.node.name, c) for c in runtime.gave_up])

    # -- another tenant in the subnet --------------------------------------------------------

    def fill_subnet(self, leave_free: int = 0) -> None:
        """The neighbouring VM's NIC takes every free address of the subnet but ``leave_free``."""
        assert self.neighbour is not None
        self._write_neighbour(max(0, self.subnet_free() - leave_free) + self._neighbour_count())

    def empty_subnet(self) -> None:
        self._write_neighbour(0)

    def _neighbour_count(self) -> int:
        assert self.neighbour is not None
        return len(self.emulator.nic_addresses(self.neighbour.nic_id)) - 1

    def _write_neighbour(self, secondaries: int) -> None:
        assert self.neighbour is not None
        nic = self.emulator.nic(self.neighbour.nic_id)
        configs = [c for c in nic["properties"]["ipConfigurations"]
                   if c["properties"].get("primary")]
        kept = [c for c in nic["properties"]["ipConfigurations"]
                if not c["properties"].get("primary")][:secondaries]
        fresh = [{"name": f"tenant-{uuid.uuid4().hex[:8]}",
                  "properties": {"subnet": {"id": self.neighbour.subnet_id},
                                 "privateIPAllocationMethod": "Dynamic"}}
                 for _ in range(secondaries - len(kept))]
        nic["properties"]["ipConfigurations"] = configs + kept + fresh
        version = self.emulator.config.network_api_versions[0]
        tls = ssl.create_default_context(cafile=str(self.emulator.ca_path))
        token = self.emulator.issue_token("another-tenant")

        def call(method: str, url: str, body: Any = None) -> tuple[dict[str, str], Any]:
            request = urllib.request.Request(url, method=method, headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            if body is not None:
                request.data = json.dumps(body).encode()
            with urllib.request.urlopen(request, context=tls, timeout=30) as response:
                return dict(response.headers), json.loads(response.read() or b"{}")

        base = self.emulator.arm_url.rstrip("/")
        headers, _ = call("PUT", f"{base}{self.neighbour.nic_id}?api-version={version}", nic)
        operation = headers["Azure-AsyncOperation"]

        def done() -> bool:
            return call("GET", operation)[1].get("status") != "InProgress"

        wait_for("the other tenant's NIC write", done, 60, interval=0.2)


# -- the runtime's side ----------------------------------------------------------------------


@dataclass
class PodSandbox:
    name: str
    netns: str
    container: str = ""
    #: the pod's annotations, passed to the plugin as containerd passes them
    annotations: dict[str, str] = field(default_factory=dict)
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def asked(self) -> tuple[str, ...]:
        """The public IP and backend pools the pod asks for."""
        pools = self.annotations.get(BACKEND_POOLS_ANNOTATION, "")
        return tuple(r for r in (self.annotations.get(PUBLIC_IP_ANNOTATION, ""),
                                 *pools.split(",")) if r)


@dataclass
class Runtime:
    """What kubelet and containerd do with pods on the node, through the installed shim."""

    node: LocalNode
    run_id: str
    deadline: float = ADD_DEADLINE
    pods: dict[str, PodSandbox] = field(default_factory=dict)
    gave_up: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _serial: int = 0

    def running(self) -> list[PodSandbox]:
        with self._lock:
            return [p for p in self.pods.values() if p.container]

    def shim(self, command: str, pod: PodSandbox) -> tuple[bool, str]:
        config = self.config
        if pod.annotations:
            config["runtimeConfig"] = {POD_ANNOTATIONS_CAPABILITY: pod.annotations}
        result = self.node.run_shim(
            command, pod.container, pod.netns, config=config,
            cni_args=(f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NAMESPACE};K8S_POD_NAME={pod.name};"
                      f"K8S_POD_UID={pod.uid}"),
            timeout=120)
        with self._lock:
            self.calls += 1
        if result.returncode == 0:
            return True, ""
        try:
            message = str(json.loads(result.stdout).get("msg", result.stdout))
        except ValueError:
            message = (result.stdout or result.stderr).strip()[:200]
        return False, message

    @property
    def config(self) -> dict[str, Any]:
        return self.node.plugin_config()

    def _new_name(self) -> str:
        with self._lock:
            self._serial += 1
            return f"p{self._serial:05d}"

    def add(self, annotations: dict[str, str] | None = None) -> None:
        """Create one pod: ADD until it succeeds, a DEL after every failed try (kubelet tears
        the failed sandbox down and makes a new one), giving up after ``deadline``."""
        name = self._new_name()
        pod = PodSandbox(name, f"azcni-c{self.run_id}-{name}", annotations=annotations or {})
        subprocess.run(["ip", "netns", "add", pod.netns], check=True)
        subprocess.run(["ip", "-n", pod.netns, "link", "set", "lo", "up"], check=True)
        with self._lock:
            self.pods[name] = pod
        give_up = time.monotonic() + self.deadline
        while True:
            container = uuid.uuid4().hex
            pod.container = ""
            candidate = PodSandbox(name, pod.netns, container, pod.annotations, pod.uid)
            ok, message = self.shim("ADD", candidate)
            if ok:
                with self._lock:
                    pod.container = container
                return
            self._count(message)
            self._delete_sandbox(candidate)
            if time.monotonic() >= give_up:
                with self._lock:
                    self.gave_up.append(container)
                    del self.pods[name]
                self._remove_netns(pod.netns)
                return
            time.sleep(0.5)  # kubelet's back-off between sandbox attempts, shortened

    def delete(self, name: str) -> None:
        with self._lock:
            pod = self.pods.pop(name)
        self._delete_sandbox(pod)
        self._remove_netns(pod.netns)

    def _delete_sandbox(self, pod: PodSandbox) -> None:
        """DEL until it succeeds (a down agent spools it and answers success)."""
        give_up = time.monotonic() + self.deadline
        while True:
            ok, message = self.shim("DEL", pod)
            if ok:
                return
            self._count("DEL: " + message)
            if time.monotonic() >= give_up:
                return
            time.sleep(0.5)

    def _count(self, message: str) -> None:
        kind = message.split(":", maxsplit=1)[0][:80] if message else "no message"
        with self._lock:
            self.errors[kind] += 1

    @staticmethod
    def _remove_netns(netns: str) -> None:
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self.pods)

    def cleanup(self) -> None:
        for pod in list(self.pods.values()):
            self._remove_netns(pod.netns)
        self.pods.clear()


def in_parallel(jobs: Iterable[Callable[[], None]], workers: int = 32) -> None:
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()


# -- one round -------------------------------------------------------------------------------


@dataclass
class FaultTally:
    rounds: int = 0
    exercised: int = 0
    seconds: float = 0.0
    violations: Counter[str] = field(default_factory=lambda: Counter(
        dict.fromkeys((*INVARIANTS, *CAMPAIGN_CHECKS), 0)))
    evidence: Counter[str] = field(default_factory=Counter)
    #: CNI errors the runtime retried (transient, like an ADD while the agent restarts)
    cni_errors: Counter[str] = field(default_factory=Counter)


class Campaign:
    def __init__(self, stack: Stack, seed: int) -> None:
        assert stack.node is not None
        self.stack = stack
        self.rng = random.Random(seed)
        self.runtime = Runtime(stack.node, stack.run_id)
        self.tallies: dict[str, FaultTally] = {}
        self.examples: list[str] = []
        self._asked = 0
        self._pip_used: dict[str, float] = {}
        #: seconds from each leader kill to the standby's first reconcile
        self.takeovers: list[float] = []

    def settle_and_check(self, immediate: Callable[[Findings], None] | None = None) -> Findings:
        """Wait (bounded) for every invariant to hold; the findings left when it ends."""
        deadline = time.monotonic() + SETTLE_SECONDS
        findings = Findings()
        first = True
        while True:
            try:
                findings = check(self.stack.observe(self.runtime))
            except (AgentDown, subprocess.CalledProcessError) as e:
                findings = Findings()
                findings.add("unsettled", f"could not observe: {e}")
            if first and immediate is not None:
                immediate(findings)
                first = False
            if findings.clean or time.monotonic() >= deadline:
                return findings
            time.sleep(0.5)

    def between_faults(self, fault: str) -> None:
        """Delete every pod and let the pool shrink back, so the next fault starts from a pool
        at rest; what is found then is counted for the fault before."""
        self.shrink()
        self.count(fault, "after its last round", self.settle_and_check())

    def count(self, fault: str, when: str, findings: Findings) -> None:
        """Add what a check found to the fault's violations, with a few examples."""
        self.tallies[fault].violations.update({k: v for k, v in findings.counts().items() if v})
        for name, found in findings.by_invariant.items():
            self.examples.extend(f"{fault} {when}: {name}: {f}" for f in found[:3])

    def round(self, fault: str, body: Callable[[], bool]) -> None:
        tally = self.tallies.setdefault(fault, FaultTally())
        started = time.monotonic()
        since = time.time()
        self.runtime.gave_up.clear()
        seen_at_once: dict[str, list[str]] = {}
        errors_before = Counter(self.runtime.errors)
        exercised = body()

        def at_once(findings: Findings) -> None:
            for name in AT_ONCE:
                seen_at_once[name] = list(findings.by_invariant[name])

        findings = self.settle_and_check(at_once)
        counts = findings.counts()
        # a duplicate, or an address in use carrying what its pod did not ask for, counts if
        # seen at once, even if it went away while the system settled
        for name in AT_ONCE:
            at_first = [f for f in seen_at_once.get(name, []) if name != "unasked_feature"
                        or "did not ask" in f]
            counts[name] = max(counts[name], len(at_first))
            self.examples.extend(f"{fault} round {tally.rounds + 1} at once: {name}: {f}"
                                 for f in at_first[:3])
        not_leaders = self.stack.writes_by_non_leaders(since, time.time())
        counts["nic_write_by_non_leader"] = len(not_leaders)
        self.examples.extend(f"{fault} round {tally.rounds + 1}: {w}" for w in not_leaders[:3])
        tally.rounds += 1
        tally.exercised += int(exercised)
        tally.seconds += time.monotonic() - started
        tally.violations.update(counts)
        tally.cni_errors.update(self.runtime.errors - errors_before)
        for name, found in findings.by_invariant.items():
            self.examples.extend(f"{fault} round {tally.rounds}: {name}: {f}"
                                 for f in found[:3])
        bad = {k: v for k, v in counts.items() if v}
        log(f"{fault} round {tally.rounds}: {time.monotonic() - started:.1f}s, "
            f"{len(self.runtime.running())} pods, exercised={exercised}"
            + (f", VIOLATIONS {bad}" if bad else ""))

    # -- workloads ---------------------------------------------------------------------------

    def grow(self, count: int) -> None:
        in_parallel([self.runtime.add] * count)

    def shrink(self, count: int | None = None) -> None:
        names = self.runtime.names()
        doomed = names if count is None else self.rng.sample(names, min(count, len(names)))
        in_parallel([lambda n=n: self.runtime.delete(n) for n in doomed])

    def grow_or_shrink(self, index: int, count: int = 24) -> None:
        if index % 2 == 0:
            self.grow(count)
        else:
            self.shrink()

    # -- faults ------------------------------------------------------------------------------

    def agent_kill(self, index: int) -> bool:
        """100 CNI calls at once (50 DELs of earlier pods, the rest ADDs), the agent killed -9
        somewhere among them and started again at once."""
        names = self.runtime.names()
        doomed = self.rng.sample(names, min(50, len(names)))
        jobs: list[Callable[[], None]] = [self.runtime.add] * (100 - len(doomed))
        self._with_agent_killed(jobs + [lambda n=n: self.runtime.delete(n) for n in doomed])
        self.tallies["agent_kill"].evidence["agent_killed_during_calls"] += 1
        return True

    def _with_agent_killed(self, jobs: list[Callable[[], None]]) -> None:
        """Run ``jobs`` (CNI calls) at once in random order; kill -9 the agent after a random
        number of them was answered, and start it again at once."""
        self.rng.shuffle(jobs)
        calls_before = self.runtime.calls
        kill_after = self.rng.randint(5, max(6, len(jobs) * 3 // 5))

        def killer() -> None:
            wait_for("CNI calls before the kill",
                     lambda: self.runtime.calls - calls_before >= kill_after, 120,
                     interval=0.01)
            self.stack.kill_agent()
            self.stack.start_agent()

        thread = threading.Thread(target=killer)
        thread.start()
        in_parallel(jobs, workers=len(jobs))
        thread.join()

    def leader_kill(self, index: int) -> bool:
        """The leading replica killed -9 right after ARM committed its NIC write; the standby
        must take over and finish the work. The killed container starts again afterwards."""
        stack = self.stack
        assert stack.vm is not None
        leader = stack.leader()
        standby = next(r for r in stack.replicas if r is not leader)
        stack.operator_killed.clear()
        stack.kill_on_write = leader
        worker = threading.Thread(target=self.grow_or_shrink, args=(index,))
        worker.start()
        try:
            wait_for("a NIC write to kill the leader on", stack.operator_killed.is_set,
                     120, interval=0.05)
        except TimeoutError:
            stack.kill_on_write = None
            worker.join()
            return False
        assert leader.process is not None and leader.process.popen is not None
        leader.process.popen.wait(10)
        killed = leader.life.ended
        assert killed is not None
        tally = self.tallies["leader_kill"]

        def first_reconcile() -> float | None:
            """The standby's first ARM request after the kill: it stands by without one, and
            the pool's reconcile reads the NIC (or the NICs' list) before anything else."""
            after = [r.at for r in stack.emulator.requests()
                     if r.at > killed and r.principal == standby.life.principal]
            return min(after) if after else None

        with contextlib.suppress(TimeoutError):  # counted as late below
            wait_for("the standby's first request to ARM", lambda: first_reconcile()
                     is not None, TAKEOVER_BOUND + 60, interval=0.2)
        first = first_reconcile()
        took = (first - killed) if first is not None else float("inf")
        self.takeovers.append(took)
        if took > TAKEOVER_BOUND:
            tally.violations["late_takeover"] += 1
            self.examples.append(f"leader_kill round {tally.rounds + 1}: the standby's first "
                                 f"reconcile {took:.1f}s after the kill")
        stack.start_replica(leader)
        worker.join()
        tally.evidence["killed_after_arm_committed"] += 1
        return True

    def arm_fault(self, fault: str, index: int) -> bool:
        stack, emu = self.stack, self.stack.emulator
        assert stack.vm is not None
        nic = stack.vm.nic_id
        since = time.time()
        failed_before = self._failed_operations()
        if fault == "throttle_storm":
            emu.inject_fault("*", f"{nic}*", 429, "SubscriptionRequestsThrottled",
                             message="Number of requests for subscription exceeded.",
                             headers={"Retry-After": str(self.rng.randint(1, 3))},
                             count=self.rng.randint(3, 8))
        elif fault == "server_error":
            status = self.rng.choice([500, 503])
            emu.inject_fault(self.rng.choice(["PUT", "*"]), f"{nic}*", status,
                             "InternalServerError" if status == 500 else "ServiceUnavailable",
                             count=self.rng.randint(2, 4))
        elif fault == "lro_failed":
            emu.fail_next_operation(nic, "InternalServerError",
                                    "An error occurred while updating the NIC.")
        elif fault == "ipconfig_failed":
            ours = [n for n in nic_view(stack.vm.name, emu.nic(nic)).ipconfigs]
            emu.fail_ipconfig(nic, self.rng.choice(sorted(ours)))
        elif fault == "precondition_race":
            emu.race_next_reads(nic, self.rng.randint(1, 3))
        elif fault == "slow_lro":
            emu.configure(lro_polls=self.rng.randint(5, 15), poll_retry_after=0.5)
            emu.set_latency("PUT", 1.0)
        if fault == "subnet_full":
            return self.subnet_full(index)
        try:
            self.grow_or_shrink(index)
            # with the fault still armed: a release's write comes only after cooldown and delay
            self.settle_and_check()
        finally:
            emu.clear_faults()
            if fault == "slow_lro":
                emu.configure(lro_polls=1, poll_retry_after=None)
                emu.set_latency("PUT", 0.0)
        statuses = Counter(r.status for r in emu.requests(path=f"{nic}*") if r.at >= since)
        evidence = {"throttle_storm": statuses[429],
                    "server_error": statuses[500] + statuses[503],
                    "lro_failed": self._failed_operations() - failed_before,
                    "ipconfig_failed": self._puts_since(since),
                    "precondition_race": statuses[412],
                    "slow_lro": self._puts_since(since)}[fault]
        self.tallies.setdefault(fault, FaultTally()).evidence[fault] += evidence
        return evidence > 0

    def subnet_full(self, index: int) -> bool:
        """Another tenant takes the subnet's last addresses; pods come and go meanwhile: the
        released ones must leave the NIC, the new ones cannot be served."""
        stack = self.stack
        assert stack.vm is not None
        since = time.time()
        if not self.runtime.names():
            self.grow(24)
        stack.fill_subnet()
        self.runtime.deadline = 20.0
        try:
            worker = threading.Thread(target=self.grow, args=(16,))
            worker.start()
            self.shrink(len(self.runtime.names()) // 2)
            worker.join()
            findings = self.settle_and_check()  # while the subnet is full
        finally:
            self.runtime.deadline = ADD_DEADLINE
            stack.empty_subnet()
        statuses = Counter(r.status for r in stack.emulator.requests(path=f"{stack.vm.nic_id}*")
                           if r.at >= since)
        tally = self.tallies.setdefault("subnet_full", FaultTally())
        tally.evidence["subnet_is_full"] += statuses[400]
        tally.evidence["pods_given_up_without_room"] += len(self.runtime.gave_up)
        self.count("subnet_full", "while full", findings)
        self.runtime.gave_up.clear()
        return statuses[400] > 0

    def api_restart(self, index: int) -> bool:
        worker = threading.Thread(target=self.grow_or_shrink, args=(index, 16))
        worker.start()
        time.sleep(self.rng.uniform(0.2, 1.5))  # somewhere inside the workload
        self.stack.cluster.kill_api_server()
        time.sleep(self.rng.uniform(2, 5))  # the outage itself
        self.stack.cluster.start_api_server()
        worker.join()
        self.tallies["api_restart"].evidence["api_server_killed"] += 1
        return True

    def watch_drop(self, index: int) -> bool:
        port = api_port_of(self.stack.cluster.kubeconfig)
        cut = 0
        for side in ("dport", "sport"):
            out = subprocess.run(["ss", "-K", "-t", "-n", side, "=", f":{port}"],
                                 capture_output=True, text=True, check=True)
            cut += max(0, len(out.stdout.splitlines()) - 1)
        self.grow_or_shrink(index, 16)
        self.tallies.setdefault("watch_drop", FaultTally()).evidence["connections_cut"] += cut
        return cut > 0

    def churn(self, index: int) -> bool:
        """250 pods in waves of 50: each wave starts while the previous one is deleted."""
        self.shrink()
        previous: list[str] = []
        for _ in range(5):
            before = set(self.runtime.names())
            deleting = threading.Thread(target=lambda p=previous: in_parallel(
                [lambda n=n: self.runtime.delete(n) for n in p]))
            deleting.start()
            self.grow(50)
            deleting.join()
            previous = sorted(set(self.runtime.names()) - before)
        in_parallel([lambda n=n: self.runtime.delete(n) for n in previous])
        self.tallies["churn"].evidence["pods_created_and_deleted"] += 250
        return True

    # -- per-pod public IPs and backend pools (issue 22) ------------------------------------------

    def asking(self) -> dict[str, str]:
        """The annotations of the next annotated pod: in turn a public IP of its own, a
        backend pool, or both. The public IP is the one used longest ago that no live pod
        asks for (a detach takes a NIC write: a public IP handed on at once would often be
        refused as still attached)."""
        self._asked += 1
        out = {}
        if self._asked % 3 != 1:
            taken = {p.annotations.get(PUBLIC_IP_ANNOTATION) for p in self.runtime.pods.values()}
            free = [p for p in self.stack.public_ips if p not in taken]
            if free:
                pip = min(free, key=lambda p: self._pip_used.get(p, 0.0))
                self._pip_used[pip] = time.monotonic()
                out[PUBLIC_IP_ANNOTATION] = pip
        if self._asked % 3 != 0:
            out[BACKEND_POOLS_ANNOTATION] = self.rng.choice(self.stack.backend_pools)
        return out

    def grow_asking(self, count: int) -> list[str]:
        """``count`` annotated pods at once; their names."""
        before = set(self.runtime.names())
        in_parallel([partial(self.runtime.add, self.asking()) for _ in range(count)])
        return sorted(set(self.runtime.names()) - before)

    def podnet_operator_kill(self, index: int) -> bool:
        """Annotated pods come (even rounds) or go (odd rounds); the leading replica is killed
        -9 as soon as ARM committed the NIC write that changed what their addresses carry. In
        even rounds the pods are then deleted while the standby still waits for the Lease
        (issue 22 row 2: nothing recorded what was attached), and unannotated pods take
        addresses afterwards."""
        stack, tally = self.stack, self.tallies["podnet_operator_kill"]
        coming = index % 2 == 0
        mine = [] if coming else self.grow_asking(6)
        if not coming:
            self.settle_and_check()
        leader = stack.leader()
        stack.operator_killed.clear()
        stack.kill_on_policy = leader
        if coming:
            mine = self.grow_asking(6)
        else:
            in_parallel([lambda n=n: self.runtime.delete(n) for n in mine])
        try:
            wait_for("a NIC write changing what a pod's address carries",
                     stack.operator_killed.is_set, 120, interval=0.05)
        except TimeoutError:
            stack.kill_on_policy = None
            return False
        assert leader.process is not None and leader.process.popen is not None
        leader.process.popen.wait(10)
        if coming:
            in_parallel([lambda n=n: self.runtime.delete(n) for n in mine if n in
                         self.runtime.pods])
            left = self._released_carrying()
            tally.evidence["addresses_released_while_carrying"] += left
        stack.start_replica(leader)
        self.grow(8)
        tally.evidence["killed_after_arm_committed_" + ("an_attach" if coming else "a_detach")] \
            += 1
        return True

    def podnet_agent_kill(self, index: int) -> bool:
        """40 CNI calls at once: annotated pods added, earlier ones deleted; the agent killed
        -9 somewhere among them."""
        names = self.runtime.names()
        doomed = self.rng.sample(names, min(20, len(names)))
        jobs: list[Callable[[], None]] = [partial(self.runtime.add, self.asking())
                                          for _ in range(40 - len(doomed))]
        self._with_agent_killed(jobs + [lambda n=n: self.runtime.delete(n) for n in doomed])
        tally = self.tallies["podnet_agent_kill"]
        tally.evidence["agent_killed_during_calls"] += 1
        tally.evidence["annotated_adds"] += 40 - len(doomed)
        return True

    def _released_carrying(self) -> int:
        """Addresses no live pod holds whose ipConfiguration carries a public IP or pool."""
        assert self.stack.vm is not None
        view = nic_view(self.stack.vm.name, self.stack.emulator.nic(self.stack.vm.nic_id))
        held = {interface_address(p.netns) for p in self.runtime.running()}
        return sum(1 for name in view.features if view.ipconfigs.get(name) not in held)

    def _failed_operations(self) -> int:
        emu = self.stack.emulator
        with emu.state_lock:
            return sum(1 for op in emu.state.operations.values() if op.status == "Failed")

    def _puts_since(self, since: float) -> int:
        """Accepted writes of the node's NIC since ``since``."""
        assert self.stack.vm is not None
        return sum(1 for r in self.stack.emulator.requests("PUT", self.stack.vm.nic_id)
                   if r.at >= since and r.status in (200, 201))


def run(workdir: Path, seed: int, scale: float, only: list[str]) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:5]
    stack = Stack(workdir, run_id)
    started = time.monotonic()
    campaign: Campaign | None = None
    try:
        stack.start()
        log(f"stack up in {time.monotonic() - started:.0f}s")
        campaign = Campaign(stack, seed)
        arm_faults = ["throttle_storm", "server_error", "lro_failed", "ipconfig_failed",
                      "precondition_race", "slow_lro", "subnet_full"]
        plan: list[tuple[str, Callable[[int], bool]]] = [
            ("agent_kill", campaign.agent_kill),
            ("leader_kill", campaign.leader_kill),
            *[(f, lambda i, f=f: campaign.arm_fault(f, i)) for f in arm_faults],  # type: ignore[misc]
            ("api_restart", campaign.api_restart),
            ("watch_drop", campaign.watch_drop),
            ("churn", campaign.churn),
            ("podnet_operator_kill", campaign.podnet_operator_kill),
            ("podnet_agent_kill", campaign.podnet_agent_kill),
        ]
        for fault, body in plan:
            if only and fault not in only:
                continue
            rounds = max(1, round(ROUNDS[fault] * scale))
            for index in range(rounds):
                campaign.round(fault, lambda b=body, i=index: b(i))
            campaign.between_faults(fault)
    finally:
        if campaign is not None:
            campaign.runtime.cleanup()
        stack.stop()
    wall = time.monotonic() - started
    assert campaign is not None
    return report(campaign, seed, scale, wall)


def report(campaign: Campaign, seed: int, scale: float, wall: float) -> dict[str, Any]:
    totals: Counter[str] = Counter(dict.fromkeys(INVARIANTS, 0))
    faults = {}
    for fault, tally in campaign.tallies.items():
        totals.update(tally.violations)
        faults[fault] = {"rounds": tally.rounds, "rounds_fault_happened": tally.exercised,
                         "violations": dict(tally.violations), "evidence": dict(tally.evidence),
                         "cni_errors_retried": dict(tally.cni_errors),
                         "seconds": round(tally.seconds, 1)}
    rounds = sum(t.rounds for t in campaign.tallies.values())
    not_happened = sum(t.rounds - t.exercised for t in campaign.tallies.values())
    return {
        "what": "azure-cni's invariants after every round of kills, ARM faults, API server "
                "trouble and churn, on one simulated VM: real operator, ARM emulator, API "
                "server, agent, shim and pod network namespaces (no kubelet)",
        "seed": seed,
        "scale": scale,
        "wall_seconds": round(wall, 1),
        "rounds_completed": rounds,
        "rounds_where_the_fault_did_not_happen": not_happened,
        "violations": dict(totals),
        "all_zero": not any(totals.values()) and not_happened == 0,
        "faults": faults,
        "cni_calls": campaign.runtime.calls,
        "leader_takeover_seconds": takeover_summary(campaign.takeovers),
        "examples": campaign.examples[:30],
        "settings": {"pool": POOL, "cooldownSeconds": COOLDOWN_SECONDS, "operator": OPERATOR,
                     "leaseDurationSeconds": LEASE_SECONDS,
                     "takeover_bound_seconds": TAKEOVER_BOUND,
                     "subnet": SUBNET, "add_deadline_seconds": ADD_DEADLINE,
                     "settle_seconds": SETTLE_SECONDS},
        "levels": LEVELS,
        "machine": {"cpus": os.cpu_count(), "load_average_after": [
            round(x, 2) for x in os.getloadavg()]},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def takeover_summary(takeovers: list[float]) -> dict[str, Any]:
    """Kill to the standby's first reconcile, over the leader_kill rounds."""
    done = sorted(t for t in takeovers if t != float("inf"))
    return {"rounds": len(takeovers), "never": len(takeovers) - len(done),
            "median": round(statistics.median(done), 2) if done else None,
            "max": round(done[-1], 2) if done else None,
            "bound": TAKEOVER_BOUND}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every fault's number of rounds")
    parser.add_argument("--only", action="append", default=[], choices=sorted(ROUNDS),
                        help="run only this fault (repeatable); results go to --out")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("chaos: needs root (network namespaces)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="azcni-chaos-") as tmp:
        result = run(Path(tmp), args.seed, args.scale, args.only)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("wall_seconds", "rounds_completed", "violations",
                                             "all_zero")}, indent=2))
    return 0 if result["all_zero"] else 1


if __name__ == "__main__":
    sys.exit(main())
