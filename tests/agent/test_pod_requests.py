"""The agent's side of per-pod networking: requests survive restarts, a pod's address is not
handed out again until the operator has detached what it asked for, and pods with a public
IP are exempt from the node's SNAT."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tests.api.test_crd import list_map_keys
from tests.ipam.test_store import first_free

from azure_cni.agent.allocator import (
    Allocator,
    pool_usage,
    publishable_requests,
    settled_requests,
    stray_requests,
)
from azure_cni.agent.egress import snat_policy
from azure_cni.agent.nodeagent import public_sources
from azure_cni.api.attachment import AttachmentKey
from azure_cni.api.nodeippool import NicInfo, NodeIPPool, PoolIP, PoolSpec, PoolStatus
from azure_cni.api.podnet import AttachmentState, PodAttachment, PodNetworkRequest
from azure_cni.api.settings import SnatSettings
from azure_cni.cni.request import CniRequest
from azure_cni.datapath.snat import render_rules
from azure_cni.ipam.store import AddressStore

A, B = AttachmentKey("c1", "eth0"), AttachmentKey("c2", "eth0")
ADDRESSES = ["198.18.0.10", "198.18.0.11"]
PIP = "/subscriptions/s/resourceGroups/pips/providers/Microsoft.Network/publicIPAddresses/web"


def pool(*answers: PodAttachment) -> NodeIPPool:
    ips = tuple(PoolIP(a, f"azcni-{i}") for i, a in enumerate(ADDRESSES))
    return NodeIPPool("n1", PoolSpec("n1"), PoolStatus(ips=ips, pod_networking=answers))


def test_a_withdrawn_request_keeps_its_address_out_of_use_until_detached(tmp_path: Path) -> None:
    path = tmp_path / "ipam.db"
    store = AddressStore(path)
    first = store.assign(A, netns="/n1", host_veth="v1", pod="web/a",
                         choose=first_free(ADDRESSES))
    assert first is not None and first.address == ADDRESSES[0]
    store.record_pod_request(first.address, "web/a", "web", ())
    store.release(A, 0.0)  # no cooldown: only the request holds the address back
    store.close()
    store = AddressStore(path)  # and across a restart
    (held,) = store.pod_requests()
    assert held.withdrawn and held.public_ip == "web"
    second = store.assign(B, netns="/n2", host_veth="v2", pod="web/b",
                          choose=first_free(ADDRESSES))
    assert second is not None and second.address == ADDRESSES[1]
    # the operator's answer for another pod on that ipConfiguration settles nothing
    stale = PodAttachment("azcni-0", ADDRESSES[0], "web/old", AttachmentState.DETACHED)
    assert settled_requests(pool(stale), store.pod_requests()) == []
    detached = PodAttachment("azcni-0", ADDRESSES[0], "web/a", AttachmentState.DETACHED)
    settled = settled_requests(pool(detached), store.pod_requests())
    assert settled == [ADDRESSES[0]]
    store.forget_pod_requests(settled)
    store.release(B, 0.0)
    again = store.assign(A, netns="/n3", host_veth="v3", pod="web/c",
                         choose=first_free(ADDRESSES))
    assert again is not None and again.address == ADDRESSES[0]
    store.close()


def test_requests_are_published_per_address_for_pool_addresses_only(tmp_path) -> None:
    store = AddressStore(tmp_path / "ipam.db")
    store.record_pod_request(ADDRESSES[1], "web/a", "", ("p1", "p2"))
    store.record_pod_request("198.18.0.99", "web/b", "web", ())
    (published,) = publishable_requests(pool(), store.pod_requests())
    assert (published.ip_configuration, published.backend_pools) == ("azcni-1", ("p1", "p2"))
    assert published.to_dict() == {"ipConfiguration": "azcni-1", "address": ADDRESSES[1],
                                   "pod": "web/a", "backendPools": ["p1", "p2"]}
    store.close()


def test_pods_with_an_attached_public_ip_leave_without_masquerade() -> None:
    attached = PodAttachment("azcni-0", ADDRESSES[0], "web/a", AttachmentState.ATTACHED, PIP)
    refused = PodAttachment("azcni-1", ADDRESSES[1], "web/b", AttachmentState.REFUSED, PIP)
    sources = public_sources(pool(attached, refused))
    assert sources == (ADDRESSES[0],)
    rules = render_rules(snat_policy(SnatSettings(), None, sources))
    assert rules.nat_chain == ()  # no pod CIDR known yet: nothing masqueraded at all
    nic = NicInfo("nic", "198.18.0.4", "subnet", "198.18.0.0/24", ("198.18.0.0/16",))
    chain = render_rules(snat_policy(SnatSettings(), nic, sources)).nat_chain
    assert chain[0].startswith(f"-s {ADDRESSES[0]}/32 ") and chain[0].endswith("-j RETURN")
    assert chain[-1].endswith("-j MASQUERADE --random-fully")


def test_the_pod_annotations_come_from_the_runtime_capability() -> None:
    config = {"runtimeConfig": {"io.kubernetes.cri.pod-annotations": {
        "azurecni.io/public-ip": "web"}}}
    request = CniRequest("ADD", "1.0.0", "azure-cni", config)
    assert request.pod_annotations == {"azurecni.io/public-ip": "web"}
    assert CniRequest("ADD", "1.0.0", "azure-cni", {}).pod_annotations == {}


def test_a_withheld_address_is_not_free_for_the_warm_pool() -> None:
    usage = pool_usage(pool(), [], {}, 0.0, withheld=frozenset({ADDRESSES[0]}))
    assert (usage.free, usage.cooling) == (1, 1)


async def test_two_annotated_pods_in_one_block_publish_two_distinct_requests(
        tmp_path: Path) -> None:
    """Every address of a block is under the block's one ipConfiguration: keyed by that, two
    pods' requests collide and the API server refuses the agent's whole status write."""
    allocator = Allocator(tmp_path / "ipam.db", cooldown_seconds=0)
    await allocator.open()
    try:
        await allocator.set_pool(NodeIPPool("n1", PoolSpec("n1"), PoolStatus(
            ips=(PoolIP("198.18.0.16", "azcni-b", prefix_length=28),))))
        for i, pod in enumerate(("web/a", "web/b")):
            made, _ = await allocator.assign(AttachmentKey(f"c{i}", "eth0"), f"/n{i}",
                                             f"v{i}", pod)
            assert made is not None
            await allocator.record_pod_request(made.address, pod, "web", (), f"uid-{i}")
        published = [r.to_dict() for r in await allocator.pod_requests()]
    finally:
        await allocator.close()
    assert {e["ipConfiguration"] for e in published} == {"azcni-b"}
    keys = list_map_keys("podRequests")
    assert len({tuple(e.get(k) for k in keys) for e in published}) == 2, keys
    assert {(e["pod"], e["podUID"]) for e in published} == {("web/a", "uid-0"),
                                                            ("web/b", "uid-1")}


def test_a_detached_answer_for_an_earlier_pod_of_the_same_name_settles_nothing(
        tmp_path: Path) -> None:
    """A StatefulSet's pod comes back under the same name, possibly on the same address: an
    answer that names another UID is not this request's."""
    store = AddressStore(tmp_path / "ipam.db")
    held = store.assign(A, netns="/n1", host_veth="v1", pod="web/web-0",
                        choose=first_free(ADDRESSES))
    assert held is not None
    store.record_pod_request(held.address, "web/web-0", "web", (), "uid-new")
    store.release(A, 0.0)  # the pod goes: its request is withdrawn
    requests = store.pod_requests()
    store.close()
    assert [(r.address, r.withdrawn) for r in requests] == [(ADDRESSES[0], True)]

    def detached(uid: str) -> PodAttachment:
        return PodAttachment("azcni-0", ADDRESSES[0], "web/web-0", AttachmentState.DETACHED,
                             pod_uid=uid)

    assert settled_requests(pool(detached("uid-old")), requests) == []
    assert settled_requests(pool(detached("uid-new")), requests) == [ADDRESSES[0]]
    # an operator that names no UID is matched by address and pod name
    assert settled_requests(pool(detached("")), requests) == [ADDRESSES[0]]


def test_strays_are_the_pools_requests_the_agent_does_not_publish() -> None:
    mine = PodNetworkRequest("azcni-0", ADDRESSES[0], "web/a", "web")
    gone = PodNetworkRequest("azcni-1", ADDRESSES[1], "web/b", "web", withdrawn=True)
    listed = replace(pool(), status=replace(pool().status, pod_requests=(mine, gone)))
    assert stray_requests(listed, [mine]) == [gone]
    assert stray_requests(listed, [mine, gone]) == []
    assert stray_requests(None, [mine]) == []
