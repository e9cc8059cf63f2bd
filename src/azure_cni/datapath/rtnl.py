"""Batched rtnetlink requests on sockets the agent keeps open.

pyroute2's ``IPRoute`` runs every request through an asyncio pipeline (~0.5 ms each); a pod
needs six requests, so the hot path encodes pyroute2's own message types and sends them
together in one ``sendto``: the kernel processes them in order and acknowledges each one.
Reads (dumps for CHECK and for the restart reconciliation) still use ``IPRoute``.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_ECHO,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    nlmsg,
)
from pyroute2.netlink.rtnl import (
    RTM_DELLINK,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

_HEADER = struct.Struct("=IHHII")
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_IFF_UP = 0x1
_NUD_PERMANENT = 0x80
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
_RT_TABLE_MAIN = 254
_RTPROT_STATIC = 4
_RTN_UNICAST = 1

_CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL


class NetlinkRequestFailed(OSError):
    """The kernel refused one request of a batch; ``what`` says which."""

    def __init__(self, number: int, what: str) -> None:
        super().__init__(number, f"{what}: {os.strerror(number)}")
        self.what = what


class RawMessage:
    """A message pyroute2 cannot encode (it models IFLA_INET_CONF as a full array), with the
    small part of nlmsg's interface that RtnlChannel uses."""

    def __init__(self, kind: int, flags: int, payload: bytes) -> None:
        self._header = {"type": kind, "flags": flags, "sequence_number": 0, "pid": 0}
        self.payload = payload
        self.data = b""

    def __getitem__(self, key: str) -> dict[str, int]:
        if key != "header":
            raise KeyError(key)
        return self._header

    def encode(self) -> None:
        h = self._header
        self.data = _HEADER.pack(_HEADER.size + len(self.payload), h["type"], h["flags"],
                                 h["sequence_number"], h["pid"]) + self.payload


@dataclass
class Request:
    """One message of a batch, with a human description for errors."""

    message: nlmsg | RawMessage
    what: str
    #: errnos that count as success (e.g. ENODEV when deleting something already gone)
    tolerate: frozenset[int] = frozenset()
    error: int = 0
    echoed: list[dict[str, Any]] = field(default_factory=list)


_sequence = itertools.count(1)
_sequence_lock = threading.Lock()


def _next_sequence() -> int:
    with _sequence_lock:
        return next(_sequence) & 0xFFFFFFFF


class RtnlChannel:
    """A NETLINK_ROUTE socket; ``send`` transmits a batch and waits for every ack.

    Not thread-safe: each thread keeps its own channel for the host namespace.
    """

    def __init__(self, sock: socket.socket | None = None, timeout: float = 10.0) -> None:
        self.sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM,
                                          socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self.sock.settimeout(timeout)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RtnlChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, requests: Sequence[Request]) -> None:
        """Send all requests in one datagram; raise on the first refused one."""
        by_sequence: dict[int, Request] = {}
        buffer = bytearray()
        for request in requests:
            seq = _next_sequence()
            request.message["header"]["sequence_number"] = seq
            request.message["header"]["pid"] = 0
            request.message.encode()
            buffer += request.message.data
            by_sequence[seq] = request
        self.sock.sendto(bytes(buffer), (0, 0))
        pending = set(by_sequence)
        while pending:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    break
                owner = by_sequence.get(seq)
                if owner is not None:
                    if kind == _NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                        owner.error = -code
                        pending.discard(seq)
                    elif kind == RTM_NEWLINK:
                        message = ifinfmsg(data[offset:offset + length])
                        message.decode()
                        owner.echoed.append(message)
                    elif kind == _NLMSG_DONE:
                        pending.discard(seq)
                offset += (length + 3) & ~3
        for request in requests:
            if request.error and request.error not in request.tolerate:
                raise NetlinkRequestFailed(request.error, request.what)


# -- message builders (pure) ---------------------------------------------------------------


def _header(kind: int, flags: int) -> dict[str, int]:
    return {"type": kind, "flags": flags, "sequence_number": 0, "pid": 0}


def veth_pair(*, host_name: str, host_mac: str, peer_name: str, peer_mac: str, mtu: int,
              peer_netns_fd: int | None) -> Request:
    """Create the veth pair in one request: host side here (down, so that it can be
    configured before it takes any traffic), peer in the pod netns (or here too, with
    ``peer_netns_fd`` None).

    NLM_F_ECHO makes the kernel send the new link back, with its index and the peer's.
    """
    msg = ifinfmsg()
    msg["header"] = _header(RTM_NEWLINK, _CREATE | NLM_F_ECHO)
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = 0
    msg["flags"] = 0
    msg["change"] = 0
    peer_attrs: list[list[Any]] = [["IFLA_IFNAME", peer_name], ["IFLA_ADDRESS", peer_mac],
                                   ["IFLA_MTU", mtu]]
    if peer_netns_fd is not None:
        peer_attrs.append(["IFLA_NET_NS_FD", peer_netns_fd])
    peer = {"attrs": peer_attrs,
            "family": socket.AF_UNSPEC, "index": 0, "flags": 0, "change": 0}
    msg["attrs"] = [
        ["IFLA_IFNAME", host_name],
        ["IFLA_ADDRESS", host_mac],
        ["IFLA_MTU", mtu],
        ["IFLA_LINKINFO", {"attrs": [
            ["IFLA_INFO_KIND", "veth"],
            ["IFLA_INFO_DATA", {"attrs": [["VETH_INFO_PEER", peer]]}],
        ]}],
    ]
    return Request(msg, f"creating veth {host_name} with {peer_name} in the pod namespace")


def _nla(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


_IFLA_AF_SPEC = 26
_IFLA_INET_CONF = 1
IPV4_DEVCONF_PROXY_ARP = 3


def ipv4_devconf(index: int, name: str, setting: int, value: int) -> Request:
    """Set one per-interface IPv4 sysctl (net.ipv4.conf.<name>.*) through netlink, so the
    setting lands in the namespace of the socket, like every other request of a batch."""
    info = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0)
    conf = _nla(_IFLA_INET_CONF, _nla(setting, struct.pack("=I", value)))
    payload = info + _nla(_IFLA_AF_SPEC, _nla(socket.AF_INET, conf))
    return Request(RawMessage(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, payload),
                   f"setting IPv4 devconf {setting}={value} on {name}")


def link_up(index: int, name: str) -> Request:
    msg = ifinfmsg()
    msg["header"] = _header(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK)
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = index
    msg["flags"] = _IFF_UP
    msg["change"] = _IFF_UP
    msg["attrs"] = []
    return Request(msg, f"setting {name} up")


def link_delete(name: str) -> Request:
    """Delete a link by name; a link that is already gone is not an error."""
    msg = ifinfmsg()
    msg["header"] = _header(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK)
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = 0
    msg["attrs"] = [["IFLA_IFNAME", name]]
    return Request(msg, f"deleting {name}", tolerate=frozenset({errno.ENODEV}))


def link_get(name: str) -> Request:
    msg = ifinfmsg()
    msg["header"] = _header(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK)
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = 0
    msg["attrs"] = [["IFLA_IFNAME", name]]
    return Request(msg, f"looking up {name}", tolerate=frozenset({errno.ENODEV}))


def address_add(index: int, name: str, address: str, prefixlen: int) -> Request:
    msg = ifaddrmsg()
    msg["header"] = _header(RTM_NEWADDR, _CREATE)
    msg["family"] = socket.AF_INET
    msg["prefixlen"] = prefixlen
    msg["index"] = index
    msg["scope"] = RT_SCOPE_UNIVERSE
    msg["flags"] = 0
    msg["attrs"] = [["IFA_LOCAL", address], ["IFA_ADDRESS", address]]
    return Request(msg, f"adding {address}/{prefixlen} to {name}")


def route_add(index: int, name: str, *, dst: str, dst_len: int, scope: int,
              gateway: str | None = None) -> Request:
    msg = rtmsg()
    msg["header"] = _header(RTM_NEWROUTE, _CREATE)
    msg["family"] = socket.AF_INET
    msg["dst_len"] = dst_len
    msg["src_len"] = 0
    msg["tos"] = 0
    msg["table"] = _RT_TABLE_MAIN
    msg["proto"] = _RTPROT_STATIC
    msg["scope"] = scope
    msg["type"] = _RTN_UNICAST
    attrs: list[list[Any]] = [["RTA_TABLE", _RT_TABLE_MAIN], ["RTA_OIF", index]]
    if dst_len:
        attrs.append(["RTA_DST", dst])
    if gateway:
        attrs.append(["RTA_GATEWAY", gateway])
    msg["attrs"] = attrs
    via = f" via {gateway}" if gateway else ""
    return Request(msg, f"adding route {dst}/{dst_len}{via} dev {name}")


def neighbour_add(index: int, name: str, address: str, lladdr: str) -> Request:
    msg = ndmsg()
    msg["header"] = _header(RTM_NEWNEIGH, _CREATE)
    msg["family"] = socket.AF_INET
    msg["ifindex"] = index
    msg["state"] = _NUD_PERMANENT
    msg["flags"] = 0
    msg["ndm_type"] = 0
    msg["attrs"] = [["NDA_DST", address], ["NDA_LLADDR", lladdr]]
    return Request(msg, f"adding neighbour {address} lladdr {lladdr} dev {name}")
