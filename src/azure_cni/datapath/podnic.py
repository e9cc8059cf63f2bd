"""Policy routing for pods whose addresses belong to a second NIC (a pod subnet).

Azure delivers a packet to a NIC only for that NIC's addresses, and drops a packet leaving a
NIC from a source that is not one of its ipConfigurations. A pod's address on the VM's second
NIC must therefore leave through that NIC, whatever the destination: another pod of the VNet,
a peered or on-premises network, or (SNATed to the NIC's own primary address by the pod
egress chain) the internet. Two rules and one table do that, for every pod of the subnet at
once (no per-pod rule, so a pod's ADD does no more than on the primary NIC):

- ``from <pod subnet> lookup main suppress_prefixlength 31`` (priority ``LOCAL_PRIORITY``):
  the host's /32 routes still win, so a pod reaches the other pods of its node through their
  veths;
- ``from <pod subnet> lookup POD_NIC_TABLE`` (priority ``NIC_PRIORITY``): everything else
  leaves the second NIC, via the subnet's gateway (Azure's: the subnet's first address + 1).

Replies to the pods come back the same way: Azure delivers their addresses to the second NIC,
and the host's /32 route hands them to the veth. The NIC itself is found by its MAC address
(the operator reports ARM's ``macAddress``), brought up and given its primary address if the
image left it unconfigured: as a /32, because the pod subnet's route belongs in the NIC's
table only. In the main table it would send the node's own packets to the pod subnet (a
hostNetwork server answering a pod of another node) out of the pod NIC with the primary
NIC's address, which Azure drops; a connected route the image put there is removed.

Above ``# -- I/O --`` is pure (``routing_for``), tested without root.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass

from pyroute2.iproute.linux import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from azure_cni.api.nodeippool import NicInfo

#: the routing table of the pod NIC: a number no distribution or CNI we know uses
POD_NIC_TABLE = 0xAC01
#: priorities of the two rules: just before main's (32766), after any other rule the host has
LOCAL_PRIORITY = 0x7AC0
NIC_PRIORITY = 0x7AC1
_SUPPRESS_HOST_ROUTES_ONLY = 31
_MAIN = 254
_ONLINK = 4  # RTNH_F_ONLINK
#: a route's destination when it has none: the default route
_ANY = str(ipaddress.IPv4Address(0))


class PodNicMissing(RuntimeError):
    """The host has no interface with the pod NIC's MAC address."""


@dataclass(frozen=True)
class PodNicRouting:
    """What the host needs for pods on a NIC other than the VM's primary one."""

    mac: str
    #: the NIC's primary address and the subnet's prefix length
    address: str
    prefixlen: int
    subnet: str
    gateway: str


def routing_for(nic: NicInfo | None) -> PodNicRouting | None:
    """The routing pods on ``nic`` need (None: the primary NIC, or not known yet: nothing)."""
    if nic is None or nic.primary_nic or not nic.subnet_cidr or not nic.mac_address:
        return None
    subnet = ipaddress.IPv4Network(nic.subnet_cidr, strict=False)
    return PodNicRouting(mac=nic.mac_address.replace("-", ":").lower(), address=nic.primary_ip,
                         prefixlen=subnet.prefixlen, subnet=str(subnet), gateway=nic.gateway)


# -- I/O ----------------------------------------------------------------------------------------


def ensure_pod_nic(routing: PodNicRouting | None, netns: str | None = None) -> list[str]:
    """Make the host route the pod subnet out of its NIC (or, for None, remove what an earlier
    pod NIC needed). Idempotent; returns what it changed, for the log."""
    with IPRoute(netns=netns) if netns else IPRoute() as ipr:
        changed = _drop_stale_rules(ipr, routing)
        if routing is None:
            changed += _flush_table(ipr)
            return changed
        index, name = _link_by_mac(ipr, routing.mac)
        link = ipr.get_links(index)[0]
        if not link["flags"] & 1:
            ipr.link("set", index=index, state="up")
            changed.append(f"set {name} up")
        held = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=2)}
        if routing.address not in held:
            ipr.addr("add", index=index, address=routing.address, prefixlen=32)
            changed.append(f"address {routing.address}/32 on {name}")
        changed += _drop_main_subnet_route(ipr, index, name, routing)
        changed += _ensure_routes(ipr, index, name, routing)
        changed += _ensure_rules(ipr, routing)
        return changed


def _link_by_mac(ipr: IPRoute, mac: str) -> tuple[int, str]:
    for link in ipr.get_links():
        if str(link.get_attr("IFLA_ADDRESS") or "").lower() == mac:
            return int(link["index"]), str(link.get_attr("IFLA_IFNAME"))
    raise PodNicMissing(f"no interface on this host has the pod NIC's MAC address {mac}: is "
                        "the NIC attached to the VM (Azure attaches NICs to a stopped VM only)?")


def _ensure_routes(ipr: IPRoute, index: int, name: str, routing: PodNicRouting) -> list[str]:
    wanted = [
        {"dst": routing.subnet, "oif": index, "scope": 253, "prefsrc": routing.address},
        # onlink: the gateway's subnet route is in this table, not in main
        {"dst": f"{_ANY}/0", "oif": index, "gateway": routing.gateway, "flags": _ONLINK},
    ]
    present = {(r.get_attr("RTA_DST") or _ANY, r["dst_len"], r.get_attr("RTA_OIF"),
                r.get_attr("RTA_GATEWAY"))
               for r in ipr.get_routes(family=2, table=POD_NIC_TABLE)}
    changed = []
    for route in wanted:
        dst = ipaddress.IPv4Network(route["dst"])
        key = (str(dst.network_address), dst.prefixlen, index, route.get("gateway"))
        if key in present:
            continue
        ipr.route("replace", table=POD_NIC_TABLE, **route)
        changed.append(f"route {route['dst']} dev {name} table {POD_NIC_TABLE}")
    return changed


#: a rule as compared: (priority, source, source length, table, suppressed prefix length)
_Rule = tuple[int, str, int, int, int | None]


def _drop_main_subnet_route(ipr: IPRoute, index: int, name: str,
                            routing: PodNicRouting) -> list[str]:
    subnet = ipaddress.IPv4Network(routing.subnet)
    changed = []
    for route in ipr.get_routes(family=2, table=_MAIN):
        if (route.get_attr("RTA_OIF") == index and route["dst_len"] == subnet.prefixlen
                and route.get_attr("RTA_DST") == str(subnet.network_address)):
            ipr.route("del", table=_MAIN, dst=str(subnet.network_address),
                      dst_len=subnet.prefixlen, oif=index, scope=route["scope"],
                      proto=route["proto"])
            changed.append(f"removed {routing.subnet} dev {name} from the main table")
    return changed


def _our_rules(ipr: IPRoute) -> list[_Rule]:
    """The rules at our two priorities."""
    out = []
    for rule in ipr.get_rules(family=2):
        priority = rule.get_attr("FRA_PRIORITY")
        if priority in (LOCAL_PRIORITY, NIC_PRIORITY):
            suppress = rule.get_attr("FRA_SUPPRESS_PREFIXLEN")
            out.append((int(priority), str(rule.get_attr("FRA_SRC") or ""), int(rule["src_len"]),
                        int(rule.get_attr("FRA_TABLE") or rule["table"]),
                        # the kernel reports "none" as 0xffffffff
                        None if suppress in (None, 0xFFFFFFFF) else int(suppress)))
    return out


def _wanted_rules(routing: PodNicRouting) -> list[_Rule]:
    subnet = ipaddress.IPv4Network(routing.subnet)
    source, length = str(subnet.network_address), subnet.prefixlen
    return [(LOCAL_PRIORITY, source, length, _MAIN, _SUPPRESS_HOST_ROUTES_ONLY),
            (NIC_PRIORITY, source, length, POD_NIC_TABLE, None)]


def _drop_stale_rules(ipr: IPRoute, routing: PodNicRouting | None) -> list[str]:
    wanted = _wanted_rules(routing) if routing is not None else []
    changed = []
    for rule in _our_rules(ipr):
        if rule not in wanted:
            priority, src, length, table, _ = rule
            ipr.rule("del", priority=priority, src=src, src_len=length, table=table)
            changed.append(f"removed rule {priority} from {src}/{length}")
    return changed


def _ensure_rules(ipr: IPRoute, routing: PodNicRouting) -> list[str]:
    present = set(_our_rules(ipr))
    changed = []
    for rule in _wanted_rules(routing):
        if rule in present:
            continue
        priority, src, length, table, suppress = rule
        extra = {} if suppress is None else {"suppress_prefixlen": suppress}
        ipr.rule("add", priority=priority, src=src, src_len=length, table=table, **extra)
        changed.append(f"rule {priority} from {src}/{length} table {table}")
    return changed


def _flush_table(ipr: IPRoute) -> list[str]:
    changed = []
    for route in ipr.get_routes(family=2, table=POD_NIC_TABLE):
        try:
            ipr.route("del", table=POD_NIC_TABLE, dst=route.get_attr("RTA_DST") or _ANY,
                      dst_len=route["dst_len"], oif=route.get_attr("RTA_OIF"),
                      scope=route["scope"])
        except NetlinkError as e:
            if e.code != errno.ESRCH:
                raise
        changed.append(f"removed a route of table {POD_NIC_TABLE}")
    return changed
