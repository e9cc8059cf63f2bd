"""The whole product on a simulated Azure: what ``make demo`` runs and the e2e tests use.

A real control plane (etcd, kube-apiserver, kube-controller-manager), the ARM emulator, a VNet
fabric of network namespaces programmed by the emulator's NIC-change hook, the real operator
against the emulator, and one real agent per VM inside the VM's namespace. One VM also runs a
real containerd whose pods are created with ``crictl runp``; the other VMs' pods are network
namespaces set up by executing the installed CNI plugin exactly as a runtime does.

Everything is torn down by ``stop()``: processes (found by an environment marker, children
included), network namespaces (and with them every route and iptables rule), mounts, state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from azure.core.credentials import AccessToken

from azure_cni.api.nodeippool import ConditionType, NodeIPPool
from azure_cni.api.settings import AzureSettings
from azure_cni.cloud.azure import AzureAdapter
from azure_cni_sim.arm import ArmConfig, ArmEmulator, VmInfo
from azure_cni_sim.cluster import LocalCluster
from azure_cni_sim.containerd import Containerd, build_pause_image
from azure_cni_sim.launch import operator_settings, start_operator
from azure_cni_sim.node import LocalNode, api_port_of, apply_crd
from azure_cni_sim.procs import ManagedProcess, stop_owned, wait_for
from azure_cni_sim.vnet import ONPREM_CIDR, Fabric, capture_packets

log = logging.getLogger(__name__)

VNET_SPACE = "198.18.0.0/16"
SUBNET = "198.18.0.0/22"
#: pools sized for a demo: batches of 4, 4..12 free, releases after 30 s
DEMO_POOL = {"batchSize": 4, "minFreeIPs": 4, "maxFreeIPs": 12, "maxIPs": 32,
             "releaseDelaySeconds": 30}


class WorldError(RuntimeError):
    """A part of the simulation did not come up; the message says which and why."""


@dataclass(frozen=True)
class Pod:
    name: str
    vm: str
    netns: str
    address: str
    container_id: str
    runtime: str  # "containerd" or "cni" (the plugin executed directly)


@dataclass
class World:
    """One simulated subscription with ``vm_count`` VMs; ``prefix`` names its namespaces."""

    workdir: Path
    vm_count: int = 3
    containerd_vms: int = 1
    prefix: str = field(default_factory=lambda: f"az{uuid.uuid4().hex[:4]}")
    owner: str = field(default_factory=lambda: f"world-{uuid.uuid4().hex[:10]}")
    pool_defaults: dict[str, Any] = field(default_factory=lambda: dict(DEMO_POOL))
    drift_check_seconds: float = 5.0
    cluster: LocalCluster | None = None
    emulator: ArmEmulator | None = None
    fabric: Fabric | None = None
    operator: ManagedProcess | None = None
    vms: dict[str, VmInfo] = field(default_factory=dict)
    nodes: dict[str, LocalNode] = field(default_factory=dict)
    runtimes: dict[str, Containerd] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)
    _unhook: Any = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, progress: Any = None) -> World:
        """Bring everything up; on any failure tear down what was started and raise."""
        say = progress or (lambda message: log.info("event=world_progress %s", message))
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            say("starting the control plane (etcd, kube-apiserver, kube-controller-manager)")
            self.cluster = LocalCluster(self.workdir / "cluster", owner=self.owner).start()
            apply_crd(self.cluster.kubectl)
            say("starting the ARM + IMDS emulator and the VNet fabric")
            self.emulator = ArmEmulator(ArmConfig(lro_polls=1, put_retry_after=0),
                                        state_dir=self.workdir / "arm").start()
            vnet = self.emulator.add_vnet("vnet", VNET_SPACE, {"nodes": SUBNET})
            self.fabric = Fabric(self.prefix, SUBNET, self.workdir / "fabric", self.owner
                                 ).create()
            self._unhook = self.emulator.on_nic_change(self._program_fabric)
            for i in range(self.vm_count):
                vm = self.emulator.add_vm(f"vm{i}", vnet.subnet_ids["nodes"])
                self.fabric.add_vm(vm)
                self.vms[vm.name] = vm
                self.cluster.kubectl("create", "-f", "-", input=json.dumps({
                    "apiVersion": "v1", "kind": "Node", "metadata": {"name": vm.name},
                    "spec": {"providerID": vm.provider_id}}))
            say(f"starting the operator and {self.vm_count} node agents")
            self._start_operator()
            for vm in self.vms.values():
                self._start_agent(vm)
            for node in self.nodes.values():
                node.wait_ready(timeout=120)
            if self.containerd_vms:
                say("starting containerd with a locally built pause image")
                image = build_pause_image(self.workdir / "pause")
                for vm_name in list(self.vms)[: self.containerd_vms]:
                    runtime = Containerd(self.workdir / "containerd" / vm_name,
                                         self.nodes[vm_name])
                    runtime.start(image)
                    self.runtimes[vm_name] = runtime
                    wait_for(f"containerd on {vm_name} to load the azure-cni conflist",
                             runtime.network_ready, 60)
        except BaseException as e:
            self.stop()
            if isinstance(e, Exception) and not isinstance(e, WorldError):
                raise WorldError(f"the simulation did not come up: {e}") from e
            raise
        return self

    def stop(self) -> None:
        """Tear everything down, whatever state it is in."""
        for pod in list(self.pods.values()):
            with contextlib.suppress(Exception):
                self.delete_pod(pod.name)
        for runtime in self.runtimes.values():
            with contextlib.suppress(Exception):
                runtime.stop()
        self.runtimes.clear()
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.stop()
        if self.operator is not None:
            self.operator.stop()
        if self._unhook is not None:
            self._unhook()
        if self.emulator is not None:
            with contextlib.suppress(Exception):
                self.emulator.stop()
        if self.fabric is not None:
            self.fabric.destroy()
        if self.cluster is not None:
            self.cluster.stop()
        stop_owned(self.owner)
        for leftover in namespaces_with_prefix(self.prefix):
            subprocess.run(["ip", "netns", "del", leftover], capture_output=True, check=False)

    def __enter__(self) -> World:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _program_fabric(self, nic_id: str, vm_id: str, old: tuple[str, ...],
                        new: tuple[str, ...]) -> Any:
        assert self.fabric is not None
        fabric = self.fabric
        # the hook runs on the emulator's loop: reprogram off it, but before ARM answers
        return asyncio.to_thread(fabric.on_nic_change, nic_id, vm_id, old, new)

    def _start_operator(self) -> None:
        assert self.cluster is not None and self.emulator is not None
        settings = operator_settings(
            self.emulator, pool=self.pool_defaults,
            operator={"driftCheckSeconds": self.drift_check_seconds,
                      "usageDebounceSeconds": 0.5})
        first = next(iter(self.vms.values()))
        self.operator = start_operator(self.workdir / "operator", self.cluster.kubeconfig,
                                       self.emulator, settings, owner=self.owner,
                                       identity_vm=first.name)

    def _start_agent(self, vm: VmInfo) -> None:
        assert self.cluster is not None and self.fabric is not None
        node = LocalNode(name=vm.name, netns=self.fabric.vms[vm.name].netns,
                         workdir=self.workdir / "nodes" / vm.name,
                         kubeconfig=self.cluster.kubeconfig,
                         api_port=api_port_of(self.cluster.kubeconfig), owner=self.owner,
                         snat_settings={"nonMasqueradeCIDRs": [ONPREM_CIDR]})
        node.link_reference_plugins()
        node.start_portal()
        node.start_agent()
        self.nodes[vm.name] = node

    # -- pods ------------------------------------------------------------------------------

    def run_pod(self, vm: str, name: str) -> Pod:
        """A pod on ``vm``: through containerd if the VM runs one, else by the CNI plugin."""
        if name in self.pods:
            raise WorldError(f"pod {name} exists already")
        runtime = self.runtimes.get(vm)
        pod = self._containerd_pod(runtime, vm, name) if runtime else self._cni_pod(vm, name)
        self.pods[name] = pod
        return pod

    def _cni_pod(self, vm: str, name: str) -> Pod:
        node = self.nodes[vm]
        netns = f"{self.prefix}-{vm}-{name}"
        subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
        container_id = uuid.uuid4().hex
        result = node.run_shim("ADD", container_id, netns,
                               cni_args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}")
        if result.returncode != 0:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
            raise WorldError(f"CNI ADD for pod {name} on {vm} failed: {result.stdout.strip()} "
                             f"{result.stderr.strip()}")
        return Pod(name, vm, f"/run/netns/{netns}", result.address(), container_id, "cni")

    def _containerd_pod(self, runtime: Containerd, vm: str, name: str) -> Pod:
        config = runtime.workdir / f"pod-{name}.json"
        config.write_text(json.dumps({
            "metadata": {"name": name, "namespace": "default", "uid": uuid.uuid4().hex,
                         "attempt": 1},
            "hostname": name, "log_directory": str(runtime.workdir / "pod-logs" / name),
            "linux": {"cgroup_parent": f"/{runtime.cgroup_parent}"},
        }))
        sandbox = runtime.crictl("runp", str(config)).stdout.strip()
        inspected = json.loads(runtime.crictl("inspectp", sandbox).stdout)
        (netns,) = [n["path"] for n in inspected["info"]["runtimeSpec"]["linux"]["namespaces"]
                    if n["type"] == "network"]
        return Pod(name, vm, netns, inspected["status"]["network"]["ip"], sandbox,
                   "containerd")

    def delete_pod(self, name: str) -> None:
        pod = self.pods.pop(name)
        if pod.runtime == "containerd":
            runtime = self.runtimes[pod.vm]
            runtime.crictl("stopp", pod.container_id, check=False)
            runtime.crictl("rmp", pod.container_id, check=False)
            return
        node = self.nodes[pod.vm]
        node.run_shim("DEL", pod.container_id, pod.netns)
        subprocess.run(["ip", "netns", "del", Path(pod.netns).name], capture_output=True,
                       check=False)

    def in_pod(self, pod: Pod, *argv: str, timeout: float = 20
               ) -> subprocess.CompletedProcess[str]:
        """Run a command in the pod's network namespace."""
        return subprocess.run(["nsenter", f"--net={pod.netns}", *argv], capture_output=True,
                              text=True, check=False, timeout=timeout)

    def ping(self, pod: Pod, address: str, count: int = 1) -> bool:
        return self.in_pod(pod, "ping", "-c", str(count), "-W", "2", address).returncode == 0

    def http_get(self, pod: Pod, url: str, timeout: float = 3) -> dict[str, Any] | None:
        """GET ``url`` from the pod; the echo servers answer with the address they saw."""
        out = self.in_pod(pod, "curl", "-s", "-m", str(timeout), url, timeout=timeout + 5)
        if out.returncode != 0 or not out.stdout.strip():
            return None
        answer: dict[str, Any] = json.loads(out.stdout)
        return answer

    def capture_on_fabric(self, vm: str, bpf: str, action: Any, packets: int = 2,
                          timeout: float = 10) -> list[str]:
        """Run ``action()`` while tcpdump watches the VM's link in the fabric; return the
        packets seen (one line each, addresses numeric)."""
        assert self.fabric is not None
        return capture_packets(self.fabric.fabric_ns, self.fabric.vms[vm].fabric_if, bpf,
                               action, packets=packets, timeout=timeout)

    # -- Azure, as an admin in the portal would touch it -----------------------------------

    def remove_ipconfig(self, vm: str, address: str) -> str:
        """Remove the ipConfiguration holding ``address`` from the VM's NIC, behind the
        operator's back (through ARM, as an admin would). Returns its name."""
        assert self.emulator is not None
        nic = self.emulator.nic(self.vms[vm].nic_id)
        (name,) = [str(c["name"]) for c in nic["properties"]["ipConfigurations"]
                   if c["properties"].get("privateIPAddress") == address]

        async def remove() -> None:
            async with self.azure_admin() as adapter:
                await adapter.update_ip_configurations(self.vms[vm].nic_id, remove=[name])

        asyncio.run(remove())
        return name

    @contextlib.asynccontextmanager
    async def azure_admin(self) -> Any:
        """An adapter with an admin's own token (not the operator's identity)."""
        assert self.emulator is not None
        token = self.emulator.issue_token("portal-admin")

        class AdminToken:
            async def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
                return AccessToken(token, int(time.time()) + 3600)

            async def close(self) -> None:
                return None

        adapter = AzureAdapter(AzureSettings(arm_endpoint=self.emulator.arm_url,
                                             ca_bundle=str(self.emulator.ca_path),
                                             polling_interval=0.1),
                               credential=AdminToken())  # type: ignore[arg-type]
        try:
            yield adapter
        finally:
            await adapter.close()

    def nic_addresses(self, vm: str) -> tuple[str, ...]:
        assert self.emulator is not None
        return self.emulator.nic_addresses(self.vms[vm].nic_id)

    # -- Kubernetes ------------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.cluster is not None
        return self.cluster.kubectl(*args, check=check)

    def pool(self, vm: str) -> NodeIPPool:
        return NodeIPPool.from_object(json.loads(
            self.kubectl("get", "nodeippool", vm, "-o", "json").stdout))

    def wait_pools_settled(self, timeout: float = 60) -> None:
        """Wait until every pool reports its pods as used and holds its warm pool again."""
        counts = {vm: sum(p.vm == vm for p in self.pods.values()) for vm in self.vms}
        min_free = int(self.pool_defaults.get("minFreeIPs", 0))

        def settled() -> bool:
            for vm, used in counts.items():
                pool = self.pool(vm)
                free = sum(ip.state == "Available" for ip in pool.status.ips) - used
                if pool.status.used != used or free < min_free:
                    return False
            return True

        wait_for("every pool to count its pods and refill its warm pool", settled, timeout,
                 interval=0.5)

    def wait_pools_ready(self, timeout: float = 120) -> None:
        def all_ready() -> bool:
            for vm in self.vms:
                out = self.kubectl("get", "nodeippool", vm, "-o", "json", check=False)
                if out.returncode != 0:
                    return False
                pool = NodeIPPool.from_object(json.loads(out.stdout))
                cond = pool.status.condition(ConditionType.READY)
                agent = pool.status.condition(ConditionType.AGENT_READY)
                if not (cond and cond.status and agent and agent.status):
                    return False
            return True

        alive = self.operator.check_running if self.operator else None
        wait_for("every NodeIPPool to be Ready with its agent ready", all_ready, timeout,
                 interval=0.5, alive=alive)


def namespaces_with_prefix(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in out.stdout.splitlines()
            if line.split() and line.split()[0].startswith(f"{prefix}-")]


@contextlib.contextmanager
def running_world(workdir: Path, **kwargs: Any) -> Iterator[World]:
    world = World(workdir, **kwargs)
    world.start()
    try:
        yield world
    finally:
        world.stop()
        shutil.rmtree(workdir / "nodes", ignore_errors=True)


def first_pods(world: World, per_vm: int = 2) -> Sequence[Pod]:
    """``per_vm`` pods on every VM, named ``<vm>-pod<i>``."""
    return [world.run_pod(vm, f"{vm}-pod{i}") for vm in world.vms for i in range(per_vm)]
