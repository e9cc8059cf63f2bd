"""The host-wide sysctls the transparent datapath relies on (per-veth ones go by netlink).

Paths under /proc/sys/net belong to the network namespace of the process that opens them, so
the agent (running in the host's namespace) configures the host and nothing else. In a
container /proc/sys is read-only; the DaemonSet mounts the host's at <host root>/proc/sys/net,
which is used when it exists (it follows the writer's namespace just the same).
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


def proc_sys_net(host_root: Path = Path("/")) -> Path:
    """Where to write net sysctls: the host's mount when the agent has one, else /proc."""
    mounted = host_root / "proc" / "sys" / "net"
    return mounted if host_root != Path("/") and mounted.is_dir() else PROC_NET


def ensure_host_sysctls(root: Path = PROC_NET) -> dict[str, str]:
    """Set the host sysctls under ``root``; return the ones that had another value before."""
    changed = {}
    for key, value in HOST_SYSCTLS.items():
        path = root / key
        before = path.read_text().strip()
        if before != value:
            _write(path, value)
            changed[key] = before
    return changed
