"""Benchmark: the first build of the Go tools, per tool, from an empty Go build cache.

Each tool is built by hack/build-tools.sh into a fresh tool cache with a fresh GOCACHE, as on
a fresh clone; the Go module cache is the machine's (warm), so module downloads, which depend
on the network and not on how the tools are built, are left out. The Kubernetes components are
built twice: as this tree builds them (one linked binary, hack/tools/kubernetes/main.go) and,
as the baseline, as BASE_REF's hack/build-tools.sh builds them (six binaries); every other
tool is built the same way in both, so it is built once, in make demo's order, reusing the
build cache of the Kubernetes build before it as make demo does.

Wall time depends on what else the machine runs; CPU time (user + system of every compiler
and linker) much less, so both are written, with the load average around each build.

    .venv/bin/python bench/tool_builds.py [--base-ref REF] [--nice 10] [--work DIR]

Results go to bench/results/tool_builds.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "tool_builds.json"
# make demo's order: DEMO_TOOLS, then DEMO_BESIDE (built beside them at nice 19 by make demo;
# here one after another, so that each tool's time is its own)
AFTER_KUBERNETES = ("etcd", "helm", "crictl", "coredns", "prometheus", "prometheus-operator-crds")


def snapshot_hack(ref: str | None, dest: Path) -> Path:
    """A copy of hack/ (this working tree's, or REF's) that a rebase cannot change mid-run."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    if ref is None:
        shutil.copytree(ROOT / "hack", dest / "hack", symlinks=True)
    else:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "hack"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "hack" / "build-tools.sh"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build(script: Path, tool: str, cache: Path, gocache: Path, niceness: int) -> dict[str, Any]:
    env = dict(os.environ, AZURE_CNI_TOOLS_CACHE=str(cache), GOCACHE=str(gocache))
    load_before = os.getloadavg()
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    done = subprocess.run(["nice", "-n", str(niceness), str(script), tool], env=env,
                          capture_output=True, text=True, check=False)
    wall, cpu = time.monotonic() - wall0, cpu_seconds() - cpu0
    if done.returncode != 0:
        sys.exit(f"build of {tool} failed:\n{done.stdout}\n{done.stderr}")
    if "cached in" in done.stdout:
        sys.exit(f"{tool} was found in {cache}, not built: the cache is not fresh")
    print(f"{tool}: {wall:.0f} s wall, {cpu:.0f} s CPU", flush=True)
    return {"tool": tool, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # the last main that built six binaries (any ref whose hack/build-tools.sh does)
    parser.add_argument("--base-ref", default="2e2412e38601")
    parser.add_argument("--nice", type=int, default=10,
                        help="niceness of the builds (a shared machine)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/azure-cni-bench-tools"))
    args = parser.parse_args()

    base_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.base_ref],
                              capture_output=True, text=True, check=True).stdout.strip()
    this_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    linked = snapshot_hack(None, args.work / "linked-src")
    six = snapshot_hack(args.base_ref, args.work / "six-src")
    result: dict[str, Any] = {
        "what": "first build of each Go tool by hack/build-tools.sh: fresh tool cache, empty "
                "GOCACHE, warm module cache (downloads excluded)",
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "go": subprocess.run(["go", "env", "GOVERSION"], capture_output=True,
                                         text=True, check=True).stdout.strip(),
                    "shared": "other engineers' builds and tests ran at the same time; see "
                              "each build's load average",
                    "niceness": args.nice},
        "linked": {"tree": f"{this_rev} (working tree)", "builds": []},
        "baseline_six_binaries": {"tree": f"{args.base_ref} {base_rev}", "builds": []},
    }

    def save() -> None:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    linked_gocache = fresh(args.work / "gocache-linked")
    linked_cache = fresh(args.work / "tools-linked")
    linked_builds = result["linked"]["builds"]
    six_builds = result["baseline_six_binaries"]["builds"]
    linked_builds.append(build(linked, "kubernetes", linked_cache, linked_gocache, args.nice))
    save()
    six_builds.append(
        build(six, "kubernetes", fresh(args.work / "tools-six"), fresh(args.work / "gocache-six"),
              args.nice))
    save()
    for tool in AFTER_KUBERNETES:
        linked_builds.append(build(linked, tool, linked_cache, linked_gocache, args.nice))
        save()
    demo = [b for b in result["linked"]["builds"] if b["tool"] in ("kubernetes", "etcd", "helm",
                                                                   "crictl", "coredns")]
    result["linked"]["demo_tools_wall_s"] = round(sum(b["wall_s"] for b in demo), 1)
    result["linked"]["all_wall_s"] = round(sum(b["wall_s"] for b in result["linked"]["builds"]), 1)
    save()
    print(f"results in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
