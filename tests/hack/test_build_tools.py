"""A second run of the tool build reuses the cache: nothing is rebuilt; a run builds (or finds)
only the tools it is asked for."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: what a run without arguments builds: the tools make test needs (make conformance's e2e.test
#: and Traefik, most of an hour to build, only when named)
ALL_TOOLS = ("kubernetes", "etcd", "helm", "crictl", "coredns", "cnitool", "promtool", "prometheus",
             "prometheus-operator-crds", "e2e-network", "ginkgo", "agnhost")


def build_tools(*tools: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "hack" / "build-tools.sh"), *tools], capture_output=True,
                          text=True, timeout=600, check=check)


def test_second_build_reuses_every_cached_tool() -> None:
    out = build_tools().stdout
    assert "building" not in out, out
    for tool in ALL_TOOLS:
        assert f"build-tools: {tool} " in out and "cached in" in out, out
    assert out.count("cached in") == len(ALL_TOOLS)


def test_a_build_of_some_tools_touches_only_those() -> None:
    out = build_tools("helm", "promtool").stdout
    assert [line.split()[1] for line in out.splitlines() if "cached in" in line] == [
        "helm", "promtool"]


def test_an_unknown_tool_is_refused_by_name() -> None:
    result = build_tools("prometheus", "grafana", check=False)
    assert result.returncode != 0
    assert "unknown tool 'grafana'" in result.stderr
    assert "building" not in result.stdout
