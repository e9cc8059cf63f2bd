"""``make demo``: azure-cni on a simulated Azure VNet, left running until ``make demo-down``.

``up`` starts a supervisor process in the background (it owns the emulator, the fabric and
every process), waits for it to report, prints what the demo shows and returns. ``down`` asks
the supervisor to tear everything down, then checks that no namespace, process or rule of the
demo is left and removes stragglers itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from azure_cni_sim import workloads
from azure_cni_sim.kubenode import mounts_under, remove_cgroups, unmount_under
from azure_cni_sim.procs import owned_pids, stop_owned
from azure_cni_sim.procstat import ProcStatError
from azure_cni_sim.prometheus import answered_examples, leader_instances, scrape_problems
from azure_cni_sim.tools import ToolMissing, find_tool
from azure_cni_sim.vnet import INTERNET_HOST, ONPREM_HOST, WIRESERVER
from azure_cni_sim.world import World, WorldError, namespaces_with_prefix

log = logging.getLogger(__name__)

STATE = "state.json"
DEFAULT_PREFIX = "azdemo"


@dataclass
class DemoState:
    status: str  # starting | ready | failed | stopping | stopped
    pid: int
    owner: str
    prefix: str
    kubeconfig: str = ""
    report: str = ""
    error: str = ""
    progress: tuple[str, ...] = ()
    #: each VM's work directory and network namespace (``make conformance`` imports its
    #: images into the nodes' runtimes), and the on-premises host's network namespace
    vms: dict[str, dict[str, str]] = field(default_factory=dict)
    onprem_netns: str = ""

    def write(self, state_dir: Path) -> None:
        tmp = state_dir / (STATE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(state_dir / STATE)

    @classmethod
    def read(cls, state_dir: Path) -> DemoState | None:
        try:
            data = json.loads((state_dir / STATE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        data["progress"] = tuple(data.get("progress") or ())
        return cls(**data)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- what the demo shows -------------------------------------------------------------------


def _check(ok: bool) -> str:
    return "ok" if ok else "FAILED"


def _answered(answer: dict[str, Any] | None, what: str = "") -> str:
    if answer is None:
        return "no answer"
    return f"answered by {answer.get('pod') or answer.get('host')}, which saw {answer['seen']}" \
        + (f" ({what})" if what else "")


def report(world: World) -> str:
    """Run the demo's checks on a running world and describe them for a person."""
    lines = []
    for command in (("get", "nodes"), ("get", "pods", "-A", "-o", "wide"),
                    ("-n", "kube-system", "get", "lease", "azure-cni-operator"),
                    ("get", "nip", "-o", "wide")):
        lines += [f"$ kubectl {' '.join(command)}",
                  world.kubectl(*command).stdout.rstrip(), ""]
    web = workloads.pods(world, "app=web")
    client = min(web, key=lambda p: p.node)
    far = next(p for p in web if p.node != client.node)
    cluster_ip, node_port = workloads.service(world, "web")
    whoami = workloads.WHOAMI
    rows: list[tuple[str, str]] = []

    seen = world.capture_on_fabric(client.node, f"icmp and host {far.ip}",
                                   lambda: workloads.ping(world, client, far.ip), packets=2)
    plain = any(f"{client.ip} > {far.ip}" in line for line in seen)
    rows.append(("pod to pod across nodes",
                 f"{client.name} ({client.ip}, {client.node}) -> {far.name} ({far.ip}, "
                 f"{far.node}): {_check(bool(seen))}; "
                 + (f"the VNet carried it as {client.ip} > {far.ip} (no NAT, no tunnel)"
                    if plain else "the fabric did not see the pods' own addresses")))
    by_node = {p.name: p.node for p in web}

    def from_another_node(url: str) -> str:
        answer = None
        for _ in range(12):  # the Service picks an endpoint at random: find another node's
            answer = workloads.http_get(world, client, url)
            if answer is not None and by_node.get(answer["pod"]) != client.node:
                break
        return _answered(answer, f"on {by_node.get(answer['pod'], '?')}" if answer else "")

    rows.append(("pod to ClusterIP Service", f"{client.name} -> web {cluster_ip}:80: "
                 + from_another_node(f"http://{cluster_ip}{whoami}")))
    node_ip = world.vms[far.node].primary_ip
    via_node_port = workloads.onprem_get(world, f"http://{node_ip}:{node_port}{whoami}")
    rows.append(("on-premises to NodePort",
                 f"{ONPREM_HOST} -> {far.node} {node_ip}:{node_port}: " + _answered(
                     via_node_port, "the node: kube-proxy masquerades NodePort traffic"
                     if via_node_port and via_node_port["seen"] == node_ip else "")))
    name = "web.default.svc.cluster.local"
    found = workloads.resolve(world, client, name)
    rows.append(("cluster DNS",
                 f"{client.name}: {name} -> {', '.join(found) or 'not found'}"
                 + (" (the ClusterIP, from kube-dns); GET: "
                    + from_another_node(f"http://{name}{whoami}") if found == [cluster_ip]
                    else "")))
    direct = workloads.onprem_get(world, f"http://{far.ip}:{workloads.WEB_PORT}{whoami}")
    rows.append(("on-premises to a pod",
                 f"{ONPREM_HOST} -> {far.name} ({far.ip}): " + _answered(
                     direct, "its own address: no NAT" if direct and
                     direct["seen"] == ONPREM_HOST else "")))
    primary = world.vms[client.node].primary_ip
    internet = workloads.http_get(world, client, f"http://{INTERNET_HOST}/")
    rows.append(("pod to internet",
                 f"{client.name} -> {INTERNET_HOST}: " + _answered(
                     internet, f"{client.node}'s primary address: SNAT"
                     if internet and internet["seen"] == primary else "")))
    wire = workloads.http_get(world, client, f"http://{WIRESERVER}/", timeout=2)
    rows.append(("pod to Azure wireserver",
                 f"{client.name} -> {WIRESERVER}:80: "
                 + ("reachable (it should not be)" if wire else "refused: pods are kept away")))
    if world.prometheus is not None:
        rows += prometheus_rows(world)
    rows.append(memory_row(world))
    width = max(len(what) for what, _ in rows) + 2
    lines += [f"{what:<{width}}{observed}" for what, observed in rows]
    if world.prometheus is not None:
        lines += ["", f"Prometheus's HTTP API (the web UI is not built): {world.prometheus.url}",
                  *answered_examples(world.prometheus)]
    else:
        lines += ["", "Prometheus: still being built in the background (.cache/build-beside.log) "
                      "when the demo started; `make demo-down && make demo` shows it once "
                      "it is built."]
    return "\n".join(lines)


def prometheus_rows(world: World) -> list[tuple[str, str]]:
    """What the cluster's Prometheus scrapes, whether it agrees with the pools, its alerts."""
    api = world.prometheus
    assert api is not None
    nodes = sorted(world.vms)
    problems = scrape_problems(api, nodes)
    leaders = leader_instances(api)
    rows = [("Prometheus targets", f"FAILED: {'; '.join(problems)}" if problems else
             f"up == 1 for the operators (leading: {', '.join(leaders)}) and "
             f"the agents on {', '.join(nodes)}, found through the chart's ServiceMonitors")]
    try:
        world.wait_prometheus_agrees_with_pools()
        agreed = f"Prometheus says what kubectl get nip says on {', '.join(nodes)} " \
                 "(ALLOCATED, USED, COOLING)"
    except WorldError as e:
        agreed = f"FAILED: {e}"
    rows.append(("Prometheus and pools", agreed))
    alerts = api.alerting_rules()
    firing = sorted(name for name, state in alerts.items() if state == "firing")
    rows.append(("Prometheus alerts", f"{len(alerts)} rules of the chart's PrometheusRule "
                 f"loaded; firing: {', '.join(firing) or 'none'}"))
    return rows


def memory_row(world: World) -> tuple[str, str]:
    """The resident memory of the operator and of each agent, read inside their pods as an
    admin would (``kubectl exec <pod> -- cat /proc/1/status``): now, and its peak."""
    parts = []
    for component in ("operator", "agent"):
        for pod, node in sorted(world.component_pods(component).items(), key=lambda p: p[1]):
            try:
                memory = world.pod_memory(pod)
                shown = f"{memory.rss_mb:.0f} MB (peak {memory.peak_mb:.0f} MB)"
            except ProcStatError as e:
                shown = f"FAILED: {e}"
            parts.append(f"{component} {pod if component == 'operator' else 'on ' + node} "
                         f"{shown}")
    return ("memory (RSS) of azure-cni", "; ".join(parts) or "FAILED: no pods found")


# -- the supervisor ------------------------------------------------------------------------


def monitoring_built() -> bool:
    """Prometheus and the Prometheus Operator's CRDs are built (``make demo`` builds them
    beside the demo and starts the demo without them if they are not ready in time)."""
    try:
        find_tool("prometheus")
        find_tool("prometheus-operator-crds")
    except ToolMissing:
        return False
    return True


def serve(state_dir: Path, prefix: str, vm_count: int = 3, replicas: int = 6) -> int:
    """Run the demo in the foreground until SIGTERM; record progress in the state file."""
    state_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(state_dir / "world", ignore_errors=True)  # a previous demo's logs
    world = World(state_dir / "world", vm_count=vm_count, prefix=prefix,
                  monitoring=monitoring_built())
    state = DemoState("starting", os.getpid(), world.owner, prefix)
    state.write(state_dir)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    started = time.monotonic()

    def progress(message: str) -> None:
        state.progress = (*state.progress, f"[{time.monotonic() - started:5.0f}s] {message}")
        state.write(state_dir)

    code = 0
    try:
        world.start(progress=progress)
        progress(f"deploying web: {replicas} pods spread over the nodes, a NodePort Service")
        workloads.deploy_web(world, "default", replicas)
        workloads.wait_pools_count_their_pods(world)
        progress("checking pod to pod, Services, DNS, on-premises, internet and wireserver")
        state.report = report(world)
        assert world.cluster is not None and world.fabric is not None
        state.kubeconfig = str(world.cluster.kubeconfig)
        state.vms = {name: {"workdir": str(node.workdir), "netns": node.netns}
                     for name, node in world.nodes.items()}
        state.onprem_netns = world.fabric.onprem_ns
        state.status = "ready"
        progress("ready")
        stop.wait()
    except Exception as e:
        log.exception("event=demo_failed")
        state.status, state.error = "failed", str(e)
        state.write(state_dir)
        code = 1
    finally:
        if state.status != "failed":
            state.status = "stopping"
            state.write(state_dir)
        world.stop()
        if state.status != "failed":
            state.status = "stopped"
            state.write(state_dir)
    return code


# -- the command line's side ---------------------------------------------------------------


def up(state_dir: Path, prefix: str = DEFAULT_PREFIX, timeout: float = 600,
       echo: Callable[[str], None] = print) -> int:
    """Start the demo in the background and print what it shows; 0 when it is up."""
    if os.geteuid() != 0:
        echo("azure-cni demo: needs root (it creates network namespaces and runs containerd)")
        return 1
    existing = DemoState.read(state_dir)
    if existing is not None and existing.status in ("starting", "ready") and \
            _alive(existing.pid):
        echo(f"the demo is already running (supervisor pid {existing.pid}); "
             "stop it with: make demo-down")
        return 1
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE).unlink(missing_ok=True)
    logfile = (state_dir / "demo.log").open("ab")
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "azure_cni_sim.demo", "serve", "--state-dir", str(state_dir),
         "--prefix", prefix], stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile,
        start_new_session=True)
    shown = 0
    deadline = time.monotonic() + timeout
    while True:
        state = DemoState.read(state_dir)
        if state is not None:
            for line in state.progress[shown:]:
                echo(f"... {line}")
            shown = len(state.progress)
            if state.status == "ready":
                break
            if state.status in ("failed", "stopped") or supervisor.poll() is not None:
                supervisor.wait(120)
                echo(f"azure-cni demo: failed: {state.error or 'the supervisor exited'}")
                echo(f"the log is {state_dir / 'demo.log'}; everything it started was "
                     "removed")
                return 1
        elif supervisor.poll() is not None:
            echo(f"azure-cni demo: the supervisor exited at once; see {state_dir / 'demo.log'}")
            return 1
        if time.monotonic() > deadline:
            echo(f"azure-cni demo: not up after {timeout:.0f}s; stopping it")
            down(state_dir, echo=echo)
            return 1
        time.sleep(0.5)
    echo("")
    echo(state.report)
    echo("")
    echo(f"The demo keeps running. Use kubectl on it:  export KUBECONFIG={state.kubeconfig}")
    echo("Stop it and remove everything it created:  make demo-down")
    return 0


def down(state_dir: Path, echo: Callable[[str], None] = print) -> int:
    """Stop the demo and verify nothing of it remains; 0 when clean."""
    state = DemoState.read(state_dir)
    if state is None:
        echo(f"no demo recorded in {state_dir}; nothing to stop")
        return 0
    if _alive(state.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + 180
        while _alive(state.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    # what a supervisor that died (or was killed) could not remove itself
    stragglers = stop_owned(state.owner, timeout=5)
    remove_cgroups(f"{state.prefix}-*")  # the VMs' containers, and their cgroups
    unmount_under(state_dir)  # the VMs' mount namespaces
    for name in namespaces_with_prefix(state.prefix):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    remaining = owned_pids(state.owner) + [int(p) for p in ([state.pid] if _alive(state.pid)
                                                           else [])]
    cgroups = remove_cgroups(f"{state.prefix}-*", kill=False, remove=False)
    mounts = mounts_under(state_dir)
    if remaining or namespaces_with_prefix(state.prefix) or cgroups or mounts:
        echo(f"azure-cni demo: could not remove everything: processes {remaining}, "
             f"namespaces {namespaces_with_prefix(state.prefix)}, cgroups {cgroups}, "
             f"mounts {mounts}")
        return 1
    (state_dir / STATE).unlink(missing_ok=True)
    extra = f" ({len(stragglers)} stubborn processes killed)" if stragglers else ""
    echo(f"demo stopped: no namespace, process, mount, cgroup or rule of it is left{extra}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse  # noqa: PLC0415 - this entry point is only the supervisor's

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--prefix", default=DEFAULT_PREFIX)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s "
                        "%(message)s")
    for noisy in ("azure", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return serve(args.state_dir, args.prefix)


if __name__ == "__main__":
    sys.exit(main())
