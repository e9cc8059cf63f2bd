"""A missing or wrong tool is reported before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from azure_cni_sim.cluster import ClusterError, LocalCluster
from azure_cni_sim.procs import owned_pids
from azure_cni_sim.tools import ToolMissing, find_tool


def _fake_tool(directory: Path, name: str, output: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\necho '{output}'\n")
    path.chmod(0o755)


def test_missing_tool_says_how_to_build_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AZURE_CNI_TOOLS_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolMissing, match=r"etcd not found .*make tools"):
        find_tool("etcd")


def test_cluster_with_missing_tool_starts_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AZURE_CNI_TOOLS_DIR", str(tmp_path / "tools"))
    monkeypatch.setenv("PATH", "/nonexistent")
    cluster = LocalCluster(tmp_path / "state")
    with pytest.raises(ClusterError, match="make tools"):
        cluster.start()
    assert owned_pids(cluster.owner) == []
    assert not (tmp_path / "state").exists()


def test_cluster_with_wrong_version_starts_nothing(tmp_path, monkeypatch) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("etcd", "kube-controller-manager", "kubectl"):
        _fake_tool(tools, name, "whatever")
    _fake_tool(tools, "kube-apiserver", "Kubernetes v1.2.3")
    (tools / "versions.json").write_text(json.dumps({"kubernetes": "v1.36.3"}))
    monkeypatch.setenv("AZURE_CNI_TOOLS_DIR", str(tools))
    cluster = LocalCluster(tmp_path / "state")
    with pytest.raises(ClusterError, match=r"reports 'Kubernetes v1.2.3' but v1.36.3 is pinned"):
        cluster.start()
    assert owned_pids(cluster.owner) == []
