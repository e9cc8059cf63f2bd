"""Benchmark: N nodes from empty to their warm pool, through the real operator.

A real API server, the ARM emulator with ARM's own token buckets (reads 250 + 25/s, writes
200 + 10/s per subscription), N VMs and N Node objects; the operator runs as its own process
with its defaults, except that it leaves no reserve of ARM's budget to other clients.

The baseline is what ARM's buckets allow, independent of the operator: W writes and R reads
cannot finish sooner than max((W - 200) / 10, (R - 250) / 25) seconds (both buckets start
full). Recorded: NIC writes (one per node expected), ARM reads and writes, 429s, seconds to
converge (every pool Ready with its warm target) against that floor, requests the operator
made to the API server (its own counter), its peak RSS; then, with nothing changing for
``--steady-seconds``, its CPU seconds, API server requests and ARM requests per minute.

    .venv/bin/python bench/operator_scale.py [--nodes 500] [--scale-set]

bench/results/operator_scale.json keeps one run per node count; a run replaces its own.
``--scale-set`` makes every node an instance of one Uniform scale set, whose NIC is written
by a Compute PUT of the instance model (bench/results/scale_set.json); the floor is the same
ARM buckets (Compute's own limit, 1,500 instance updates a minute, does not bind below that).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from azure_cni.api.settings import Settings  # noqa: E402
from azure_cni_sim.arm import ArmConfig, ArmEmulator, VmInfo  # noqa: E402
from azure_cni_sim.cluster import LocalCluster  # noqa: E402
from azure_cni_sim.launch import operator_settings, start_operator  # noqa: E402
from azure_cni_sim.node import wait_crd_established  # noqa: E402
from azure_cni_sim.tools import find_tool  # noqa: E402

CRD = ROOT / "deploy" / "crds" / "azurecni.io_nodeippools.yaml"
RESULTS = ROOT / "bench" / "results" / "operator_scale.json"
SCALE_SET_RESULTS = ROOT / "bench" / "results" / "scale_set.json"
ARM = ArmConfig()  # the emulator's defaults are ARM's documented buckets
#: a pool's name, allocated count and Ready status, one line per watch event
READY = ('{.metadata.name}{" "}{.status.allocated}{" "}'
         '{.status.conditions[?(@.type=="Ready")].status}{"\\n"}')


class ReadyWatch:
    """``kubectl get --watch`` on the pools: the newest state of each, streamed (listing
    5,000 pools every few seconds would load the machine the benchmark measures)."""

    def __init__(self, kubeconfig: Path, target: int) -> None:
        self.target = target
        self.ready: set[str] = set()
        self.last_change = time.monotonic()
        self._proc = subprocess.Popen(
            [str(find_tool("kubectl")), f"--kubeconfig={kubeconfig}", "get", "nodeippools",
             "--watch", "-o", f"jsonpath={READY}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            parts = line.split()
            if not parts:
                continue
            if parts[1:] == [str(self.target), "True"]:
                self.ready.add(parts[0])
            else:
                self.ready.discard(parts[0])
            self.last_change = time.monotonic()

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)


def floor_seconds(writes: int, reads: int) -> float:
    return max((writes - ARM.write_burst) / ARM.write_qps, (reads - ARM.read_burst) / ARM.read_qps,
               0.0)


def topology(emulator: ArmEmulator, nodes: int, scale_set: bool = False) -> list[VmInfo]:
    vnet = emulator.add_vnet("bench", "198.18.0.0/15", {"nodes": "198.18.0.0/16"})
    if scale_set:  # every node an instance of one Uniform scale set
        pool = emulator.add_scale_set("pool", vnet.subnet_ids["nodes"])
        return [emulator.add_instance(pool) for _ in range(nodes)]
    return [emulator.add_vm(f"vm{i:05d}", vnet.subnet_ids["nodes"]) for i in range(nodes)]


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def operator_counter(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if re.match(rf"{name}(\{{|\s)", line))


class LoadSampler:
    """The machine's 1-minute load average, sampled while a phase runs: the cores are shared
    with other work, and a loaded machine slows the operator and the API server alike."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def sample(self) -> None:
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        return {"mean": round(sum(self.samples) / len(self.samples), 2),
                "max": round(max(self.samples), 2)}


def arm_counts(emulator: ArmEmulator) -> dict[str, int]:
    records = emulator.requests()
    return {"reads": sum(1 for r in records if r.method == "GET"),
            "writes": sum(1 for r in records if r.method != "GET"),
            "throttled": sum(1 for r in records if r.status == 429)}


def run(workdir: Path, nodes: int, target: int, steady_seconds: float, *,
        scale_set: bool = False, pool: dict[str, Any] | None = None) -> dict[str, Any]:
    owner = uuid.uuid4().hex
    with LocalCluster(workdir / "cluster", controller_manager=False, owner=owner) as cluster, \
            ArmEmulator(ArmConfig()) as emulator:
        cluster.kubectl("apply", "--server-side", "-f", str(CRD))
        wait_crd_established(cluster.kubectl, "nodeippools.azurecni.io")
        vms = topology(emulator, nodes, scale_set)
        node_list = {"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": vm.name},
             "spec": {"providerID": vm.provider_id}} for vm in vms]}
        cluster.kubectl("create", "-f", "-", input=json.dumps(node_list), timeout=600)
        emulator.reset_requests()
        settings = operator_settings(emulator, pool=pool,
                                     azure={"readReserve": 0, "writeReserve": 0})
        settings["azure"].pop("pollingInterval")  # the production default
        metrics_port = int(settings["operator"]["metricsPort"])
        watch = ReadyWatch(cluster.kubeconfig, target)
        started = time.monotonic()
        operator = start_operator(workdir / "operator", cluster.kubeconfig, emulator, settings,
                                  owner=owner, identity_vm=vms[0].name)
        peak_rss = 0
        fill_load, steady_load = LoadSampler(), LoadSampler()
        try:
            reported = 0.0
            while len(watch.ready) < nodes:
                time.sleep(0.5)
                operator.check_running()
                fill_load.sample()
                peak_rss = max(peak_rss, proc_status(operator.pid, "VmRSS"))
                elapsed = time.monotonic() - started
                if elapsed - reported >= 10:
                    reported = elapsed
                    print(f"  {elapsed:6.0f}s  {len(watch.ready)}/{nodes} pools ready",
                          flush=True)
                if elapsed > 3600:
                    raise TimeoutError(f"only {len(watch.ready)}/{nodes} pools converged in "
                                       "an hour")
            seconds = watch.last_change - started
            counts = arm_counts(emulator)
            # a Uniform instance's NIC is written by a PUT of the instance model
            puts = emulator.request_count("PUT", "*/virtualmachinescalesets/*/virtualmachines/*"
                                          if scale_set else "*/networkinterfaces/*")
            api_requests = operator_counter(metrics_port,
                                            "azure_cni_operator_kube_requests_total")
            # nothing changes from here on: what does the operator cost at rest?
            time.sleep(5)  # let the last status writes' events pass
            cpu0, api0 = cpu_seconds(operator.pid), operator_counter(
                metrics_port, "azure_cni_operator_kube_requests_total")
            arm0 = len(emulator.requests())
            steady_end = time.monotonic() + steady_seconds
            while time.monotonic() < steady_end:
                time.sleep(min(5.0, max(0.0, steady_end - time.monotonic())))
                steady_load.sample()
            minutes = steady_seconds / 60.0
            steady = {
                "seconds_observed": steady_seconds,
                "operator_cpu_seconds_per_minute": round(
                    (cpu_seconds(operator.pid) - cpu0) / minutes, 2),
                "api_requests_per_minute": round((operator_counter(
                    metrics_port, "azure_cni_operator_kube_requests_total") - api0) / minutes, 1),
                "arm_requests_per_minute": round((len(emulator.requests()) - arm0) / minutes, 1),
            }
            peak_rss = max(peak_rss, proc_status(operator.pid, "VmHWM"))
        finally:
            operator.stop()
            watch.stop()
        floor = floor_seconds(counts["writes"], counts["reads"])
        return {
            "nodes": nodes,
            "addresses_per_node": target,
            "nic_writes": puts,
            "nic_writes_per_node": round(puts / nodes, 3),
            "arm_reads": counts["reads"],
            "arm_writes": counts["writes"],
            "arm_reads_per_node": round(counts["reads"] / nodes, 2),
            "arm_throttled_responses": counts["throttled"],
            "seconds_to_converge": round(seconds, 1),
            "floor_seconds": round(floor, 1),
            "ratio_to_floor": round(seconds / floor, 3) if floor else None,
            "api_requests_by_operator": int(api_requests),
            "operator_peak_rss_mb": round(peak_rss / 1024, 1),
            "steady_state": steady,
            "machine": {"cores": os.cpu_count(),
                        "loadavg_1m_while_converging": fill_load.summary(),
                        "loadavg_1m_in_steady_state": steady_load.summary()},
        }


def blocks_target(addresses: int, prefix_length: int) -> int:
    """The warm target in Blocks mode: whole blocks."""
    unit = 2 ** (32 - prefix_length)
    return -(-addresses // unit) * unit


def record_blocks(nodes: int, result: dict[str, Any]) -> None:
    out = ROOT / "bench" / "results" / "blocks.json"
    doc = json.loads(out.read_text()) if out.exists() else {}
    doc.setdefault("operator_scale", {})[str(nodes)] = result
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--steady-seconds", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--scale-set", action="store_true",
                        help="every node an instance of one Uniform scale set (written through "
                             "Compute); results in bench/results/scale_set.json")
    parser.add_argument("--blocks", action="store_true",
                        help="pools in Blocks mode (/28 blocks); the run is recorded in "
                             "bench/results/blocks.json")
    args = parser.parse_args()
    args.out = args.out or (SCALE_SET_RESULTS if args.scale_set else RESULTS)
    defaults = Settings()
    pool = defaults.pool
    target = max(pool.min_ips, pool.min_free_ips + (-pool.min_free_ips) % pool.batch_size)
    if args.blocks:
        target = blocks_target(target, pool.block_prefix_length)
    with tempfile.TemporaryDirectory(prefix="azcni-bench-") as tmp:
        result = run(Path(tmp), args.nodes, target, args.steady_seconds, scale_set=args.scale_set,
                     pool={"mode": "Blocks"} if args.blocks else None)
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.blocks:
        record_blocks(args.nodes, result)
        return
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = previous.get("runs") if isinstance(previous.get("runs"), dict) else {}
    runs[str(args.nodes)] = result
    doc = {
        "what": "N nodes from no pool to a Ready warm pool through the real operator, against "
                "the ARM emulator's token buckets; the floor is what those buckets allow for "
                "the reads and writes made: max((W-200)/10, (R-250)/25) seconds",
        "emulator_buckets": {"reads": f"{ARM.read_burst} + {ARM.read_qps:g}/s",
                             "writes": f"{ARM.write_burst} + {ARM.write_qps:g}/s",
                             **({"compute_instance_updates":
                                 f"{ARM.compute_vm_updates_per_minute}/min per instance, "
                                 f"{ARM.compute_subscription_vm_updates_per_minute}/min per "
                                 "subscription"} if args.scale_set else {})},
        "operator_settings": {"readReserve": 0, "writeReserve": 0,
                              "maxConcurrentNodes": defaults.operator.max_concurrent_nodes,
                              "driftCheckSeconds": defaults.operator.drift_check_seconds,
                              "pollingInterval": defaults.azure.polling_interval},
        "targets": {"peak_rss_mb_at_5000": 250, "ratio_to_floor": 1.2, "throttled": 0,
                    "nic_writes_per_node": 1, "arm_reads_per_node": 4},
        "runs": dict(sorted(runs.items(), key=lambda kv: int(kv[0]))),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
