"""``make demo`` shows what it promises, and ``make demo-down`` leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from azure_cni_sim.demo import DemoState
from azure_cni_sim.procs import owned_pids
from azure_cni_sim.world import namespaces_with_prefix

pytestmark = pytest.mark.e2e

PREFIX = "azdtest"


def _cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "azure_cni_sim.cli", "demo", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def _iptables(table: str) -> list[str]:
    out = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if not line.startswith("#")]


def _netns_files() -> set[str]:
    return {p.name for p in Path("/run/netns").iterdir()} if Path("/run/netns").exists() else set()


def test_demo_up_shows_the_promises_and_down_leaves_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "demo"
    before = {t: _iptables(t) for t in ("nat", "filter")}
    netns_before = _netns_files()
    up = _cli("up", "--state-dir", str(state_dir), "--prefix", PREFIX)
    state = DemoState.read(state_dir)
    assert state is not None
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        out = up.stdout
        assert "$ kubectl get nodeippools -o wide" in out
        assert "(no NAT, no tunnel)" in out
        assert "(the pod's own address)" in out
        assert "primary address: SNAT" in out
        assert "refused: pods are kept away" in out
        assert "crictl runp (containerd)" in out and "CNI plugin" in out
        assert f"export KUBECONFIG={state.kubeconfig}" in out
        assert "make demo-down" in out
        nodes = subprocess.run(
            [str(Path(sys.executable).parent.parent.parent / ".cache/tools/bin/kubectl"),
             "get", "nodeippools", "-o", "name"],
            env={**os.environ, "KUBECONFIG": state.kubeconfig}, capture_output=True,
            text=True, check=False)
        assert nodes.stdout.split() == [f"nodeippool.azurecni.io/vm{i}" for i in range(3)]
        assert len(namespaces_with_prefix(PREFIX)) >= 6
    finally:
        down = _cli("down", "--state-dir", str(state_dir), timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "no namespace, process or rule of it is left" in down.stdout
    assert namespaces_with_prefix(PREFIX) == []
    assert _netns_files() == netns_before, "a pod or VM namespace was left behind"
    assert owned_pids(state.owner) == []
    assert subprocess.run(["kill", "-0", str(state.pid)], capture_output=True,
                          check=False).returncode != 0
    assert {t: _iptables(t) for t in ("nat", "filter")} == before, "rules left in the host"
