"""Benchmark: what the agent's one-declaration codec costs in memory, against the hand-written
codecs it replaced and against the libraries that could have done the job.

Each variant runs in fresh interpreters (``--runs`` of each, the median recorded): the
agent's start-up imports (what ``azure-cni-agent`` loads before it serves: main, the node
agent, its Kubernetes client, the pool source, the server, the datapath), then one NodeIPPool
of 250 addresses, 250 pod requests and answers read with ``NodeIPPool.from_object`` and both
status writers' fields rendered, then VmRSS and VmHWM read from ``/proc/self/status``.

- ``hand-written``: the same on a checkout of the code before (``--baseline SRC``, the
  ``src`` of a worktree of the branch ``agent``), where every class had its own from_dict and
  to_dict: the independent baseline.
- ``codec``: this tree (``api/wire.py``).
- ``codec+pydantic``, ``codec+msgspec``: this tree, plus the library imported and its
  validator built for the same dataclasses (``pydantic.TypeAdapter(PoolStatus)``,
  ``msgspec.json.Decoder(PoolStatus)``): the least either costs when used for these types
  (``--libs DIR``: a directory the libraries are installed in with ``pip --target``).

    .venv/bin/python bench/codec_rss.py --baseline /tmp/base/src --libs /tmp/libs [--runs 5]

Results: bench/results/codec_rss.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: what the agent imports before it serves (agent/main.py imports these lazily in ``run``)
AGENT_IMPORTS = """
import azure_cni.agent.main
import azure_cni.agent.nodeagent, azure_cni.agent.server, azure_cni.agent.kube
import azure_cni.agent.pool_source, azure_cni.agent.install
import azure_cni.datapath.veth, azure_cni.datapath.sysctls, azure_cni.datapath.snat
"""

#: one busy node's pool, read and written as the agent does
POOL = """
from azure_cni.api.nodeippool import NodeIPPool
ips = [{"address": f"198.18.{i // 200}.{i % 200 + 4}", "ipConfiguration": f"azcni-{i:010x}",
        "state": "Available"} for i in range(250)]
requests = [{"ipConfiguration": ip["ipConfiguration"], "address": ip["address"],
             "pod": f"web/p{i}", "podUID": f"u{i}", "publicIP": "pip"} for i, ip in enumerate(ips)]
answers = [{**r, "state": "Attached"} for r in requests]
obj = {"metadata": {"name": "n1", "generation": 2, "resourceVersion": "9"},
       "spec": {"nodeName": "n1", "maxIPs": 255},
       "status": {"nic": {"id": "/nic", "primaryIP": "198.18.0.4", "subnetID": "/sn",
                          "subnetCIDR": "198.18.0.0/16", "vnetAddressSpace": ["198.18.0.0/15"]},
                  "ips": ips, "allocated": 250, "used": 250, "releaseAcks": [],
                  "conditions": [{"type": "Ready", "status": "True", "reason": "r",
                                  "lastTransitionTime": "2026-12-07T10:00:00Z"}],
                  "podRequests": requests, "podNetworking": answers}}
pool = NodeIPPool.from_object(obj)
assert len(pool.status.ips) == 250 and len(pool.status.pod_networking) == 250
pool.status.agent_fields(); pool.status.operator_fields()
"""

LIBRARY = {
    "pydantic": "import pydantic\nfrom azure_cni.api.nodeippool import PoolStatus, PoolSpec\n"
                "pydantic.TypeAdapter(PoolStatus); pydantic.TypeAdapter(PoolSpec)\n",
    "msgspec": "import msgspec\nfrom azure_cni.api.nodeippool import PoolStatus, PoolSpec\n"
               "msgspec.json.Decoder(PoolStatus); msgspec.json.Decoder(PoolSpec)\n",
}

REPORT = """
def _kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
import json, sys
json.dump({"rss_kib": _kib("VmRSS"), "hwm_kib": _kib("VmHWM"),
           "modules": len(sys.modules)}, sys.stdout)
"""


def run_once(source: Path, library: str, libs: Path | None) -> dict[str, Any]:
    path = [str(source)]
    if library:
        assert libs is not None, "--libs is needed for the library variants"
        path.append(str(libs))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    code = AGENT_IMPORTS + POOL + LIBRARY.get(library, "") + REPORT
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def measure(source: Path, library: str, libs: Path | None, runs: int) -> dict[str, Any]:
    samples = [run_once(source, library, libs) for _ in range(runs)]
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return {"source": str(source), "commit": commit, "runs": runs,
            "rss_mib": round(statistics.median(s["rss_kib"] for s in samples) / 1024, 2),
            "hwm_mib": round(statistics.median(s["hwm_kib"] for s in samples) / 1024, 2),
            "modules": samples[0]["modules"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True,
                        help="src directory of the code before (a worktree of `agent`)")
    parser.add_argument("--libs", type=Path, help="pip --target directory with the libraries")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                        "codec_rss.json")
    args = parser.parse_args()
    variants = {"hand-written": (args.baseline, ""), "codec": (ROOT / "src", "")}
    if args.libs is not None:
        variants |= {f"codec+{name}": (ROOT / "src", name) for name in LIBRARY}
    results = {name: measure(source, library, args.libs, args.runs)
               for name, (source, library) in variants.items()}
    base = results["hand-written"]["rss_mib"]
    for result in results.values():
        result["rss_delta_mib"] = round(result["rss_mib"] - base, 2)
    document = {"what": "the agent's RSS after its start-up imports and one 250-pod pool read "
                        "and rendered: hand-written codecs vs the one-declaration codec vs "
                        "the same with pydantic or msgspec built for the same dataclasses",
                "python": sys.version.split()[0], "variants": results}
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
