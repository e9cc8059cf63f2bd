"""Benchmark: the first `make demo` as a newcomer runs it, against the 15-minute budget.

A fresh clone of HEAD, with every cache of ours and Go's empty: the project's tool and image
caches (inside the clone), GOCACHE and GOMODCACHE (new directories, so the Go modules are
downloaded from the module proxy as on a fresh machine) and pip's cache (off). The Debian
packages `hack/install-deps.sh` installs are timed apart, in a fresh Debian bookworm root made
by mmdebstrap (with python3, as the machine has it), because this machine has them already.

The budget (15 minutes on 2 cores, issue 25) is the reference: it does not depend on how we
build. The Go build of the Kubernetes components alone is also set against the six separate
binaries in bench/results/tool_builds.json when that file has them.

    .venv/bin/python bench/first_demo.py [--work DIR] [--keep]

Results go to bench/results/first_demo.json. The demo is taken down at the end (--keep leaves
the clone and its caches for inspection). Run it on a machine that is otherwise idle: the
wall time is what it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "first_demo.json"
BUDGET_SECONDS = 15 * 60
PREFIX = "azfirst"

BUILT = re.compile(r"^build-(tools|images): (\S+)(?: \S+)? built in (\d+)s", re.M)
BASE = re.compile(r"^build-images: base image \S+ made in (\d+)s", re.M)
DEMO_STEP = re.compile(r"^\.\.\. \[\s*(\d+)s\] (.*)$", re.M)


def phases(log: str) -> dict[str, Any]:
    """What the log of one `make demo` says each step took."""
    built: dict[str, dict[str, int]] = {"tools": {}, "images": {}}
    for kind, name, seconds in BUILT.findall(log):
        built[kind][name] = int(seconds)
    base = BASE.search(log)
    steps = DEMO_STEP.findall(log)
    return {
        "built_seconds": built,
        "base_image_seconds": int(base.group(1)) if base else None,
        "demo_up_seconds": int(steps[-1][0]) if steps else None,
        "demo_last_step": steps[-1][1] if steps else None,
    }


def deps_in_fresh_root(work: Path) -> dict[str, Any]:
    """Time hack/install-deps.sh in a fresh Debian root, as on a machine without them."""
    root = work / "debian-root"
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase",
                    "--include=python3,ca-certificates", "bookworm", str(root)], check=True)
    shutil.copy(ROOT / "hack" / "install-deps.sh", root / "install-deps.sh")
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        started = time.monotonic()
        done = subprocess.run(["chroot", str(root), "bash", "/install-deps.sh"],
                              check=False, capture_output=True, text=True)
        seconds = time.monotonic() - started
    finally:
        subprocess.run(["umount", str(root / "proc")], check=False)
    if done.returncode != 0:
        raise SystemExit(f"install-deps failed in the fresh root:\n{done.stdout}{done.stderr}")
    installed = re.search(r"install-deps: installing (.*)", done.stdout)
    shutil.rmtree(root, ignore_errors=True)
    return {"seconds": round(seconds, 1),
            "packages": installed.group(1).split() if installed else []}


def first_demo(work: Path) -> dict[str, Any]:
    clone = work / "clone"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    env = dict(os.environ, GOCACHE=str(work / "gocache"), GOPATH=str(work / "gopath"),
               GOMODCACHE=str(work / "gopath" / "pkg" / "mod"), PIP_NO_CACHE_DIR="1")
    load_before = os.getloadavg()
    started = time.monotonic()
    run = subprocess.run(["make", "demo", f"DEMO_PREFIX={PREFIX}"], cwd=clone, env=env,
                         check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.monotonic() - started
    load_after = os.getloadavg()
    (work / "make-demo.log").write_text(run.stdout)
    subprocess.run(["make", "demo-down"], cwd=clone, env=env, check=False, capture_output=True)
    beside = clone / ".cache" / "build-beside.log"
    beside_log = beside.read_text() if beside.exists() else ""
    return {
        "commit": head,
        "exit_code": run.returncode,
        "wall_seconds": round(wall, 1),
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "phases": phases(run.stdout),
        "built_beside_at_lowest_priority": phases(beside_log)["built_seconds"]["tools"],
        "prometheus_in_the_demo": "Prometheus targets" in run.stdout,
        "log": str(work / "make-demo.log"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/azure-cni-first-demo"))
    parser.add_argument("--keep", action="store_true", help="keep the clone and its caches")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("first_demo: needs root, as make demo does")

    demo = first_demo(args.work)
    deps = deps_in_fresh_root(args.work)
    total = demo["wall_seconds"] + deps["seconds"]
    result = {
        "what": "the first make demo on a fresh clone: empty tool, image, Go build, Go module "
                "and pip caches; the Debian packages timed apart in a fresh bookworm root",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "go": subprocess.run(["go", "env", "GOVERSION"], check=True,
                                         capture_output=True, text=True).stdout.strip()},
        "budget_seconds": BUDGET_SECONDS,
        "make_demo": demo,
        "debian_packages": deps,
        "total_seconds": round(total, 1),
        "within_budget": demo["exit_code"] == 0 and total <= BUDGET_SECONDS,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    print(json.dumps({k: result[k] for k in ("total_seconds", "within_budget")}))
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
