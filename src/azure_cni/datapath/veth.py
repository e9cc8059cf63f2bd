"""A pod's transparent-mode datapath: one veth pair, host routes, proxy ARP.

Pod side: ``eth0`` (CNI_IFNAME) with the pod address as /32, a link-scope route to the
gateway 169.254.1.1, a permanent neighbour entry mapping the gateway to the host veth's MAC,
and ``default via 169.254.1.1``. Host side: ``azv<hash>`` with proxy ARP, IPv6 off, and a /32
route to the pod. Everything hangs off the veth pair, so deleting the host veth removes all
of it.

IPv6 is disabled on the host side before it comes up: a pod may send anything (the default
capabilities include NET_RAW), and a router advertisement accepted on the host veth would
give the node an IPv6 default route through the pod. Pods get IPv4 only, so nothing of
theirs needs IPv6 on that link. Netlink cannot set ``disable_ipv6``; it is written under
``/proc/sys/net`` of the host's namespace.

``ensure_pod_veth`` is idempotent (a stale pair with the same name is replaced) and rolls back
on failure; ``teardown_pod_veth`` always succeeds when the pair is already gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from pyroute2.iproute.linux import IPRoute

from azure_cni.datapath import rtnl
from azure_cni.datapath.names import POD_GATEWAY, is_host_veth
from azure_cni.datapath.netns_sockets import NetnsSocketFactory
from azure_cni.datapath.sysctls import PROC_NET

DEFAULT_ROUTE = "0.0.0.0"  # noqa: S104 - a route destination, nothing binds to it


class NetnsMissing(FileNotFoundError):
    """The pod's network namespace does not exist (any more)."""


class InterfaceTaken(FileExistsError):
    """The pod namespace already has an interface with the requested name that is not ours."""


@dataclass(frozen=True)
class PodNetwork:
    """Everything needed to build (or check, or remove) one pod's veth pair.

    ``netns`` empty: the pod side stays on the host, named ``ifname`` and unconfigured, for a
    runtime that moves the interface into the container and sets its address and routes
    itself (Docker's libnetwork, told by the network plugin's Join answer).
    """

    netns: str
    ifname: str
    address: str
    host_veth: str
    host_mac: str
    pod_mac: str
    mtu: int
    gateway: str = POD_GATEWAY


@dataclass(frozen=True)
class HostVeth:
    """A host-side pod veth found on the node, with the /32 routes pointing at it."""

    name: str
    index: int
    addresses: tuple[str, ...]


class VethDatapath:
    """The real datapath: netlink on the host and, through a socket helper, in pods.

    The host is the agent's own network namespace, or ``host_netns`` (tests and tools that
    drive a simulated VM from outside it). Each thread keeps its own host socket open.
    ``sysctl_root`` is where the agent's namespace's ``/proc/sys/net`` is writable (the
    host's mount in a container, see ``sysctls.proc_sys_net``).
    """

    def __init__(self, sockets: NetnsSocketFactory | None = None,
                 host_netns: str | None = None, sysctl_root: Path = PROC_NET) -> None:
        self.sockets = sockets or NetnsSocketFactory()
        self.host_netns = host_netns
        self.sysctl_root = sysctl_root
        self._local = threading.local()

    def _host(self) -> rtnl.RtnlChannel:
        channel: rtnl.RtnlChannel | None = getattr(self._local, "host", None)
        if channel is None:
            sock = self.sockets.netlink_socket(self.host_netns) if self.host_netns else None
            channel = rtnl.RtnlChannel(sock)
            self._local.host = channel
        return channel

    def _host_reader(self) -> IPRoute:
        if self.host_netns:
            return IPRoute(fileno=self.sockets.netlink_socket(self.host_netns).detach())
        return IPRoute()

    def close(self) -> None:
        self.sockets.close()

    # -- ADD -------------------------------------------------------------------------------

    def ensure_pod_veth(self, pod: PodNetwork) -> None:
        """Build the pod's datapath; on failure nothing of it is left behind."""
        try:
            netns_fd = os.open(pod.netns, os.O_RDONLY | os.O_CLOEXEC) if pod.netns else None
        except FileNotFoundError:
            raise NetnsMissing(errno.ENOENT,
                               f"network namespace {pod.netns} does not exist") from None
        host = self._host()
        with contextlib.ExitStack() as undo:
            try:
                create = _veth_pair(pod, netns_fd)
                try:
                    host.send([create])
                except rtnl.NetlinkRequestFailed as e:
                    if e.errno != errno.EEXIST:
                        raise
                    self._replace_stale_pair(pod)
                    create = _veth_pair(pod, netns_fd)
                    host.send([create])
            finally:
                if netns_fd is not None:
                    os.close(netns_fd)
            undo.callback(self.teardown_pod_veth, pod.host_veth)
            host_index, pod_index = _indexes(create)
            self._disable_host_ipv6(pod.host_veth)  # still down: no RA was taken yet
            if netns_fd is None:  # the runtime moves it and configures the pod side
                self._configure_host_side(host, pod, host_index)
                undo.pop_all()
                return
            with rtnl.RtnlChannel(self._pod_socket(pod.netns)) as inside:
                inside.send([
                    rtnl.link_up(pod_index, pod.ifname),
                    rtnl.address_add(pod_index, pod.ifname, pod.address, 32),
                    rtnl.route_add(pod_index, pod.ifname, dst=pod.gateway, dst_len=32,
                                   scope=rtnl.RT_SCOPE_LINK),
                    rtnl.neighbour_add(pod_index, pod.ifname, pod.gateway, pod.host_mac),
                    rtnl.route_add(pod_index, pod.ifname, dst=DEFAULT_ROUTE, dst_len=0,
                                   scope=rtnl.RT_SCOPE_UNIVERSE, gateway=pod.gateway),
                ])
            self._configure_host_side(host, pod, host_index)
            undo.pop_all()

    @staticmethod
    def _configure_host_side(host: rtnl.RtnlChannel, pod: PodNetwork, host_index: int) -> None:
        host.send([
            rtnl.ipv4_devconf(host_index, pod.host_veth, rtnl.IPV4_DEVCONF_PROXY_ARP, 1),
            rtnl.link_up(host_index, pod.host_veth),
            rtnl.route_add(host_index, pod.host_veth, dst=pod.address, dst_len=32,
                           scope=rtnl.RT_SCOPE_LINK),
        ])

    def _disable_host_ipv6(self, host_veth: str) -> None:
        relative = f"ipv6/conf/{host_veth}/disable_ipv6"
        try:
            if self.host_netns:
                fd = self.sockets.sysctl_file(self.host_netns, relative)
            else:
                fd = os.open(self.sysctl_root / relative, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if (self.sysctl_root / "ipv6").is_dir():
                raise
            return  # the kernel has no IPv6 (ipv6.disable=1): nothing to turn off
        with os.fdopen(fd, "w") as f:
            f.write("1\n")

    def _pod_socket(self, netns: str) -> socket.socket:
        try:
            return self.sockets.netlink_socket(netns)
        except FileNotFoundError:
            raise NetnsMissing(errno.ENOENT, f"network namespace {netns} disappeared") from None

    def _replace_stale_pair(self, pod: PodNetwork) -> None:
        lookup = rtnl.link_get(pod.host_veth)
        self._host().send([lookup])
        if lookup.error == errno.ENODEV and not pod.netns:
            # a pod side left on the host by an earlier attempt (its host side is gone)
            self._host().send([rtnl.link_delete(pod.ifname)])
            return
        if lookup.error == errno.ENODEV:
            # the name clash is inside the pod: CNI says an existing interface is an error
            raise InterfaceTaken(errno.EEXIST, f"{pod.netns} already has an interface named "
                                               f"{pod.ifname}")
        self.teardown_pod_veth(pod.host_veth)

    # -- DEL -------------------------------------------------------------------------------

    def teardown_pod_veth(self, host_veth: str) -> None:
        """Remove the pair (and with it the routes, neighbour and addresses); idempotent."""
        self._host().send([rtnl.link_delete(host_veth)])

    # -- CHECK -----------------------------------------------------------------------------

    def check_pod_veth(self, pod: PodNetwork) -> list[str]:
        """What differs from what ensure_pod_veth builds; empty when the datapath is intact."""
        problems: list[str] = []
        with self._host_reader() as ipr:
            links = [link for link in ipr.get_links()
                     if link.get("IFLA_IFNAME") == pod.host_veth]
            if not links:
                return [f"host veth {pod.host_veth} does not exist"]
            host = links[0]
            host_index = int(host["index"])
            if not int(host["flags"]) & 1:
                problems.append(f"host veth {pod.host_veth} is down")
            if host.get(("IFLA_AF_SPEC", "AF_INET", "proxy_arp")) != 1:
                problems.append(f"proxy ARP is off on {pod.host_veth}")
            ipv6 = host.get(("IFLA_AF_SPEC", "AF_INET6", "IFLA_INET6_CONF"))
            if ipv6 is not None and ipv6.get("disable_ipv6") != 1:
                problems.append(f"IPv6 is on on {pod.host_veth} (a pod could send router "
                                "advertisements to the host)")
            routes = [r for r in ipr.get_routes(family=2, table=254)
                      if r.get("dst_len") == 32 and r.get("RTA_OIF") == host_index]
            if pod.address not in {r.get("RTA_DST") for r in routes}:
                problems.append(f"host has no route {pod.address}/32 dev {pod.host_veth}")
        try:
            sock = self._pod_socket(pod.netns)
        except NetnsMissing as e:
            return [*problems, str(e)]
        with IPRoute(fileno=sock.detach()) as inside:
            problems += _check_inside(inside, pod, host_index)
        return problems

    def link_exists(self, name: str) -> bool:
        """Whether the host has an interface called ``name``."""
        lookup = rtnl.link_get(name)
        self._host().send([lookup])
        return lookup.error != errno.ENODEV

    # -- restart ---------------------------------------------------------------------------

    def list_host_veths(self) -> list[HostVeth]:
        """Every ``azv...`` veth on the host with the /32 routes that point at it."""
        with self._host_reader() as ipr:
            veths = {int(link["index"]): str(link.get("IFLA_IFNAME"))
                     for link in ipr.get_links()
                     if is_host_veth(str(link.get("IFLA_IFNAME")))}
            routed: dict[int, list[str]] = {i: [] for i in veths}
            for route in ipr.get_routes(family=2, table=254):
                oif = route.get("RTA_OIF")
                if oif in routed and route.get("dst_len") == 32:
                    routed[oif].append(str(route.get("RTA_DST")))
        return [HostVeth(name, index, tuple(sorted(routed[index])))
                for index, name in sorted(veths.items(), key=lambda kv: kv[1])]


def _veth_pair(pod: PodNetwork, netns_fd: int | None) -> rtnl.Request:
    return rtnl.veth_pair(host_name=pod.host_veth, host_mac=pod.host_mac, peer_name=pod.ifname,
                          peer_mac=pod.pod_mac, mtu=pod.mtu, peer_netns_fd=netns_fd)


def _indexes(create: rtnl.Request) -> tuple[int, int]:
    for message in create.echoed:
        if message.get("IFLA_IFNAME") is not None and message.get("IFLA_LINK") is not None:
            return int(message["index"]), int(message.get("IFLA_LINK") or 0)
    raise rtnl.NetlinkRequestFailed(errno.EPROTO, "the kernel did not echo the new veth "
                                                  "(NLM_F_ECHO needs Linux 6.1 or later)")


def _check_inside(inside: IPRoute, pod: PodNetwork, host_index: int) -> list[str]:
    where = f"{pod.ifname} in {pod.netns}"
    links = [link for link in inside.get_links() if link.get("IFLA_IFNAME") == pod.ifname]
    if not links:
        return [f"{pod.netns} has no interface {pod.ifname}"]
    link = links[0]
    index = int(link["index"])
    problems = []
    if link.get("IFLA_LINK") != host_index:
        problems.append(f"{where} is not the peer of host veth {pod.host_veth}")
    if not int(link["flags"]) & 1:
        problems.append(f"{where} is down")
    if int(link.get("IFLA_MTU") or 0) != pod.mtu:
        problems.append(f"{where} has MTU {link.get('IFLA_MTU')}, expected {pod.mtu}")
    addresses = {(a.get("IFA_ADDRESS"), a.get("prefixlen"))
                 for a in inside.get_addr(family=2, index=index)}
    if (pod.address, 32) not in addresses:
        found = ", ".join(f"{a}/{p}" for a, p in sorted(addresses)) or "none"
        problems.append(f"{where} does not have {pod.address}/32 (found: {found})")
    routes = list(inside.get_routes(family=2, table=254))
    gateway_route = any(r.get("dst_len") == 32 and r.get("RTA_DST") == pod.gateway
                        and r.get("RTA_OIF") == index and r.get("scope") == rtnl.RT_SCOPE_LINK
                        for r in routes)
    if not gateway_route:
        problems.append(f"{where} has no link-scope route to the gateway {pod.gateway}")
    default = any(r.get("dst_len") == 0 and r.get("RTA_GATEWAY") == pod.gateway
                  and r.get("RTA_OIF") == index for r in routes)
    if not default:
        found = ", ".join(_describe_route(r) for r in routes) or "no routes"
        problems.append(f"{where} has no default route via {pod.gateway} (found: {found})")
    neighbours = {(n.get("NDA_DST"), str(n.get("NDA_LLADDR")), int(n["state"]))
                  for n in inside.get_neighbours(family=2, ifindex=index)}
    if (pod.gateway, pod.host_mac, 0x80) not in neighbours:
        problems.append(f"{where} has no permanent neighbour entry {pod.gateway} -> "
                        f"{pod.host_mac}")
    return problems


def _describe_route(route: object) -> str:
    get = route.get  # type: ignore[attr-defined]
    dst = f"{get('RTA_DST')}/{get('dst_len')}" if get("dst_len") else "default"
    via = f" via {get('RTA_GATEWAY')}" if get("RTA_GATEWAY") else ""
    return dst + via
