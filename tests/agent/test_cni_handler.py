"""The CNI verbs against the real store and allocator and the in-memory datapath."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import json
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from azure_cni.agent.allocator import Allocator
from azure_cni.agent.attachments import Attachments
from azure_cni.agent.cni_handler import CniHandler, PoolExhausted
from azure_cni.agent.server import cni_error_for
from azure_cni.agent.vm.docker_plugin import DockerRole
from azure_cni.api.attachment import AttachmentKey
from azure_cni.api.nodeippool import IPState, NodeIPPool, PoolIP, PoolSpec, PoolStatus
from azure_cni.cni.errors import CniError, Code
from azure_cni.cni.request import CniRequest, parse_request
from azure_cni.datapath.memory import InMemoryDatapath
from azure_cni.datapath.names import host_veth_name

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


def pool(*addresses: str, releasing: tuple[str, ...] = ()) -> NodeIPPool:
    ips = tuple(PoolIP(a, "azcni-" + a.replace(".", "-"),
                       IPState.RELEASING if a in releasing else IPState.AVAILABLE)
                for a in (*addresses, *releasing))
    return NodeIPPool("node-a", PoolSpec("node-a"), PoolStatus(ips=ips))


def req(command: str, container: str = "c1", netns: str = "/run/netns/p1", *,
        ifname: str = "eth0", network: str = "azure-cni", **config: Any) -> CniRequest:
    version = "1.1.0" if command in ("GC", "STATUS") else "1.0.0"
    return parse_request({"protocol": 1, "command": command, "containerID": container,
                          "netns": netns, "ifname": ifname,
                          "args": "K8S_POD_NAME=p;K8S_POD_NAMESPACE=ns", "deadlineSeconds": 15,
                          "config": {"cniVersion": version, "name": network, **config}})


class Harness:
    def __init__(self, handler: CniHandler, datapath: InMemoryDatapath,
                 allocator: Allocator) -> None:
        self.handler, self.datapath, self.allocator = handler, datapath, allocator
        self.changes = 0

    async def add(self, container: str = "c1", netns: str = "/run/netns/p1", *,
                  ifname: str = "eth0", network: str = "azure-cni") -> dict[str, Any]:
        self.datapath.namespaces.add(netns)
        reply = await self.handler.handle(req("ADD", container, netns, ifname=ifname,
                                              network=network))
        return dict(json.loads(reply.output))


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    allocator = Allocator(tmp_path / "ipam.db", cooldown_seconds=30)
    await allocator.open()
    await allocator.set_pool(pool(*(f"198.18.0.{i}" for i in range(10, 70))))
    datapath = InMemoryDatapath()
    netlink = ThreadPoolExecutor(4)
    attachments = Attachments(allocator=allocator, datapath=datapath, netlink=netlink,
                              mtu=1500)
    handler = CniHandler(node_name="node-a", attachments=attachments, add_wait_seconds=0.5)
    h = Harness(handler, datapath, allocator)
    handler.on_change = lambda: setattr(h, "changes", h.changes + 1)
    yield h
    await allocator.close()
    netlink.shutdown()


def code_of(error: BaseException) -> int:
    return int(cni_error_for(error).code)


async def test_add_builds_the_datapath_and_returns_the_result(harness: Harness) -> None:
    result = await harness.add()
    assert result["ips"][0]["address"] == "198.18.0.10/32"
    veth = host_veth_name("c1", "eth0")
    assert result["interfaces"][0]["name"] == veth
    assert harness.datapath.pairs[veth].address == "198.18.0.10"
    (assignment,) = await harness.allocator.assignments()
    assert assignment.pod == "ns/p"
    assert harness.changes == 1


def annotated_add() -> CniRequest:
    """An ADD of a pod that asks for a public IP."""
    return parse_request({
        "protocol": 1, "command": "ADD", "containerID": "c1", "netns": "/run/netns/p1",
        "ifname": "eth0", "args": "K8S_POD_NAMESPACE=web;K8S_POD_NAME=web-0;K8S_POD_UID=u-1",
        "config": {"cniVersion": "1.0.0", "name": "azure-cni", "runtimeConfig": {
            "io.kubernetes.cri.pod-annotations": {"azurecni.io/public-ip": "web"}}}})


async def test_add_records_what_an_annotated_pod_asks_with_its_uid(harness: Harness) -> None:
    harness.datapath.namespaces.add("/run/netns/p1")
    await harness.handler.handle(annotated_add())
    (published,) = await harness.allocator.pod_requests()
    assert published.to_dict() == {"address": "198.18.0.10", "ipConfiguration":
                                   "azcni-198-18-0-10", "pod": "web/web-0", "podUID": "u-1",
                                   "publicIP": "web"}


async def test_add_is_idempotent_per_key(harness: Harness) -> None:
    first = await harness.add()
    second = await harness.add()
    assert first == second
    assert len(await harness.allocator.assignments()) == 1


async def test_add_of_a_key_attached_elsewhere_is_refused(harness: Harness) -> None:
    await harness.add(netns="/run/netns/p1")
    with pytest.raises(CniError) as caught:
        await harness.add(netns="/run/netns/other")
    assert caught.value.code == Code.TRY_AGAIN_LATER
    assert "DEL it first" in str(caught.value)


async def test_failed_add_gives_the_address_back(harness: Harness) -> None:
    harness.datapath.faults["ensure"] = errno.EBUSY
    with pytest.raises(OSError) as caught:
        await harness.add()
    assert code_of(caught.value) == Code.TRY_AGAIN_LATER
    assert await harness.allocator.assignments() == []
    result = await harness.add()
    assert result["ips"][0]["address"] == "198.18.0.10/32", "no cooldown for a never-used address"


async def test_failed_add_of_an_annotated_pod_asks_nothing(harness: Harness) -> None:
    """The request for the operator is recorded with the pair built, never for an address
    that went back to the pool (the operator would attach a public IP to a free address)."""
    harness.datapath.namespaces.add("/run/netns/p1")
    harness.datapath.faults["ensure"] = errno.EBUSY
    with pytest.raises(OSError):
        await harness.handler.handle(annotated_add())
    assert await harness.allocator.assignments() == []
    assert await harness.allocator.pod_requests() == []
    assert harness.changes == 0


async def test_add_into_a_missing_netns_is_unknown_container(harness: Harness) -> None:
    with pytest.raises(OSError) as caught:
        await harness.handler.handle(req("ADD", netns="/run/netns/gone"))
    assert code_of(caught.value) == Code.UNKNOWN_CONTAINER
    assert await harness.allocator.assignments() == []


async def test_interface_name_taken_in_the_pod_is_an_error(harness: Harness) -> None:
    harness.datapath.foreign_interfaces["/run/netns/p1"] = {"eth0"}
    with pytest.raises(OSError) as caught:
        await harness.add()
    assert code_of(caught.value) == Code.INVALID_CONFIG
    assert "already has an interface named eth0" in str(cni_error_for(caught.value))


async def test_parallel_adds_get_distinct_addresses(harness: Harness) -> None:
    results = await asyncio.gather(*(harness.add(f"c{i}", f"/run/netns/p{i}")
                                     for i in range(50)))
    addresses = [r["ips"][0]["address"] for r in results]
    assert len(set(addresses)) == 50


async def test_concurrent_adds_of_one_key_assign_once(harness: Harness) -> None:
    results = await asyncio.gather(*(harness.add() for _ in range(5)))
    assert len({json.dumps(r) for r in results}) == 1
    assert len(await harness.allocator.assignments()) == 1


async def test_exhausted_pool_waits_for_the_operator(harness: Harness) -> None:
    await harness.allocator.set_pool(pool("198.18.0.10"))
    await harness.add("c1")
    waiting = asyncio.create_task(harness.add("c2", "/run/netns/p2"))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await harness.allocator.set_pool(pool("198.18.0.10", "198.18.0.11"))
    result = await asyncio.wait_for(waiting, 5)
    assert result["ips"][0]["address"] == "198.18.0.11/32"


async def test_exhausted_pool_fails_with_try_again_after_the_wait(harness: Harness) -> None:
    await harness.allocator.set_pool(pool("198.18.0.10", releasing=("198.18.0.11",)))
    await harness.add("c1")
    with pytest.raises(PoolExhausted) as caught:
        await harness.add("c2", "/run/netns/p2")
    assert caught.value.code == Code.TRY_AGAIN_LATER
    assert "exhausted" in caught.value.msg
    assert "1 used, 1 releasing" in caught.value.details


async def test_a_pool_being_deleted_hands_out_nothing_and_says_why(harness: Harness) -> None:
    """Issue 11, defect 5: the agent kept handing out addresses of a pool being deleted."""
    await harness.add("c0", "/run/netns/p0")
    deleting = replace(pool(*(f"198.18.0.{i}" for i in range(10, 70))), deletion_timestamp=NOW)
    await harness.allocator.set_pool(deleting)
    started = asyncio.get_running_loop().time()
    with pytest.raises(CniError) as caught:
        await harness.add("c1", "/run/netns/p1")
    assert caught.value.code == Code.TRY_AGAIN_LATER
    assert "being deleted" in caught.value.msg
    assert asyncio.get_running_loop().time() - started < 0.4, "it waited for an address"
    assert len(await harness.allocator.assignments()) == 1
    # a pod that already has its address keeps getting it (ADD is idempotent)
    again = await harness.add("c0", "/run/netns/p0")
    assert again["ips"][0]["address"] == "198.18.0.10/32"


async def test_del_frees_and_is_idempotent(harness: Harness) -> None:
    await harness.add()
    for netns in ("/run/netns/p1", "/run/netns/p1", ""):
        reply = await harness.handler.handle(req("DEL", netns=netns))
        assert reply.output == b"" and reply.warning == ""
    assert await harness.allocator.assignments() == []
    assert harness.datapath.pairs == {}
    usage = await harness.allocator.usage()
    assert usage.cooling == 1, "a freed address cools down"


async def test_del_after_the_netns_is_gone(harness: Harness) -> None:
    await harness.add()
    harness.datapath.delete_namespace("/run/netns/p1")
    reply = await harness.handler.handle(req("DEL"))
    assert reply.warning == ""
    assert await harness.allocator.assignments() == []


async def test_del_with_a_foreign_prev_result_leaves_it_alone(harness: Harness) -> None:
    await harness.add("c1")
    await harness.add("c2", "/run/netns/p2")
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "x"}],
            "ips": [{"address": "203.0.113.9/32", "interface": 0}]}
    reply = await harness.handler.handle(req("DEL", "c1", prevResult=prev))
    assert "203.0.113.9" in reply.warning and "not in the pool" in reply.warning
    assert [a.key.container_id for a in await harness.allocator.assignments()] == ["c2"]


async def test_check(harness: Harness) -> None:
    result = await harness.add()
    await harness.handler.handle(req("CHECK", prevResult=result))
    with pytest.raises(CniError) as caught:
        await harness.handler.handle(req("CHECK"))
    assert caught.value.code == Code.INVALID_CONFIG and "prevResult" in caught.value.msg
    foreign = json.loads(json.dumps(result).replace("198.18.0.10/32", "203.0.113.9/32"))
    with pytest.raises(CniError) as caught:
        await harness.handler.handle(req("CHECK", prevResult=foreign))
    assert caught.value.code == Code.INVALID_CONFIG
    assert "203.0.113.9" in caught.value.details and "not in the pool" in caught.value.details
    harness.datapath.pairs.clear()
    with pytest.raises(CniError) as caught:
        await harness.handler.handle(req("CHECK", prevResult=result))
    assert caught.value.code == Code.DATAPATH_MISMATCH
    assert "does not exist" in caught.value.details
    with pytest.raises(CniError) as caught:
        await harness.handler.handle(req("CHECK", "c9", prevResult=result))
    assert caught.value.code == Code.UNKNOWN_CONTAINER


async def test_no_pod_is_set_up_while_the_egress_rules_are_missing(harness: Harness) -> None:
    """Fail closed: a pod started without the filter could reach the wireserver and IMDS."""
    harness.handler.egress_problem = lambda: "programming the pod egress chains failed: lock"
    with pytest.raises(CniError) as caught:
        await harness.add()
    assert caught.value.code == Code.TRY_AGAIN_LATER
    assert "wireserver" in caught.value.msg and "lock" in caught.value.details
    assert await harness.allocator.assignments() == [] and harness.datapath.pairs == {}
    harness.handler.egress_problem = lambda: ""
    assert (await harness.add())["ips"][0]["address"] == "198.18.0.10/32"


async def test_status(harness: Harness) -> None:
    await harness.handler.handle(req("STATUS"))
    harness.handler.egress_problem = lambda: "iptables-restore failed"
    with pytest.raises(CniError) as caught:
        await harness.handler.handle(req("STATUS"))
    assert caught.value.code == Code.LIMITED_CONNECTIVITY
    harness.handler.egress_problem = lambda: ""
    # no address free this second is not "this node cannot network pods": the pool grows,
    # and containerd 2.x would turn a STATUS error into a NotReady node
    await harness.allocator.set_pool(pool("198.18.0.10"))
    await harness.add()
    await harness.handler.handle(req("STATUS"))
    await harness.allocator.set_pool(pool(releasing=("198.18.0.10",)))
    await harness.handler.handle(req("STATUS"))
    await harness.allocator.set_pool(None)
    with pytest.raises(CniError) as caught:
        await harness.handler.handle(req("STATUS"))
    assert caught.value.code == Code.NOT_AVAILABLE and "not received" in caught.value.msg


async def gc(harness: Harness, network: str = "azure-cni", **config: Any) -> str:
    reply = await harness.handler.handle(req("GC", "", "", network=network, **config))
    return reply.warning


async def held(harness: Harness) -> set[str]:
    return {a.key.container_id for a in await harness.allocator.assignments()}


async def held_keys(harness: Harness) -> set[str]:
    return {str(a.key) for a in await harness.allocator.assignments()}


async def test_gc_frees_what_is_not_listed(harness: Harness) -> None:
    for i in range(3):
        await harness.add(f"c{i}", f"/run/netns/p{i}")
    await gc(harness, **{"cni.dev/valid-attachments": [{"containerID": "c1",
                                                        "ifname": "eth0"}]})
    assert await held(harness) == {"c1"}
    assert list(harness.datapath.pairs) == [host_veth_name("c1", "eth0")]


async def test_gc_for_another_network_leaves_ours_alone(harness: Harness) -> None:
    """The spec scopes GC to one network: its list names that network's valid attachments,
    so what it does not list may still be another network's (a second conflist of this
    plugin, a Multus secondary network)."""
    for i in range(3):
        await harness.add(f"c{i}", f"/run/netns/p{i}")
    await gc(harness, network="other-net",
             **{"cni.dev/valid-attachments": [{"containerID": "x", "ifname": "eth0"}]})
    assert await held(harness) == {"c0", "c1", "c2"}
    assert len(harness.datapath.pairs) == 3, "every pod keeps its veth"
    await gc(harness, network="other-net", **{"cni.dev/valid-attachments": None})
    assert await held(harness) == {"c0", "c1", "c2"}


async def test_gc_frees_the_unlisted_attachments_of_its_own_network_only(
        harness: Harness) -> None:
    await harness.add("c0", "/run/netns/p0")
    await harness.add("c0", "/run/netns/p0", ifname="net1", network="second")
    await harness.add("c1", "/run/netns/p1", ifname="net1", network="second")
    await gc(harness, network="second",
             **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "net1"}]})
    assert await held_keys(harness) == {"c0/eth0", "c1/net1"}
    # a list entry of our network with another ifname names another attachment: (c0, eth0)
    # is not listed, so it goes; (c1, net1) is the second network's and stays
    await gc(harness, **{"cni.dev/valid-attachments": [{"containerID": "c0",
                                                        "ifname": "net1"}]})
    assert await held_keys(harness) == {"c1/net1"}
    assert list(harness.datapath.pairs) == [host_veth_name("c1", "net1")]


async def test_gc_leaves_attachments_of_an_unknown_network_to_del_and_the_sweep(
        harness: Harness) -> None:
    """An attachment recorded before the agent kept network names may be any network's."""
    key = AttachmentKey("old", "eth0")
    made, _ = await harness.allocator.assign(key, "/run/netns/old", host_veth_name(
        key.container_id, key.ifname), "ns/old")
    assert made is not None and made.network == ""
    await gc(harness, **{"cni.dev/valid-attachments": []})
    assert await held(harness) == {"old"}


async def test_gc_leaves_dockers_attachments_alone(harness: Harness) -> None:
    """Docker's plugin records its containers in the same store; no CNI runtime lists them."""
    await harness.add("c0")
    endpoint = AttachmentKey("e" * 64, DockerRole.ENDPOINT)
    made, _ = await harness.allocator.assign(endpoint, "", host_veth_name(
        endpoint.container_id, endpoint.ifname), "docker/eeeeeeeeeeee")
    assert made is not None
    await gc(harness, **{"cni.dev/valid-attachments": []})
    assert await held(harness) == {"e" * 64}


async def test_gc_legacy_key_null_and_absent(harness: Harness) -> None:
    for i in range(3):
        await harness.add(f"c{i}", f"/run/netns/p{i}")
    warning = await gc(harness)
    assert "frees nothing" in warning
    assert await held(harness) == {"c0", "c1", "c2"}, "no list at all must not free anything"
    await gc(harness, **{"cni.dev/attachments": [{"containerID": "c0", "ifname": "eth0"}]})
    assert await held(harness) == {"c0"}
    await gc(harness, **{"cni.dev/valid-attachments": None})
    assert await held(harness) == set(), "null is an empty list: nothing is valid"


async def test_gc_reports_what_it_could_not_free(harness: Harness) -> None:
    await harness.add("c0")
    harness.datapath.faults["teardown"] = errno.EBUSY
    with pytest.raises(CniError) as caught:
        await gc(harness, **{"cni.dev/valid-attachments": []})
    assert caught.value.code == Code.TRY_AGAIN_LATER and "c0/eth0" in caught.value.details
    assert await held(harness) == {"c0"}, "an attachment whose veth could not go keeps its IP"


class BarrierDatapath(InMemoryDatapath):
    """ensure_pod_veth waits until ``parties`` of them run at the same time."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=10)

    def ensure_pod_veth(self, pod) -> None:  # type: ignore[no-untyped-def]
        self.barrier.wait()  # BrokenBarrierError if ADDs were serialised
        super().ensure_pod_veth(pod)


async def test_adds_of_different_pods_do_netlink_work_at_the_same_time(
        harness: Harness) -> None:
    slow = BarrierDatapath(parties=4)
    harness.handler.attachments.datapath = slow
    harness.datapath = slow
    results = await asyncio.gather(*(harness.add(f"c{i}", f"/run/netns/p{i}")
                                     for i in range(4)))
    assert len({r["ips"][0]["address"] for r in results}) == 4


class GateDatapath(InMemoryDatapath):
    """ensure_pod_veth blocks until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def ensure_pod_veth(self, pod) -> None:  # type: ignore[no-untyped-def]
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        super().ensure_pod_veth(pod)


async def test_del_of_a_pod_waits_for_its_add_in_flight(harness: Harness) -> None:
    gated = GateDatapath()
    harness.handler.attachments.datapath = gated
    harness.datapath = gated
    adding = asyncio.create_task(harness.add())
    await asyncio.get_running_loop().run_in_executor(None, gated.entered.wait, 10)
    deleting = asyncio.create_task(harness.handler.handle(req("DEL")))
    await asyncio.sleep(0.2)
    assert not deleting.done(), "DEL must not overtake the ADD of the same attachment"
    gated.gate.set()
    await adding
    await deleting
    assert await harness.allocator.assignments() == []
    assert gated.pairs == {}


async def test_gc_leaves_an_add_in_flight_alone(harness: Harness) -> None:
    """The runtime's list of valid attachments was made before this ADD returned: an address
    recorded before GC started must not be torn down after the ADD succeeded."""
    gated = GateDatapath()
    harness.handler.attachments.datapath = gated
    harness.datapath = gated
    key = AttachmentKey("new", "eth0")
    adding = asyncio.create_task(harness.add("new", "/run/netns/new"))
    await asyncio.get_running_loop().run_in_executor(None, gated.entered.wait, 10)
    assert [a.key for a in await harness.allocator.assignments()] == [key], "recorded"
    collecting = asyncio.create_task(gc(harness, **{"cni.dev/valid-attachments": []}))
    for _ in range(1000):  # until GC is done, or waits for the ADD's lock on that attachment
        if collecting.done() or harness.handler.locks.waiting(key):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("GC neither finished nor reached the attachment being added")
    gated.gate.set()
    result = await adding
    await collecting
    assert result["ips"][0]["address"] == "198.18.0.10/32", "the ADD succeeded ..."
    assert await held(harness) == {"new"}, "... so its address stays"
    assert list(gated.pairs) == [host_veth_name("new", "eth0")], "and so does its veth"
    # once the runtime knows it, a later GC that does not list it frees it
    await gc(harness, **{"cni.dev/valid-attachments": []})
    assert await held(harness) == set()


async def test_pods_whose_namespace_and_veth_vanished_are_freed(harness: Harness,
                                                                tmp_path: Path) -> None:
    alive = tmp_path / "alive-netns"
    alive.write_text("")
    await harness.add("kept", str(alive))
    await harness.add("hidden", str(tmp_path / "not-visible-to-the-agent"))
    await harness.add("vanished", str(tmp_path / "gone-netns"))
    harness.datapath.delete_namespace(str(tmp_path / "gone-netns"))  # its veth goes with it
    assert await harness.handler.free_vanished_pods(older_than=60) == [], "too young to judge"
    freed = await harness.handler.free_vanished_pods(older_than=0)
    assert [a.key.container_id for a in freed] == ["vanished"]
    assert await held(harness) == {"kept", "hidden"}, "a pod with a veth is alive"
