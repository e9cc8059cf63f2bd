"""Sockets made in another namespace by the helper see that namespace, and only it."""

from __future__ import annotations

import os
import subprocess

import pytest
from pyroute2 import IPRoute

from azure_cni.datapath.netns_sockets import NetnsSocketError, NetnsSocketFactory

pytestmark = pytest.mark.netns


def link_names(sock) -> set[str]:
    with IPRoute(fileno=sock.detach()) as ipr:
        return {str(link.get("IFLA_IFNAME")) for link in ipr.get_links()}


def test_socket_lives_in_the_requested_namespace(netns_factory, tmp_path) -> None:
    a, b = netns_factory.create("a"), netns_factory.create("b")
    subprocess.run(["ip", "-n", a, "link", "add", "only-in-a", "type", "veth", "peer", "name",
                    "also-in-a"], check=True)
    factory = NetnsSocketFactory()
    try:
        assert "only-in-a" in link_names(factory.netlink_socket(f"/run/netns/{a}"))
        assert link_names(factory.netlink_socket(f"/run/netns/{b}")) == {"lo"}
        with pytest.raises(FileNotFoundError):
            factory.netlink_socket(f"/run/netns/{a}-gone")
        not_a_netns = tmp_path / "file"
        not_a_netns.write_text("")
        with pytest.raises(NetnsSocketError, match="not a network namespace"):
            factory.netlink_socket(str(not_a_netns))
        # the helper died (say, OOM-killed): the next request starts a new one
        assert factory._proc is not None
        factory._proc.kill()
        factory._proc.wait()
        assert "only-in-a" in link_names(factory.netlink_socket(f"/run/netns/{a}"))
    finally:
        factory.close()


def test_helper_does_not_keep_a_pod_namespace_alive(netns_factory) -> None:
    pod = netns_factory.create("pod")
    factory = NetnsSocketFactory()
    try:
        factory.netlink_socket(f"/run/netns/{pod}").close()
        assert factory._proc is not None
        helper_ns = os.readlink(f"/proc/{factory._proc.pid}/ns/net")
        assert helper_ns == os.readlink("/proc/self/ns/net"), \
            "the helper must return to its own namespace after each socket"
    finally:
        factory.close()


def test_sysctl_files_belong_to_the_requested_namespace(netns_factory) -> None:
    a, b = netns_factory.create("a"), netns_factory.create("b")
    subprocess.run(["ip", "netns", "exec", a, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                   check=True)
    factory = NetnsSocketFactory()
    try:
        for netns, expected in ((a, "1"), (b, "0")):
            with os.fdopen(factory.sysctl_file(f"/run/netns/{netns}", "ipv4/ip_forward"),
                           "r+") as f:
                assert f.read().strip() == expected
        with os.fdopen(factory.sysctl_file(f"/run/netns/{b}", "ipv4/ip_forward"), "w") as f:
            f.write("1\n")
        forward = subprocess.run(["ip", "netns", "exec", b, "sysctl", "-n",
                                  "net.ipv4.ip_forward"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        assert forward == "1"
        with pytest.raises(FileNotFoundError):
            factory.sysctl_file(f"/run/netns/{a}", "ipv6/conf/no-such-link/disable_ipv6")
        with pytest.raises(ValueError, match="not a path below"):
            factory.sysctl_file(f"/run/netns/{a}", "../../kernel/hostname")
    finally:
        factory.close()
