"""The ADD result, built from what the agent decided (pure), in the runtime's CNI version.

1.0.0 and 1.1.0 share one shape (1.1.0 adds ``mtu`` on interfaces); 0.3.0, 0.3.1 and 0.4.0
add ``"version": "4"`` to every ``ips[]`` entry. The host veth is listed without a sandbox
(``bandwidth`` looks for it) and ``ips[].interface`` points at the pod's interface, which has
the sandbox set (``portmap`` and containerd need that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from azure_cni.cni.request import version_tuple


@dataclass(frozen=True)
class AttachmentResult:
    """What the runtime needs to know about one pod attachment."""

    host_veth: str
    host_mac: str
    ifname: str
    pod_mac: str
    sandbox: str
    address: str
    gateway: str
    mtu: int


def build_result(attachment: AttachmentResult, cni_version: str) -> dict[str, Any]:
    """The ADD result as a JSON-ready dict in ``cni_version``."""
    with_mtu = version_tuple(cni_version) >= (1, 1, 0)
    host: dict[str, Any] = {"name": attachment.host_veth, "mac": attachment.host_mac}
    pod: dict[str, Any] = {"name": attachment.ifname, "mac": attachment.pod_mac,
                           "sandbox": attachment.sandbox}
    if with_mtu:
        host["mtu"] = attachment.mtu
        pod["mtu"] = attachment.mtu
    ip: dict[str, Any] = {"address": f"{attachment.address}/32",
                          "gateway": attachment.gateway, "interface": 1}
    if version_tuple(cni_version) < (1, 0, 0):
        ip = {"version": "4", **ip}
    return {
        "cniVersion": cni_version,
        "interfaces": [host, pod],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": attachment.gateway}],
        "dns": {},
    }
