"""Benchmark: N nodes from empty to their warm pool, through the real operator.

A real API server, the ARM emulator with its default (ARM-like) throttling, N VMs and N Node
objects; the operator runs as its own process with default settings. Measured: NIC writes
(expect one per node), seconds until every pool is Ready at its warm target, all ARM
requests, 429s, and the operator's peak RSS. Baseline in the same run: the same Azure work
done by a bare loop over the adapter (no Kubernetes, no kopf) against a fresh emulator with
the same throttling — the floor the operator is measured against.

    .venv/bin/python bench/operator_scale.py [--nodes 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from azure_cni.api.nodeippool import ConditionType, NodeIPPool  # noqa: E402
from azure_cni.api.settings import AzureSettings, PoolDefaults, Settings  # noqa: E402
from azure_cni.cloud.azure import AzureAdapter  # noqa: E402
from azure_cni.cloud.port import NewIPConfiguration  # noqa: E402
from azure_cni.cloud.providerid import parse_provider_id  # noqa: E402
from azure_cni.operator.ippool import new_ipconfig_name  # noqa: E402
from azure_cni_sim.arm import ArmConfig, ArmEmulator, VmInfo  # noqa: E402
from azure_cni_sim.cluster import LocalCluster  # noqa: E402
from azure_cni_sim.launch import operator_settings, start_operator  # noqa: E402
from azure_cni_sim.node import wait_crd_established  # noqa: E402

CRD = ROOT / "deploy" / "crds" / "azurecni.io_nodeippools.yaml"
RESULTS = ROOT / "bench" / "results" / "operator_scale.json"


def topology(emulator: ArmEmulator, nodes: int) -> list[VmInfo]:
    vnet = emulator.add_vnet("bench", "198.18.0.0/16", {"nodes": "198.18.0.0/17"})
    return [emulator.add_vm(f"vm{i:04d}", vnet.subnet_ids["nodes"]) for i in range(nodes)]


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def converged(cluster: LocalCluster, target: int) -> int:
    out = cluster.kubectl("get", "nodeippools", "-o", "json", timeout=120).stdout
    done = 0
    for item in json.loads(out)["items"]:
        pool = NodeIPPool.from_object(item)
        ready = pool.status.condition(ConditionType.READY)
        if pool.status.allocated == target and ready is not None and ready.status:
            done += 1
    return done


def run_operator(workdir: Path, nodes: int, target: int) -> dict[str, Any]:
    owner = uuid.uuid4().hex
    with LocalCluster(workdir / "cluster", controller_manager=False, owner=owner) as cluster, \
            ArmEmulator(ArmConfig()) as emulator:
        cluster.kubectl("apply", "--server-side", "-f", str(CRD))
        wait_crd_established(cluster.kubectl, "nodeippools.azurecni.io")
        vms = topology(emulator, nodes)
        node_list = {"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": vm.name},
             "spec": {"providerID": vm.provider_id}} for vm in vms]}
        cluster.kubectl("create", "-f", "-", input=json.dumps(node_list), timeout=300)
        emulator.reset_requests()
        settings = operator_settings(emulator)
        settings["azure"].pop("pollingInterval")  # production default
        started = time.monotonic()
        operator = start_operator(workdir / "operator", cluster.kubeconfig, emulator, settings,
                                  owner=owner, identity_vm=vms[0].name)
        peak_rss = 0
        try:
            done = 0
            while done < nodes:
                time.sleep(1)
                operator.check_running()
                peak_rss = max(peak_rss, rss_kb(operator.pid, "VmRSS"))
                done = converged(cluster, target)
                if time.monotonic() - started > 1800:
                    raise TimeoutError(f"only {done}/{nodes} pools converged in 30 minutes")
            seconds = time.monotonic() - started
            peak_rss = max(peak_rss, rss_kb(operator.pid, "VmHWM"))
        finally:
            operator.stop()
        puts = emulator.request_count("PUT", "*/networkinterfaces/*")
        return {
            "nodes": nodes,
            "addresses_per_node": target,
            "nic_writes": puts,
            "nic_writes_per_node": round(puts / nodes, 3),
            "seconds_to_converge": round(seconds, 1),
            "arm_requests": emulator.request_count(),
            "arm_throttled_responses": emulator.request_count(status=429),
            "operator_peak_rss_mb": round(peak_rss / 1024, 1),
        }


async def baseline(nodes: int, target: int, concurrency: int) -> dict[str, Any]:
    """The same Azure work without Kubernetes: read each VM's NIC, add the batch, one write."""
    with ArmEmulator(ArmConfig()) as emulator:
        vms = topology(emulator, nodes)
        emulator.reset_requests()
        token = emulator.issue_token("baseline")

        class StaticToken:
            async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
                from azure.core.credentials import AccessToken

                return AccessToken(token, int(time.time()) + 3600)

            async def close(self) -> None:
                return None

        adapter = AzureAdapter(AzureSettings(arm_endpoint=emulator.arm_url,
                                             ca_bundle=str(emulator.ca_path)),
                               credential=StaticToken())  # type: ignore[arg-type]
        slots = asyncio.Semaphore(concurrency)

        async def one(vm: VmInfo) -> None:
            async with slots:
                nic = await adapter.get_vm_nic(parse_provider_id(vm.provider_id))
                await adapter.update_ip_configurations(
                    nic.id, [NewIPConfiguration(new_ipconfig_name()) for _ in range(target)])

        started = time.monotonic()
        try:
            await asyncio.gather(*(one(vm) for vm in vms))
        finally:
            await adapter.close()
        return {
            "seconds": round(time.monotonic() - started, 1),
            "nic_writes": emulator.request_count("PUT", "*/networkinterfaces/*"),
            "arm_requests": emulator.request_count(),
            "arm_throttled_responses": emulator.request_count(status=429),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    defaults = Settings()
    pool: PoolDefaults = defaults.pool
    target = max(pool.min_ips, pool.min_free_ips + (-pool.min_free_ips) % pool.batch_size)
    with tempfile.TemporaryDirectory(prefix="azcni-bench-") as tmp:
        ours = run_operator(Path(tmp), args.nodes, target)
    floor = asyncio.run(baseline(args.nodes, target, defaults.operator.max_concurrent_nodes))
    result = {
        **ours,
        "baseline": {"what": "the same reads and NIC writes by a bare adapter loop, no "
                             "Kubernetes", **floor},
        "ratio_seconds_vs_baseline": round(ours["seconds_to_converge"] / floor["seconds"], 2),
        "settings": {"readQPS": defaults.azure.read_qps, "readBurst": defaults.azure.read_burst,
                     "writeQPS": defaults.azure.write_qps,
                     "writeBurst": defaults.azure.write_burst,
                     "maxConcurrentNodes": defaults.operator.max_concurrent_nodes,
                     "emulator_throttling": "ARM defaults: reads 250 burst 25/s, writes 200 "
                                            "burst 10/s"},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
