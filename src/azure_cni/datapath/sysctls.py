"""The host-wide sysctls the transparent datapath relies on (per-veth ones go by netlink).

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
