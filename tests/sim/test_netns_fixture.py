"""The throwaway-namespace fixture every datapath test builds on is isolated and cleaned up."""

from __future__ import annotations

import subprocess

import pytest

pytestmark = pytest.mark.netns


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def test_two_namespaces_talk_over_a_veth_and_vanish_afterwards(netns_factory) -> None:
    a, b = netns_factory.create("a"), netns_factory.create("b")
    _ip("link", "add", "azt-a", "netns", a, "type", "veth", "peer", "azt-b", "netns", b)
    _ip("-n", a, "addr", "add", "198.18.250.1/30", "dev", "azt-a")
    _ip("-n", b, "addr", "add", "198.18.250.2/30", "dev", "azt-b")
    _ip("-n", a, "link", "set", "azt-a", "up")
    _ip("-n", b, "link", "set", "azt-b", "up")
    ping = subprocess.run(["ip", "netns", "exec", a, "ping", "-c1", "-W2", "198.18.250.2"],
                          capture_output=True, text=True, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    # nothing of it is visible in the host namespace
    assert "azt-a" not in _ip("link") and "azt-b" not in _ip("link")
    names = list(netns_factory.names)
    netns_factory.cleanup()
    listing = _ip("netns", "list")
    assert all(n not in listing for n in names)
