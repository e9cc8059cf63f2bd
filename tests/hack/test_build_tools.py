"""A second run of the tool build reuses the cache: nothing is rebuilt."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_second_build_reuses_every_cached_tool() -> None:
    out = subprocess.run([str(ROOT / "hack" / "build-tools.sh")], capture_output=True,
                         text=True, timeout=600, check=True).stdout
    assert "building" not in out, out
    for tool in ("kubernetes", "etcd", "helm", "crictl", "cnitool"):
        assert f"build-tools: {tool} " in out and "cached in" in out, out
    assert out.count("cached in") == 5
