"""Benchmark: what importing the operator costs inside the built image, as the chart runs it.

The chart runs the operator as user 65532 on a read-only root with PYTHONDONTWRITEBYTECODE
(the image sets it): a module whose ``.pyc`` Python finds stale is compiled in memory at every
start and never cached. Issue 21 measured 349 MB for ``import azure_cni.operator.main`` in an
image whose timestamp ``.pyc`` recorded source mtimes one second off, against 148 MB in the
development virtualenv. This runs the operator's imports (its entry point, then its runtime)
in the operator's container (``chartrun``: helm template, then containerd's CRI with the
chart's user, read-only root and mounts) of each image given, ``--runs`` times, and records for
each: the kind of ``.pyc`` the image holds (read from the header of
``azure_cni/operator/main.py``'s), how many modules were compiled from source at import
(``python -v``), whether kubernetes_asyncio was loaded, and the import's wall and CPU seconds
and peak RSS (VmHWM of the process, read by itself after the import; the median of the runs).

The baseline is the same import in an earlier build of the image (``--baseline``, e.g. one
built from the Containerfile before hash-based ``.pyc``), and the development virtualenv's.

    .venv/bin/python bench/image_import.py [--baseline OLD.tar] [--runs 3]

Results: bench/results/image_import.json (one entry per image tag, and the virtualenv's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from azure_cni_sim.chartrun import chart_container, render_chart  # noqa: E402
from azure_cni_sim.images import BuiltImage, archived_image, ensure_images  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "image_import.json"
MODULE = "azure_cni.operator.main"
#: what the operator process imports: its entry point, then, once its arguments are parsed,
#: the runtime (kopf, the Azure SDK, the Kubernetes client)
IMPORTS = f"import {MODULE} as m; import azure_cni.operator.runtime"
#: run in the container: the import's cost, measured by the process itself, and the kind of
#: .pyc the image has (bit 0 of the flags word: hash-based)
MEASURE = f"""
import importlib.util, json, resource, sys, time
t0, c0 = time.monotonic(), time.process_time()
{IMPORTS}
seconds, cpu = time.monotonic() - t0, time.process_time() - c0
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
with open(importlib.util.cache_from_source(m.__file__), "rb") as f:
    flags = int.from_bytes(f.read(8)[4:8], "little")
kind = ("unchecked-hash" if flags == 1 else "checked-hash") if flags & 1 else "timestamp"
print(json.dumps({{"seconds": seconds, "cpu_seconds": cpu, "pyc": kind,
                  "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024,
                  "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
                  "kubernetes_asyncio": sys.modules.get("kubernetes_asyncio") is not None}}))
"""


def in_container(image: BuiltImage, pause: BuiltImage, command: list[str], workdir: Path
                 ) -> str:
    """``command`` in the chart's operator container of ``image``; its output."""
    manifests = render_chart({"image": {"repository": image.repository, "tag": image.tag}},
                             workdir / "chart")
    with chart_container(manifests, "Deployment", "operator", image=image, pause=pause,
                         workdir=workdir, cluster=None, wait_ready=False,
                         command=command) as run:
        code = run.wait_exit(300)
        output = run.logs()
    if code != 0:
        raise SystemExit(f"{image.image}: {' '.join(command[:3])} exited {code}:\n"
                         f"{output[-2000:]}")
    return output


def compiled_at_import(output: str) -> tuple[int, int]:
    """Modules compiled from source and modules loaded from their .pyc, as ``python -v``
    reports them ("code object from <py>" / "<pyc> matches <py>")."""
    lines = output.splitlines()
    compiled = sum(1 for line in lines
                   if line.startswith("# code object from ") and line.endswith(".py"))
    from_pyc = sum(1 for line in lines if line.startswith("# ") and " matches " in line)
    return compiled, from_pyc


def summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"pyc": samples[0]["pyc"],
            "import_seconds": round(statistics.median(s["seconds"] for s in samples), 2),
            "import_cpu_seconds": round(statistics.median(s["cpu_seconds"] for s in samples), 2),
            "peak_rss_mb": round(statistics.median(s["peak_rss_mb"] for s in samples), 1),
            "rss_mb_after_import": round(statistics.median(s["rss_mb"] for s in samples), 1),
            "kubernetes_asyncio_loaded": any(s["kubernetes_asyncio"] for s in samples),
            "imports": IMPORTS, "runs": len(samples)}


def measure_image(image: BuiltImage, pause: BuiltImage, runs: int, workdir: Path
                  ) -> dict[str, Any]:
    samples = [json.loads(in_container(image, pause, ["python", "-c", MEASURE],
                                       workdir / f"run{i}").strip().splitlines()[-1])
               for i in range(runs)]
    compiled, from_pyc = compiled_at_import(in_container(
        image, pause, ["python", "-v", "-c", IMPORTS], workdir / "verbose"))
    return {"image": image.image, "how": "the chart's operator container (helm template, "
            "containerd CRI: user 65532, read-only root, PYTHONDONTWRITEBYTECODE)",
            **summary(samples), "modules_compiled_at_import": compiled,
            "modules_from_pyc": from_pyc}


def measure_venv(runs: int) -> dict[str, Any]:
    """The same import in the development virtualenv (writable, its .pyc cached)."""
    python = ROOT / ".venv" / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([str(python), "-c", IMPORTS], check=True, env=env)  # cache
    samples = [json.loads(subprocess.run([str(python), "-c", MEASURE], check=True, env=env,
                                         capture_output=True, text=True).stdout)
               for _ in range(runs)]
    return {"how": f"{python} (the development virtualenv)", **summary(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, action="append", default=[],
                        help="an OCI archive of an earlier build of the azure-cni image")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    images = ensure_images("azure-cni", "pause")
    measured = [images["azure-cni"], *(archived_image("azure-cni", a) for a in args.baseline)]
    doc = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results = doc.get("images", {})
    with tempfile.TemporaryDirectory(prefix="azcni-import-") as tmp:
        for n, image in enumerate(measured):
            print(f"== {image.image}", flush=True)
            result = measure_image(image, images["pause"], args.runs, Path(tmp) / str(n))
            result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            # seconds depend on what else the shared cores run; memory and counts do not
            result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
            results[image.tag] = result
            print(json.dumps(result, indent=2), flush=True)
            write(results, doc.get("development_virtualenv"))
    venv = measure_venv(args.runs)
    print(json.dumps(venv, indent=2))
    write(results, venv)


def write(images: dict[str, Any], venv: dict[str, Any] | None) -> None:
    doc = {"what": "what the operator imports (each entry's imports; entries without it: "
                   f"import {MODULE} alone) inside the image as the chart runs the operator, "
                   "and in the development virtualenv: peak RSS, wall and CPU seconds (median "
                   "of the runs), modules compiled from source at import",
           "images": images, "development_virtualenv": venv}
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
