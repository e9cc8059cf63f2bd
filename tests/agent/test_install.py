"""Installing the plugin: the conflist's shape and versions, atomic files, removal."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from azure_cni.agent import install
from azure_cni.api.settings import AgentSettings


def settings(tmp_path: Path) -> AgentSettings:
    return AgentSettings(socket_path="/run/azure-cni/agent.sock", state_dir=str(tmp_path / "s"),
                         cni_bin_dir=str(tmp_path / "bin"), cni_conf_dir=str(tmp_path / "net.d"),
                         add_wait_seconds=10)


def fake_plugin(path: Path, versions: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    answer = json.dumps({"cniVersion": "1.0.0", "supportedVersions": versions})
    path.write_text(f"#!/bin/sh\necho '{answer}'\n")
    path.chmod(0o755)


def test_conflist_document() -> None:
    doc = install.conflist(AgentSettings(add_wait_seconds=10), [install.PORTMAP], newest_ok=True,
                           spool_dir=Path("/var/lib/azure-cni/spool"))
    assert doc == {
        "cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0"], "name": "azure-cni",
        "plugins": [
            {"type": "azure-vnet", "agentSocket": "/run/azure-cni/agent.sock",
             "spoolDir": "/var/lib/azure-cni/spool", "timeoutSeconds": 15,
             "capabilities": {"io.kubernetes.cri.pod-annotations": True}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ]}


def test_debian_portmap_keeps_the_chain_at_1_0_0(tmp_path: Path) -> None:
    s = settings(tmp_path)
    # Debian bookworm's containernetworking-plugins 1.1.1 speak up to 1.0.0
    fake_plugin(Path(s.cni_bin_dir) / "portmap", ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0",
                                                   "1.0.0"])
    doc = json.loads(install.install_conflist(s).read_text())
    assert doc["cniVersions"] == ["1.0.0"]
    assert [p["type"] for p in doc["plugins"]] == ["azure-vnet", "portmap"]


def test_newer_portmap_allows_1_1_0(tmp_path: Path) -> None:
    s = settings(tmp_path)
    fake_plugin(Path(s.cni_bin_dir) / "portmap", ["0.4.0", "1.0.0", "1.1.0"])
    doc = json.loads(install.install_conflist(s).read_text())
    assert doc["cniVersions"] == ["1.0.0", "1.1.0"]


def test_missing_portmap_is_left_out_rather_than_breaking_del(tmp_path: Path) -> None:
    s = settings(tmp_path)
    path = install.install_conflist(s)
    doc = json.loads(path.read_text())
    assert [p["type"] for p in doc["plugins"]] == ["azure-vnet"]
    assert path.read_text().endswith("}\n"), "the appended newline is containerd's Write event"
    assert [p.name for p in path.parent.iterdir()] == [install.CONFLIST_NAME], "no temp files"


def test_real_debian_portmap(tmp_path: Path) -> None:
    versions = install.plugin_versions(Path("/usr/lib/cni/portmap"))
    assert "1.0.0" in versions and "1.1.0" not in versions


def test_remove_and_uninstall(tmp_path: Path) -> None:
    s = settings(tmp_path)
    install.install_shim(s)
    install.install_conflist(s)
    assert install.remove_conflist(s)
    assert not install.remove_conflist(s)
    install.uninstall(s)
    assert list(Path(s.cni_bin_dir).iterdir()) == []


def test_shim_files_are_executable_and_atomic(tmp_path: Path) -> None:
    s = settings(tmp_path)
    launcher = install.install_shim(s)
    assert stat.S_IMODE(launcher.stat().st_mode) == 0o755
    module = launcher.parent / install.SHIM_DIR_NAME / f"{install.SHIM_MODULE}.py"
    assert module.read_bytes() == install.shim_source()
    install.install_shim(s)  # replacing in place works (the runtime may be executing it)
    assert not [p for p in launcher.parent.iterdir() if p.name.startswith(".")]


def test_missing_host_python_is_reported(tmp_path: Path) -> None:
    s = AgentSettings(cni_bin_dir=str(tmp_path / "bin"), host_python="/usr/bin/python9")
    try:
        install.install_shim(s)
    except install.HostPythonMissing as e:
        assert "/usr/bin/python9 does not exist on the host" in str(e)
    else:
        raise AssertionError("a missing host python must be refused")
    assert not (tmp_path / "bin" / "azure-vnet").exists()


def test_host_root_is_where_python_is_looked_for(tmp_path: Path) -> None:
    root = tmp_path / "host"
    (root / "usr" / "bin").mkdir(parents=True)
    python = root / "usr" / "bin" / "python3"
    python.write_text("")
    python.chmod(0o755)
    assert install.check_host_python(AgentSettings(), root) == python


def test_extra_plugins_are_chained_after_portmap_when_present(tmp_path: Path) -> None:
    bandwidth = {"type": "bandwidth", "capabilities": {"bandwidth": True}}
    tuning = {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}}
    s = AgentSettings(**{**settings(tmp_path).__dict__, "extra_plugins": (bandwidth, tuning)})
    for name in ("portmap", "bandwidth"):
        fake_plugin(Path(s.cni_bin_dir) / name, ["0.4.0", "1.0.0", "1.1.0"])
    doc = json.loads(install.install_conflist(s).read_text())
    # tuning is not on the node: left out (the preflight names it), the rest chained in order
    assert doc["plugins"][1:] == [install.PORTMAP, bandwidth]
    assert doc["cniVersions"] == ["1.0.0", "1.1.0"]


def test_configurations_that_sort_first_shadow_ours(tmp_path: Path) -> None:
    conf = tmp_path / "net.d"
    conf.mkdir()
    for name in ("05-cilium.conflist", "10-azure.conflist", "99-loopback.conf", ".hidden.conf",
                 "10-aaa.conf", "README"):
        (conf / name).write_text("{}")
    assert install.shadowing_configs(conf) == ["05-cilium.conflist", "10-aaa.conf"]
    assert install.shadowing_configs(tmp_path / "none") == []


def test_uninstall_node_removes_what_the_agent_left_under_a_host_root(tmp_path: Path) -> None:
    host = tmp_path / "host"
    agent = AgentSettings()
    on = {key: host / value.lstrip("/") for key, value in (
        ("bin", agent.cni_bin_dir), ("conf", agent.cni_conf_dir), ("state", agent.state_dir))}
    placed = AgentSettings(cni_bin_dir=str(on["bin"]), cni_conf_dir=str(on["conf"]),
                           state_dir=str(on["state"]))
    fake_plugin(on["bin"] / "portmap", ["1.0.0"])
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/python3").symlink_to("/usr/bin/python3")
    install.install_shim(placed, host_root=tmp_path)  # not "/": no probe run
    install.install_conflist(placed)
    (on["state"] / "spool").mkdir(parents=True)
    (on["conf"] / "05-other.conflist").write_text("{}")
    removed = install.uninstall_node(agent, host)
    assert on["conf"] / install.CONFLIST_NAME in removed and on["state"] in removed
    assert sorted(p.name for p in on["bin"].iterdir()) == ["portmap"]
    assert sorted(p.name for p in on["conf"].iterdir()) == ["05-other.conflist"]
    assert install.uninstall_node(agent, host) == [], "a second run finds nothing"


def test_uninstall_node_empties_a_directory_it_cannot_remove(tmp_path: Path,
                                                            monkeypatch) -> None:
    """In the agent's pod the store and socket directories are mount points (hostPath): they
    cannot be removed, only emptied, and the rest of the uninstall must still happen."""
    agent = AgentSettings(state_dir=str(tmp_path / "state"), socket_path=str(tmp_path / "run/s"),
                          cni_conf_dir=str(tmp_path / "net.d"),
                          cni_bin_dir=str(tmp_path / "bin"))
    for path in (tmp_path / "state/ipam.db", tmp_path / "run/s",
                 tmp_path / "net.d" / install.CONFLIST_NAME):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    mounts = {tmp_path / "state", tmp_path / "run"}
    real_rmdir = Path.rmdir

    def rmdir(self: Path) -> None:
        if self in mounts:
            raise OSError(16, "Device or resource busy", str(self))
        real_rmdir(self)

    monkeypatch.setattr(Path, "rmdir", rmdir)
    install.uninstall_node(agent)
    assert list((tmp_path / "state").iterdir()) == [] and list((tmp_path / "run").iterdir()) == []
    assert not (tmp_path / "net.d" / install.CONFLIST_NAME).exists()
