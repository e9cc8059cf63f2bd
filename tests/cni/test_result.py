"""The ADD result in each CNI version the runtimes negotiate."""

from __future__ import annotations

import pytest

from azure_cni.cni.result import AttachmentResult, build_result

ATTACHMENT = AttachmentResult(host_veth="azv0123456789a", host_mac="02:00:00:00:00:01",
                              ifname="eth0", pod_mac="02:00:00:00:00:02",
                              sandbox="/var/run/netns/cni-1", address="198.18.0.10",
                              gateway="169.254.1.1", mtu=1400)


@pytest.mark.parametrize(("version", "ip_version", "mtu"), [
    ("0.3.0", "4", False),
    ("0.3.1", "4", False),
    ("0.4.0", "4", False),
    ("1.0.0", None, False),
    ("1.1.0", None, True),
])
def test_result_shape_per_version(version: str, ip_version: str | None, mtu: bool) -> None:
    result = build_result(ATTACHMENT, version)
    assert result["cniVersion"] == version
    host, pod = result["interfaces"]
    assert host == {"name": "azv0123456789a", "mac": "02:00:00:00:00:01",
                    **({"mtu": 1400} if mtu else {})}
    assert "sandbox" not in host, "bandwidth finds the host veth by an empty sandbox"
    assert pod["sandbox"] == "/var/run/netns/cni-1" and pod["name"] == "eth0"
    (ip,) = result["ips"]
    assert ip["address"] == "198.18.0.10/32"
    assert ip["gateway"] == "169.254.1.1"
    assert result["interfaces"][ip["interface"]]["name"] == "eth0", \
        "portmap and containerd attribute the address through ips[].interface"
    assert ip.get("version") == ip_version
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
