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
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from azure_cni_sim.procs import owned_pids, stop_owned
from azure_cni_sim.vnet import INTERNET_HOST, ONPREM_HOST, WIRESERVER
from azure_cni_sim.world import Pod, World, first_pods, namespaces_with_prefix

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


def report(world: World, pods: list[Pod]) -> str:
    """Run the demo's checks on a running world and describe them for a person."""
    assert world.cluster is not None
    lines = ["$ kubectl get nodeippools -o wide",
             world.kubectl("get", "nodeippools", "-o", "wide").stdout.rstrip(), "",
             f"{'POD':<10} {'VM':<4} {'ADDRESS':<13} {'CREATED BY'}"]
    lines += [f"{p.name:<10} {p.vm:<4} {p.address:<13} "
              f"{'crictl runp (containerd)' if p.runtime == 'containerd' else 'CNI plugin'}"
              for p in pods]
    lines.append("")
    source = pods[0]
    other_vm = next(p for p in pods if p.vm != source.vm)
    same_vm = next((p for p in pods if p.vm == source.vm and p is not source), None)
    seen = world.capture_on_fabric(source.vm, f"icmp and host {other_vm.address}",
                                   lambda: world.ping(source, other_vm.address), packets=2)
    plain = any(f"{source.address} > {other_vm.address}" in line for line in seen)
    lines.append(f"pod to pod across VMs  {source.name} ({source.address}) -> {other_vm.name} "
                 f"({other_vm.address}) on {other_vm.vm}: {_check(bool(seen))}; "
                 + ("the VNet fabric carried it as "
                    f"{source.address} > {other_vm.address} (no NAT, no tunnel)"
                    if plain else "the fabric did not see the pods' own addresses"))
    if same_vm is not None:
        lines.append(f"pod to pod on one VM   {source.name} -> {same_vm.name} "
                     f"({same_vm.address}): {_check(world.ping(source, same_vm.address))}")
    vm_primary = world.vms[source.vm].primary_ip
    onprem = world.http_get(source, f"http://{ONPREM_HOST}/")
    lines.append(f"on-premises            {source.name} -> {ONPREM_HOST}: "
                 + (f"answered; it saw {onprem['seen']}"
                    + (" (the pod's own address)" if onprem["seen"] == source.address else "")
                    if onprem else "no answer"))
    internet = world.http_get(source, f"http://{INTERNET_HOST}/")
    lines.append(f"internet               {source.name} -> {INTERNET_HOST}: "
                 + (f"answered; it saw {internet['seen']}"
                    + (f" ({source.vm}'s primary address: SNAT)"
                       if internet["seen"] == vm_primary else "")
                    if internet else "no answer"))
    wire = world.http_get(source, f"http://{WIRESERVER}/", timeout=2)
    lines.append(f"Azure wireserver       {source.name} -> {WIRESERVER}:80: "
                 + ("reachable (it should not be)" if wire else "refused: pods are kept away"))
    return "\n".join(lines)


# -- the supervisor ------------------------------------------------------------------------


def serve(state_dir: Path, prefix: str, vm_count: int = 3, pods_per_vm: int = 2) -> int:
    """Run the demo in the foreground until SIGTERM; record progress in the state file."""
    state_dir.mkdir(parents=True, exist_ok=True)
    world = World(state_dir / "world", vm_count=vm_count, prefix=prefix)
    state = DemoState("starting", os.getpid(), world.owner, prefix)
    state.write(state_dir)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def progress(message: str) -> None:
        state.progress = (*state.progress, message)
        state.write(state_dir)

    code = 0
    try:
        world.start(progress=progress)
        progress("waiting for every pool to be Ready")
        world.wait_pools_ready()
        progress(f"starting {pods_per_vm} pods per VM")
        pods = list(first_pods(world, pods_per_vm))
        world.wait_pools_settled()
        progress("checking pod-to-pod, on-premises and internet connectivity")
        state.report = report(world, pods)
        assert world.cluster is not None
        state.kubeconfig = str(world.cluster.kubeconfig)
        state.status = "ready"
        state.write(state_dir)
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
    stragglers = stop_owned(state.owner, timeout=5)
    leftovers = namespaces_with_prefix(state.prefix)
    for name in leftovers:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    remaining = owned_pids(state.owner) + [int(p) for p in ([state.pid] if _alive(state.pid)
                                                           else [])]
    if remaining or namespaces_with_prefix(state.prefix):
        echo(f"azure-cni demo: could not remove everything: processes {remaining}, "
             f"namespaces {namespaces_with_prefix(state.prefix)}")
        return 1
    (state_dir / STATE).unlink(missing_ok=True)
    extra = f" ({len(stragglers)} stubborn processes killed)" if stragglers else ""
    echo(f"demo stopped: no namespace, process or rule of it is left{extra}")
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
    for noisy in ("azure", "kopf", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return serve(args.state_dir, args.prefix)


if __name__ == "__main__":
    sys.exit(main())
