"""Benchmark: CNI ADD latency for a pod whose address is on the VM's second NIC (a pod
subnet) next to one on the primary NIC, and Debian's bridge + host-local, in the same run.

Three "host" network namespaces on this machine, each with its own plugin, pods alternating
host by host so background load hits all alike:

- primary: an agent whose pool is on the host's ``eth0`` (the VM's primary NIC);
- second NIC: an agent whose pool is on ``eth1`` (a second NIC, found by its MAC, in a pod
  subnet of its own), so its egress reconcile also lays the pod NIC's policy routing;
- reference: ``/usr/lib/cni/bridge`` + ``host-local``, containerd's classic configuration
  (``ipMasq`` on), the same independent baseline ``cni_latency.py`` uses.

The claim: a pod on the second NIC costs no more at ADD than one on the primary NIC (the
routing is per subnet, laid once, not per pod). Results: bench/results/pod_nic_latency.json.

    .venv/bin/python bench/pod_nic_latency.py [--pods 150]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from azure_cni.api.nodeippool import NicInfo  # noqa: E402
from azure_cni_sim.cluster import LocalCluster  # noqa: E402
from azure_cni_sim.node import LocalNode, apply_crd, publish_pool, setup_host_nic  # noqa: E402
from cni_latency import (  # noqa: E402
    REFERENCE_PLUGINS,
    NamespacedWorker,
    Side,
    namespaces,
    percentile,
    reference_config,
    run_sequential,
    summary,
)

RESULTS = ROOT / "bench" / "results" / "pod_nic_latency.json"
POD_NIC_MAC = "00-0D-3A-5E-C0-01"


def second_nic(host: str) -> None:
    """``eth1``: a second NIC with its ARM MAC, down and unconfigured, as the VM boots."""
    subprocess.run(["ip", "-n", host, "link", "add", "eth1", "address",
                    POD_NIC_MAC.replace("-", ":").lower(), "type", "veth", "peer", "name",
                    "eth1-fabric"], check=True)
    subprocess.run(["ip", "-n", host, "link", "set", "eth1-fabric", "up"], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=150)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("pod_nic_latency: needs root (network namespaces)", file=sys.stderr)
        return 1
    run_id = uuid.uuid4().hex[:6]
    load_before = os.getloadavg()
    hosts = [f"azcni-b-nic1-{run_id}", f"azcni-b-nic2-{run_id}", f"azcni-b-ref-{run_id}"]
    with tempfile.TemporaryDirectory(prefix="azcni-bench-") as tmp:
        work = Path(tmp)
        cluster = LocalCluster(work / "cluster", controller_manager=False)
        cluster.start()
        nodes: list[LocalNode] = []
        try:
            for host in hosts:
                subprocess.run(["ip", "netns", "add", host], check=True)
                setup_host_nic(host, primary_cidr="198.18.0.4/16", gateway="198.18.0.1")
                subprocess.run(["ip", "netns", "exec", host, "sysctl", "-qw",
                                "net.ipv4.ip_forward=1"], check=True)
            second_nic(hosts[1])
            apply_crd(cluster.kubectl)
            pools = {
                "primary": (hosts[0], "198.18", None),
                "second-nic": (hosts[1], "198.20", NicInfo(
                    id="/subscriptions/sim/nics/vm-pods", primary_ip="198.20.0.4",
                    subnet_id="/subscriptions/sim/subnets/pods", subnet_cidr="198.20.0.0/16",
                    vnet_address_space=("198.18.0.0/15", "198.20.0.0/16"), name="vm-pods",
                    mac_address=POD_NIC_MAC, primary_nic=False)),
            }
            sides = []
            for label, (host, net, nic) in pools.items():
                node = LocalNode(name=f"bench-{label}-{run_id}", netns=host,
                                 workdir=work / label, kubeconfig=cluster.kubeconfig,
                                 api_port=int(cluster.server.rsplit(":", 1)[1]),
                                 agent_settings={"cooldownSeconds": 0})
                nodes.append(node)
                node.start_portal()
                addresses = [f"{net}.{1 + i // 250}.{1 + i % 250}" for i in range(255)]
                publish_pool(cluster.kubectl, node.name, addresses,
                             subnet_cidr="198.18.0.0/16", vnet=("198.18.0.0/15",), nic=nic)
                node.start_agent()
                node.wait_ready()
                sides.append(Side(f"azure-cni ({label} NIC)", NamespacedWorker(host),
                                  node.shim_path, json.dumps(node.plugin_config()).encode(),
                                  str(node.bin_dir)))
            rules = subprocess.run(["ip", "-n", hosts[1], "rule"], capture_output=True,
                                   text=True, check=True).stdout
            if "198.20.0.0/16" not in rules:
                raise RuntimeError(f"the second NIC's agent laid no policy routing: {rules}")
            sides.append(Side("bridge+host-local", NamespacedWorker(hosts[2]),
                              REFERENCE_PLUGINS / "bridge",
                              json.dumps(reference_config(work / "ipam", True)).encode(),
                              str(REFERENCE_PLUGINS)))
            with namespaces(f"azcni-b-n{run_id}", args.pods * len(sides)) as pods:
                run_sequential(sides, pods, args.pods)
        finally:
            for node in nodes:
                node.stop()
            for host in hosts:
                subprocess.run(["ip", "netns", "del", host], check=False, capture_output=True)
            cluster.stop()

    primary, second, reference = sides
    p50 = {side.name: statistics.median(side.add) for side in sides}
    result: dict[str, Any] = {
        "what": "CNI ADD latency (process start to exit) of a pod on the VM's second NIC, next "
                "to one on the primary NIC and Debian's bridge+host-local, in the same run",
        "machine": {"cpus": os.cpu_count(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "pods_sequential": args.pods,
        "sequential": {side.name: {"add": summary(side.add), "del": summary(side.delete)}
                       for side in sides},
        "ratio_second_nic_add_p50_vs_primary": round(p50[second.name] / p50[primary.name], 3),
        "ratio_second_nic_add_p99_vs_primary": round(
            percentile(second.add, 99) / percentile(primary.add, 99), 3),
        "ratio_second_nic_add_p50_vs_reference": round(
            p50[second.name] / p50[reference.name], 3),
        "ratio_primary_add_p50_vs_reference": round(p50[primary.name] / p50[reference.name], 3),
        "notes": [
            "three host namespaces, pods alternating host by host so background load hits "
            "all alike; each plugin exec'd fresh per call with env + stdin",
            "the second NIC's routing (two rules, one table) is laid once by the agent's "
            "egress reconcile when it learns the pool's NIC, before the first ADD; an ADD "
            "adds nothing per pod for it",
            "reference: containernetworking-plugins bridge + host-local (Debian bookworm), "
            "ipMasq on, as in cni_latency.py",
        ],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k.startswith("ratio")}, indent=2))
    for side in sides:
        print(f"{side.name:32s} ADD {summary(side.add)}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
