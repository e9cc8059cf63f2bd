"""Benchmark: address blocks against single addresses, for one node and for a whole VNet.

Both parts run the operator's own reconcile (``PoolReconciler``: the pure decision, the
azure-mgmt adapter over HTTPS) against the ARM emulator with ARM's token buckets (reads
250 + 25/s, writes 200 + 10/s) and Azure's limits (256 ipConfigurations per NIC, 65,536
private addresses per VNet, a block counted once). The pools live in memory: the API server
is not what is measured here (``bench/operator_scale.py --blocks`` runs the operator process
against a real one).

1. **A node of 250 pods**, in each mode, with the chart's default pool (batch 8, minFreeIPs 8,
   maxFreeIPs 24, maxIPs 250): pods arrive one at a time and the operator reconciles on each
   change of ``used``, as it does on the agent's status writes. Recorded: ipConfigurations on
   the NIC, the NIC's body in bytes (the JSON every GET and PUT of it carries), ARM writes and
   reads, and seconds until 250 pods hold addresses.
2. **A VNet of N nodes x 250 pods** (default 300 x 250 = 75,000, above the VNet's 65,536), in
   each mode: every node's pool scaled to 250 at once (``kubectl scale nodeippool
   --replicas=250``). Blocks mode holds all of them; single-address mode stops at the VNet's
   limit and the pools that cannot grow say so in their SubnetExhausted condition.

The independent baselines are Azure's own numbers: the 256 ipConfigurations of a NIC, the
65,536 private addresses of a VNet, and the floor ARM's buckets put under the requests made:
max((W - 200) / 10, (R - 250) / 25) seconds.

    .venv/bin/python bench/vnet_scale.py [--nodes 300] [--pods 250]

Results: bench/results/blocks.json (the key ``vnet_scale``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from azure_cni.api.nodeippool import (  # noqa: E402
    ConditionType,
    NodeIPPool,
    PoolMode,
    PoolSpec,
    PoolStatus,
)
from azure_cni.cloud.azure import AzureAdapter  # noqa: E402
from azure_cni.operator.reconcile import PoolReconciler  # noqa: E402
from azure_cni_sim.arm import ArmConfig, ArmEmulator, VmInfo  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "blocks.json"
ARM = ArmConfig()
MODES = (PoolMode.ADDRESSES, PoolMode.BLOCKS)


class MemoryPools:
    """The operator's PoolWriter, in memory: the pools and their Events."""

    def __init__(self) -> None:
        self.pools: dict[str, NodeIPPool] = {}
        self.events: collections.Counter[str] = collections.Counter()

    def create(self, spec: PoolSpec) -> None:
        self.pools[spec.node_name] = NodeIPPool(spec.node_name, spec, generation=1,
                                                uid=spec.node_name)

    def act_as_agent(self, name: str, used: int) -> NodeIPPool:
        pool = self.pools[name]
        self.pools[name] = replace(pool, status=replace(pool.status, used=used))
        return self.pools[name]

    async def apply_status(self, name: str, fields: Mapping[str, Any]) -> NodeIPPool:
        pool = self.pools[name]
        mine = PoolStatus.from_dict(fields)
        status = replace(mine, used=pool.status.used, cooling=pool.status.cooling,
                         release_acks=pool.status.release_acks)
        self.pools[name] = replace(pool, status=status)
        return self.pools[name]

    async def post_event(self, pool: NodeIPPool, kind: str, reason: str, message: str) -> None:
        self.events[reason] += 1

    async def add_finalizer(self, name: str) -> None:
        return None

    async def remove_finalizer(self, pool: NodeIPPool) -> None:
        return None


def floor_seconds(writes: int, reads: int) -> float:
    return max((writes - ARM.write_burst) / ARM.write_qps,
               (reads - ARM.read_burst) / ARM.read_qps, 0.0)


def arm_counts(emulator: ArmEmulator) -> dict[str, int]:
    records = emulator.requests()
    return {"arm_reads": sum(1 for r in records if r.method == "GET"),
            "arm_writes": sum(1 for r in records if r.method != "GET"),
            "nic_writes": sum(1 for r in records if r.method == "PUT"),
            "throttled": sum(1 for r in records if r.status == 429)}


def spec_for(name: str, mode: PoolMode, **sizes: int) -> PoolSpec:
    return PoolSpec(name, mode=mode, **sizes)


async def one_node(mode: PoolMode, pods: int) -> dict[str, Any]:
    """Pods arrive one at a time on one node; the operator follows the agent's count."""
    with ArmEmulator(ArmConfig()) as emulator:
        vnet = emulator.add_vnet("bench", "198.18.0.0/15", {"nodes": "198.18.0.0/16"})
        vm = emulator.add_vm("vm00000", vnet.subnet_ids["nodes"])
        pools = MemoryPools()
        pools.create(spec_for(vm.name, mode))
        async with AzureAdapter(emulator.azure_settings(),
                                credential=emulator.credential()) as azure:
            reconciler = PoolReconciler(azure, pools)
            emulator.reset_requests()
            started = time.monotonic()
            waited = 0
            for used in range(1, pods + 1):
                pool = pools.act_as_agent(vm.name, used)
                if pool.status.allocated < used:
                    waited += 1  # this pod's ADD would wait for the operator
                result = await reconciler.reconcile(pool, vm.provider_id)
                if result.outcome.failed:
                    raise RuntimeError(f"{mode} pod {used}: {result.outcome.message}")
            seconds = time.monotonic() - started
            counts = arm_counts(emulator)
            nic = await azure.get_nic(vm.nic_id)
        pool = pools.pools[vm.name]
        assert nic.document is not None
        return {
            "mode": str(mode),
            "pods": pods,
            "addresses": pool.status.allocated,
            "ip_configurations_on_nic": len(nic.ip_configurations),
            "nic_limit": 256,
            "nic_body_bytes": len(nic.document),
            **counts,
            "seconds_to_pods": round(seconds, 2),
            "arm_floor_seconds": round(floor_seconds(counts["arm_writes"],
                                                     counts["arm_reads"]), 2),
            "pods_that_waited_for_a_write": waited,
        }


async def whole_vnet(mode: PoolMode, nodes: int, pods: int, workers: int) -> dict[str, Any]:
    """Every node's pool scaled to ``pods`` at once, ``workers`` reconciles in flight."""
    with ArmEmulator(ArmConfig()) as emulator:
        vnet = emulator.add_vnet("bench", "198.18.0.0/15", {"nodes": "198.18.0.0/15"})
        vms: list[VmInfo] = [emulator.add_vm(f"vm{i:05d}", vnet.subnet_ids["nodes"])
                             for i in range(nodes)]
        pools = MemoryPools()
        for vm in vms:
            pools.create(spec_for(vm.name, mode, min_ips=pods, max_ips=pods))
        emulator.reset_requests()
        async with AzureAdapter(emulator.azure_settings(),
                                credential=emulator.credential()) as azure:
            reconciler = PoolReconciler(azure, pools)
            gate = asyncio.Semaphore(workers)

            async def converge(vm: VmInfo) -> None:
                async with gate:
                    await reconciler.reconcile(pools.pools[vm.name], vm.provider_id)

            started = time.monotonic()
            await asyncio.gather(*(converge(vm) for vm in vms))
            seconds = time.monotonic() - started
        counts = arm_counts(emulator)
        state = emulator.state
        vnet_ipconfigs = sum(len(set(s.used.values())) for s in state.subnets.values())
        vnet_addresses = sum(len(s.used) for s in state.subnets.values())
    full = [p for p in pools.pools.values() if p.status.allocated >= pods]
    short = [p for p in pools.pools.values() if p.status.allocated < pods]
    reasons = collections.Counter(
        c.reason for p in short
        if (c := p.status.condition(ConditionType.SUBNET_EXHAUSTED)) is not None and c.status)
    example = next((c.message for p in short
                    if (c := p.status.condition(ConditionType.SUBNET_EXHAUSTED)) is not None
                    and c.status), "")
    return {
        "mode": str(mode),
        "nodes": nodes,
        "pods_wanted": nodes * pods,
        "pod_addresses_held": sum(p.status.allocated for p in pools.pools.values()),
        "nodes_with_all_pods": len(full),
        "nodes_short": len(short),
        "vnet_private_ip_count": vnet_ipconfigs,
        "vnet_private_ip_limit": ARM.vnet_private_ip_limit,
        "vnet_addresses_in_use": vnet_addresses,
        "subnet_exhausted_reasons": dict(reasons),
        "subnet_exhausted_example": example,
        **counts,
        "seconds": round(seconds, 1),
        "arm_floor_seconds": round(floor_seconds(counts["arm_writes"], counts["arm_reads"]), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=300)
    parser.add_argument("--pods", type=int, default=250)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    node = {str(m): asyncio.run(one_node(m, args.pods)) for m in MODES}
    for m in MODES:
        print(json.dumps(node[str(m)]), flush=True)
    vnet = {}
    for m in MODES:
        vnet[str(m)] = asyncio.run(whole_vnet(m, args.nodes, args.pods, args.workers))
        print(json.dumps(vnet[str(m)]), flush=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    previous["vnet_scale"] = {
        "what": "one node to 250 pods, and a VNet of nodes x 250 pods, in Addresses and "
                "Blocks (/28) mode, through the operator's reconcile on the ARM emulator; "
                "baselines are Azure's limits (256 ipConfigurations per NIC, 65,536 private "
                "addresses per VNet) and the floor ARM's buckets put under the requests made",
        "emulator_buckets": {"reads": f"{ARM.read_burst} + {ARM.read_qps:g}/s",
                             "writes": f"{ARM.write_burst} + {ARM.write_qps:g}/s"},
        "node_of_250_pods": node,
        "vnet": vnet,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(previous, indent=2) + "\n")


if __name__ == "__main__":
    main()
