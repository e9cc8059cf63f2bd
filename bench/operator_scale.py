"""Benchmark: N nodes from empty to their warm pool, through the real operator, as deployed.

A real API server, the ARM emulator with ARM's own token buckets (reads 250 + 25/s, writes
200 + 10/s per subscription), N VMs and N Node objects as kubelets write them (about 9 KiB
each: labels, conditions, addresses, capacity, nodeInfo, images; ``kubeletnodes``), whose
status every node reports at kubelet's pace during the whole run: one strategic-merge PATCH
per node every ``nodeStatusReportFrequency`` (5 minutes, kubelet's default when nothing
changes), the nodes spread evenly, so N/300 reports a second (16.7/s at 5,000 nodes), each a
watch event carrying the whole Node to the operator. Node Leases (kubelet's 10 s heartbeats)
are not sent: the operator never watches them, and 500 writes a second would load this
machine's API server, not the operator.

The operator runs **from the built image, as the chart runs it** (``chartrun``): the chart is
rendered with ``helm template``, the operator's container is run by a private containerd
through its CRI with the chart's command, environment, user 65532, read-only root, dropped
capabilities, memory limit, settings file (the ConfigMap) and emptyDir /tmp, in the host
network (as the chart's ``hostNetwork: true``), talking to the API server with its own
service account token and the chart's RBAC. Its settings are the chart's defaults, except
that it leaves no reserve of ARM's budget to other clients. The simulation only adds where
IMDS is (``AZURE_POD_IDENTITY_AUTHORITY_HOST``) and the emulator's CA (a ConfigMap mounted
through ``operatorDeployment.extraVolumes``, as in ``make demo``).

The baseline is what ARM's buckets allow, independent of the operator: W writes cannot finish
sooner than (W - 200) / 10 s and R reads than (R - 250) / 25 s (both buckets start full);
both floors are recorded, and the ratio to each. Recorded: NIC writes (one per node
expected), ARM reads and writes, 429s, seconds to converge (every pool Ready with its warm
target), requests the operator made to the API server (its own counter), its peak RSS
(VmHWM of the container's process, read from /proc on this machine); then, with nothing
changing but the status reports, for ``--steady-seconds``: its CPU seconds, API server
requests and ARM requests per minute.

    .venv/bin/python bench/operator_scale.py [--nodes 500] [--scale-set] [--blocks]
    .venv/bin/python bench/operator_scale.py --nodes 3 --against-demo .cache/demo

bench/results/operator_scale.json keeps one run per node count; a run replaces its own.
``--against-demo`` (with ``make demo`` up, 3 pools) also reads the memory of the demo's
operator pod from inside it (``/proc/1/status`` through ``kubectl exec``) and records it next
to this run's, with whether the two peaks agree within 10%.
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

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from azure_cni.api.settings import Settings, settings_from_mapping  # noqa: E402
from azure_cni_sim.arm import ArmConfig, ArmEmulator, VmInfo  # noqa: E402
from azure_cni_sim.chartrun import ChartContainer, render_chart  # noqa: E402
from azure_cni_sim.cluster import LocalCluster, free_port, run_kubectl  # noqa: E402
from azure_cni_sim.containerd import Containerd  # noqa: E402
from azure_cni_sim.cpuprofile import StackSampler  # noqa: E402
from azure_cni_sim.demo import DemoState  # noqa: E402
from azure_cni_sim.images import BuiltImage, archived_image, ensure_images  # noqa: E402
from azure_cni_sim.kubeletnodes import StatusReporter, kubelet_node, register_nodes  # noqa: E402
from azure_cni_sim.node import apply_crd  # noqa: E402
from azure_cni_sim.procs import ProcessFailed  # noqa: E402
from azure_cni_sim.procstat import (  # noqa: E402
    Memory,
    cpu_seconds,
    machine_cpu,
    memory_of,
    pod_memory,
)
from azure_cni_sim.tools import find_tool  # noqa: E402
from azure_cni_sim.world import ARM_CA_CONFIGMAP, ARM_CA_DIR, NAMESPACE  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "operator_scale.json"
SCALE_SET_RESULTS = ROOT / "bench" / "results" / "scale_set.json"
ARM = ArmConfig()  # the emulator's defaults are ARM's documented buckets
#: the chart's default operator.leaseName
LEASE = "azure-cni-operator"
#: a pool's name, allocated count and Ready status, one line per watch event
READY = ('{.metadata.name}{" "}{.status.allocated}{" "}'
         '{.status.conditions[?(@.type=="Ready")].status}{"\\n"}')


class ReadyWatch:
    """``kubectl get --watch`` on the pools: the newest state of each, streamed (listing
    5,000 pools every few seconds would load the machine the benchmark measures). kubectl
    ends when its watch does (the API server closed it, a lost connection on a loaded
    machine): it is started again, and its new listing brings every pool's state back."""

    def __init__(self, kubeconfig: Path, target: int, log_path: Path) -> None:
        self.target = target
        self.kubeconfig = kubeconfig
        self.ready: set[str] = set()
        #: when the set of ready pools last changed
        self.last_change = time.monotonic()
        self.restarts = 0
        self._log_path = log_path
        self._stopping = False
        self._proc: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stopping:
            with self._log_path.open("a") as errors:
                self._proc = subprocess.Popen(
                    [str(find_tool("kubectl")), f"--kubeconfig={self.kubeconfig}", "get",
                     "nodeippools", "--watch", "-o", f"jsonpath={READY}"],
                    stdout=subprocess.PIPE, stderr=errors, text=True)
            assert self._proc.stdout is not None
            for line in self._proc.stdout:
                self._record(line.split())
            self._proc.wait()
            if not self._stopping:
                self.restarts += 1
                print(f"  kubectl get --watch ended ({self._proc.returncode}); again",
                      flush=True)
                time.sleep(1)

    def _record(self, parts: list[str]) -> None:
        if not parts:
            return
        ready = parts[1:] == [str(self.target), "True"]
        if ready != (parts[0] in self.ready):
            (self.ready.add if ready else self.ready.discard)(parts[0])
            self.last_change = time.monotonic()

    def stop(self) -> None:
        self._stopping = True
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)


def floors(writes: int, reads: int) -> dict[str, float]:
    """What ARM's buckets allow for these requests (both start full): the writes alone, the
    reads alone, and the two together (the larger)."""
    write = max((writes - ARM.write_burst) / ARM.write_qps, 0.0)
    read = max((reads - ARM.read_burst) / ARM.read_qps, 0.0)
    return {"write": write, "read": read, "both": max(write, read)}


def topology(emulator: ArmEmulator, nodes: int, scale_set: bool = False) -> list[VmInfo]:
    vnet = emulator.add_vnet("bench", "198.18.0.0/15", {"nodes": "198.18.0.0/16"})
    if scale_set:  # every node an instance of one Uniform scale set
        pool = emulator.add_scale_set("pool", vnet.subnet_ids["nodes"])
        return [emulator.add_instance(pool) for _ in range(nodes)]
    return [emulator.add_vm(f"vm{i:05d}", vnet.subnet_ids["nodes"]) for i in range(nodes)]


def chart_values(image: BuiltImage, emulator: ArmEmulator, pool: dict[str, Any] | None
                 ) -> dict[str, Any]:
    """The chart's defaults but for the image, where ARM is, no reserve of ARM's budget,
    and ports of their own (the operator is in the host network, next to other benchmarks)."""
    return {
        "image": {"repository": image.repository, "tag": image.tag},
        "pool": dict(pool or {}),
        "azure": {"armEndpoint": emulator.arm_url, "credential": "managedIdentity",
                  "caBundle": f"{ARM_CA_DIR}/ca.crt", "readReserve": 0, "writeReserve": 0},
        "operator": {"metricsPort": free_port(), "healthPort": free_port()},
        "operatorDeployment": {
            "extraVolumes": [{"name": "arm-ca", "configMap": {"name": ARM_CA_CONFIGMAP}}],
            "extraVolumeMounts": [{"name": "arm-ca", "mountPath": ARM_CA_DIR,
                                   "readOnly": True}]},
    }


def rendered_settings(manifests: list[dict[str, Any]]) -> Settings:
    """The settings the operator reads: the chart's ConfigMap."""
    (config,) = [o for o in manifests if o["kind"] == "ConfigMap"
                 and "config.yaml" in (o.get("data") or {})]
    return settings_from_mapping(yaml.safe_load(config["data"]["config.yaml"]))


def warm_target(settings: Settings, blocks: bool) -> int:
    """The addresses each pool holds once warm (whole blocks in Blocks mode)."""
    pool = settings.pool
    target = max(pool.min_ips, pool.min_free_ips + (-pool.min_free_ips) % pool.batch_size)
    if blocks:
        unit = 2 ** (32 - pool.block_prefix_length)
        target = -(-target // unit) * unit
    return target


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


def writes_per_interval(emulator: ArmEmulator, since: float, pattern: str,
                        seconds: float = 10.0) -> list[int]:
    """NIC writes answered in each ``seconds`` from ``since`` (wall clock), as ARM saw them:
    where the run falls below the write bucket's 10 a second."""
    counts: list[int] = []
    for record in emulator.requests("PUT", pattern):
        if record.status >= 300:
            continue
        slot = max(0, int((record.at - since) // seconds))
        counts.extend([0] * (slot + 1 - len(counts)))
        counts[slot] += 1
    return counts


def arm_counts(emulator: ArmEmulator) -> dict[str, int]:
    records = emulator.requests()
    return {"reads": sum(1 for r in records if r.method == "GET"),
            "writes": sum(1 for r in records if r.method != "GET"),
            "throttled": sum(1 for r in records if r.status == 429)}


#: the operator's work at rest, in the order a sampled stack is attributed
AT_REST_PARTS = [
    ("kopf: Node and pool watch events", ["worker", "watcher", "process_resource_event",
                                          "watch_objs", "infinite_watch"]),
    ("NIC sweep", ["PoolController.sweep", "PoolController._sweep_forever",
                   "AzureAdapter._nic_pages", "AzureAdapter.list_nics", "parse_nic",
                   "listed_nic"]),
    ("Lease", ["LeaderElector", "KubeLeaseStore"]),
    ("TLS and socket reads", ["SSLProtocol", "_SelectorSocketTransport._read_ready"]),
]


def run(workdir: Path, nodes: int, steady_seconds: float, images: dict[str, BuiltImage], *,
        scale_set: bool = False, blocks: bool = False) -> dict[str, Any]:
    owner = uuid.uuid4().hex
    image, pause = images["azure-cni"], images["pause"]
    with LocalCluster(workdir / "cluster", controller_manager=False, owner=owner) as cluster, \
            ArmEmulator(ArmConfig()) as emulator:
        apply_crd(cluster.kubectl)  # every CRD the chart ships
        vms = topology(emulator, nodes, scale_set)
        register_nodes(cluster, [kubelet_node(vm.name, vm.provider_id, vm.primary_ip)
                                 for vm in vms])
        node_bytes = len(cluster.get(f"/api/v1/nodes/{vms[-1].name}")[1])
        manifests = render_chart(chart_values(image, emulator, {"mode": "Blocks"}
                                              if blocks else None), workdir / "chart")
        settings = rendered_settings(manifests)
        replicas = next(o for o in manifests if o["kind"] == "Deployment")["spec"]["replicas"]
        target = warm_target(settings, blocks)
        ca = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": ARM_CA_CONFIGMAP, "namespace": NAMESPACE},
              "data": {"ca.crt": emulator.ca_path.read_text()}}
        runtime = Containerd(workdir / "containerd")
        runtime.start(pause.archive, image.archive, sandbox_image=pause.image)
        operator = ChartContainer(
            manifests, "Deployment", "operator", image=image, runtime=runtime,
            workdir=workdir / "operator", cluster=cluster, node_name=vms[0].name,
            extra_objects=[ca],
            # IMDS of the operator's VM: on a node the SDK finds it at 169.254.169.254
            extra_env={"AZURE_POD_IDENTITY_AUTHORITY_HOST": emulator.imds_url_for(vms[0].name)})
        reporter = StatusReporter(cluster, [vm.name for vm in vms]).start()
        emulator.reset_requests()
        metrics_port = settings.operator.metrics_port
        watch = ReadyWatch(cluster.kubeconfig, target, workdir / "ready-watch.log")
        fill_load, steady_load = LoadSampler(), LoadSampler()
        peak = Memory(0, 0)
        #: every 10 s while converging: seconds, pools ready, RSS, the operator's CPU seconds
        timeline: list[dict[str, float]] = []
        try:
            started, wall_started, machine0 = time.monotonic(), time.time(), machine_cpu()
            operator.start(timeout=300)
            reported = 0.0
            while len(watch.ready) < nodes:
                time.sleep(0.5)
                elapsed = time.monotonic() - started
                try:
                    operator.check_running()
                    if elapsed > 3600:
                        raise TimeoutError(f"only {len(watch.ready)}/{nodes} pools converged "
                                           "in an hour")
                except (ProcessFailed, TimeoutError) as e:
                    # what was measured until then is recorded, with why the run ended
                    return {"nodes": nodes, "completed": False, "failure": str(e)[-3000:],
                            "seconds_until_failure": round(elapsed, 1),
                            "pools_ready": len(watch.ready), "arm": arm_counts(emulator),
                            "nic_writes": emulator.request_count(
                                "PUT", "*/networkinterfaces/*"),
                            "operator_peak_rss_mb_before_failure": peak.peak_mb,
                            "operator": operator.describe(),
                            "replicas": {"run": 1, "chart_default": replicas,
                                         "leader_election":
                                         settings.operator.leader_election},
                            "machine": {"cores": os.cpu_count(),
                                        "loadavg_1m_while_converging": fill_load.summary()}}
                fill_load.sample()
                if elapsed - reported >= 10:
                    reported = elapsed
                    peak = memory_of(operator.pid)  # the last reading before any failure
                    timeline.append({"seconds": round(elapsed), "ready": len(watch.ready),
                                     "rss_mb": peak.rss_mb,
                                     "operator_cpu_seconds": cpu_seconds(operator.pid)})
                    print(f"  {elapsed:6.0f}s  {len(watch.ready)}/{nodes} pools ready "
                          f"(operator peak RSS {peak.peak_mb} MB)", flush=True)
            seconds = watch.last_change - started
            converge_cpu = cpu_seconds(operator.pid)
            machine_busy = machine_cpu().busy_fraction_since(machine0)
            counts = arm_counts(emulator)
            # a Uniform instance's NIC is written by a PUT of the instance model
            nic_pattern = ("*/virtualmachinescalesets/*/virtualmachines/*" if scale_set
                           else "*/networkinterfaces/*")
            puts = emulator.request_count("PUT", nic_pattern)
            write_rate = writes_per_interval(emulator, wall_started, nic_pattern)
            api_requests = operator_counter(metrics_port,
                                            "azure_cni_operator_kube_requests_total")
            converged = memory_of(operator.pid)
            # one replica of the chart's, with leader election on as the chart sets it: it
            # holds the Lease (a standby would only renew its claim attempts, with no pools)
            holder = cluster.kubectl("get", "lease", "-n", NAMESPACE,
                                     settings.operator.lease_name, "-o",
                                     "jsonpath={.spec.holderIdentity}").stdout.strip()
            # nothing changes from here on but the nodes' status reports: what does the
            # operator cost at rest?
            time.sleep(5)  # let the last status writes' events pass
            cpu0, api0 = cpu_seconds(operator.pid), operator_counter(
                metrics_port, "azure_cni_operator_kube_requests_total")
            arm0 = len(emulator.requests())
            sampler = StackSampler(operator.pid, steady_seconds, workdir / "steady.stacks")
            steady_end = time.monotonic() + steady_seconds
            while time.monotonic() < steady_end:
                time.sleep(min(5.0, max(0.0, steady_end - time.monotonic())))
                steady_load.sample()
                operator.check_running()
            minutes = steady_seconds / 60.0
            steady = {
                # what those CPU seconds were spent on
                "cpu_by_part": sampler.result(AT_REST_PARTS),
                "seconds_observed": steady_seconds,
                "operator_cpu_seconds_per_minute": round(
                    (cpu_seconds(operator.pid) - cpu0) / minutes, 2),
                "api_requests_per_minute": round((operator_counter(
                    metrics_port, "azure_cni_operator_kube_requests_total") - api0) / minutes, 1),
                "arm_requests_per_minute": round((len(emulator.requests()) - arm0) / minutes, 1),
            }
            peak = memory_of(operator.pid)  # VmHWM: the peak of the whole run
            how = operator.describe()
        finally:
            for stop in (reporter.stop, watch.stop, operator.stop, runtime.stop):
                try:  # each of them, whatever the others do
                    stop()
                except Exception as e:  # noqa: BLE001 - report and go on cleaning up
                    print(f"  cleaning up: {stop.__qualname__} failed: {e!r}", flush=True)
        floor = floors(counts["writes"], counts["reads"])
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
            "floor_seconds": round(floor["both"], 1),
            "write_floor_seconds": round(floor["write"], 1),
            "read_floor_seconds": round(floor["read"], 1),
            "ratio_to_floor": round(seconds / floor["both"], 3) if floor["both"] else None,
            "ratio_to_write_floor": round(seconds / floor["write"], 3) if floor["write"]
            else None,
            "api_requests_by_operator": int(api_requests),
            # where the writes fell below the bucket's 10/s: start-up, tail, or in between
            "nic_writes_per_10s": write_rate,
            "operator_cpu_seconds_while_converging": round(converge_cpu, 1),
            "operator_cpu_share_of_one_core_while_converging": round(converge_cpu / seconds, 3)
            if seconds else None,
            "timeline": timeline,
            "ready_watch_restarts": watch.restarts,
            # (the kernel's counters are batched per CPU: an earlier VmRSS can read a
            # fraction above a later VmHWM)
            "operator_peak_rss_mb": max(peak.peak_mb, converged.peak_mb, converged.rss_mb),
            "operator_rss_mb_when_converged": converged.rss_mb,
            "operator_rss_mb_at_rest": peak.rss_mb,
            "steady_state": steady,
            "operator": how,
            "replicas": {"run": 1, "chart_default": replicas,
                         "leader_election": settings.operator.leader_election,
                         "lease_holder_is_this_replica":
                         holder.partition("_")[0] == operator.pod.name},
            "node_objects": {"bytes_each": node_bytes,
                             "written_as": "kubelet registers them (kubeletnodes.kubelet_node)",
                             "status_reports": reporter.summary(),
                             "leases": "not sent: the operator does not watch them"},
            "machine": {"cores": os.cpu_count(),
                        "loadavg_1m_while_converging": fill_load.summary(),
                        # every core's time, all processes: is the machine the limit?
                        "cpu_busy_fraction_while_converging": round(machine_busy, 3),
                        "loadavg_1m_in_steady_state": steady_load.summary()},
        }


def demo_operator_memory(state_dir: Path) -> dict[str, Any]:
    """The memory of ``make demo``'s operator pod, read inside it, and its pool count."""
    state = DemoState.read(state_dir)
    if state is None or state.status != "ready":
        raise SystemExit(f"--against-demo: no demo is up in {state_dir} (run make demo)")
    kubeconfig = Path(state.kubeconfig)

    def kubectl(*args: str, check: bool = True, timeout: float = 60
                ) -> subprocess.CompletedProcess[str]:
        return run_kubectl(kubeconfig, *args, check=check, timeout=timeout)

    # the leader is the replica that works (and the one this benchmark runs); a standby
    # holds no pool state
    holder = kubectl("get", "lease", "-n", NAMESPACE, LEASE, "-o",
                     "jsonpath={.spec.holderIdentity}").stdout.strip()
    # the identity is the pod's name, "_", and a suffix of the process (a pod's name has no _)
    pod = holder.partition("_")[0]
    if not pod:
        raise SystemExit(f"--against-demo: the Lease {NAMESPACE}/{LEASE} names no leader")
    pods = kubectl("get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator",
                   "-o", "jsonpath={.items[*].metadata.name}").stdout.split()
    memory = pod_memory(kubectl, NAMESPACE, pod)
    standbys = {name: pod_memory(kubectl, NAMESPACE, name) for name in pods if name != pod}
    pools = len(kubectl("get", "nodeippools", "-o", "name").stdout.split())
    image = kubectl("get", "pod", "-n", NAMESPACE, pod, "-o",
                    "jsonpath={.spec.containers[0].image}").stdout
    return {"pod": f"{NAMESPACE}/{pod}", "role": "leader (the Lease's holder)", "image": image,
            "pools": pools, "rss_mb": memory.rss_mb, "peak_rss_mb": memory.peak_mb,
            "standbys": {f"{NAMESPACE}/{name}": {"rss_mb": m.rss_mb, "peak_rss_mb": m.peak_mb}
                         for name, m in standbys.items()},
            "read_with": "kubectl exec <pod> -- cat /proc/1/status (VmRSS, VmHWM)"}


def compare_with_demo(result: dict[str, Any], demo: dict[str, Any]) -> dict[str, Any]:
    """Both peaks and both resting figures, and whether the peaks agree within 10%."""
    bench, pod = result["operator_peak_rss_mb"], demo["peak_rss_mb"]
    difference = abs(bench - pod) / pod
    return {"demo_operator_pod": demo,
            "bench_peak_rss_mb": bench, "bench_rss_mb_at_rest": result["operator_rss_mb_at_rest"],
            "peak_difference": round(difference, 3), "peaks_agree_within_10_percent":
            difference <= 0.10}


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
    parser.add_argument("--image-archive", type=Path,
                        help="run the operator from this OCI archive of the image (e.g. an "
                             "earlier build) instead of the one hack/build-images.sh builds now")
    parser.add_argument("--against-demo", type=Path, metavar="STATE_DIR",
                        help="also read the operator pod's memory in the running make demo "
                             "(its state directory, .cache/demo) and compare")
    args = parser.parse_args()
    args.out = args.out or (SCALE_SET_RESULTS if args.scale_set else RESULTS)
    demo = demo_operator_memory(args.against_demo) if args.against_demo else None
    images = ensure_images("pause", *(() if args.image_archive else ("azure-cni",)))
    if args.image_archive:
        images["azure-cni"] = archived_image("azure-cni", args.image_archive)
    with tempfile.TemporaryDirectory(prefix="azcni-bench-") as tmp:
        result = run(Path(tmp), args.nodes, args.steady_seconds, images,
                     scale_set=args.scale_set, blocks=args.blocks)
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if demo is not None and result.get("completed", True):
        result["against_demo"] = compare_with_demo(result, demo)
    if args.blocks:
        record_blocks(args.nodes, result)
        return
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    # runs of the operator from the image only: earlier ones measured the development
    # virtualenv, which compiled nothing at start (they are in git's history)
    runs: dict[str, Any] = {n: r for n, r in (previous.get("runs") or {}).items()
                            if "replicas" in r}
    runs[str(args.nodes)] = result
    doc = {
        "what": "N nodes (Node objects as kubelets write them, reporting status every 5 min) "
                "from no pool to a Ready warm pool through the operator run from the built "
                "image as the chart runs it, against the ARM emulator's token buckets; the "
                "floors are what those buckets allow for the writes made, (W-200)/10 s, and "
                "for the reads made, (R-250)/25 s",
        "emulator_buckets": {"reads": f"{ARM.read_burst} + {ARM.read_qps:g}/s",
                             "writes": f"{ARM.write_burst} + {ARM.write_qps:g}/s",
                             **({"compute_instance_updates":
                                 f"{ARM.compute_vm_updates_per_minute}/min per instance, "
                                 f"{ARM.compute_subscription_vm_updates_per_minute}/min per "
                                 "subscription"} if args.scale_set else {})},
        "operator_settings": "the chart's defaults, with azure.readReserve and "
                             "azure.writeReserve 0",
        "targets": {"peak_rss_mb_at_5000": 250, "ratio_to_write_floor": 1.1, "throttled": 0,
                    "nic_writes_per_node": 1, "arm_reads_per_node": 2.4,
                    "cpu_seconds_per_minute_at_rest": 1.0,
                    "peak_rss_agrees_with_the_demo_pod_within": 0.10},
        "runs": dict(sorted(runs.items(), key=lambda kv: int(kv[0]))),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not result.get("completed", True):
        raise SystemExit(f"the run did not complete: {result['failure'][:500]}")


if __name__ == "__main__":
    main()
