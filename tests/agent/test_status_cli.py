"""What ``azure-cni status`` prints for a person."""

from __future__ import annotations

import io

from azure_cni.agent.status import AgentStatus
from azure_cni.agent.status_cli import render

STATUS = {
    "node": "node-a", "ready": True, "reason": "Serving", "message": "serving pods",
    "egressProblem": "", "mtu": 1500,
    "pool": {"known": True, "allocated": 8, "used": 1, "free": 6, "releasing": 1,
             "coolingDown": 0, "releaseAcks": ["azcni-198-18-0-17"], "outsidePool": [],
             "nic": {"primaryIP": "198.18.0.4", "subnetCIDR": "198.18.0.0/24"}},
    "assignments": [{"containerID": "0123456789abcdef", "ifname": "eth0",
                     "address": "198.18.0.10", "hostVeth": "azv0123456789a",
                     "netns": "/run/netns/x", "pod": "shop/web-1", "assignedAt": 1000.0}],
    "coolingDown": {"198.18.0.11": 1020.0, "198.18.0.12": 900.0},
}


def test_render() -> None:
    out = io.StringIO()
    render(AgentStatus.from_dict(STATUS), out, now=1010.0)
    text = out.getvalue()
    assert "agent:   ready: serving pods" in text
    assert "pool:    8 allocated, 1 used, 6 free, 1 releasing, 0 cooling down" in text
    assert "acked:   azcni-198-18-0-17" in text
    assert "198.18.0.10  shop/web-1  0123456789ab  eth0    azv0123456789a  10s" in text
    assert "cooling down: 198.18.0.11 (10s)" in text and "198.18.0.12" not in text


def test_render_not_ready() -> None:
    out = io.StringIO()
    render(AgentStatus.from_dict({
        **STATUS, "ready": False, "reason": "NoPool", "message": "no pool",
        "pool": {**STATUS["pool"], "known": False}, "assignments": []}), out, now=0)
    assert "NOT READY (NoPool)" in out.getvalue()
    assert "pool:    not received yet" in out.getvalue()


def test_render_pod_network_requests_and_their_answers() -> None:
    out = io.StringIO()
    pip = "/subscriptions/s/resourceGroups/pips/providers/Microsoft.Network/publicIPAddresses/web"
    render(AgentStatus.from_dict({**STATUS,
            "podRequests": [
                {"ipConfiguration": "azcni-a", "address": "198.18.0.10", "pod": "shop/web-1",
                 "publicIP": "web"},
                {"ipConfiguration": "azcni-b", "address": "198.18.0.13", "pod": "shop/gone",
                 "backendPools": ["pool-1"], "withdrawn": True}],
            "podNetworking": [
                {"ipConfiguration": "azcni-a", "address": "198.18.0.10", "pod": "shop/web-1",
                 "state": "Attached", "publicIP": pip}]}), out, now=1010.0)
    text = out.getvalue()
    assert "2 pod network request(s)" in text
    assert "198.18.0.10  shop/web-1  public IP web  -> Attached" in text
    assert "198.18.0.13  shop/gone  withdrawn (pool pool-1)  -> Pending" in text


def test_the_document_reads_back_as_it_was_written() -> None:
    status = AgentStatus.from_dict(STATUS)
    assert AgentStatus.from_dict(status.to_dict()) == status
    assert status.to_dict()["assignments"][0]["hostVeth"] == "azv0123456789a"
    assert status.to_dict()["pool"]["coolingDown"] == 0
