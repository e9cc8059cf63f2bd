"""Benchmark: ``docker run`` with the azure-cni network against Docker's own bridge network.

One simulated VM without Kubernetes (``azure_cni_sim.standalone``): the standalone agent with
the NIC's secondary addresses from IMDS, and Debian's dockerd in the VM's namespace with its
default bridge on. Containers alternate between ``--network azure`` (our plugin: IPAM, veth
handed to libnetwork, VNet address) and ``--network bridge`` (libnetwork's built-in driver
and IPAM: the baseline, independent of our code), so both see the same background load.

Measured: the wall time of ``docker run -d`` (it returns once the container runs, its network
configured) and of ``docker rm -f``, for each network. Results go to
bench/results/standalone.json.

    .venv/bin/python bench/standalone_docker.py [--containers 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

from azure_cni.cloud.azure import AzureAdapter  # noqa: E402
from azure_cni.cloud.port import NewIPConfiguration  # noqa: E402
from azure_cni_sim.standalone import StandaloneWorld  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "standalone.json"
#: Docker's default bridge inside the VM namespace; a range nothing else in the VNet uses
BRIDGE_CIDR = "198.19.255.1/24"


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 1),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 1),
            "min_ms": round(ordered[0] * 1000, 1), "max_ms": round(ordered[-1] * 1000, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--containers", type=int, default=30)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="azcni-bench-") as tmp, \
            StandaloneWorld(Path(tmp), vm_count=1) as world:
        assert world.emulator is not None
        vm = world.vms["vm0"]

        async def grow() -> None:
            async with AzureAdapter(world.emulator.azure_settings(polling_interval=0.05),
                                    credential=world.emulator.credential()) as adapter:
                await adapter.update_ip_configurations(vm.nic_id, add=[
                    NewIPConfiguration(f"bench-{i}") for i in range(args.containers + 4)])

        asyncio.run(grow())
        node = world.nodes["vm0"]
        node.wait_for_status("the pool", lambda s: len(s["pool"]["addresses"])
                             >= args.containers, timeout=60)
        docker = world.docker("vm0", bridge_cidr=BRIDGE_CIDR)
        docker.docker("network", "create", "-d", "azure-cni", "--ipam-driver", "azure-cni",
                      "azure")
        times: dict[str, dict[str, list[float]]] = {
            n: {"run": [], "rm": []} for n in ("azure", "bridge")}
        for i in range(args.containers):
            for network in ("azure", "bridge"):
                name = f"{network}-{i}"
                started = time.perf_counter()
                docker.docker("run", "-d", "--name", name, "--network", network,
                              world.image.name, "-c", "sleep 3600")
                times[network]["run"].append(time.perf_counter() - started)
        addresses = {a["address"] for a in node.agent_status()["assignments"]}
        assert len(addresses) == args.containers, "every azure container holds a VNet address"
        for i in range(args.containers):
            for network in ("azure", "bridge"):
                started = time.perf_counter()
                docker.docker("rm", "-f", f"{network}-{i}")
                times[network]["rm"].append(time.perf_counter() - started)
        version = docker.docker("version", "-f", "{{.Server.Version}}").stdout.strip()
    result: dict[str, Any] = {
        "what": "docker run -d (returns with the container running and its network set up) "
                "and docker rm -f, azure-cni network vs Docker's built-in bridge network, "
                "alternating, on one simulated VM",
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "docker": f"Debian docker.io {version}",
        "containers_per_network": args.containers,
        "azure": {k: summary(v) for k, v in times["azure"].items()},
        "bridge": {k: summary(v) for k, v in times["bridge"].items()},
        "ratio_p50_azure_over_bridge": {
            k: round(statistics.median(times["azure"][k]) / statistics.median(
                times["bridge"][k]), 2) for k in ("run", "rm")},
        "raw_ms": {n: {k: [round(x * 1000, 1) for x in v] for k, v in t.items()}
                   for n, t in times.items()},
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("azure", "bridge",
                                               "ratio_p50_azure_over_bridge")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
