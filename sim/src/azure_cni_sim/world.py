"""The whole product on a simulated Azure: what ``make demo`` runs and the e2e tests use.

A VNet fabric of network namespaces programmed by the ARM emulator's NIC-change hook; a real
control plane on its own subnet of the VNet (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler); and every simulated VM a real Kubernetes node (containerd, kubelet and
kube-proxy in the VM's namespaces, ``kubenode.KubeNode``). azure-cni reaches the cluster only
as a user installs it: ``helm install azure-cni charts/azure-cni`` with the image built from the
Containerfile, so the operator and the agents are the chart's own pods. The operator reaches
ARM at a public address through its VM and gets its token from IMDS at 169.254.169.254 (the
fabric's relay, ``imds_relay``) as the VM's managed identity. CoreDNS serves the cluster's DNS
from pool addresses. Prometheus runs as a pod too, configured from the chart's ServiceMonitors
and PrometheusRule as the Prometheus Operator would (``monitoring``), and scrapes the operator
and every agent; the host reaches it through a portal.

The machine's own network namespace is never routed to any of it: the test harness and the
user's kubectl reach the API server through a portal on the host's loopback.

Everything is torn down by ``stop()``: processes (found by an environment marker, and by the
nodes' cgroups for containers), mount and network namespaces (and with them every mount, route
and iptables rule), cgroups and state.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from azure.core.credentials import AccessToken
from azure.mgmt.network import NetworkManagementClient

from azure_cni.api.nodeippool import ConditionType, NodeIPPool
from azure_cni.api.settings import AzureSettings
from azure_cni.cloud.azure import AzureAdapter
from azure_cni_sim import chartrun, coredns, monitoring, procstat
from azure_cni_sim.arm import ArmConfig, ArmEmulator, VmInfo
from azure_cni_sim.armstate import DEFAULT_SUBSCRIPTION
from azure_cni_sim.chartrun import ChartRunError, chart_dir, run_helm
from azure_cni_sim.cluster import SERVICE_CIDR, ControlPlaneNetwork, LocalCluster
from azure_cni_sim.images import ALL_IMAGES, BuiltImage, ensure_images
from azure_cni_sim.kubenode import KubeNode, mounts_under, remove_cgroups
from azure_cni_sim.procs import ManagedProcess, stop_owned, wait_for
from azure_cni_sim.procstat import Memory
from azure_cni_sim.prometheus import (
    PoolCounts,
    PrometheusAPI,
    PrometheusError,
    pool_mismatches,
    scrape_problems,
)
from azure_cni_sim.vnet import ARM_ADDRESS, ONPREM_CIDR, Fabric, capture_packets

log = logging.getLogger(__name__)

VNET_SPACE = "198.18.0.0/17"
SUBNET = "198.18.0.0/22"
#: the pod subnet of ``World(pod_nics=True)``: every VM has a second NIC in it
POD_SUBNET = "198.18.16.0/20"
#: its resource ID (the emulator's default subscription, resource group rg1, VNet "vnet")
POD_SUBNET_ID = (f"/subscriptions/{DEFAULT_SUBSCRIPTION}/resourceGroups/rg1/providers/"
                 "Microsoft.Network/virtualNetworks/vnet/subnets/pods")
#: the API server's subnet of the VNet (as with AKS's API server VNet integration)
CONTROL_PLANE = "198.18.8.4/24"
CONTROL_PLANE_ADDRESS = CONTROL_PLANE.partition("/")[0]
#: the chart's release and namespace (the same ``chartrun`` renders)
RELEASE, NAMESPACE = chartrun.RELEASE, chartrun.NAMESPACE
#: kube-dns's ClusterIP, the kubelets' clusterDNS
CLUSTER_DNS = str(ipaddress.ip_network(SERVICE_CIDR).network_address + 10)
#: pools sized for a demo: batches of 4, 4..12 free, releases after 30 s
DEMO_POOL = {"batchSize": 4, "minFreeIPs": 4, "maxFreeIPs": 12, "maxIPs": 32,
             "releaseDelaySeconds": 30}
#: the bandwidth plugin, chained after azure-vnet and portmap (``agent.extraPlugins``)
BANDWIDTH_PLUGIN = {"type": "bandwidth", "capabilities": {"bandwidth": True}}
#: the Uniform scale set of ``World.machines``' "uniform" nodes
UNIFORM_SCALE_SET = "pool"
#: where the operator's container finds the emulator's CA (a ConfigMap the admin creates)
ARM_CA_CONFIGMAP = "azure-arm-ca"
ARM_CA_DIR = "/etc/azure-arm-ca"


class WorldError(RuntimeError):
    """A part of the simulation did not come up; the message says which and why."""


@dataclass
class World:
    """One simulated subscription with ``vm_count`` VMs; ``prefix`` names its namespaces."""

    workdir: Path
    vm_count: int = 3
    #: what kind of VM each node is, "standalone", "flexible" (a Flexible scale set's VM) or
    #: "uniform" (an instance of the Uniform scale set ``pool``); empty: ``vm_count``
    #: standalone VMs
    machines: tuple[str, ...] = ()
    prefix: str = field(default_factory=lambda: f"az{uuid.uuid4().hex[:4]}")
    owner: str = field(default_factory=lambda: f"world-{uuid.uuid4().hex[:10]}")
    pool_defaults: dict[str, Any] = field(default_factory=lambda: dict(DEMO_POOL))
    #: every VM gets a second NIC (``<vm>-pods``; a Uniform scale set's instances
    #: ``pool-pods``) in the VNet's subnet ``pods`` (``POD_SUBNET``)
    pod_nics: bool = False
    #: labels each VM's kubelet registers its Node with (VM name -> labels)
    node_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    #: subnet name -> resource ID, once the VNet exists
    subnet_ids: dict[str, str] = field(default_factory=dict)
    #: chart values given at install, over ``chart_values``' own (e.g. ``poolClasses``)
    chart_overrides: dict[str, Any] = field(default_factory=dict)
    drift_check_seconds: float = 5.0
    #: install azure-cni (and CoreDNS and Prometheus) in ``start``; without it the nodes wait
    #: for a network plugin, as a new cluster does before an admin installs one
    install_azure_cni: bool = True
    #: ARM refuses what the caller's role assignments do not grant (``arm.authorization``); the
    #: chart's managed identity then needs the role an admin gives it
    enforce_rbac: bool = False
    #: resource groups of the VNet and of the VMs (and their NICs)
    vnet_resource_group: str = "rg1"
    node_resource_group: str = "rg1"
    #: Prometheus in the cluster, scraping through the chart's ServiceMonitors (needs the
    #: Prometheus build: ``make demo`` leaves it out while it is still building)
    monitoring: bool = True
    #: kubelet's maxPods on every node (kubelet's default; the demo's pools hold fewer, and
    #: e2e/test_blocks.py puts 100 pods on one node)
    max_pods: int = 110
    cluster: LocalCluster | None = None
    emulator: ArmEmulator | None = None
    fabric: Fabric | None = None
    vms: dict[str, VmInfo] = field(default_factory=dict)
    nodes: dict[str, KubeNode] = field(default_factory=dict)
    images: dict[str, BuiltImage] = field(default_factory=dict)
    #: the cluster's Prometheus, through its portal on the host's loopback
    prometheus: PrometheusAPI | None = None
    _unhook: Any = None
    _unhook_policy: Any = None
    _helm_home: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, progress: Callable[[str], None] | None = None) -> World:
        """Bring everything up; on any failure tear down what was started and raise."""
        say = progress or (lambda message: log.info("event=world_progress %s", message))
        try:
            if (self.workdir / "cluster").exists():
                raise WorldError(f"{self.workdir} holds an earlier world; give a new directory")
            self.workdir.mkdir(parents=True, exist_ok=True)
            say("building the images: azure-cni from the Containerfile, CoreDNS, "
                f"{'Prometheus, ' if self.monitoring else ''}the test app (cached after the "
                "first run)")
            self.images = ensure_images(*(n for n in ALL_IMAGES
                                          if self.monitoring or n != "prometheus"))
            say("starting the VNet fabric and the ARM + IMDS emulator")
            self._start_azure()
            say("starting the control plane on its VNet subnet (etcd, kube-apiserver, "
                "kube-controller-manager, kube-scheduler)")
            assert self.fabric is not None
            cp_netns = self.fabric.add_appliance("cp", CONTROL_PLANE)
            self.cluster = LocalCluster(
                self.workdir / "cluster", owner=self.owner,
                network=ControlPlaneNetwork(cp_netns, CONTROL_PLANE_ADDRESS)).start()
            say(f"starting {len(self.machines) or self.vm_count} VMs as Kubernetes nodes "
                "(containerd, kubelet, kube-proxy)")
            self._start_nodes()
            if not self.install_azure_cni:
                return self
            if self.monitoring:
                say("installing the Prometheus Operator's CRDs (ServiceMonitor, "
                    "PrometheusRule), as a cluster with kube-prometheus-stack has them")
                monitoring.install_crds(self.cluster)
            say("installing azure-cni: helm install azure-cni charts/azure-cni"
                + (", its ServiceMonitors and PrometheusRule on" if self.monitoring else ""))
            self.install_chart()
            say("waiting for every node and every NodeIPPool to be Ready")
            self.wait_nodes_ready(timeout=240)
            self.wait_pools_ready()
            say("starting CoreDNS as kube-dns")
            self.kubectl("apply", "-f", "-", input=coredns.manifests(
                self.images["coredns"].image, CLUSTER_DNS))
            self.wait_rollout("deployment/coredns", NAMESPACE)
            if not self.monitoring:
                return self
            say("starting Prometheus, configured from the chart's ServiceMonitors and "
                "PrometheusRule as the Prometheus Operator would")
            self.prometheus = monitoring.start_prometheus(
                self.cluster, self.images["prometheus"].image,
                via_netns=next(iter(self.nodes.values())).netns, workdir=self.workdir,
                owner=self.owner)
            self.wait_prometheus_scrapes_everything()
        except BaseException as e:
            self.stop()
            if isinstance(e, Exception) and not isinstance(e, WorldError):
                raise WorldError(f"the simulation did not come up: {e}") from e
            raise
        return self

    def stop(self) -> None:
        """Tear everything down, whatever state it is in."""
        with ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
            stops = {name: pool.submit(node.stop) for name, node in self.nodes.items()}
        for name, stopped in stops.items():
            if stopped.exception() is not None:  # go on: the sweep below still runs
                log.error("event=node_stop_failed node=%s error=%r", name, stopped.exception())
        if self.cluster is not None:
            self.cluster.stop()
        if self._unhook is not None:
            self._unhook()
        if self._unhook_policy is not None:
            self._unhook_policy()
        if self.emulator is not None:
            with contextlib.suppress(Exception):
                self.emulator.stop()
        if self.fabric is not None:
            self.fabric.destroy()
        stop_owned(self.owner)
        for leftover in namespaces_with_prefix(self.prefix):
            subprocess.run(["ip", "netns", "del", leftover], capture_output=True, check=False)
        if self._helm_home is not None:
            shutil.rmtree(self._helm_home, ignore_errors=True)
        # the VMs' disks and the cluster's database are of no use once it is gone (the logs
        # stay for whoever wants to know what happened)
        for node in self.nodes.values():
            node.remove_disk()
        shutil.rmtree(self.workdir / "cluster" / "etcd", ignore_errors=True)

    def leftovers(self) -> dict[str, list[str]]:
        """What of this world is still on the machine (all empty after ``stop``)."""
        return {"namespaces": namespaces_with_prefix(self.prefix),
                "cgroups": remove_cgroups(f"{self.prefix}-*", kill=False, remove=False),
                "mounts": mounts_under(self.workdir)}

    def __enter__(self) -> World:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _start_azure(self) -> None:
        self.fabric = Fabric(self.prefix, SUBNET, self.workdir / "fabric", self.owner).create()
        self.emulator = ArmEmulator(ArmConfig(lro_polls=1, put_retry_after=0,
                                              enforce_rbac=self.enforce_rbac),
                                    state_dir=self.workdir / "arm",
                                    tls_addresses=(ARM_ADDRESS,)).start()
        # where the VMs reach ARM: its public address (IMDS: _start_imds_relay, once the VMs
        # exist)
        self.emulator.serve_arm_in_netns(self.fabric.arm_ns, ARM_ADDRESS)
        self._unhook = self.emulator.on_nic_change(self._program_fabric)
        fabric = self.fabric
        # public IPs, load balancers and NSGs, like the routes: in place before ARM answers
        self._unhook_policy = self.emulator.on_network_policy(
            lambda policy: asyncio.to_thread(fabric.on_policy, policy))

    def _start_nodes(self) -> None:
        assert self.cluster is not None and self.emulator is not None
        assert self.fabric is not None
        self.subnet_ids = dict(self.emulator.add_vnet(
            "vnet", VNET_SPACE, {"nodes": SUBNET, **({"pods": POD_SUBNET} if self.pod_nics
                                                     else {})},
            resource_group=self.vnet_resource_group).subnet_ids)
        subnet_id = self.subnet_ids["nodes"]

        def pod_nic(name: str) -> dict[str, str]:
            return {name: self.subnet_ids["pods"]} if self.pod_nics else {}

        scale_set: str | None = None
        group = self.node_resource_group
        for i, kind in enumerate(self.machines or ("standalone",) * self.vm_count):
            if kind == "standalone":
                vm = self.emulator.add_vm(f"vm{i}", subnet_id, resource_group=group,
                                          more_nics=pod_nic(f"vm{i}-pods"))
            elif kind == "flexible":
                vm = self.emulator.add_vm(f"flex{i}", subnet_id, scale_set="flex",
                                          resource_group=group,
                                          more_nics=pod_nic(f"flex{i}-pods"))
            elif kind == "uniform":
                scale_set = scale_set or self.emulator.add_scale_set(
                    UNIFORM_SCALE_SET, subnet_id, resource_group=group,
                    more_nics=pod_nic(f"{UNIFORM_SCALE_SET}-pods"))
                vm = self.emulator.add_instance(scale_set)  # named pool000000, pool000001, ...
            else:
                raise WorldError(f"no such kind of VM {kind!r}: standalone, flexible, uniform")
            self.vms[vm.name] = vm
            fvm = self.fabric.add_vm(vm)
            self.nodes[vm.name] = KubeNode(
                vm.name, fvm.netns, vm.primary_ip, vm.provider_id,
                self.workdir / "nodes" / vm.name, self.owner, CLUSTER_DNS, self.prefix,
                sandbox_image=self.images["pause"].image, max_pods=self.max_pods,
                labels=self.node_labels.get(vm.name, {}))
        cluster = self.cluster
        archives = [image.archive for image in self.images.values()]

        def bring_up(node: KubeNode) -> None:
            node.provision(cluster)
            node.start(archives)

        self._start_imds_relay()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            for future in [pool.submit(bring_up, node) for node in self.nodes.values()]:
                future.result()

        def registered() -> bool:
            out = self.kubectl("get", "nodes", "-o", "name", check=False).stdout.split()
            return len(out) == len(self.nodes)

        wait_for("every kubelet to register its Node", registered, 60, interval=0.5,
                 alive=self._nodes_alive)

    def _start_imds_relay(self) -> None:
        """169.254.169.254 in the fabric: each VM gets its own metadata and identity."""
        assert self.emulator is not None and self.fabric is not None
        argv = [sys.executable, "-m", "azure_cni_sim.imds_relay", "--netns",
                self.fabric.fabric_ns, "--target", f"127.0.0.1:{self.emulator.imds_port}",
                *(a for vm in self.vms.values() for a in ("--vm", f"{vm.primary_ip}={vm.name}"))]
        log_path = self.workdir / "imds-relay.log"
        relay = ManagedProcess("imds-relay", argv, log_path, self.owner).start()
        wait_for("the IMDS relay at 169.254.169.254",
                 lambda: "imds_relay_listening" in log_path.read_text(), 20,
                 alive=relay.check_running)

    def _nodes_alive(self) -> None:
        for node in self.nodes.values():
            node.check_running()

    def _program_fabric(self, nic_id: str, vm_id: str, old: tuple[str, ...],
                        new: tuple[str, ...]) -> Any:
        assert self.fabric is not None
        fabric = self.fabric
        # the hook runs on the emulator's loop: reprogram off it, but before ARM answers
        return asyncio.to_thread(fabric.on_nic_change, nic_id, vm_id, old, new)

    # -- the chart, as a user installs it --------------------------------------------------

    def chart_values(self, **overrides: Any) -> dict[str, Any]:
        """The values a user of this subscription would give the chart."""
        image = self.images["azure-cni"]
        values: dict[str, Any] = {
            "image": {"repository": image.repository, "tag": image.tag},
            "pool": dict(self.pool_defaults),
            "azure": {"armEndpoint": f"https://{ARM_ADDRESS}/",
                      "credential": "managedIdentity",
                      "caBundle": f"{ARM_CA_DIR}/ca.crt",
                      "pollingInterval": 0.2},
            "operator": {"driftCheckSeconds": self.drift_check_seconds,
                         "usageDebounceSeconds": 0.5},
            "snat": {"nonMasqueradeCIDRs": [ONPREM_CIDR]},
            # kubernetes.io/ingress-bandwidth and egress-bandwidth, as AKS nodes chain it
            "agent": {"extraPlugins": [BANDWIDTH_PLUGIN]},
            **({"monitoring": monitoring.CHART_VALUES} if self.monitoring else {}),
            "operatorDeployment": {
                "extraVolumes": [{"name": "arm-ca",
                                  "configMap": {"name": ARM_CA_CONFIGMAP}}],
                "extraVolumeMounts": [{"name": "arm-ca", "mountPath": ARM_CA_DIR,
                                       "readOnly": True}]},
        }
        for key, value in {**self.chart_overrides, **overrides}.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = {**values[key], **value}
            else:
                values[key] = value
        return values

    def helm(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        assert self.cluster is not None
        if self._helm_home is None:
            self._helm_home = Path(tempfile.mkdtemp(prefix="azcni-helm-"))
        try:
            return run_helm(self._helm_home, *args, kubeconfig=self.cluster.kubeconfig,
                            timeout=timeout)
        except ChartRunError as e:
            raise WorldError(str(e)) from None

    def chart_path(self) -> Path:
        try:
            return chart_dir()
        except ChartRunError as e:
            raise WorldError(str(e)) from None

    def install_chart(self, **overrides: Any) -> None:
        """``helm install azure-cni charts/azure-cni -n kube-system -f values.yaml``, after the
        admin put the emulator's CA into a ConfigMap (the chart's caBundle mounts it)."""
        assert self.emulator is not None
        self.kubectl("-n", NAMESPACE, "create", "configmap", ARM_CA_CONFIGMAP,
                     f"--from-file=ca.crt={self.emulator.ca_path}")
        values = self.write_values(self.chart_values(**overrides))
        self.helm("install", RELEASE, str(self.chart_path()), "--namespace", NAMESPACE,
                  "--values", str(values))

    def upgrade_chart(self, **overrides: Any) -> None:
        """``helm upgrade`` with changed values (on top of the ones the install used)."""
        values = self.write_values(self.chart_values(**overrides), "values-upgrade.yaml")
        self.helm("upgrade", RELEASE, str(self.chart_path()), "--namespace", NAMESPACE,
                  "--values", str(values))

    def write_values(self, values: dict[str, Any], name: str = "values.yaml") -> Path:
        path = self.workdir / name
        path.write_text(yaml.safe_dump(values, sort_keys=False))
        return path

    # -- Kubernetes ------------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        assert self.cluster is not None
        return self.cluster.kubectl(*args, check=check, input=input, timeout=timeout)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def exec_in(self, pod: str, *argv: str, namespace: str = "default", timeout: float = 30
                ) -> subprocess.CompletedProcess[str]:
        """``kubectl exec`` a command in a pod; never raises on its exit code."""
        return self.kubectl("exec", "-n", namespace, pod, "--", *argv, check=False,
                            timeout=timeout)

    def wait_rollout(self, what: str, namespace: str = "default", timeout: float = 180) -> None:
        self.kubectl("rollout", "status", what, "-n", namespace, f"--timeout={int(timeout)}s",
                     timeout=timeout + 10)

    def wait_nodes_ready(self, timeout: float = 120) -> None:
        def all_ready() -> bool:
            nodes = self.get_json("nodes")["items"]
            return len(nodes) == len(self.nodes) and all(
                any(c["type"] == "Ready" and c["status"] == "True"
                    for c in n["status"].get("conditions", [])) for n in nodes)

        wait_for("every node to be Ready", all_ready, timeout, interval=1,
                 alive=self._nodes_alive)

    def component_pods(self, component: str) -> dict[str, str]:
        """azure-cni's pods of ``component`` (operator, agent): pod name -> node name."""
        pods = self.get_json("pods", "-n", NAMESPACE, "-l",
                             f"app.kubernetes.io/component={component}")["items"]
        return {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in pods
                if p["status"].get("phase") == "Running"}

    def pod_memory(self, pod: str, namespace: str = NAMESPACE) -> Memory:
        """The memory of the pod's main process, read inside the pod (/proc/1/status)."""
        return procstat.pod_memory(self.kubectl, namespace, pod)

    def pool(self, vm: str) -> NodeIPPool:
        return NodeIPPool.from_object(self.get_json("nodeippool", vm))

    def wait_pools_ready(self, timeout: float = 180) -> None:
        def all_ready() -> bool:
            out = self.kubectl("get", "nodeippools", "-o", "json", check=False)
            if out.returncode != 0:
                return False
            pools = [NodeIPPool.from_object(p) for p in json.loads(out.stdout)["items"]]
            if {p.name for p in pools} != set(self.vms):
                return False
            for pool in pools:
                ready = pool.status.condition(ConditionType.READY)
                agent = pool.status.condition(ConditionType.AGENT_READY)
                if not (ready and ready.status and agent and agent.status):
                    return False
            return True

        wait_for("every NodeIPPool to be Ready with its agent ready", all_ready, timeout,
                 interval=1, alive=self._nodes_alive)

    def pool_counts(self) -> dict[str, PoolCounts]:
        """Every NodeIPPool's ALLOCATED, USED and COOLING, as ``kubectl get nip`` shows them."""
        counts = {}
        for pool in self.get_json("nodeippools")["items"]:
            status = pool.get("status") or {}
            counts[pool["metadata"]["name"]] = PoolCounts(
                *(int(status.get(key) or 0) for key in ("allocated", "used", "cooling")))
        return counts

    # -- the cluster's Prometheus ----------------------------------------------------------

    def _wait_prometheus(self, what: str, problems: Callable[[PrometheusAPI], list[str]],
                         timeout: float) -> None:
        """Until ``problems`` finds none; on timeout, say which were left."""
        api = self.prometheus
        if api is None:
            raise WorldError("this world has no Prometheus (start() brings it up)")
        left: list[str] = []

        def none_left() -> bool:
            nonlocal left
            try:
                left = problems(api)
            except PrometheusError as e:  # e.g. its pod moving to another node
                left = [str(e)]
            return not left

        try:
            wait_for(what, none_left, timeout, interval=1, alive=self._nodes_alive)
        except TimeoutError as e:
            raise WorldError(f"{e}: " + "; ".join(left)) from None

    def wait_prometheus_scrapes_everything(self, timeout: float = 120) -> None:
        """Until Prometheus has ``up == 1`` for the operator and the agent of every node."""
        nodes = self.kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"
                             ).stdout.split()
        self._wait_prometheus("Prometheus to scrape the operator and the agent of every node",
                              lambda api: scrape_problems(api, nodes), timeout)

    def wait_prometheus_agrees_with_pools(self, timeout: float = 90) -> None:
        """Until Prometheus's pool series say what ``kubectl get nip`` says, for every pool."""
        self._wait_prometheus("Prometheus's pool series to match kubectl get nip",
                              lambda api: pool_mismatches(api, self.pool_counts()), timeout)

    # -- the network, from outside the cluster ---------------------------------------------

    def in_netns(self, netns: str, *argv: str, timeout: float = 20
                 ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True,
                              text=True, check=False, timeout=timeout)

    def onprem(self, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        """Run a command on the on-premises host."""
        assert self.fabric is not None
        return self.in_netns(self.fabric.onprem_ns, *argv, timeout=timeout)

    def capture_on_fabric(self, vm: str, bpf: str, action: Callable[[], object],
                          packets: int = 2, timeout: float = 10, *, nic: int = 0) -> list[str]:
        """Run ``action()`` while tcpdump watches the link of the VM's NIC ``nic`` (0: the
        primary) in the fabric; return the packets seen (one line each, addresses numeric)."""
        assert self.fabric is not None
        return capture_packets(self.fabric.fabric_ns, self.fabric.vms[vm].nics[nic].fabric_if,
                               bpf, action, packets=packets, timeout=timeout)

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

    def network_client(self) -> NetworkManagementClient:
        """The azure-mgmt-network client an admin uses for public IPs, load balancers and
        NSGs (with an admin's own token, not the operator's identity)."""
        assert self.emulator is not None
        return self.emulator.network_client()

    def nic_addresses(self, vm: str, nic: int = 0) -> tuple[str, ...]:
        """The addresses of the VM's NIC ``nic`` (0: the primary), its primary first."""
        assert self.emulator is not None
        return self.emulator.nic_addresses(self.vms[vm].nics[nic].nic_id)


def namespaces_with_prefix(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in out.stdout.splitlines()
            if line.split() and line.split()[0].startswith(f"{prefix}-")]
