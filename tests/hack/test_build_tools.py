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


KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler",
                       "kubelet", "kube-proxy", "kubectl")


def test_the_kubernetes_commands_are_one_binary_run_by_their_names() -> None:
    """One linked binary (hack/tools/kubernetes/main.go) that each link runs as itself."""
    from azure_cni_sim.tools import find_tool

    paths = {name: find_tool(name) for name in KUBERNETES_COMMANDS}
    assert len({p.resolve() for p in paths.values()}) == 1, paths
    for name, path in paths.items():
        shown = subprocess.run([str(path), "--help"], capture_output=True, text=True,
                               timeout=60, check=False)
        usage = shown.stdout.split("Usage:\n", 1)[1].splitlines()[0].split()
        assert usage[0] == name, (name, usage)
    unnamed = subprocess.run([str(next(iter(paths.values())).resolve())], capture_output=True,
                             text=True, timeout=60, check=False)
    assert unnamed.returncode == 2 and "run me as one of" in unnamed.stderr


def test_a_build_waits_only_for_a_build_of_the_same_tool(tmp_path: Path) -> None:
    """make demo builds Prometheus in the background while it builds the Kubernetes tools in
    the foreground: a build of one tool must not wait for a build of another, only for one of
    the same tool (which it then finds built). The cache here is a new one whose tool
    directories are links to this checkout's, so nothing is built and that cache is not
    written; a held lock stands for a build of etcd under way."""
    import fcntl
    import os

    built = (ROOT / ".cache" / "tools").resolve()
    cache = tmp_path / "tools"
    cache.mkdir()
    for entry in built.iterdir():
        if entry.is_dir() and entry.name != "bin":
            (cache / entry.name).symlink_to(entry)
    env = dict(os.environ, AZURE_CNI_TOOLS_CACHE=str(cache))
    script = str(ROOT / "hack" / "build-tools.sh")
    with open(cache / ".build-etcd.lock", "w") as etcd_building:
        fcntl.flock(etcd_building, fcntl.LOCK_EX)
        etcd = subprocess.Popen([script, "etcd"], env=env, stdout=subprocess.PIPE, text=True)
        try:
            helm = subprocess.run([script, "helm"], env=env, capture_output=True, text=True,
                                  timeout=120, check=True)
            assert "build-tools: helm " in helm.stdout and "cached in" in helm.stdout
            assert etcd.poll() is None, "etcd's build went on while another held its lock"
        finally:
            fcntl.flock(etcd_building, fcntl.LOCK_UN)
        out, _ = etcd.communicate(timeout=120)
    assert etcd.returncode == 0 and "build-tools: etcd " in out and "cached in" in out, out
