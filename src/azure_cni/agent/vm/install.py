"""``azure-cni install standalone``: the agent on a plain VM, as a systemd service.

Two files, and nothing else (the agent installs the CNI shim and conflist itself once it
knows the NIC's addresses, as on a Kubernetes node):

- ``/etc/azure-cni/config.yaml``: the settings, with ``standalone.enabled`` (an existing file
  is kept unless ``--force``: it is the admin's);
- ``/etc/systemd/system/azure-cni-agent.service``: starts the agent before containerd and
  Docker, so forwarding is on and the sockets serve before a runtime asks for a network
  (dockerd turns the FORWARD policy to DROP when it has to enable forwarding itself), and
  restarts it if it exits. Stopping the agent never takes containers' networks down.

With ``--root`` both go under another directory (an image being built, a test).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from azure_cni.agent.install import write_atomically
from azure_cni.api.settings import (
    DEFAULT_CONFIG_PATH,
    InvalidSettings,
    Settings,
    settings_from_mapping,
)

UNIT_NAME = "azure-cni-agent.service"
UNIT_PATH = Path("/etc/systemd/system") / UNIT_NAME
#: how long the unit waits for the agent's socket before systemd calls the start failed
SOCKET_WAIT_SECONDS = 30


def config_document(non_masquerade_cidrs: Sequence[str]) -> str:
    """The settings file of a standalone VM, with the comments an admin needs (pure)."""
    defaults = Settings().standalone
    cidrs = yaml.safe_dump(list(non_masquerade_cidrs), default_flow_style=True).strip()
    return f"""\
# azure-cni on a VM without Kubernetes (written by `azure-cni install standalone`).
# Containers get the NIC's secondary IP addresses: add ipConfigurations to the NIC (portal,
# `az network nic ip-config create`, Terraform) and the agent uses them within refreshSeconds.
standalone:
  enabled: true
  # the instance metadata service the pool is read from, and how often (at least 1 s: IMDS
  # allows 5 requests per second per VM for every program on it)
  imdsEndpoint: {defaults.imds_endpoint}
  refreshSeconds: {defaults.refresh_seconds:g}
  # the NIC whose addresses containers get, by MAC address; empty: the primary NIC
  interfaceMAC: "{defaults.interface_mac}"
  # Docker's network and IPAM plugin (docker network create -d azure-cni --ipam-driver
  # azure-cni NAME); empty: no Docker plugin
  dockerPluginSocket: {defaults.docker_plugin_socket}
snat:
  # Containers reach the VM's subnet with their own address; list here the other ranges they
  # should reach without NAT: the rest of the VNet, peered VNets, on-premises networks.
  # Everything else (the internet) sees the VM's primary address.
  nonMasqueradeCIDRs: {cidrs}
"""


def unit_file(agent: Path, config: Path, socket_path: str) -> str:
    """The systemd unit (pure)."""
    wait = (f"for i in $(seq {SOCKET_WAIT_SECONDS * 10}); do "
            f"[ -S {shlex.quote(socket_path)} ] && exit 0; sleep 0.1; done; exit 1")
    return f"""\
# azure-cni agent on a VM without Kubernetes (written by `azure-cni install standalone`)
[Unit]
Description=azure-cni agent: Azure VNet addresses for containers
Wants=network-online.target
After=network-online.target
# forwarding on and sockets serving before a runtime asks for a network
Before=containerd.service docker.service

[Service]
Type=simple
ExecStart={shlex.quote(str(agent))} --config {shlex.quote(str(config))}
ExecStartPost=/bin/sh -c {shlex.quote(wait)}
Restart=always
RestartSec=2
# SIGTERM: the agent stops serving; containers keep their interfaces, routes and addresses
KillMode=mixed
TimeoutStopSec=30
NoNewPrivileges=yes
# what the agent needs, as in the chart's DaemonSet (docs/security.md)
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_SYS_ADMIN

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class Installed:
    config: Path
    config_written: bool
    unit: Path
    enabled: bool


def find_agent() -> Path:
    """The ``azure-cni-agent`` of this installation."""
    found = shutil.which("azure-cni-agent")
    return Path(found) if found else Path(sys.executable).with_name("azure-cni-agent")


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


def install_standalone(*, root: Path = Path("/"), agent: Path | None = None,
                       non_masquerade_cidrs: Sequence[str] = (), force: bool = False,
                       enable: bool = True) -> Installed:
    """Write the settings file and the unit; enable and start the unit when ``root`` is
    this machine and systemd runs it. InvalidSettings before anything is written."""
    text = config_document(non_masquerade_cidrs)
    settings = settings_from_mapping(yaml.safe_load(text))
    agent = agent or find_agent()
    if not agent.is_absolute():
        raise InvalidSettings(f"the agent's path {agent} must be absolute")
    config = _under(root, DEFAULT_CONFIG_PATH)
    write_config = force or not config.exists()
    if write_config:
        write_atomically(config, text.encode(), mode=0o644)
    unit = _under(root, UNIT_PATH)
    write_atomically(unit, unit_file(agent, DEFAULT_CONFIG_PATH,
                                     settings.agent.socket_path).encode(), mode=0o644)
    started = False
    if enable and root == Path("/") and Path("/run/systemd/system").is_dir():
        for command in (["systemctl", "daemon-reload"],
                        ["systemctl", "enable", "--now", UNIT_NAME]):
            subprocess.run(command, check=True, timeout=120)
        started = True
    return Installed(config, write_config, unit, started)


class UninstallFailed(RuntimeError):
    """A step of ``azure-cni uninstall standalone`` failed; the message names it."""


@dataclass(frozen=True)
class Uninstalled:
    removed: tuple[Path, ...]
    kept: tuple[Path, ...]
    stopped: bool
    cleaned: bool

    def report(self) -> list[str]:
        """What an admin reads after the command."""
        lines = [f"stopped:      {UNIT_NAME}" if self.stopped else
                 f"not running:  {UNIT_NAME} (nothing to stop here)"]
        if self.cleaned:
            lines.append("removed:      the CNI plugin, its conflist and the agent's iptables "
                         "chains")
        lines += [f"removed:      {path}" for path in self.removed]
        lines += [f"kept:         {path} (--purge removes it)" for path in self.kept]
        lines.append("containers that still run keep their addresses until they stop")
        return lines


def _run_checked(argv: Sequence[str], what: str) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise UninstallFailed(f"{what} failed ({shlex.join(argv)} exited {done.returncode}): "
                              f"{(done.stderr or done.stdout).strip()[:500]}")


def uninstall_standalone(*, root: Path = Path("/"), agent: Path | None = None,
                         purge: bool = False) -> Uninstalled:
    """Undo ``install_standalone``: stop and disable the unit, let the agent remove what it
    installed on the host (``--uninstall``: conflist, plugin, iptables chains), remove the
    unit; with ``purge`` also the settings file and the agent's state. With another ``root``
    only files are removed there. Safe to run twice."""
    config = _under(root, DEFAULT_CONFIG_PATH)
    unit = _under(root, UNIT_PATH)
    on_this_machine = root == Path("/")
    stopped = cleaned = False
    if on_this_machine and Path("/run/systemd/system").is_dir() and unit.exists():
        _run_checked(["systemctl", "disable", "--now", UNIT_NAME], f"stopping {UNIT_NAME}")
        stopped = True
    state_dir = Path(Settings().agent.state_dir)
    if config.exists():
        try:
            settings = settings_from_mapping(yaml.safe_load(config.read_text()) or {})
        except InvalidSettings as e:
            raise UninstallFailed(f"{config} cannot be read ({e}); fix or remove it") from e
        state_dir = Path(settings.agent.state_dir)
        if on_this_machine:
            _run_checked([str(agent or find_agent()), "--config", str(config), "--uninstall"],
                         "removing the CNI plugin and the agent's iptables chains")
            cleaned = True
    removed = []
    if unit.exists():
        unit.unlink()
        removed.append(unit)
        if stopped:
            _run_checked(["systemctl", "daemon-reload"], "systemctl daemon-reload")
    kept = []
    for path in (config, _under(root, state_dir)):
        if not path.exists():
            continue
        if not purge:
            kept.append(path)
        elif path.is_dir():
            shutil.rmtree(path)
            removed.append(path)
        else:
            path.unlink()
            removed.append(path)
    return Uninstalled(tuple(removed), tuple(kept), stopped, cleaned)
