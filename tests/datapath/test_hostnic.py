"""Pods get the MTU of the host's NIC (or the configured one)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from azure_cni_sim.node import setup_host_nic

pytestmark = pytest.mark.netns


def resolve_in(netns: str, **agent: object) -> str:
    code = ("from azure_cni.api.settings import AgentSettings\n"
            "from azure_cni.datapath.hostnic import HostInterfaceUnknown, resolve_mtu\n"
            "try:\n"
            f"    print(resolve_mtu(AgentSettings(**{agent!r})))\n"
            "except HostInterfaceUnknown as e:\n"
            "    print('unknown:', e)\n")
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def test_mtu_comes_from_the_default_route_nic_or_the_settings(netns_factory) -> None:
    host = netns_factory.create("host")
    assert resolve_in(host).startswith("unknown: the host has no IPv4 default route")
    setup_host_nic(host, primary_cidr="198.18.0.4/24", gateway="198.18.0.1", mtu=1400)
    assert resolve_in(host) == "(1400, 'interface eth0 (default route)')"
    assert resolve_in(host, host_interface="lo") == "(65536, 'interface lo')"
    assert resolve_in(host, mtu=9000) == "(9000, 'agent.mtu')"
    assert resolve_in(host, host_interface="eth9").startswith("unknown: agent.hostInterface")

