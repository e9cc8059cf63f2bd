"""Benchmark: give 100 NICs 32 secondary addresses each, batched versus one write per address.

Both runs face a fresh ARM emulator with its default (ARM-like) throttling: writes 200 burst
and 10/s, reads 250 burst and 25/s, per subscription and principal; one InProgress poll per
long-running operation. The adapter run is azure-cni's: one GET -> edit -> If-Match PUT per
NIC through ``AzureAdapter`` with the product's default settings (its own token buckets).
The baseline is what a per-IP design does: for every address GET the NIC, append one
ipConfiguration, PUT, wait for the operation; NICs in parallel, no client-side rate limit,
and a throttled write simply retried after the server's Retry-After.

    .venv/bin/python bench/arm_batching.py [--nics 100] [--addresses-per-nic 32]

Results go to bench/results/arm_batching.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from azure.core.exceptions import HttpResponseError  # noqa: E402
from azure.mgmt.network.aio import NetworkManagementClient  # noqa: E402
from azure.mgmt.network.models import NetworkInterfaceIPConfiguration, Subnet  # noqa: E402

from azure_cni.api.settings import AzureSettings  # noqa: E402
from azure_cni.cloud.azure import AzureAdapter  # noqa: E402
from azure_cni.cloud.errors import retry_after_seconds  # noqa: E402
from azure_cni.cloud.port import NewIPConfiguration  # noqa: E402
from azure_cni.cloud.resourceid import parse_resource_id  # noqa: E402
from azure_cni_sim.arm import ArmConfig, ArmEmulator, VmInfo  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "arm_batching.json"


def topology(emulator: ArmEmulator, nics: int) -> list[VmInfo]:
    vnet = emulator.add_vnet("bench", "198.18.0.0/16", {"nodes": "198.18.0.0/18"})
    return [emulator.add_vm(f"vm{i:04d}", vnet.subnet_ids["nodes"]) for i in range(nics)]


def tally(emulator: ArmEmulator) -> dict[str, int]:
    return {
        "requests": emulator.request_count(),
        "puts": emulator.request_count("PUT"),
        "gets": emulator.request_count("GET"),
        "throttled": emulator.request_count(status=429),
    }


def check(emulator: ArmEmulator, vms: list[VmInfo], per_nic: int) -> None:
    """Both runs must end in the same place: every NIC with its addresses, none shared."""
    seen: set[str] = set()
    for vm in vms:
        addresses = emulator.nic_addresses(vm.nic_id)
        if len(addresses) != per_nic + 1:
            raise SystemExit(f"{vm.nic_id} has {len(addresses) - 1} secondaries, "
                             f"not {per_nic}")
        if seen & set(addresses):
            raise SystemExit(f"{vm.nic_id} shares an address with another NIC")
        seen |= set(addresses)


async def run_adapter(settings: AzureSettings, nics: int, per_nic: int) -> dict[str, Any]:
    # the emulator serves from a thread of its own, as a remote ARM would
    with ArmEmulator(ArmConfig()) as emulator:
        vms = topology(emulator, nics)
        adapter = AzureAdapter(
            dataclasses.replace(settings, arm_endpoint=emulator.arm_url,
                                ca_bundle=str(emulator.ca_path)),
            credential=emulator.credential())
        started = time.monotonic()
        async with adapter:
            await asyncio.gather(*(
                adapter.update_ip_configurations(
                    vm.nic_id, add=[NewIPConfiguration(f"azcni-{i:03d}") for i in range(per_nic)])
                for vm in vms))
        seconds = time.monotonic() - started
        check(emulator, vms, per_nic)
        return {**tally(emulator), "seconds": seconds}


async def add_one_at_a_time(client: NetworkManagementClient, vm: VmInfo, per_nic: int,
                            polling_interval: float) -> int:
    """A per-IP writer: one GET + PUT + operation per address; returns the throttled or
    conflicting calls it had to start over after the SDK's own retries gave up."""
    ref = parse_resource_id(vm.nic_id)
    outlasted = 0
    for i in range(per_nic):
        name = f"ip-{i:03d}"
        while True:
            try:
                nic = await client.network_interfaces.get(ref.resource_group, ref.name)
                if any(c.name == name for c in nic.ip_configurations):
                    break  # written, but polling its operation was throttled
                primary = next(c for c in nic.ip_configurations if c.primary)
                nic.ip_configurations.append(NetworkInterfaceIPConfiguration(
                    name=name, subnet=Subnet(id=primary.subnet.id), primary=False,
                    private_ip_allocation_method="Dynamic"))
                poller = await client.network_interfaces.begin_create_or_update(
                    ref.resource_group, ref.name, nic, polling_interval=polling_interval)
                await poller.result()
                break
            except HttpResponseError as e:
                if e.status_code not in (409, 429):  # throttled, or the last write still runs
                    raise
                outlasted += 1
                headers = dict(getattr(e.response, "headers", None) or {})
                await asyncio.sleep(retry_after_seconds(headers) or 1.0)
    return outlasted


async def run_baseline(settings: AzureSettings, nics: int, per_nic: int) -> dict[str, Any]:
    with ArmEmulator(ArmConfig()) as emulator:
        vms = topology(emulator, nics)
        client = NetworkManagementClient(
            emulator.credential(), vms[0].vm_id.split("/")[2], base_url=emulator.arm_url,
            connection_verify=str(emulator.ca_path), polling_interval=settings.polling_interval)
        started = time.monotonic()
        async with client:
            outlasted = await asyncio.gather(*(
                add_one_at_a_time(client, vm, per_nic, settings.polling_interval) for vm in vms))
        seconds = time.monotonic() - started
        check(emulator, vms, per_nic)
        return {**tally(emulator), "seconds": seconds, "gave_up_and_retried": sum(outlasted)}


async def main(nics: int, per_nic: int) -> dict[str, Any]:
    settings = AzureSettings()  # the product's defaults: pacing and polling as shipped
    emulator_defaults = ArmConfig()
    print(f"adapter: {nics} NICs x {per_nic} addresses ...", flush=True)
    adapter = await run_adapter(settings, nics, per_nic)
    print(f"  {adapter}", flush=True)
    print("baseline: one write per address ...", flush=True)
    baseline = await run_baseline(settings, nics, per_nic)
    print(f"  {baseline}", flush=True)
    return {
        "nics": nics,
        "addresses_per_nic": per_nic,
        "adapter_requests": adapter["requests"],
        "adapter_puts": adapter["puts"],
        "adapter_gets": adapter["gets"],
        "adapter_throttled_responses": adapter["throttled"],
        "adapter_seconds": round(adapter["seconds"], 3),
        "baseline_requests": baseline["requests"],
        "baseline_puts": baseline["puts"],
        "baseline_gets": baseline["gets"],
        "baseline_seconds": round(baseline["seconds"], 3),
        "throttled_responses": baseline["throttled"],
        "baseline_calls_that_outlasted_sdk_retries": baseline["gave_up_and_retried"],
        "request_ratio": round(baseline["requests"] / max(1, adapter["requests"]), 1),
        "speedup": round(baseline["seconds"] / max(1e-9, adapter["seconds"]), 1),
        "emulator": {"write_burst": emulator_defaults.write_burst,
                     "write_qps": emulator_defaults.write_qps,
                     "read_burst": emulator_defaults.read_burst,
                     "read_qps": emulator_defaults.read_qps,
                     "lro_polls": emulator_defaults.lro_polls},
        "adapter_settings": {"write_qps": settings.write_qps, "write_burst": settings.write_burst,
                             "read_qps": settings.read_qps, "read_burst": settings.read_burst,
                             "polling_interval": settings.polling_interval},
        "versions": {"python": platform.python_version(),
                     "azure-mgmt-network": version("azure-mgmt-network"),
                     "azure-core": version("azure-core")},
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nics", type=int, default=100)
    parser.add_argument("--addresses-per-nic", type=int, default=32)
    args = parser.parse_args()
    result = asyncio.run(main(args.nics, args.addresses_per_nic))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
