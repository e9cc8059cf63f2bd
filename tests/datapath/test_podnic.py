"""Pods on a VM's second NIC, in real namespaces: their traffic leaves through the NIC that
owns their address, past a fabric that, like Azure, drops a packet whose source is not one
of the NIC's addresses (strict reverse-path filtering per NIC link)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from azure_cni.api.nodeippool import NicInfo
from azure_cni.datapath.names import host_veth_mac, host_veth_name, pod_mac
from azure_cni.datapath.podnic import (
    LOCAL_PRIORITY,
    NIC_PRIORITY,
    POD_NIC_TABLE,
    PodNicMissing,
    ensure_pod_nic,
    routing_for,
)
from azure_cni.datapath.veth import PodNetwork, VethDatapath
from azure_cni_sim.node import setup_host_nic

MAC = "00-0D-3A-AA-BB-CC"
POD_NIC = NicInfo("/nics/vm-pods", "198.18.16.4", "/subnets/pods", "198.18.16.0/24",
                  ("198.18.0.0/16",), name="vm-pods", mac_address=MAC, primary_nic=False)
REMOTE = "198.19.0.10"
OTHER_NODE_POD = "198.18.16.30"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=30)


def test_routing_for_only_a_second_nic_with_its_subnet_and_mac() -> None:
    routing = routing_for(POD_NIC)
    assert routing is not None
    assert (routing.mac, routing.address, routing.prefixlen, routing.subnet, routing.gateway) == (
        "00:0d:3a:aa:bb:cc", "198.18.16.4", 24, "198.18.16.0/24", "198.18.16.1")
    primary = NicInfo("/nics/vm-nic", "198.18.0.4", "/subnets/nodes", "198.18.0.0/24", ())
    assert routing_for(primary) is None and routing_for(None) is None


@pytest.fixture
def vm(netns_factory) -> Iterator[tuple[str, str, str]]:
    """(host, fabric, remote): a host with eth0 (subnet 198.18.0.0/24) and an unconfigured,
    down eth1 carrying the pod NIC's MAC; a fabric delivering each NIC only its addresses."""
    host, fabric, remote = (netns_factory.create(n) for n in ("host", "fab", "remote"))
    setup_host_nic(host, primary_cidr="198.18.0.4/24", gateway="198.18.0.1",
                   fabric_netns=fabric)
    sh("ip", "-n", host, "link", "add", "eth1", "address", MAC.replace("-", ":").lower(),
       "type", "veth", "peer", "name", "nic2", "netns", fabric)
    sh("ip", "-n", fabric, "addr", "add", "198.18.16.1/24", "dev", "nic2")
    sh("ip", "-n", fabric, "link", "set", "nic2", "up")
    sh("ip", "-n", fabric, "link", "add", "out", "type", "veth", "peer", "name", "eth0",
       "netns", remote)
    sh("ip", "-n", fabric, "addr", "add", "198.19.0.1/24", "dev", "out")
    sh("ip", "-n", fabric, "link", "set", "out", "up")
    sh("ip", "-n", remote, "addr", "add", f"{REMOTE}/24", "dev", "eth0")
    sh("ip", "-n", remote, "link", "set", "eth0", "up")
    sh("ip", "-n", remote, "route", "add", "default", "via", "198.19.0.1")
    # a pod of the pod subnet on another node, behind the fabric
    sh("ip", "-n", remote, "addr", "add", f"{OTHER_NODE_POD}/32", "dev", "eth0")
    sh("ip", "-n", fabric, "route", "add", f"{OTHER_NODE_POD}/32", "via", REMOTE)
    # the pods' addresses: each delivered to its own NIC only
    sh("ip", "-n", fabric, "route", "add", "198.18.0.20/32", "via", "198.18.0.4")
    sh("ip", "-n", fabric, "route", "add", "198.18.16.20/32", "via", "198.18.16.4")
    for setting in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=1",
                    "net.ipv4.conf.default.rp_filter=1"):
        sh("ip", "netns", "exec", fabric, "sysctl", "-qw", setting)
    for iface in ("eth0-fabric", "nic2", "out"):
        sh("ip", "netns", "exec", fabric, "sysctl", "-qw", f"net.ipv4.conf.{iface}.rp_filter=1")
    # Azure's SDN answers every ARP request of a NIC itself
    for iface in ("eth0-fabric", "nic2"):
        sh("ip", "netns", "exec", fabric, "sysctl", "-qw", f"net.ipv4.conf.{iface}.proxy_arp=1")
    sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    yield host, fabric, remote


def pod(datapath: VethDatapath, netns_factory, name: str, address: str) -> str:
    netns = netns_factory.create(name)
    datapath.ensure_pod_veth(PodNetwork(
        netns=f"/run/netns/{netns}", ifname="eth0", address=address,
        host_veth=host_veth_name(name, "eth0"), host_mac=host_veth_mac(name, "eth0"),
        pod_mac=pod_mac(name, "eth0"), mtu=1500))
    return netns


def ping(netns: str, address: str, source: str = "") -> bool:
    return sh("ip", "netns", "exec", netns, "ping", "-c1", "-W1",
              *(("-I", source) if source else ()), address, check=False).returncode == 0


@pytest.mark.netns
def test_a_pod_on_the_second_nic_leaves_through_it_and_still_reaches_its_node(
        vm: tuple[str, str, str], netns_factory) -> None:
    host, _, remote = vm
    datapath = VethDatapath(host_netns=f"/run/netns/{host}")
    try:
        b = pod(datapath, netns_factory, "podb", "198.18.16.20")
        a = pod(datapath, netns_factory, "poda", "198.18.0.20")
        # without the pod NIC's routing, pod b's packets leave eth0: the fabric drops them
        assert not ping(b, REMOTE)
        changed = ensure_pod_nic(routing_for(POD_NIC), netns=host)
        assert "set eth1 up" in changed and "address 198.18.16.4/32 on eth1" in changed
        assert ping(b, REMOTE), "pod b reaches the remote network through eth1"
        assert ping(remote, "198.18.16.20"), "and the remote network reaches pod b"
        assert ping(b, "198.18.0.20") and ping(a, "198.18.16.20"), "pods of one node"
        assert ping(a, REMOTE), "the primary NIC's pods are as before"
        assert ping(b, "198.18.0.4"), "pod b reaches its node's primary address"
        # the node's own traffic from its primary address (a hostNetwork server answering a
        # pod of the pod subnet on another node) leaves the primary NIC, not the pod NIC
        assert ping(host, OTHER_NODE_POD, source="198.18.0.4")
        assert ping(remote, "198.18.0.4", source=OTHER_NODE_POD)
        assert ping(b, OTHER_NODE_POD), "pod subnet to pod subnet, node to node"
        rules = sh("ip", "-n", host, "rule").stdout
        assert f"{LOCAL_PRIORITY}:\tfrom 198.18.16.0/24 lookup main suppress_prefixlength 31" \
            in rules
        assert f"{NIC_PRIORITY}:\tfrom 198.18.16.0/24 lookup {POD_NIC_TABLE}" in rules
        table = sh("ip", "-n", host, "route", "show", "table", str(POD_NIC_TABLE)).stdout
        assert "default via 198.18.16.1 dev eth1" in table
        assert ensure_pod_nic(routing_for(POD_NIC), netns=host) == [], "idempotent"
        # back to the primary NIC: the rules and the table go
        removed = ensure_pod_nic(None, netns=host)
        assert removed and str(POD_NIC_TABLE) not in sh("ip", "-n", host, "rule").stdout
        assert sh("ip", "-n", host, "route", "show", "table", str(POD_NIC_TABLE)).stdout == ""
        assert not ping(b, REMOTE)
    finally:
        datapath.close()


@pytest.mark.netns
def test_a_pod_nic_the_host_does_not_have_is_a_clear_error(vm: tuple[str, str, str]) -> None:
    host, _, _ = vm
    other = NicInfo("/nics/x", "198.18.16.4", "/subnets/pods", "198.18.16.0/24", (),
                    mac_address="00-0D-3A-00-00-01", primary_nic=False)
    with pytest.raises(PodNicMissing, match="no interface on this host has the pod NIC's MAC "
                                            "address 00:0d:3a:00:00:01"):
        ensure_pod_nic(routing_for(other), netns=host)
