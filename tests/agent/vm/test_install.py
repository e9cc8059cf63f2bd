"""``azure-cni install standalone`` into a temporary root: the settings file and the unit."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from azure_cni.agent.vm.install import UNIT_NAME
from azure_cni.api.settings import load_settings

CLI = Path(sys.executable).with_name("azure-cni")


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), "install", "standalone", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_one_command_writes_the_settings_and_the_unit(tmp_path: Path) -> None:
    done = install(tmp_path, "--non-masquerade", "10.1.0.0/16", "--non-masquerade",
                   "172.16.0.0/12")
    assert done.returncode == 0, done.stderr
    config = tmp_path / "etc/azure-cni/config.yaml"
    unit = tmp_path / "etc/systemd/system" / UNIT_NAME
    assert f"settings:     {config}" in done.stdout
    assert f"systemctl daemon-reload && systemctl enable --now {UNIT_NAME}" in done.stdout
    # the file the agent will read says what an admin asked for
    settings = load_settings(config)
    assert settings.standalone.enabled
    assert settings.snat.non_masquerade_cidrs == ("10.1.0.0/16", "172.16.0.0/12")
    assert settings.standalone.docker_plugin_socket == "/run/docker/plugins/azure-cni.sock"
    text = unit.read_text()
    agent = Path(sys.executable).with_name("azure-cni-agent")
    assert f"ExecStart={agent} --config /etc/azure-cni/config.yaml" in text
    assert "Before=containerd.service docker.service" in text
    assert "/run/azure-cni/agent.sock" in text, "started means serving"
    assert "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_SYS_ADMIN\n" in text


def test_an_existing_settings_file_is_the_admins_unless_forced(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    config = tmp_path / "etc/azure-cni/config.yaml"
    config.write_text(config.read_text().replace("refreshSeconds: 10", "refreshSeconds: 30"))
    again = install(tmp_path, "--non-masquerade", "10.9.0.0/16")
    assert again.returncode == 0 and "kept the existing file" in again.stdout
    assert load_settings(config).standalone.refresh_seconds == 30
    forced = install(tmp_path, "--force", "--non-masquerade", "10.9.0.0/16")
    assert forced.returncode == 0
    assert load_settings(config).standalone.refresh_seconds == 10
    assert load_settings(config).snat.non_masquerade_cidrs == ("10.9.0.0/16",)


def test_a_bad_range_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    done = install(tmp_path, "--non-masquerade", "10.0.0.0/33")
    assert done.returncode == 1
    assert "snat.nonMasqueradeCIDRs: '10.0.0.0/33' is not a CIDR" in done.stderr
    assert not (tmp_path / "etc").exists()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    verify = subprocess.run(["systemd-analyze", "verify",
                             str(tmp_path / "etc/systemd/system" / UNIT_NAME)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert verify.returncode == 0, verify.stderr


def uninstall(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), "uninstall", "standalone", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_uninstall_removes_the_unit_and_keeps_the_admins_files(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    config = tmp_path / "etc/azure-cni/config.yaml"
    unit = tmp_path / "etc/systemd/system" / UNIT_NAME
    state = tmp_path / "var/lib/azure-cni"
    state.mkdir(parents=True)
    (state / "ipam.db").write_bytes(b"")
    done = uninstall(tmp_path)
    assert done.returncode == 0, done.stderr
    assert not unit.exists()
    assert config.exists() and state.exists()
    assert f"removed:      {unit}" in done.stdout
    assert f"kept:         {config} (--purge removes it)" in done.stdout
    again = uninstall(tmp_path, "--purge")
    assert again.returncode == 0, again.stderr
    assert not config.exists() and not state.exists()
    assert f"removed:      {state}" in again.stdout
    assert uninstall(tmp_path, "--purge").returncode == 0, "a second run finds nothing to do"


def test_uninstall_refuses_a_settings_file_it_cannot_read(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    config = tmp_path / "etc/azure-cni/config.yaml"
    config.write_text("agent: {mtu: lots}\n")
    done = uninstall(tmp_path)
    assert done.returncode == 1
    assert f"{config} cannot be read" in done.stderr
    assert (tmp_path / "etc/systemd/system" / UNIT_NAME).exists(), "nothing was removed"
