"""A pod's veth pair in real namespaces: built, checked, repaired, removed, rolled back."""

from __future__ import annotations

import errno
import subprocess
import sys
from collections.abc import Iterator

import pytest

from azure_cni.datapath.memory import InMemoryDatapath
from azure_cni.datapath.names import handover_name, host_veth_mac, host_veth_name, pod_mac
from azure_cni.datapath.rtnl import NetlinkRequestFailed
from azure_cni.datapath.veth import InterfaceTaken, NetnsMissing, PodNetwork, VethDatapath
from azure_cni_sim.node import setup_host_nic
from azure_cni_sim.procs import wait_for

pytestmark = pytest.mark.netns


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=30)


@pytest.fixture
def host(netns_factory) -> str:
    name = netns_factory.create("host")
    setup_host_nic(name, primary_cidr="198.18.0.4/24", gateway="198.18.0.1", mtu=1400)
    sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    return name


@pytest.fixture
def datapath(host: str) -> Iterator[VethDatapath]:
    dp = VethDatapath(host_netns=f"/run/netns/{host}")
    yield dp
    dp.close()


def spec(netns: str, container: str, address: str, mtu: int = 1400) -> PodNetwork:
    return PodNetwork(netns=f"/run/netns/{netns}", ifname="eth0", address=address,
                      host_veth=host_veth_name(container, "eth0"),
                      host_mac=host_veth_mac(container, "eth0"),
                      pod_mac=pod_mac(container, "eth0"), mtu=mtu)


def ping(netns: str, address: str) -> bool:
    return sh("ip", "netns", "exec", netns, "ping", "-c1", "-W2", address,
              check=False).returncode == 0


def test_pods_reach_each_other_and_the_host(datapath: VethDatapath, host: str,
                                            netns_factory) -> None:
    a, b = netns_factory.create("a"), netns_factory.create("b")
    pa, pb = spec(a, "ca", "198.18.0.10"), spec(b, "cb", "198.18.0.11")
    datapath.ensure_pod_veth(pa)
    datapath.ensure_pod_veth(pb)
    assert ping(a, "198.18.0.11") and ping(b, "198.18.0.10")
    assert ping(a, "198.18.0.4"), "pod to the host's primary IP"
    assert ping(host, "198.18.0.10"), "host to pod"
    inside = sh("ip", "-n", a, "-d", "addr", "show", "eth0").stdout
    assert "inet 198.18.0.10/32" in inside and "mtu 1400" in inside
    assert pod_mac("ca", "eth0") in inside
    routes = sh("ip", "-n", a, "route").stdout
    assert "default via 169.254.1.1 dev eth0" in routes
    assert "169.254.1.1 dev eth0" in routes and "scope link" in routes
    neigh = sh("ip", "-n", a, "neigh", "show", "169.254.1.1").stdout
    assert host_veth_mac("ca", "eth0") in neigh and "PERMANENT" in neigh
    host_side = sh("ip", "-n", host, "-d", "link", "show", pa.host_veth).stdout
    assert "mtu 1400" in host_side and "veth" in host_side
    assert f"198.18.0.10 dev {pa.host_veth}" in sh("ip", "-n", host, "route").stdout
    proxy_arp = sh("ip", "netns", "exec", host, "sysctl", "-n",
                   f"net.ipv4.conf.{pa.host_veth}.proxy_arp").stdout.strip()
    assert proxy_arp == "1"
    assert datapath.check_pod_veth(pa) == []
    listed = {v.name: v.addresses for v in datapath.list_host_veths()}
    assert listed == {pa.host_veth: ("198.18.0.10",), pb.host_veth: ("198.18.0.11",)}


#: an ICMPv6 router advertisement (router lifetime 1800 s) with a prefix for SLAAC, sent to
#: all nodes from the interface's link-local address; the kernel fills in the checksum
SEND_RA = """
import socket, struct, sys
prefix = socket.inet_pton(socket.AF_INET6, "2001:db8:1::")
ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
pio = struct.pack("!BBBBIII16s", 3, 4, 64, 0xC0, 86400, 14400, 0, prefix)
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
for name in sys.argv[1:]:
    s.sendto(ra + pio, ("ff02::1", 0, 0, socket.if_nametoindex(name)))
"""


def ipv6_ready(netns: str, ifname: str) -> bool:
    """``ifname`` has a link-local address that finished duplicate address detection."""
    out = sh("ip", "-n", netns, "-6", "addr", "show", "dev", ifname, "scope", "link").stdout
    return "inet6 fe80" in out and "tentative" not in out


def test_a_router_advertisement_from_a_pod_does_not_reach_the_host(
        datapath: VethDatapath, host: str, netns_factory) -> None:
    """A pod has CAP_NET_RAW by default: its router advertisement must not give the host an
    IPv6 default route (through the pod) or an address. A plain veth pair beside ours shows
    the same advertisement is accepted where IPv6 is on."""
    pod = netns_factory.create("pod")
    p = spec(pod, "c1", "198.18.0.10")
    datapath.ensure_pod_veth(p)
    sh("ip", "-n", host, "link", "add", "ctl-host", "type", "veth", "peer", "name", "ctl0",
       "netns", pod)
    sh("ip", "-n", host, "link", "set", "ctl-host", "up")
    sh("ip", "-n", pod, "link", "set", "ctl0", "up")
    wait_for("the pod's link-local addresses", lambda: ipv6_ready(pod, "eth0")
             and ipv6_ready(pod, "ctl0"), 30)
    # ours first: the host handles both in order, so once the control has its route, ours
    # would have one too
    sh("ip", "netns", "exec", pod, sys.executable, "-c", SEND_RA, "eth0", "eth0", "ctl0")
    wait_for("the host to accept the advertisement on the control pair",
             lambda: "dev ctl-host" in sh("ip", "-n", host, "-6", "route", "show",
                                          "default").stdout, 30)
    routes = sh("ip", "-n", host, "-6", "route", "show").stdout
    assert p.host_veth not in routes, routes
    assert sh("ip", "-n", host, "-6", "addr", "show", "dev", p.host_veth).stdout == ""
    assert datapath.check_pod_veth(p) == []
    assert ping(pod, "198.18.0.4"), "IPv4 still works"


@pytest.mark.parametrize(("tamper", "complaint"), [
    (["ip", "-n", "{pod}", "route", "del", "default"], "no default route via 169.254.1.1"),
    (["ip", "-n", "{pod}", "addr", "del", "198.18.0.10/32", "dev", "eth0"],
     "does not have 198.18.0.10/32"),
    (["ip", "-n", "{pod}", "link", "set", "eth0", "down"], "is down"),
    (["ip", "-n", "{pod}", "neigh", "del", "169.254.1.1", "dev", "eth0"],
     "no permanent neighbour entry"),
    (["ip", "-n", "{host}", "route", "del", "198.18.0.10/32"], "host has no route"),
    (["ip", "netns", "exec", "{host}", "sysctl", "-qw",
      "net.ipv4.conf.{veth}.proxy_arp=0"], "proxy ARP is off"),
    (["ip", "netns", "exec", "{host}", "sysctl", "-qw",
      "net.ipv6.conf.{veth}.disable_ipv6=0"], "IPv6 is on"),
    (["ip", "-n", "{host}", "link", "del", "{veth}"], "does not exist"),
])
def test_check_names_what_is_broken_and_ensure_repairs_it(
        datapath: VethDatapath, host: str, netns_factory, tamper: list[str],
        complaint: str) -> None:
    pod = netns_factory.create("pod")
    p = spec(pod, "c1", "198.18.0.10")
    datapath.ensure_pod_veth(p)
    sh(*[t.format(pod=pod, host=host, veth=p.host_veth) for t in tamper])
    problems = datapath.check_pod_veth(p)
    assert any(complaint in problem for problem in problems), problems
    datapath.ensure_pod_veth(p)  # the retried ADD replaces the stale pair
    assert datapath.check_pod_veth(p) == []
    assert ping(pod, "198.18.0.4")


def test_teardown_is_idempotent_and_removes_everything(datapath: VethDatapath, host: str,
                                                       netns_factory) -> None:
    pod = netns_factory.create("pod")
    p = spec(pod, "c1", "198.18.0.10")
    datapath.ensure_pod_veth(p)
    datapath.teardown_pod_veth(p.host_veth)
    datapath.teardown_pod_veth(p.host_veth)
    assert "eth0" not in sh("ip", "-n", pod, "link").stdout
    assert "198.18.0.10" not in sh("ip", "-n", host, "route").stdout
    assert datapath.list_host_veths() == []


def test_failed_add_is_rolled_back(datapath: VethDatapath, host: str, netns_factory) -> None:
    pod = netns_factory.create("pod")
    # the pod already routes the gateway somewhere: our route add fails halfway
    sh("ip", "-n", pod, "link", "add", "x0", "type", "veth", "peer", "name", "x1")
    sh("ip", "-n", pod, "link", "set", "x0", "up")
    sh("ip", "-n", pod, "route", "add", "169.254.1.1/32", "dev", "x0")
    p = spec(pod, "c1", "198.18.0.10")
    with pytest.raises(NetlinkRequestFailed) as caught:
        datapath.ensure_pod_veth(p)
    assert caught.value.errno == errno.EEXIST
    assert "169.254.1.1/32" in str(caught.value)
    assert datapath.list_host_veths() == [], "the half-built pair must be gone"
    assert "eth0" not in sh("ip", "-n", pod, "link").stdout


def test_existing_interface_in_the_pod_is_refused(datapath: VethDatapath, netns_factory) -> None:
    pod = netns_factory.create("pod")
    sh("ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "other")
    with pytest.raises(InterfaceTaken, match="already has an interface named eth0"):
        datapath.ensure_pod_veth(spec(pod, "c1", "198.18.0.10"))
    assert datapath.list_host_veths() == []


def test_missing_namespace(datapath: VethDatapath) -> None:
    with pytest.raises(NetnsMissing):
        datapath.ensure_pod_veth(spec("azcni-t-no-such-netns", "c1", "198.18.0.10"))


def test_both_datapaths_keep_the_same_promises(datapath: VethDatapath, netns_factory) -> None:
    """The in-memory datapath used by unit tests behaves like the real one."""
    pod = netns_factory.create("pod")
    fake = InMemoryDatapath(namespaces={f"/run/netns/{pod}"})
    for dp in (datapath, fake):
        p = spec(pod, "c1", "198.18.0.10")
        dp.ensure_pod_veth(p)
        dp.ensure_pod_veth(p)
        assert dp.check_pod_veth(p) == []
        assert [(v.name, v.addresses) for v in dp.list_host_veths()] == \
            [(p.host_veth, ("198.18.0.10",))]
        dp.teardown_pod_veth(p.host_veth)
        dp.teardown_pod_veth(p.host_veth)
        assert dp.list_host_veths() == []
        assert dp.check_pod_veth(p) == [f"host veth {p.host_veth} does not exist"]
        with pytest.raises(NetnsMissing):
            dp.ensure_pod_veth(spec("azcni-t-gone", "c2", "198.18.0.11"))


def test_a_pod_side_handed_over_is_configured_by_whoever_moves_it(
        datapath: VethDatapath, host: str, netns_factory) -> None:
    """Docker's libnetwork takes the pod side from the host, renames it and configures it as
    the plugin's Join answer says: address, a connected route to the gateway, the default."""
    container = netns_factory.create("docker")
    peer = handover_name("endpoint", "docker:endpoint")
    pod = PodNetwork(netns="", ifname=peer, address="198.18.0.12",
                     host_veth=host_veth_name("endpoint", "docker:endpoint"),
                     host_mac=host_veth_mac("endpoint", "docker:endpoint"),
                     pod_mac=pod_mac("endpoint", "docker:endpoint"), mtu=1400)
    datapath.ensure_pod_veth(pod)
    datapath.ensure_pod_veth(pod)  # a retried CreateEndpoint replaces the pair
    assert datapath.link_exists(peer) and datapath.link_exists(pod.host_veth)
    assert f"198.18.0.12 dev {pod.host_veth}" in sh("ip", "-n", host, "route").stdout
    for step in (["link", "set", peer, "netns", container],
                 ["-n", container, "link", "set", peer, "name", "eth0"],
                 ["-n", container, "addr", "add", "198.18.0.12/32", "dev", "eth0"],
                 ["-n", container, "link", "set", "eth0", "up"],
                 ["-n", container, "route", "add", "169.254.1.1/32", "dev", "eth0",
                  "scope", "link"],
                 ["-n", container, "route", "add", "default", "via", "169.254.1.1"]):
        sh("ip", *(["-n", host, *step] if step[0] == "link" else step))
    assert not datapath.link_exists(peer)
    # no static neighbour entry here: the host side answers ARP for the gateway (proxy ARP)
    assert ping(container, "198.18.0.4") and ping(host, "198.18.0.12")
    datapath.teardown_pod_veth(pod.host_veth)
    assert not datapath.link_exists(pod.host_veth)
    assert "eth0" not in sh("ip", "-n", container, "link").stdout
