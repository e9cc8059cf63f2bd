"""The host's sysctls the transparent datapath relies on.

Paths under /proc/sys/net belong to the network namespace of the process that opens them, so
the agent (running in the host's namespace) configures the host and nothing else.
"""

from __future__ import annotations

from pathlib import Path

PROC_NET = Path("/proc/sys/net")

#: forwarding between pod veths and the NIC is the whole point of the node
HOST_SYSCTLS = {
    "ipv4/ip_forward": "1",
    "ipv4/conf/all/forwarding": "1",
}


def _write(path: Path, value: str) -> None:
    path.write_text(value + "\n")


def ensure_host_sysctls() -> dict[str, str]:
    """Set the host sysctls; return the ones that had another value before."""
    changed = {}
    for key, value in HOST_SYSCTLS.items():
        path = PROC_NET / key
        before = path.read_text().strip()
        if before != value:
            _write(path, value)
            changed[key] = before
    return changed


def set_proxy_arp(interface: str) -> None:
    """Answer ARP on ``interface`` for addresses routed elsewhere (the pod's gateway)."""
    _write(PROC_NET / "ipv4" / "conf" / interface / "proxy_arp", "1")


def proxy_arp_enabled(interface: str) -> bool:
    try:
        return (PROC_NET / "ipv4" / "conf" / interface / "proxy_arp").read_text().strip() == "1"
    except FileNotFoundError:
        return False
