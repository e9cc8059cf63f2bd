"""The controller without a cluster: watch events, the work queue, workers and the NIC sweep,
on the stateful fake of Azure and the recording PoolWriter."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from tests.cloud.fake_network import FakeAzure
from tests.operator.recording import RecordingPools

from azure_cni.api.nodeippool import (
    CLASS_LABEL,
    ConditionType,
    IPState,
    NodeIPPool,
    PoolIP,
    PoolMode,
    PoolSpec,
    PoolStatus,
)
from azure_cni.api.podnet import PodNetworkRequest
from azure_cni.api.settings import OperatorSettings, PodNetworkingSettings, PoolDefaults
from azure_cni.cloud.armjson import parse_nic
from azure_cni.operator import metrics
from azure_cni.operator.controller import NicHint, PoolController, interest, newer
from azure_cni.operator.reconcile import PoolReconciler
from azure_cni_sim.arm import ArmConfig, ArmEmulator
from azure_cni_sim.kubeletnodes import kubelet_node

DEFAULTS = PoolDefaults(batch_size=4, min_free_ips=4, max_free_ips=8, max_ips=64,
                        release_delay_seconds=0)


class CountingReconciler(PoolReconciler):
    reconciles: int = 0

    async def reconcile(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.reconciles += 1
        return await super().reconcile(*args, **kwargs)


@dataclass
class Cluster:
    azure: FakeAzure
    pools: RecordingPools
    controller: PoolController
    reconciler: CountingReconciler
    subnet_id: str
    providers: dict[str, str]
    tasks: list[asyncio.Task[None]]

    def add_node(self, name: str, uid: str | None = None,
                 labels: dict[str, str] | None = None) -> None:
        """A VM and its Node object in the (recorded) API server."""
        if name not in self.providers:
            provider_id, _ = self.azure.add_vm(name, self.subnet_id)
            self.providers[name] = provider_id
        self.pools.nodes[name] = {"metadata": {"name": name, "uid": uid or f"uid-{name}",
                                               "labels": labels or {}},
                                  "spec": {"providerID": self.providers[name]}}

    async def node_event(self, name: str, kind: str = "ADDED") -> None:
        """What kopf hands over for the Node ``name``."""
        obj = self.pools.nodes.get(name) or {"metadata": {"name": name, "uid": f"uid-{name}"},
                                             "spec": {"providerID": self.providers[name]}}
        if kind == "DELETED":
            self.pools.nodes.pop(name, None)
        await self.controller.node_event(kind, obj)

    async def start(self) -> None:
        """The controller takes its lists of pools and Nodes, then begins."""
        await self.controller.list_everything()
        self.tasks = await self.controller.begin()

    async def settled(self, what: str, check: Callable[[], bool], timeout: float = 10) -> None:
        async def idle() -> None:
            # delayed adds (a retry in 60s) may still wait: what counts is the check
            while not (check() and self.controller.queue.processing == 0):
                await asyncio.sleep(0.01)

        try:
            await asyncio.wait_for(idle(), timeout)
        except TimeoutError:
            raise AssertionError(f"not settled within {timeout}s: {what}; "
                                 f"{self.controller.health()}") from None

    def ours(self, name: str) -> dict[str, str]:
        return {ip.ip_configuration: ip.address for ip in self.pools.get(name).status.ips}


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    azure = FakeAzure()
    subnet_id = azure.add_subnet("198.18.0.0/20")
    pools = RecordingPools()
    reconciler = CountingReconciler(azure, pools)
    controller = PoolController(reconciler, pools, azure, DEFAULTS,  # type: ignore[arg-type]
                                OperatorSettings(max_concurrent_nodes=4,
                                                 usage_debounce_seconds=0.2,
                                                 drift_check_seconds=3600))

    def watch(name: str, pool: NodeIPPool | None) -> None:
        if pool is None:
            controller.pool_event("DELETED", {"metadata": {"name": name}})
        else:
            controller.remember(pool)

    pools.listeners.append(watch)
    c = Cluster(azure, pools, controller, reconciler, subnet_id, {}, [])
    yield c
    controller.queue.shut_down()
    for task in c.tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def pool_at(version: int, used: int = 0) -> NodeIPPool:
    return NodeIPPool("n", PoolSpec("n"), PoolStatus(used=used), generation=1,
                      resource_version=str(version))


def test_a_stale_watch_event_never_replaces_a_newer_pool() -> None:
    assert newer(pool_at(5), pool_at(4)) and newer(pool_at(5), None)
    assert not newer(pool_at(3), pool_at(5))
    assert newer(replace(pool_at(1), resource_version="opaque"), pool_at(5))


def test_only_the_spec_a_deletion_and_the_agents_usage_matter() -> None:
    base = NodeIPPool("n", PoolSpec("n"), PoolStatus(used=1), generation=1)
    ours = replace(base, status=replace(base.status, ips=(PoolIP("198.18.0.9", "azcni-a"),)))
    assert interest(ours) == interest(base), "the operator's own status write mattered"
    assert interest(replace(base, generation=2)) != interest(base)
    assert interest(replace(base, status=replace(base.status, used=2))) != interest(base)
    assert interest(replace(base, status=replace(base.status, cooling=2))) != interest(base)
    assert interest(replace(base, status=replace(base.status,
                                                 release_acks=frozenset({"x"})))) != \
        interest(base)


async def test_new_nodes_get_one_pool_each_filled_from_the_nic_listing(cluster) -> None:
    for i in range(6):
        cluster.add_node(f"n{i}")
    for name in cluster.providers:
        await cluster.node_event(name)
        await cluster.node_event(name, "MODIFIED")  # a second event creates nothing more
    await cluster.start()
    await cluster.settled("six pools with four addresses", lambda: all(
        n in cluster.pools.pools and len(cluster.ours(n)) == 4 for n in cluster.providers))
    assert sorted(cluster.pools.created) == sorted(cluster.providers)
    assert cluster.azure.calls["get_vm_nic"] == 0, "the listing should have found every NIC"
    assert cluster.azure.calls["get_nic"] == 0
    assert cluster.azure.calls["list_nics"] == 1
    assert len(cluster.azure.writes) == 6


async def test_the_operators_own_writes_queue_nothing_and_a_burst_is_one_reconcile(
        cluster) -> None:
    cluster.add_node("n0")
    await cluster.node_event("n0")
    await cluster.start()
    await cluster.settled("the pool filled", lambda: len(cluster.ours("n0")) == 4)
    before = cluster.reconciler.reconciles
    # a write that woke the pool would have queued it (at once or after the debounce) as the
    # watch delivered it, and the watch here delivers before the write returns
    assert len(cluster.controller.queue) == 0, "its own status write woke the pool"
    for used in range(1, 4):  # three agent updates inside the debounce
        cluster.pools.act_as_agent("n0", used=used)
    await cluster.settled("the burst handled", lambda: len(cluster.ours("n0")) == 8)
    assert cluster.reconciler.reconciles == before + 1


async def test_a_nodes_status_report_queues_and_writes_nothing(cluster) -> None:
    """kubelet reports every Node's status every 5 minutes (16.7 reports a second at 5,000
    nodes), each a watch event with the whole Node: nothing the operator reads of a Node
    changed, so nothing is queued, reconciled or written."""
    cluster.add_node("n0", labels={"agentpool": "nodepool1", "kubernetes.io/os": "linux"})
    await cluster.node_event("n0")
    await cluster.start()
    await cluster.settled("the pool filled", lambda: len(cluster.ours("n0")) == 4)
    before = (cluster.reconciler.reconciles, cluster.pools.status_writes,
              len(cluster.azure.writes), len(cluster.pools.events), list(cluster.pools.created))
    node = cluster.pools.nodes["n0"]
    for beat in range(3):
        node["metadata"]["resourceVersion"] = str(100 + beat)
        node["metadata"]["labels"] = dict(node["metadata"]["labels"])  # parsed afresh
        node["status"] = {"conditions": [{"type": "Ready", "status": "True",
                                          "lastHeartbeatTime": f"2026-12-07T12:0{beat}:00Z"}]}
        await cluster.node_event("n0", "MODIFIED")
    controller = cluster.controller
    assert (len(controller.queue), controller.queue.processing) == (0, 0)
    assert (len(controller._class_syncs), len(controller._creations)) == (0, 0)
    await asyncio.sleep(0.2)
    assert (cluster.reconciler.reconciles, cluster.pools.status_writes,
            len(cluster.azure.writes), len(cluster.pools.events),
            list(cluster.pools.created)) == before


async def test_the_agents_cooling_addresses_wake_the_pool(cluster) -> None:
    """free = available - used - cooling: addresses the agent publishes as cooling are not
    free, so a pool whose free addresses all cool grows by a batch."""
    cluster.add_node("n0")
    await cluster.node_event("n0")
    await cluster.start()
    await cluster.settled("the pool filled", lambda: len(cluster.ours("n0")) == 4)
    assert len(cluster.controller.queue) == 0
    cluster.pools.act_as_agent("n0", used=0, cooling=4)
    assert len(cluster.controller.queue) == 1, "the agent's cooling count did not queue the pool"
    await cluster.settled("a batch more for the cooling ones",
                          lambda: len(cluster.ours("n0")) == 8)
    assert cluster.pools.get("n0").status.cooling == 4, "the operator's write lost the agent's"


async def test_a_spec_change_is_reconciled_at_once(cluster) -> None:
    cluster.add_node("n0")
    await cluster.node_event("n0")
    await cluster.start()
    await cluster.settled("the pool filled", lambda: len(cluster.ours("n0")) == 4)
    cluster.pools.edit_spec("n0", min_ips=12)
    await cluster.settled("twelve addresses", lambda: len(cluster.ours("n0")) == 12, timeout=2)


async def test_the_sweep_finds_drift_and_hands_over_what_it_read(cluster) -> None:
    cluster.add_node("n0")
    cluster.add_node("n1")
    for name in cluster.providers:
        await cluster.node_event(name)
    await cluster.start()
    await cluster.settled("filled", lambda: all(len(cluster.ours(n)) == 4 for n in ("n0", "n1")))
    nic_id = cluster.pools.get("n0").status.nic.id  # type: ignore[union-attr]
    victim = sorted(cluster.ours("n0"))[0]
    cluster.azure.remove_behind_our_back(nic_id, victim)
    reconciles = cluster.reconciler.reconciles
    await cluster.controller.sweep()
    await cluster.settled("repaired", lambda: victim in cluster.azure.ours(nic_id))
    assert cluster.reconciler.reconciles == reconciles + 1, "the unchanged pool was reconciled"
    assert cluster.azure.calls["get_nic"] == 0  # the reconcile used the listing's read


async def test_a_listing_older_than_the_last_write_is_not_taken_for_drift(cluster) -> None:
    """The sweep listed the NIC, then a reconcile wrote it: what the listing saw is stale."""
    cluster.add_node("n0")
    await cluster.node_event("n0")
    await cluster.start()
    nic_id = cluster.azure.vms[cluster.providers["n0"].removeprefix("azure://").lower()]
    before = await cluster.azure.get_nic(nic_id)  # empty: listed before the first fill
    await cluster.settled("filled", lambda: len(cluster.ours("n0")) == 4)
    writes = len(cluster.azure.writes)
    cluster.controller.nic_hints["n0"] = NicHint(before, listed=0.0)
    cluster.controller.queue.add("n0")
    await cluster.settled("reconciled", lambda: "n0" not in cluster.controller.nic_hints)
    assert "DriftRepaired" not in cluster.pools.reasons("n0")
    assert len(cluster.azure.writes) == writes


async def test_a_nic_the_sweep_does_not_find_is_looked_for(cluster) -> None:
    cluster.add_node("n0")
    await cluster.node_event("n0")
    await cluster.start()
    await cluster.settled("filled", lambda: len(cluster.ours("n0")) == 4)
    cluster.azure.delete_vm(cluster.providers["n0"])
    await cluster.controller.sweep()
    await cluster.settled("NotFound recorded", lambda: (
        (c := cluster.pools.get("n0").status.condition("Provisioned")) is not None  # type: ignore[arg-type]
        and not c.status))


async def test_a_crashed_reconcile_is_retried(cluster) -> None:
    cluster.add_node("n0")
    await cluster.node_event("n0")
    cluster.pools.kill_next_status_write = True  # the API server refuses the status write
    await cluster.start()
    await cluster.settled("filled after the retry", lambda: len(cluster.ours("n0")) == 4)
    assert len(cluster.azure.writes) == 1, "the retry wrote the NIC again"
    assert "Adopted" in cluster.pools.reasons("n0")


async def test_a_deleted_node_takes_its_pool_along_but_only_what_is_unused(cluster) -> None:
    cluster.add_node("n0")
    await cluster.node_event("n0")
    await cluster.start()
    await cluster.settled("filled", lambda: len(cluster.ours("n0")) == 4)
    cluster.pools.act_as_agent("n0", used=1)
    await cluster.node_event("n0", "DELETED")
    await cluster.settled("waiting on the agent", lambda: all(
        ip.state is IPState.RELEASING for ip in cluster.pools.get("n0").status.ips))
    names = sorted(cluster.ours("n0"))
    cluster.pools.act_as_agent("n0", used=0, acks=set(names))
    await cluster.settled("the pool is gone", lambda: "n0" not in cluster.pools.pools)
    assert "n0" not in cluster.controller.pools


def test_per_pool_state_is_a_few_kilobytes() -> None:
    """5,000 pools of 16 addresses, as the controller holds them, with their series."""
    controller = PoolController(None, None, None, DEFAULTS, OperatorSettings())  # type: ignore[arg-type]
    objects = [{"apiVersion": "azurecni.io/v1alpha1", "kind": "NodeIPPool",
                "metadata": {"name": f"aks-nodepool1-{i:08d}-vmss{i:06d}",
                             "resourceVersion": str(1000 + i), "generation": 1,
                             "uid": f"6f1c7c8e-{i:04d}-4bb1-9d39-2f9a0d6e4c1b",
                             "finalizers": ["azurecni.io/nic-cleanup"]},
                "spec": {"nodeName": f"aks-nodepool1-{i:08d}-vmss{i:06d}", "minIPs": 0,
                         "maxIPs": 250, "batchSize": 8, "minFreeIPs": 8, "maxFreeIPs": 24,
                         "releaseDelaySeconds": 180},
                "status": {"ips": [{"address": f"10.{i // 250}.{i % 250}.{j}",
                                    "ipConfiguration": f"azcni-{i:05d}{j:05d}",
                                    "state": "Available"} for j in range(16)],
                           "used": 5, "releaseAcks": [],
                           "nic": {"id": f"/subscriptions/x/resourceGroups/mc_rg/providers/"
                                         f"Microsoft.Network/networkInterfaces/nic-{i}",
                                   "primaryIP": "10.0.0.4", "subnetID": "/subscriptions/x/"
                                   "resourceGroups/rg/providers/Microsoft.Network/"
                                   "virtualNetworks/v/subnets/nodes",
                                   "subnetCIDR": "10.0.0.0/8", "vnetAddressSpace": ["10.0.0.0/8"]},
                           "conditions": [{"type": t, "status": "True", "reason": "Ok",
                                           "message": "the pool holds its warm target",
                                           "lastTransitionTime": "2026-11-27T12:00:00Z"}
                                          for t in ("Provisioned", "Ready", "AgentReady")]}}
               for i in range(5000)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for obj in objects:
        controller.pool_event("ADDED", obj)
        entry = controller.pools[obj["metadata"]["name"]]
        metrics.observe_pool(entry.pool.name, entry.pool.status.ips, entry.pool.status.used)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    for name in controller.pools:
        metrics.forget_pool(name)
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert len(controller.pools) == 5000
    per_pool = grown / 5000
    print(f"controller state: {per_pool:.0f} bytes per pool")
    assert per_pool < 8 * 1024, f"{per_pool:.0f} bytes per pool"


async def test_per_node_state_is_under_two_kilobytes() -> None:
    """Nodes as kubelet writes them (12 KB, 27 labels), each parsed from its own watch event
    as kopf hands it over: the controller keeps what it reads of a Node (uid, providerID,
    labels), not the Node, and its labels' strings once for all nodes that share them."""
    controller = PoolController(None, None, None, DEFAULTS, OperatorSettings())  # type: ignore[arg-type]
    count = 2000
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(count):
        name = f"aks-nodepool1-{i:08d}-vmss{i:06d}"
        node = json.loads(json.dumps(kubelet_node(
            name, f"azure:///subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/"
                  f"mc_rg/providers/Microsoft.Compute/virtualMachines/{name}",
            f"10.{i // 250}.{i % 250}.4")))
        node["metadata"].update(uid=f"6f1c7c8e-{i:04d}-4bb1-9d39-2f9a0d6e4c1b",
                                resourceVersion=str(1000 + i))
        await controller.node_event("ADDED", node)
        del node
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert len(controller.nodes) == count
    per_node = grown / count
    print(f"controller state: {per_node:.0f} bytes per node")
    assert per_node < 2 * 1024, f"{per_node:.0f} bytes per node"


def test_a_sweeps_hints_are_small_and_give_back_the_nic_as_listed() -> None:
    """During a fill the sweep hands a NIC to every pool not yet reconciled (thousands, for
    minutes): what it keeps per node must stay small, and give back the NIC as it was listed
    (its document too, so the write needs no read)."""
    emulator = ArmEmulator(ArmConfig())
    vnet = emulator.add_vnet("v", "198.18.0.0/15", {"nodes": "198.18.0.0/16"})
    pages = [json.dumps(emulator.nic(emulator.add_vm(f"vm{i:05d}", vnet.subnet_ids["nodes"])
                                     .nic_id)) for i in range(1000)]
    assert NicHint.of(parse_nic(json.loads(pages[0])), listed=0.0).nic  # warms caches, once
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    hints = {i: NicHint.of(parse_nic(json.loads(page)), listed=1.0)
             for i, page in enumerate(pages)}
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    per_hint = sum(s.size_diff for s in after.compare_to(before, "filename")) / len(hints)
    print(f"sweep hints: {per_hint:.0f} bytes each")
    assert per_hint < 2560, f"{per_hint:.0f} bytes per hint"
    nic = hints[7].nic
    assert nic == parse_nic(json.loads(pages[7])) and nic is not None
    assert nic.document == parse_nic(json.loads(pages[7])).document is not None


async def test_the_sweep_lists_a_scale_sets_nics_once_and_repairs_drift(cluster) -> None:
    """Uniform instances' NICs are not in the resource group's list: the sweep reads them per
    scale set, one read per page, and leaves the unchanged pools alone."""
    for i in range(3):
        cluster.providers[f"pool00000{i}"], _ = cluster.azure.add_instance(
            "pool", str(i), cluster.subnet_id)
    cluster.add_node("vm0")
    for name in cluster.providers:
        await cluster.node_event(name)
    await cluster.start()
    await cluster.settled("filled", lambda: all(len(cluster.ours(n)) == 4
                                                for n in cluster.providers))
    nic_id = cluster.pools.get("pool000001").status.nic.id  # type: ignore[union-attr]
    victim = sorted(cluster.ours("pool000001"))[0]
    cluster.azure.remove_behind_our_back(nic_id, victim)
    reconciles = cluster.reconciler.reconciles
    listings = cluster.azure.calls["list_scale_set_nics"]
    await cluster.controller.sweep()
    await cluster.settled("repaired", lambda: victim in cluster.azure.ours(nic_id))
    assert cluster.reconciler.reconciles == reconciles + 1, "an unchanged pool was reconciled"
    assert cluster.azure.calls["list_scale_set_nics"] == listings + 1
    assert cluster.azure.calls["get_nic"] == 0  # the reconcile used the listing's read


async def test_a_node_deleted_before_its_pool_was_made_gets_one_when_it_joins_again(
        cluster) -> None:
    """Scale-set instance names are reused: a Node of the same name that joins after its
    namesake left (before the operator made its pool) gets a pool of its own (issue 22,
    row 7)."""
    await cluster.start()
    cluster.add_node("n0")
    await cluster.node_event("n0")
    await cluster.node_event("n0", "DELETED")
    await asyncio.sleep(0.05)  # the pool creators look at n0 while it is gone
    cluster.add_node("n0", uid="uid-n0-again")
    await cluster.node_event("n0")
    await cluster.settled("a pool for the node that joined again",
                          lambda: "n0" in cluster.pools.pools
                          and len(cluster.ours("n0")) == 4)


async def test_a_pool_deleted_while_it_is_reconciled_is_not_brought_back(cluster) -> None:
    """An admin removes the finalizer and deletes a pool just as the operator's status write
    lands: the answer of that write must not put the deleted pool back into the controller
    (it would be reconciled, and 404, for ever), and the node, which lives on, gets a new
    pool."""
    cluster.add_node("n0")
    await cluster.node_event("n0")
    await cluster.start()
    await cluster.settled("filled", lambda: len(cluster.ours("n0")) == 4)

    def delete_it(name: str) -> None:
        cluster.pools.after_status_write = None
        pool = cluster.pools.pools[name]
        cluster.pools.pools[name] = replace(pool, finalizers=())
        cluster.pools.delete(name)

    cluster.pools.after_status_write = delete_it
    cluster.pools.act_as_agent("n0", used=3)  # a reconcile, and its status write
    await cluster.settled("a new pool for n0, and the controller follows it", lambda: (
        cluster.pools.after_status_write is None and cluster.pools.created.count("n0") == 2
        and "n0" in cluster.pools.pools and "n0" in cluster.controller.pools
        and cluster.controller.pools["n0"].pool.resource_version
        == cluster.pools.get("n0").resource_version))


async def test_a_node_whose_deletion_was_missed_is_forgotten_with_its_pool(cluster) -> None:
    """kopf relists after a broken watch without telling what vanished meanwhile: a Node
    deleted in that gap stays in the controller until its pool goes too (the garbage
    collector deletes it); then the operator asks, finds no Node, and forgets it, its NIC
    hint included, instead of making it a new pool."""
    cluster.add_node("n0")
    await cluster.node_event("n0")
    await cluster.start()
    await cluster.settled("filled", lambda: len(cluster.ours("n0")) == 4)
    cluster.pools.nodes.pop("n0")  # gone from the API server; no DELETED event came
    cluster.controller.nic_hints["n0"] = NicHint(None, listed=0.0)
    pool = cluster.pools.get("n0")
    cluster.pools.pools["n0"] = replace(pool, finalizers=())
    cluster.pools.delete("n0")  # as the garbage collector does, its owner being gone
    await cluster.settled("n0 forgotten", lambda: "n0" not in cluster.controller.nodes)
    assert "n0" not in cluster.controller.nic_hints
    assert "n0" not in cluster.pools.pools
    assert cluster.pools.created.count("n0") == 1


async def test_a_deletion_seen_while_the_lists_are_taken_keeps_the_object_out(
        cluster) -> None:
    """kopf's events flow while the controller takes its own lists: a list answered before a
    deletion must not bring the deleted pool or Node back."""
    cluster.add_node("n0")
    cluster.add_node("n1")
    stale = cluster.pools.create("n1")
    gone_pool = {"metadata": {"name": "n1", "resourceVersion": str(int(
        stale.resource_version) + 5)}}
    cluster.controller.pool_event("DELETED", gone_pool)
    node = cluster.pools.nodes["n0"]
    node["metadata"]["resourceVersion"] = "3"
    await cluster.controller.node_event("DELETED", {"metadata": {
        "name": "n0", "uid": "uid-n0", "resourceVersion": "7"}})
    await cluster.controller.list_everything()  # still lists n1's pool and the Node n0
    assert "n1" not in cluster.controller.pools
    assert "n0" not in cluster.controller.nodes
    assert "n1" in cluster.controller.nodes


# -- node groups (NodeIPPoolClass) ------------------------------------------------------------

AGENTPOOL = "kubernetes.azure.com/agentpool"


def pool_class(name: str, group: str, generation: int = 1, **pool: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "generation": generation},
            "spec": {"nodeSelector": {"matchLabels": {AGENTPOOL: group}}, "pool": pool}}


async def test_a_new_node_gets_its_pool_from_the_class_of_its_group_and_follows_it(
        cluster) -> None:
    pods = cluster.azure.add_subnet("198.18.32.0/20", "pods")
    cluster.pools.classes["big"] = pool_class(
        "big", "b", podSubnetID=pods, minFreeIPs=8, maxFreeIPs=16, batchSize=8)
    cluster.add_node("a0", labels={AGENTPOOL: "a"})
    cluster.add_node("b0", labels={AGENTPOOL: "b"})
    cluster.azure.add_nic(cluster.providers["b0"], pods, "b0-pods")
    await cluster.start()
    await cluster.settled("both pools filled", lambda: len(cluster.ours("a0")) == 4
                          and len(cluster.ours("b0")) == 8)
    b0 = cluster.pools.get("b0")
    assert b0.spec.pod_subnet_id == pods and b0.labels[CLASS_LABEL] == "big"
    assert b0.status.nic is not None and b0.status.nic.name == "b0-pods"
    assert not b0.status.nic.primary_nic and b0.status.nic.subnet_cidr == "198.18.32.0/20"
    a0 = cluster.pools.get("a0")
    assert CLASS_LABEL not in a0.labels and a0.spec == DEFAULTS.spec_for("a0")
    await cluster.settled("a0 says it has no class", lambda: (
        c := cluster.pools.get("a0").status.condition(ConditionType.POOL_CLASS)) is not None
        and c.reason == "NoMatchingClass")
    assert "node:a0" in {e.pool for e in cluster.pools.events if e.reason == "NoMatchingClass"}
    # the class grows (kopf hands over the change): b0's pool follows, a0's does not move
    cluster.controller.class_event("MODIFIED", pool_class(
        "big", "b", 2, podSubnetID=pods, minFreeIPs=16, maxFreeIPs=32, batchSize=8))
    await cluster.settled("b0 follows its class", lambda: len(cluster.ours("b0")) == 16)
    assert "FollowsPoolClass" in cluster.pools.reasons("b0")
    assert cluster.pools.get("a0").spec == DEFAULTS.spec_for("a0")


async def test_a_class_changed_or_deleted_while_the_lists_are_taken_stays_as_kopf_said(
        cluster) -> None:
    """kopf's class events flow while the controller lists classes: a list answered before a
    change, a deletion or a creation must not bring back the old class or the deleted one,
    nor drop the new one."""
    pods = cluster.azure.add_subnet("198.18.32.0/20", "pods")
    old = pool_class("b", "b", 1, minFreeIPs=2, maxFreeIPs=4)
    old["metadata"]["resourceVersion"] = "10"
    cluster.pools.classes["b"] = old
    cluster.pools.classes["gone"] = {"metadata": {"name": "gone", "resourceVersion": "11"},
                                     "spec": {"nodeSelector": {}}}
    cluster.add_node("b0", labels={AGENTPOOL: "b"})
    cluster.azure.add_nic(cluster.providers["b0"], pods, "b0-pods")
    newer_class = pool_class("b", "b", 2, podSubnetID=pods, minFreeIPs=6, maxFreeIPs=12,
                             batchSize=6)
    newer_class["metadata"]["resourceVersion"] = "20"
    cluster.controller.class_event("MODIFIED", newer_class)
    cluster.controller.class_event("DELETED", {"metadata": {"name": "gone",
                                                            "resourceVersion": "21"}})
    late = pool_class("late", "c", 1, minFreeIPs=2, maxFreeIPs=6, batchSize=2)
    late["metadata"]["resourceVersion"] = "22"
    cluster.add_node("c0", labels={AGENTPOOL: "c"})
    cluster.controller.class_event("ADDED", late)
    await cluster.start()  # its list still has b as it was and "gone", and not "late"
    await cluster.settled("b0's pool from b as it is now", lambda: "b0" in cluster.pools.pools
                          and len(cluster.ours("b0")) == 6)
    await cluster.settled("c0's pool from late", lambda: "c0" in cluster.pools.pools
                          and len(cluster.ours("c0")) == 2)
    assert cluster.pools.get("c0").labels[CLASS_LABEL] == "late"
    b0 = cluster.pools.get("b0")
    assert b0.labels[CLASS_LABEL] == "b" and b0.spec.pod_subnet_id == pods
    assert "AmbiguousClasses" not in {e.reason for e in cluster.pools.events}


async def test_a_mode_change_with_pods_running_is_refused_and_said(cluster) -> None:
    cluster.pools.classes["g"] = pool_class("g", "g")
    cluster.add_node("g0", labels={AGENTPOOL: "g"})
    await cluster.start()
    await cluster.settled("filled", lambda: len(cluster.ours("g0")) == 4)
    cluster.pools.act_as_agent("g0", used=2)
    cluster.controller.class_event("MODIFIED", pool_class("g", "g", 2, mode="Blocks",
                                                          maxIPs=64))

    def refused() -> bool:
        c = cluster.pools.get("g0").status.condition(ConditionType.POOL_CLASS)
        return c is not None and c.reason == "ChangeRefused"

    await cluster.settled("the refusal on the pool", refused)
    g0 = cluster.pools.get("g0")
    assert g0.spec.mode is PoolMode.ADDRESSES and g0.spec.max_ips == 64
    condition = g0.status.condition(ConditionType.POOL_CLASS)
    assert condition is not None
    assert "mode cannot change while 2 pods use the pool" in condition.message
    assert "ChangeRefused" in cluster.pools.reasons("g0")


async def test_a_node_two_classes_select_gets_no_pool_until_one_lets_go(cluster) -> None:
    cluster.pools.classes["one"] = pool_class("one", "x")
    cluster.pools.classes["two"] = {"metadata": {"name": "two"},
                                    "spec": {"nodeSelector": {}}}
    cluster.add_node("x0", labels={AGENTPOOL: "x"})
    await cluster.start()
    await cluster.settled("an Event on the node", lambda: any(
        e.pool == "node:x0" and e.reason == "AmbiguousClasses" for e in cluster.pools.events))
    assert "x0" not in cluster.pools.pools
    cluster.controller.class_event("DELETED", {"metadata": {"name": "two"}})
    await cluster.settled("the pool from class one", lambda: "x0" in cluster.pools.pools
                          and cluster.pools.get("x0").labels.get(CLASS_LABEL) == "one")
async def test_the_sweep_finds_a_public_ip_taken_off_behind_our_back(cluster) -> None:
    """Issue 22 row 9: the sweep compared addresses only; a pod whose public IP was taken off
    outside azure-cni stayed Attached (and exempt from SNAT: no SNAT, no public IP)."""
    cluster.reconciler.pod_networking = PodNetworkingSettings(
        resource_groups=("pips",), public_ip_namespaces=("web",))
    cluster.add_node("n0")
    await cluster.node_event("n0")
    await cluster.start()
    await cluster.settled("filled", lambda: len(cluster.ours("n0")) == 4)
    pip = cluster.azure.add_public_ip("web", {"azurecni-namespaces": "web"})
    pool = cluster.pools.get("n0")
    ip = pool.status.ips[0]
    asked = PodNetworkRequest(ip.ip_configuration, ip.address, "web/a", pip)
    cluster.pools._bump(replace(pool, status=replace(pool.status, pod_requests=(asked,))))

    def answer() -> str:
        found = cluster.pools.get("n0").status.pod_networking
        return str(found[0].state) if found else ""

    await cluster.settled("attached", lambda: answer() == "Attached"
                          and cluster.azure.holder_of(pip) is not None)
    nic_id = cluster.pools.get("n0").status.nic.id  # type: ignore[union-attr]
    cluster.azure.change_behind_our_back(nic_id, ip.ip_configuration, public_ip="")
    await cluster.controller.sweep()
    await cluster.settled("attached again", lambda: cluster.azure.holder_of(pip) is not None)
    events = [e for e in cluster.pools.events if e.pool == "pod:web/a"]
    assert events[-1].reason == "PodNetworkDriftRepaired" and pip in events[-1].message


async def test_the_sweep_parses_only_the_nics_that_changed_and_still_finds_drift(
        cluster) -> None:
    """At rest a sweep lists every NIC every driftCheckSeconds and finds nearly all as it
    saw them: it compares etags and parses only the NIC whose etag changed, yet repairs it."""
    names = [f"n{i}" for i in range(4)]
    for name in names:
        cluster.add_node(name)
        await cluster.node_event(name)
    await cluster.start()
    await cluster.settled("filled", lambda: all(len(cluster.ours(n)) == 4 for n in names))
    await cluster.controller.sweep()  # they agree: remembered
    cluster.azure.parsed = 0
    await cluster.controller.sweep()
    assert cluster.azure.parsed == 0, "an unchanged NIC was parsed again"
    assert not cluster.controller.nic_hints
    nic_id = cluster.pools.get("n2").status.nic.id  # type: ignore[union-attr]
    victim = sorted(cluster.ours("n2"))[0]
    cluster.azure.remove_behind_our_back(nic_id, victim)
    reconciles = cluster.reconciler.reconciles
    await cluster.controller.sweep()
    assert cluster.azure.parsed == 1
    await cluster.settled("repaired", lambda: victim in cluster.azure.ours(nic_id))
    assert cluster.reconciler.reconciles == reconciles + 1, "an unchanged pool was reconciled"
