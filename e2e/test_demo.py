"""``make demo`` shows what it promises, and ``make demo-down`` leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from azure_cni_sim.demo import DemoState
from azure_cni_sim.kubenode import mounts_under
from azure_cni_sim.procs import owned_pids
from azure_cni_sim.prometheus import EXAMPLE_QUERIES, PrometheusAPI
from azure_cni_sim.world import namespaces_with_prefix

pytestmark = pytest.mark.e2e

#: random: other checkouts on this machine may run the same test at the same time
PREFIX = f"azd{uuid.uuid4().hex[:4]}"


def _cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "azure_cni_sim.cli", "demo", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def _iptables(table: str) -> list[str]:
    out = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if not line.startswith("#")]


def _cgroups(prefix: str) -> list[str]:
    return sorted(str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{prefix}-*"))


def test_demo_up_shows_the_promises_and_down_leaves_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "demo"
    before = {t: _iptables(t) for t in ("nat", "filter")}
    up = _cli("up", "--state-dir", str(state_dir), "--prefix", PREFIX)
    state = DemoState.read(state_dir)
    assert state is not None
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        out = up.stdout
        for command in ("get nodes", "get pods -A -o wide", "get nip -o wide",
                        "-n kube-system get lease azure-cni-operator"):
            assert f"$ kubectl {command}\n" in out
        nodes = [line.split() for line in out.split("$ kubectl get nodes\n")[1].splitlines()[1:4]]
        assert [(n[0], n[1]) for n in nodes] == [(f"vm{i}", "Ready") for i in range(3)], out
        # two operator replicas, one of which holds the Lease (named in the lease's row)
        pods = out.split("$ kubectl get pods -A -o wide\n")[1].split("\n\n")[0]
        assert pods.count("azure-cni-operator-") == 2 and out.count("azure-cni-agent-") == 3
        lease = out.split("$ kubectl -n kube-system get lease azure-cni-operator\n")[1]
        holder = lease.splitlines()[1].split()[1]
        assert holder.split("_")[0] in pods, f"the Lease's holder {holder} is no operator pod"
        assert out.count("coredns-") == 2 and out.count("web-") >= 6
        for check in ("(no NAT, no tunnel)", "pod to ClusterIP Service", "(on vm",
                      "(the ClusterIP, from kube-dns); GET: answered by web-",
                      "(the node: kube-proxy masquerades NodePort traffic)",
                      "(its own address: no NAT)", "primary address: SNAT)",
                      "refused: pods are kept away"):
            assert check in out, f"{check!r} missing from the demo's output:\n{out}"
        assert "no answer" not in out and "FAILED" not in out, out
        for check in ("up == 1 for the operators (leading: ", "the agents on vm0, vm1, vm2",
                      "Prometheus says what kubectl get nip says on vm0, vm1, vm2",
                      "rules of the chart's PrometheusRule loaded; firing: none"):
            assert check in out, f"{check!r} missing from the demo's output:\n{out}"
        url = re.search(r"^Prometheus's HTTP API .*: (http://127\.0\.0\.1:\d+)$", out,
                        re.MULTILINE)
        assert url, out
        api = PrometheusAPI(url[1])  # reachable from this machine, as printed
        for example in EXAMPLE_QUERIES:
            shown = out.split(f"  $ curl -s {api.url}/api/v1/query --data-urlencode "
                              f"'query={example.expr}'\n", 1)
            assert len(shown) == 2, f"{example.expr!r} not shown:\n{out}"
            answers = dict(a.split() for a in shown[1].splitlines()[0].strip().split("   "))
            assert sorted(answers) == ["vm0", "vm1", "vm2"], shown[1]
            assert all(float(v) > 0 for v in answers.values()), answers  # NaN is not > 0
        assert {n for n, _ in api.by_label("up", "node").items() if n} == {"vm0", "vm1", "vm2"}
        assert f"export KUBECONFIG={state.kubeconfig}" in out
        assert "make demo-down" in out
        pools = subprocess.run(
            [str(Path(sys.executable).parent.parent.parent / ".cache/tools/bin/kubectl"),
             "get", "nodeippools", "-o", "name"],
            env={**os.environ, "KUBECONFIG": state.kubeconfig}, capture_output=True,
            text=True, check=False)
        assert pools.stdout.split() == [f"nodeippool.azurecni.io/vm{i}" for i in range(3)]
        assert len(namespaces_with_prefix(PREFIX)) >= 7
        assert _cgroups(PREFIX), "every VM's pods live in cgroups named after the demo"
        # the harshest stop: the supervisor dies without tearing anything down
        os.kill(state.pid, signal.SIGKILL)
    finally:
        down = _cli("down", "--state-dir", str(state_dir), timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "no namespace, process, mount, cgroup or rule of it is left" in down.stdout
    # (pods' network namespaces are pinned in each VM's own /run/netns, which went with it)
    assert namespaces_with_prefix(PREFIX) == []
    assert owned_pids(state.owner) == []
    assert mounts_under(state_dir) == []
    assert _cgroups(PREFIX) == []
    assert subprocess.run(["kill", "-0", str(state.pid)], capture_output=True,
                          check=False).returncode != 0
    assert {t: _iptables(t) for t in ("nat", "filter")} == before, "rules left in the host"
