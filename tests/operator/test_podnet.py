"""Per-pod public IPs and backend pools through the real reconciler on the stateful fake of
Azure: what the agent records is put on the NIC, reported, and taken off when the pod goes."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from tests.cloud.fake_network import FakeAzure
from tests.operator.recording import Killed, RecordingPools
from tests.operator.test_reconcile import SPEC, World

from azure_cni.api.nodeippool import ConditionType
from azure_cni.api.podnet import NAMESPACES_TAG, AttachmentState, PodNetworkRequest
from azure_cni.api.settings import PodNetworkingSettings
from azure_cni.operator.reconcile import PoolReconciler

POLICY = PodNetworkingSettings(resource_groups=("pips",), public_ip_namespaces=("web",),
                               load_balancer_namespaces=("web",))
#: what an Azure admin writes on a resource the namespace web may use
TAGGED = {NAMESPACES_TAG: "web"}


def world_with_policy() -> World:
    azure = FakeAzure()
    subnet_id = azure.add_subnet("198.18.0.0/24")
    provider_id, nic_id = azure.add_vm("n1", subnet_id)
    pools = RecordingPools()
    pools.create("n1", SPEC)
    names = itertools.count(1000)
    reconciler = PoolReconciler(azure, pools, new_name=lambda: f"azcni-{next(names):04d}",
                                pod_networking=POLICY)
    return World(azure, pools, subnet_id, provider_id, nic_id, reconciler)


async def killed_after_the_nic_write(world: World) -> None:
    """A reconcile whose operator dies between its NIC write and its status write."""
    world.pools.kill_next_status_write = True
    with pytest.raises(Killed):
        await world.reconcile()


def restart(world: World) -> None:
    """A new operator process, with the same policy."""
    names = itertools.count(2000)
    world.reconciler = PoolReconciler(world.azure, world.pools, pod_networking=POLICY,
                                      new_name=lambda: f"azcni-{next(names):04d}")


def agent_requests(world: World, *requests: PodNetworkRequest) -> None:
    """The node agent publishes what pods asked for (its own status field)."""
    pool = world.pool()
    world.pools._bump(replace(pool, status=replace(pool.status, pod_requests=requests)))


def request(world: World, index: int, pod: str, public_ip: str = "", pools: tuple[str, ...] = (),
            withdrawn: bool = False) -> PodNetworkRequest:
    ip = world.pool().status.ips[index]
    return PodNetworkRequest(ip.ip_configuration, ip.address, pod, public_ip, pools, withdrawn)


def on_nic(world: World, name: str) -> tuple[str, tuple[str, ...]]:
    config = world.azure.nics[world.nic_id.lower()].configs
    found = next(c for c in config if c.name == name)
    return found.features.public_ip, found.features.backend_pools


def pod_events(world: World) -> list[tuple[str, str]]:
    return [(e.pool.removeprefix("pod:"), e.reason) for e in world.pools.events
            if e.pool.startswith("pod:")]


async def test_a_public_ip_goes_on_in_the_next_write_and_off_before_the_address_is_free() -> None:
    world = world_with_policy()
    await world.reconcile()
    pip = world.azure.add_public_ip("web", TAGGED)
    asked = request(world, 0, "web/a", "web")
    agent_requests(world, asked)
    writes = len(world.azure.writes)
    result = await world.reconcile()
    assert not result.outcome.failed, result.outcome.message
    assert on_nic(world, asked.ip_configuration)[0].lower() == pip.lower()
    (answer,) = world.pool().status.pod_networking
    assert (answer.state, answer.public_ip.lower()) == (AttachmentState.ATTACHED, pip.lower())
    assert pod_events(world) == [("web/a", "PodNetworkAttached")]
    # the NIC write that attached it was the only one, and an answered request costs nothing
    calls = sum(world.azure.calls.values())
    await world.reconcile()
    assert sum(world.azure.calls.values()) == calls
    assert world.azure.holder_of(pip) is not None and len(world.azure.writes) >= writes
    # the pod goes: the agent withdraws, the operator detaches, then reports Detached
    agent_requests(world, replace(asked, withdrawn=True))
    await world.reconcile()
    assert on_nic(world, asked.ip_configuration) == ("", ())
    (answer,) = world.pool().status.pod_networking
    assert answer.state == AttachmentState.DETACHED
    assert pod_events(world)[-1] == ("web/a", "PodNetworkDetached")
    # the agent forgets it: the answer goes too
    agent_requests(world)
    await world.reconcile()
    assert world.pool().status.pod_networking == ()


async def test_a_public_ip_in_use_elsewhere_is_an_event_and_does_not_block_the_others() -> None:
    world = world_with_policy()
    await world.reconcile()
    pip = world.azure.add_public_ip("taken", TAGGED)
    pool = world.azure.add_backend_pool("lb", "web", TAGGED)
    _, other_nic = world.azure.add_vm("n2", world.subnet_id)
    world.azure.nics[other_nic.lower()].configs[0].features = replace(
        world.azure.nics[other_nic.lower()].configs[0].features, public_ip=pip)
    taken = request(world, 0, "web/a", pip)
    pooled = request(world, 1, "web/b", pools=(pool,))
    agent_requests(world, taken, pooled)
    first = await world.reconcile()
    assert first.outcome.failed and first.outcome.requeue_after is not None
    assert pod_events(world) == [("web/a", "PodNetworkRefused")]
    assert "already allocated" in world.pools.events[-1].message
    await world.reconcile()  # the retry, without the refused request
    answers = {a.pod: a for a in world.pool().status.pod_networking}
    assert answers["web/a"].state == AttachmentState.REFUSED
    assert answers["web/a"].reason == "PublicIPAddressInUse"
    assert answers["web/b"].state == AttachmentState.ATTACHED
    assert on_nic(world, pooled.ip_configuration) == ("", (pool,))
    assert on_nic(world, taken.ip_configuration) == ("", ())
    writes = len(world.azure.writes)
    await world.drift_check()
    assert len(world.azure.writes) == writes, "a refused request was tried again"


async def test_a_namespace_that_may_not_gets_an_event_and_no_azure_call() -> None:
    world = world_with_policy()
    await world.reconcile()
    world.azure.add_public_ip("web", TAGGED)
    agent_requests(world, request(world, 0, "tenant/x", "web"))
    writes = len(world.azure.writes)
    await world.reconcile()
    assert len(world.azure.writes) == writes
    (answer,) = world.pool().status.pod_networking
    assert answer.state == AttachmentState.REFUSED and "may not use public IPs" in answer.message
    assert pod_events(world) == [("tenant/x", "PodNetworkRefused")]


async def test_a_typo_in_an_annotation_is_an_event_and_the_rest_of_the_node_goes_on() -> None:
    """Issue 22 row 1: ``pips/web`` (not a resource ID, not a bare name) or a bare backend pool
    name made the decision raise: the node's whole pool stalled and the pod got no Event."""
    world = world_with_policy()
    await world.reconcile()
    pip = world.azure.add_public_ip("web", TAGGED)
    typo = request(world, 0, "web/typo", "pips/web")
    bare = request(world, 1, "web/bare", pools=("web-pool",))
    fine = request(world, 2, "web/fine", "web")
    agent_requests(world, typo, bare, fine)
    result = await world.reconcile()
    assert not result.outcome.failed, result.outcome.message
    answers = {a.pod: a for a in world.pool().status.pod_networking}
    assert answers["web/typo"].state == AttachmentState.REFUSED
    assert "'pips/web' is not an Azure resource ID" in answers["web/typo"].message
    assert answers["web/bare"].state == AttachmentState.REFUSED
    assert "'web-pool' is not an Azure resource ID" in answers["web/bare"].message
    assert answers["web/fine"].state == AttachmentState.ATTACHED
    assert on_nic(world, fine.ip_configuration)[0].lower() == pip.lower()
    assert sorted(pod_events(world)) == [("web/bare", "PodNetworkRefused"),
                                         ("web/fine", "PodNetworkAttached"),
                                         ("web/typo", "PodNetworkRefused")]
    # the pool itself keeps growing and shrinking: a used address makes the next write
    world.pools.act_as_agent("n1", used=4)
    grown = await world.reconcile()
    assert not grown.outcome.failed and len(world.inventory()) > 4


async def test_a_write_from_an_old_read_keeps_what_another_tool_changed_meanwhile() -> None:
    """Issue 22 row 10: the features were computed whole from the NIC as read; written on the
    NIC as it is now (after a 412), they undid another tool's change to the same
    ipConfiguration."""
    world = world_with_policy()
    await world.reconcile()
    ours_pool = world.azure.add_backend_pool("lb", "web", TAGGED)
    theirs = world.azure.add_backend_pool("infra", "nodes", TAGGED)
    asked = request(world, 1, "web/a", pools=(ours_pool,))
    agent_requests(world, asked)
    seen = await world.azure.get_nic(world.nic_id)  # the sweep's listing, say
    world.azure.change_behind_our_back(world.nic_id, asked.ip_configuration,
                                       backend_pools=[theirs])
    result = await world.reconciler.reconcile(world.pool(), world.provider_id, seen)
    assert not result.outcome.failed, result.outcome.message
    assert world.azure.conflicts == 1  # the write started from the old read
    assert sorted(on_nic(world, asked.ip_configuration)[1]) == sorted([ours_pool, theirs])
    (answer,) = world.pool().status.pod_networking
    assert answer.state == AttachmentState.ATTACHED and answer.backend_pools == (ours_pool,)


async def test_a_resource_the_operator_may_not_join_is_that_pods_refusal_only() -> None:
    """Issue 22 row 3: a 403 LinkedAuthorizationFailed was the node's AuthFailed, retried for
    ever with every NIC write of the node."""
    world = world_with_policy()
    await world.reconcile()
    guarded = world.azure.add_public_ip("guarded.prod", TAGGED)
    world.azure.deny_join(guarded)
    pool = world.azure.add_backend_pool("lb", "web", TAGGED)
    denied = request(world, 0, "web/a", guarded)
    fine = request(world, 1, "web/b", pools=(pool,))
    agent_requests(world, denied, fine)
    first = await world.reconcile()
    assert first.outcome.failed and first.outcome.requeue_after is not None
    assert first.outcome.requeue_after < 5
    assert pod_events(world) == [("web/a", "PodNetworkRefused")]
    assert "join/action" in world.pools.events[-1].message
    await world.reconcile()
    answers = {a.pod: a for a in world.pool().status.pod_networking}
    assert (answers["web/a"].state, answers["web/a"].reason) == (
        AttachmentState.REFUSED, "LinkedAuthorizationFailed")
    assert answers["web/b"].state == AttachmentState.ATTACHED
    ready = world.pool().status.condition(ConditionType.READY)
    assert ready is not None and ready.status
    world.pools.act_as_agent("n1", used=4)
    grown = await world.reconcile()
    assert not grown.outcome.failed and len(world.inventory()) > 4


async def test_an_operator_killed_after_attaching_leaves_nothing_on_the_released_address() -> None:
    """Issue 22 row 2: killed between the NIC write and the status write, the operator had no
    record of what it attached; the pod went meanwhile, and the public IP and pool stayed on
    the address, for its next pod (which then received the old pod's traffic)."""
    world = world_with_policy()
    await world.reconcile()
    pip = world.azure.add_public_ip("web", TAGGED)
    pool = world.azure.add_backend_pool("lb", "web", TAGGED)
    asked = request(world, 0, "web/a", pip, (pool,))
    agent_requests(world, asked)
    await killed_after_the_nic_write(world)
    assert on_nic(world, asked.ip_configuration) == (pip, (pool,))
    assert world.pool().status.pod_networking == ()
    # the pod is deleted while no operator runs; a new operator process starts
    agent_requests(world, replace(asked, withdrawn=True))
    restart(world)
    await world.reconcile()
    assert on_nic(world, asked.ip_configuration) == ("", ())
    (answer,) = world.pool().status.pod_networking
    assert answer.state == AttachmentState.DETACHED
    assert world.azure.holder_of(pip) is None


async def test_a_pod_recreated_under_its_name_on_the_same_address_is_not_the_old_one() -> None:
    """The suspicion of issue 22: answers matched by pod name. A StatefulSet's web-0 is
    recreated (a new UID) and gets the address again; the operator attaches its public IP and
    is killed before recording it; web-0 goes again. The Detached answer of the first web-0
    must neither count as the answer to the second (the NIC was never read again, and the
    agent, matching by name, would hand the address out with the public IP on it)."""
    world = world_with_policy()
    await world.reconcile()
    pip = world.azure.add_public_ip("web", TAGGED)
    first = replace(request(world, 0, "web/web-0", pip), pod_uid="uid-1")
    agent_requests(world, first)
    await world.reconcile()
    agent_requests(world, replace(first, withdrawn=True))
    await world.reconcile()
    (answer,) = world.pool().status.pod_networking
    assert (answer.state, answer.pod_uid) == (AttachmentState.DETACHED, "uid-1")
    # the agent forgot it; web-0 comes back with a new UID on the same address
    second = replace(first, pod_uid="uid-2")
    agent_requests(world, second)
    await killed_after_the_nic_write(world)
    assert on_nic(world, second.ip_configuration)[0] == pip
    agent_requests(world, replace(second, withdrawn=True))
    restart(world)
    await world.reconcile()
    assert on_nic(world, second.ip_configuration) == ("", ())
    (answer,) = world.pool().status.pod_networking
    assert (answer.state, answer.pod_uid) == (AttachmentState.DETACHED, "uid-2")



async def test_a_resource_not_tagged_for_the_namespace_is_an_event_and_the_node_goes_on() -> None:
    """Issue 22 row 12: any allowed namespace could take any public IP of the allowed
    resource groups, another team's included. The resource now says who may."""
    world = world_with_policy()
    await world.reconcile()
    theirs = world.azure.add_public_ip("team-b", {NAMESPACES_TAG: "team-b"})
    ours = world.azure.add_public_ip("web", TAGGED)
    grabbing = request(world, 0, "web/grab", theirs)
    fine = request(world, 1, "web/fine", ours)
    agent_requests(world, grabbing, fine)
    result = await world.reconcile()
    assert not result.outcome.failed, result.outcome.message
    answers = {a.pod: a for a in world.pool().status.pod_networking}
    assert (answers["web/grab"].state, answers["web/grab"].reason) == (
        AttachmentState.REFUSED, "NotTagged")
    assert world.azure.holder_of(theirs) is None and world.azure.holder_of(ours) is not None
    message = next(e.message for e in world.pools.events if e.pool == "pod:web/grab")
    assert NAMESPACES_TAG in message and "team-b" in message
    assert world.azure.calls["get_tags"] == 2  # one read per resource attached
    # answered: later reconciles read no tag again
    world.pools.act_as_agent("n1", used=4)
    await world.reconcile()
    assert world.azure.calls["get_tags"] == 2


async def test_a_whole_resource_group_granted_to_a_namespace_reads_no_tag() -> None:
    world = world_with_policy()
    world.reconciler.pod_networking = PodNetworkingSettings(
        public_ip_namespaces=("web",), namespace_resource_groups={"web": ("pips",)})
    await world.reconcile()
    untagged = world.azure.add_public_ip("web")
    agent_requests(world, request(world, 0, "web/a", "web"))
    await world.reconcile()
    (answer,) = world.pool().status.pod_networking
    assert answer.state == AttachmentState.ATTACHED and answer.public_ip == untagged
    assert world.azure.calls["get_tags"] == 0
