"""A real API server, the ARM emulator and the real operator process, for operator tests."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from azure_cni.api.nodeippool import AGENT_FIELD_MANAGER, NodeIPPool
from azure_cni_sim.arm import ArmConfig, ArmEmulator, VmInfo
from azure_cni_sim.cluster import ExistingCluster, LocalCluster
from azure_cni_sim.launch import operator_settings, start_operator
from azure_cni_sim.procs import ManagedProcess, wait_for

#: small, fast pools for tests: batches of 4, warm pool 4..8, release after 2 s
TEST_POOL = {"batchSize": 4, "minFreeIPs": 4, "maxFreeIPs": 8, "maxIPs": 64,
             "releaseDelaySeconds": 2}


@dataclass
class OperatorEnv:
    """One emulated subscription, its nodes in the API server and (once started) the operator."""

    kube: LocalCluster | ExistingCluster
    emulator: ArmEmulator
    workdir: Path
    subnet_id: str
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:6]}")
    nodes: list[str] = field(default_factory=list)
    operator: ManagedProcess | None = None
    #: every operator process started, in order (replicas of one another)
    operators: list[ManagedProcess] = field(default_factory=list)
    #: an operator process's metrics port, by its pid
    metrics_ports: dict[int, int] = field(default_factory=dict)
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    vms: dict[str, VmInfo] = field(default_factory=dict)
    metrics_port: int = 0

    def add_node(self, suffix: str, *, subnet_id: str | None = None) -> VmInfo:
        name = f"{self.prefix}-{suffix}"
        vm = self.emulator.add_vm(name, subnet_id or self.subnet_id)
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                "spec": {"providerID": vm.provider_id}}
        self.kube.kubectl("create", "-f", "-", input=json.dumps(node))
        self.nodes.append(name)
        self.vms[name] = vm
        return vm

    def start_operator(self, **overrides: Mapping[str, Any]) -> ManagedProcess:
        """Start an operator process (another replica if one runs: each has its own ports,
        settings file and log, and they share the leader Lease ``lease_name``)."""
        settings = operator_settings(self.emulator, pool={**TEST_POOL, **overrides.get("pool", {})},
                                     operator={"driftCheckSeconds": 3,
                                               "usageDebounceSeconds": 0.3,
                                               "leaseName": self.lease_name,
                                               **overrides.get("operator", {})})
        self.metrics_port = int(settings["operator"]["metricsPort"])
        vm = next(iter(self.vms.values()))
        workdir = self.workdir / f"operator-{len(self.operators)}" if self.operators \
            else self.workdir
        self.operator = start_operator(workdir, self.kube.kubeconfig, self.emulator,
                                       settings, owner=self.owner, identity_vm=vm.name)
        self.metrics_ports[self.operator.pid] = self.metrics_port
        self.operators.append(self.operator)
        return self.operator

    @property
    def lease_name(self) -> str:
        """Each test's operators elect their leader in a Lease of their own."""
        return f"azure-cni-operator-{self.prefix}"

    def metrics(self, operator: ManagedProcess | None = None) -> str:
        port = self.metrics_ports[operator.pid] if operator else self.metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def lease_holder(self) -> str:
        out = self.kube.kubectl("-n", "kube-system", "get", "lease", self.lease_name, "-o",
                                "jsonpath={.spec.holderIdentity}", check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    def kill_operator(self) -> None:
        assert self.operator is not None and self.operator.popen is not None
        self.operator.popen.kill()
        self.operator.popen.wait(10)

    def pool(self, node: str) -> NodeIPPool | None:
        out = self.kube.kubectl("get", "nodeippool", node, "-o", "json", check=False)
        if out.returncode != 0:
            return None
        return NodeIPPool.from_object(json.loads(out.stdout))

    def wait_pool(self, node: str, what: str, predicate: Callable[[NodeIPPool], bool],
                  timeout: float = 60) -> NodeIPPool:
        found: list[NodeIPPool] = []

        def check() -> bool:
            pool = self.pool(node)
            if pool is not None and predicate(pool):
                found.append(pool)
                return True
            return False

        alive = self.operator.check_running if self.operator else None
        try:
            wait_for(f"pool {node}: {what}", check, timeout, interval=0.25, alive=alive)
        except TimeoutError as e:
            raise AssertionError(f"{e}\nlast pool: {self.pool(node)}\noperator log:\n"
                                 f"{self.operator.log_tail(40) if self.operator else ''}"
                                 ) from None
        return found[-1]

    def act_as_agent(self, node: str, used: int, acks: list[str] | None = None) -> None:
        """Write the agent's status fields exactly as the node agent does."""
        body = {"apiVersion": "azurecni.io/v1alpha1", "kind": "NodeIPPool",
                "metadata": {"name": node},
                "status": {"used": used, "releaseAcks": sorted(acks or [])}}
        self.kube.kubectl("apply", "--server-side", "--subresource=status",
                          f"--field-manager={AGENT_FIELD_MANAGER}", "--force-conflicts",
                          "-f", "-", input=json.dumps(body))

    def our_ipconfigs(self, vm: VmInfo) -> dict[str, str]:
        nic = self.emulator.nic(vm.nic_id)
        return {c["name"]: c["properties"]["privateIPAddress"]
                for c in nic["properties"]["ipConfigurations"]
                if c["name"].startswith("azcni-")}

    def events(self, node: str) -> list[dict[str, Any]]:
        out = self.kube.kubectl("get", "events", "-n", "default", "-o", "json",
                                "--field-selector", f"involvedObject.name={node}")
        items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
        return items

    def cleanup(self) -> None:
        for operator in self.operators:
            operator.stop()
        self.kube.kubectl("-n", "kube-system", "delete", "lease", self.lease_name,
                          "--ignore-not-found", check=False)
        for node in self.nodes:
            self.kube.kubectl("delete", "node", node, "--wait=false", check=False)
            self.kube.kubectl("patch", "nodeippool", node, "--type=merge", "-p",
                              '{"metadata":{"finalizers":null}}', check=False)
            self.kube.kubectl("delete", "nodeippool", node, "--wait=false", check=False)


@pytest.fixture
def env(kube: LocalCluster | ExistingCluster, nodeippool_crd: None,
        tmp_path: Path) -> Iterator[OperatorEnv]:
    emulator = ArmEmulator(ArmConfig(lro_polls=1, put_retry_after=0)).start()
    vnet = emulator.add_vnet("vnet", "198.18.0.0/16", {"nodes": "198.18.0.0/20"})
    harness = OperatorEnv(kube, emulator, tmp_path, vnet.subnet_ids["nodes"])
    try:
        yield harness
    finally:
        harness.cleanup()
        emulator.stop()
