"""Deterministic names and MAC addresses of a pod's veth pair (pure, no I/O).

Everything the datapath creates for an attachment is derived from (container id, ifname),
so DEL, CHECK, GC and a restarted agent find it without any other state, and the ADD result
can be built without reading anything back from the kernel.
"""

from __future__ import annotations

import hashlib

#: host side of every pod veth starts with this; nothing else on the host may use it
HOST_VETH_PREFIX = "azv"
#: the pod side's name while it waits on the host for a runtime to move it (Docker)
HANDOVER_PREFIX = "azp"
#: the link-scope gateway every pod routes through (the host veth answers for it)
POD_GATEWAY = "169.254.1.1"


def _digest(container_id: str, ifname: str) -> bytes:
    return hashlib.sha256(f"{container_id}/{ifname}".encode()).digest()


def host_veth_name(container_id: str, ifname: str) -> str:
    """``azv`` + 11 hex characters of a hash of the attachment (14 characters, < IFNAMSIZ)."""
    return HOST_VETH_PREFIX + _digest(container_id, ifname).hex()[:11]


def _local_mac(data: bytes) -> str:
    # locally administered (bit 1) unicast (bit 0 clear) address from 6 hash bytes
    first = (data[0] | 0x02) & 0xFE
    return ":".join(f"{b:02x}" for b in (first, *data[1:6]))


def handover_name(container_id: str, ifname: str) -> str:
    """The pod side's name on the host until the runtime moves it into the container."""
    return HANDOVER_PREFIX + _digest(container_id, ifname).hex()[:11]


def host_veth_mac(container_id: str, ifname: str) -> str:
    """The host veth's MAC: the pod's static neighbour entry for the gateway points at it."""
    return _local_mac(_digest(container_id, ifname)[8:14])


def pod_mac(container_id: str, ifname: str) -> str:
    """The pod interface's MAC (set at creation, so the ADD result needs no read-back)."""
    return _local_mac(_digest(container_id, ifname)[16:22])


def is_host_veth(name: str) -> bool:
    return (len(name) == len(HOST_VETH_PREFIX) + 11 and name.startswith(HOST_VETH_PREFIX)
            and all(c in "0123456789abcdef" for c in name[len(HOST_VETH_PREFIX):]))
