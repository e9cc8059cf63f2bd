"""Run every benchmark in turn; each writes its numbers to bench/results/<name>.json.

    .venv/bin/python bench/run_all.py            (as root: the CNI benchmark uses netns)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["arm_batching.py", "cni_latency.py", "operator_scale.py", "standalone_docker.py",
              "vnet_scale.py", "chaos.py", "tool_builds.py", "first_demo.py"]


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / name)], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"results in {HERE / 'results'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
