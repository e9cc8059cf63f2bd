"""Kubernetes' own e2e specs against the simulated cluster: ``make conformance`` and the quick
subset of the e2e tier.

The specs are upstream's, built from the pinned Kubernetes module by ``hack/build-tools.sh``:
``e2e.test`` (the whole suite) or ``e2e-network.test`` (the same suite set-up with only the
networking specs linked in), run by the ``ginkgo`` CLI in parallel processes. No registry is
reachable, so their images come from ``hack/build-images.sh`` and are imported into every node
under the upstream names the binary itself lists (``--list-images``); the specs pull
IfNotPresent and find them there.

What runs is a focus minus ``SKIPS``, each skip with the reason it cannot apply to this cluster
(docs/conformance.md lists them). Ginkgo's JUnit report is summarised as a ``SpecRun``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol
from xml.etree import ElementTree

from azure_cni_sim.cluster import run_kubectl
from azure_cni_sim.demo import DemoState
from azure_cni_sim.images import BuiltImage, ensure_images
from azure_cni_sim.ingress import IngressCheckFailed, check_ingress
from azure_cni_sim.kubenode import ctr_command, vm_command
from azure_cni_sim.tools import find_tool

log = logging.getLogger(__name__)

#: ``make conformance``: sig-network's Conformance specs, its DNS specs and the pod-to-pod
#: Granular Checks
CONFORMANCE_FOCUS = (r"\[sig-network\].*\[Conformance\]|\[sig-network\] DNS should"
                     r"|Networking Granular Checks")
#: the wider set, run by hand (``--wide``)
WIDE_FOCUS = r"\[sig-network\] (Services|Conntrack|Connectivity|Networking|EndpointSlice|DNS)"


@dataclass(frozen=True)
class Skip:
    pattern: str
    reason: str


#: everything skipped, and why it cannot apply here (the same list for every focus)
SKIPS = (
    Skip(r"\[Serial\]", "must run alone on the cluster; the run is parallel (ginkgo -p)"),
    Skip(r"\[Disruptive\]", "restarts or breaks nodes and system components"),
    Skip(r"\[Slow\]", "takes minutes each; upstream's own default jobs skip them too"),
    Skip(r"\[Flaky\]", "marked flaky upstream"),
    Skip(r"\[Feature:", "needs a feature or component the cluster does not run by default"),
    Skip(r"LoadBalancer|ESIPP", "needs a cloud load-balancer controller, which the simulated "
                                "Azure does not run for Services"),
    Skip(r"\[Provider:|GCE|AWS", "specific to another cloud provider"),
    Skip(r"IPv6|DualStack", "the VNet, and so the pods, are IPv4 only"),
)

#: the e2e tier's quick subset: upstream specs that fail when the datapath breaks Services
#: (ClusterIP, NodePort), cluster DNS, HostPort, or pod addresses inside the VNet (SNAT)
QUICK_SPECS = (
    "[sig-network] Services should be able to create a functioning NodePort service "
    "[Conformance]",
    "[sig-network] Services should preserve source pod IP for traffic thru service cluster IP "
    "[LinuxOnly]",
    "[sig-network] DNS should provide DNS for services [Conformance]",
    "[sig-network] HostPort validates that there is no conflict between pods with same "
    "hostPort but different hostIP and protocol [LinuxOnly] [Conformance]",
    "[sig-network] NoSNAT Should be able to send traffic between Pods without SNAT",
)


#: ginkgo matches a focus against the suite's description, a space and the spec's text; this
#: is the description test/e2e's RunE2ETests gives both binaries
SUITE = "Kubernetes e2e suite"


def exact(names: Iterable[str]) -> str:
    """A focus matching exactly the specs ``names`` (their full text)."""
    return "|".join(f"^{re.escape(f'{SUITE} {name}')}$" for name in names)


# -- the images ------------------------------------------------------------------------------

#: registries whose images are built here (never pulled): the e2e images' and the sandbox's
SERVED_REGISTRIES = ("registry.k8s.io/e2e-test-images/", "registry.k8s.io/")
#: upstream image (last path element) -> the image of hack/build-images.sh that stands for it
STANDS_FOR = {
    "agnhost": "e2e-agnhost",
    "busybox": "e2e-shell",
    "glibc-dns-testing": "e2e-shell",
    "nginx": "e2e-nginx",
    "regression-issue-74839": "e2e-boom-server",
    "pause": "pause",
}
E2E_IMAGES = tuple(sorted(set(STANDS_FOR.values())))


def upstream_names(listing: str) -> dict[str, tuple[str, ...]]:
    """The upstream names each local image is imported under, from ``e2e.test --list-images``
    (one reference per line). Images of other registries, and images no spec of ours needs,
    are left alone (a spec that expects a pull to fail keeps failing it)."""
    names: dict[str, list[str]] = {}
    for reference in (line.strip() for line in listing.splitlines()):
        registry = next((r for r in SERVED_REGISTRIES
                         if reference.startswith(r) and "/" not in reference[len(r):]), None)
        if registry is None:
            continue
        repository = reference[len(registry):].partition(":")[0]
        if repository in STANDS_FOR:
            names.setdefault(STANDS_FOR[repository], []).append(reference)
    return {local: tuple(sorted(refs)) for local, refs in sorted(names.items())}


class VmNode(Protocol):
    """A node of the simulation, as far as its runtime is concerned (``KubeNode`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def workdir(self) -> Path: ...

    @property
    def netns(self) -> str: ...


@dataclass(frozen=True)
class RunningVm:
    """A node of a running demo, from its state file (its supervisor owns the ``KubeNode``)."""

    name: str
    workdir: Path
    netns: str


def import_images(nodes: Iterable[VmNode], images: Mapping[str, BuiltImage],
                  names: Mapping[str, Sequence[str]]) -> None:
    """Import each image into every node's containerd and tag it with its upstream names."""

    def on(node: VmNode, *args: str) -> None:
        argv = vm_command(node.workdir, node.netns, ctr_command(*args))
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"on {node.name}: {' '.join(args)} failed: "
                               f"{done.stderr.strip() or done.stdout.strip()}")

    def one(node: VmNode) -> None:
        for local, references in names.items():
            image = images[local]
            on(node, "images", "import", str(image.archive))
            for reference in references:
                on(node, "images", "tag", "--force", image.image, reference)

    every = list(nodes)
    with ThreadPoolExecutor(max(1, len(every))) as pool:
        for future in [pool.submit(one, node) for node in every]:
            future.result()


# -- running the specs -------------------------------------------------------------------------

#: ginkgo's leaf node types (the JUnit name's first word) that are not specs
_SUITE_NODES = re.compile(r"^\[(Synchronized)?(Before|After)Suite\]|^\[Report(Before|After)Suite\]"
                          r"|^\[DeferCleanup \(Suite\)\]")


@dataclass(frozen=True)
class SpecRun:
    """What one ginkgo run did with the specs it was asked for (names as the JUnit has them)."""

    passed: tuple[str, ...]
    failed: tuple[str, ...]
    #: focused, but skipped: by the skip patterns, or by the spec itself (its reason)
    skipped: tuple[tuple[str, str], ...]
    seconds: float
    junit: Path

    @property
    def ran(self) -> int:
        return len(self.passed) + len(self.failed)


def read_junit(path: Path, seconds: float = 0.0) -> SpecRun:
    """Summarise ginkgo's JUnit report. Specs outside the focus are reported as skipped with
    the bare message ``skipped``; they are not counted at all."""
    passed, failed, skipped = [], [], []
    # the report of a ginkgo run of ours, not outside input
    for case in ElementTree.parse(path).getroot().iter("testcase"):  # noqa: S314
        name = case.get("name", "")
        if _SUITE_NODES.match(name):
            if case.get("status") not in ("passed", "skipped"):
                failed.append(name)  # a suite set-up failure fails the run
            continue
        name = name.removeprefix("[It] ")
        status = case.get("status", "")
        if status == "passed":
            passed.append(name)
        elif status == "skipped":
            message = (case.find("skipped").get("message", "")  # type: ignore[union-attr]
                       if case.find("skipped") is not None else "")
            if message != "skipped":
                skipped.append((name, message.removeprefix("skipped - ")))
        elif status != "pending":
            failed.append(name)
    return SpecRun(tuple(passed), tuple(failed), tuple(skipped), seconds, path)


def list_specs(binary: Path, focus: str, skips: Sequence[str] = ()) -> tuple[str, ...]:
    """The specs a run with this focus and these skips would run (ginkgo's dry run)."""
    with tempfile.TemporaryDirectory(prefix="azcni-dry-run-") as report_dir:
        junit = Path(report_dir) / "junit.xml"
        # the report's name is relative to --output-dir: ginkgo runs a compiled suite in the
        # binary's directory, where an absolute name would be made again below it
        argv = [str(find_tool("ginkgo")), "run", "--dry-run", "--no-color", f"--focus={focus}",
                *(f"--skip={s}" for s in skips), f"--junit-report={junit.name}",
                f"--output-dir={report_dir}", str(binary)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        if not junit.exists():
            raise RuntimeError(f"ginkgo --dry-run of {binary.name} failed: "
                               f"{(done.stdout + done.stderr)[-2000:]}")
        return read_junit(junit).passed


def run_specs(binary: Path, kubeconfig: Path, focus: str, skips: Sequence[str],
              report_dir: Path, *, nodes: int, procs: int = 3, timeout: float = 7200,
              echo: Callable[[str], None] = log.info) -> SpecRun:
    """Run the focused specs of ``binary`` against the cluster of ``nodes`` schedulable nodes
    with ``procs`` ginkgo processes; the JUnit report and ginkgo's output go to
    ``report_dir``."""
    # ginkgo runs the suite in the binary's directory: every path it is given is absolute
    report_dir = report_dir.resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    junit = report_dir / "junit.xml"
    junit.unlink(missing_ok=True)
    argv = [str(find_tool("ginkgo")), "run", f"--procs={procs}", "--no-color",
            f"--focus={focus}", *(f"--skip={s}" for s in skips),
            f"--junit-report={junit.name}", f"--output-dir={report_dir}",
            f"--timeout={int(timeout)}s", "--poll-progress-after=5m", str(binary), "--",
            # the suite counts the nodes only in ginkgo's first process; the others would skip
            # every spec that needs two nodes ("Requires at least 2 nodes (not -1)")
            "--provider=skeleton", f"--num-nodes={nodes}", f"--kubeconfig={kubeconfig.resolve()}"]
    started = time.monotonic()
    with (report_dir / "ginkgo.log").open("w") as output:
        # a parallel run's processes all report to this one; its exit code says only whether
        # every spec passed, which the report says better
        done = subprocess.run(argv, stdout=output, stderr=subprocess.STDOUT,
                              timeout=timeout + 300, check=False)
    seconds = time.monotonic() - started
    if not junit.exists():
        raise RuntimeError(f"ginkgo exited {done.returncode} without a report; see "
                           f"{report_dir / 'ginkgo.log'}")
    run = read_junit(junit, seconds)
    echo(f"ginkgo exited {done.returncode}: {len(run.passed)} passed, {len(run.failed)} "
         f"failed, {len(run.skipped)} skipped by the specs, in {seconds:.0f}s")
    return run


def trim_junit(source: Path, target: Path) -> None:
    """Copy the JUnit report without the specs outside the focus (thousands of ``skipped``
    entries that say nothing about this cluster), and with the output of failed specs only
    (a passed spec's steps are most of the report's size and explain nothing)."""
    tree = ElementTree.parse(source)  # noqa: S314 - our own run's report
    for suite in tree.getroot().iter("testsuite"):
        for case in list(suite.iter("testcase")):
            skipped = case.find("skipped")
            if skipped is not None and skipped.get("message") == "skipped":
                suite.remove(case)
            elif case.get("status") in ("passed", "skipped"):
                for output in case.findall("system-out") + case.findall("system-err"):
                    case.remove(output)
    tree.write(target, encoding="unicode", xml_declaration=True)


def binary_version(binary: Path) -> str:
    return subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()


def list_images(binary: Path) -> str:
    return subprocess.run([str(binary), "--list-images"], capture_output=True, text=True,
                          timeout=60, check=True).stdout


def results(*, version: str, binary: str, focus: str, focused: Sequence[str],
            run: SpecRun, procs: int, ingress: Mapping[str, Any] | None) -> dict[str, Any]:
    """The results document (``bench/results/conformance.json``)."""
    skipped_by_pattern = sorted(set(focused) - set(run.passed) - set(run.failed)
                                - {name for name, _ in run.skipped})
    reasons = {name: next((s.reason for s in SKIPS if re.search(s.pattern, name)),
                          "not run") for name in skipped_by_pattern}
    return {
        "kubernetes": version,
        "binary": binary,
        "focus": focus,
        "skip": {s.pattern: s.reason for s in SKIPS},
        "specs": {"focused": len(focused), "run": run.ran, "passed": len(run.passed),
                  "failed": len(run.failed),
                  "skipped": len(skipped_by_pattern) + len(run.skipped)},
        "failed": list(run.failed),
        "skipped": {**reasons, **dict(run.skipped)},
        "ginkgo_procs": procs,
        "cpus": os.cpu_count(),
        "wall_seconds": round(run.seconds),
        "ingress": dict(ingress) if ingress is not None else None,
        "junit": "conformance-junit.xml",
    }


def write_results(document: Mapping[str, Any], run: SpecRun, results_dir: Path,
                  name: str = "conformance") -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    trim_junit(run.junit, results_dir / f"{name}-junit.xml")
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps({**document, "junit": f"{name}-junit.xml"}, indent=2) + "\n")
    return path


# -- make conformance ---------------------------------------------------------------------------


def run_on_demo(state_dir: Path, results_dir: Path, work_dir: Path, *, wide: bool = False,
                procs: int = 3, echo: Callable[[str], None] = print) -> int:
    """``make conformance``: the focused specs (``--wide``: the wider set) and the Ingress
    check against the running demo; results in ``results_dir``. 0 when everything passed."""
    state = DemoState.read(state_dir)
    if state is None or state.status != "ready":
        echo(f"no demo is running in {state_dir}: start one with make demo")
        return 1
    started = time.monotonic()

    def say(message: str) -> None:
        echo(f"... [{time.monotonic() - started:5.0f}s] {message}")

    kubeconfig = Path(state.kubeconfig)
    kubectl = partial(run_kubectl, kubeconfig)
    binary = find_tool("e2e.test")
    version = binary_version(binary)
    nodes = [RunningVm(name, Path(vm["workdir"]), vm["netns"]) for name, vm in state.vms.items()]
    say("the test images: agnhost, busybox, glibc-dns-testing, nginx and the boom-server from "
        "one Debian image; Traefik (cached after the first run)")
    images = ensure_images(*E2E_IMAGES, "traefik", "sim-app")
    names = upstream_names(list_images(binary))
    say(f"importing them into {', '.join(n.name for n in nodes)} as "
        f"{', '.join(r for refs in names.values() for r in refs)}")
    # Traefik under its own name only: it is ours, no spec asks for it
    import_images(nodes, images, {**names, "traefik": ()})
    say("an Ingress through Traefik to pods on every node, from the on-premises network")
    try:
        ingress = check_ingress(kubectl, state.onprem_netns, images["traefik"].image,
                                images["sim-app"].image)
        ingress_doc: dict[str, Any] = {**ingress.to_dict(), "passed": True}
        say(ingress.describe())
    except IngressCheckFailed as e:
        ingress_doc = {"passed": False, "error": str(e)}
        say(f"FAILED: {e}")
    focus = WIDE_FOCUS if wide else CONFORMANCE_FOCUS
    skips = [s.pattern for s in SKIPS]
    focused = list_specs(binary, focus)
    planned = list_specs(binary, focus, skips)
    say(f"Kubernetes {version} e2e.test: {len(focused)} specs match the focus, {len(planned)} "
        f"after the skips; running them with ginkgo -p --procs={procs}")
    run = run_specs(binary, kubeconfig, focus, skips, work_dir / ("wide" if wide else "focused"),
                    nodes=len(nodes), procs=procs, echo=say)
    document = results(version=version, binary=binary.name, focus=focus, focused=focused,
                       run=run, procs=procs, ingress=ingress_doc)
    path = write_results(document, run, results_dir,
                         "conformance-wide" if wide else "conformance")
    counts = document["specs"]
    echo("")
    echo(f"{counts['run']} specs ran in {run.seconds / 60:.1f} min: {counts['passed']} passed, "
         f"{counts['failed']} failed; {counts['skipped']} of the {counts['focused']} focused "
         "skipped (reasons in the results)")
    for name in run.failed:
        echo(f"  FAILED {name}")
    echo(f"Ingress: {'passed' if ingress_doc['passed'] else 'FAILED'}")
    echo(f"results: {path} (JUnit beside it); ginkgo's output: {run.junit.parent / 'ginkgo.log'}")
    return 0 if not run.failed and ingress_doc["passed"] else 1
