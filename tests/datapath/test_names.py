"""Names and MACs derived from the attachment (pure)."""

from __future__ import annotations

import pytest

from azure_cni.datapath.names import host_veth_mac, host_veth_name, is_host_veth, pod_mac


def test_host_veth_name_is_azv_plus_11_hex_and_fits_ifnamsiz() -> None:
    name = host_veth_name("0b1448332438" * 5, "eth0")
    assert name.startswith("azv") and len(name) == 14 and is_host_veth(name)
    assert name == host_veth_name("0b1448332438" * 5, "eth0"), "deterministic"
    assert name != host_veth_name("0b1448332438" * 5, "eth1"), "the ifname is part of it"


@pytest.mark.parametrize("mac_of", [host_veth_mac, pod_mac])
def test_macs_are_locally_administered_unicast(mac_of) -> None:
    mac = mac_of("c1", "eth0")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01
    assert len(mac.split(":")) == 6


@pytest.mark.parametrize("name", ["azv", "azvXYZ", "azv0123456789ab", "eth0", "azv0123456789"])
def test_other_names_are_not_ours(name: str) -> None:
    assert not is_host_veth(name)
