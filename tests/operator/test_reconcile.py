"""The reconciler without a cluster: the real PoolReconciler on a stateful fake of Azure and a
recording PoolWriter, in the unit tier."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import pytest
from tests.cloud.fake_network import FakeAzure
from tests.operator.recording import Killed, RecordingPools

from azure_cni.api.nodeippool import ConditionType, IPState, NodeIPPool, PoolMode, PoolSpec
from azure_cni.cloud.port import (
    AuthFailed,
    CloudError,
    Conflict,
    NicLimitExceeded,
    NotFound,
    SubnetFull,
    Throttled,
)
from azure_cni.operator.kube import FINALIZER
from azure_cni.operator.reconcile import PoolReconciler, Result

SPEC = PoolSpec("n1", min_ips=0, max_ips=64, batch_size=4, min_free_ips=4, max_free_ips=8,
                release_delay_seconds=0)


@dataclass
class World:
    azure: FakeAzure
    pools: RecordingPools
    subnet_id: str
    provider_id: str
    nic_id: str
    reconciler: PoolReconciler

    def restart(self) -> PoolReconciler:
        """A new operator process: nothing carried over but what Azure and the API hold."""
        names = itertools.count(1000)
        self.reconciler = PoolReconciler(self.azure, self.pools,
                                         new_name=lambda: f"azcni-{next(names):04d}")
        return self.reconciler

    async def reconcile(self, name: str = "n1") -> Result:
        """A reconcile on a change of the pool (the decision reads the NIC only if needed)."""
        return await self.reconciler.reconcile(self.pools.get(name), self.provider_id)

    async def drift_check(self, name: str = "n1") -> Result:
        """A reconcile that looks at the NIC (the operator's periodic sweep does)."""
        return await self.reconciler.reconcile(self.pools.get(name), self.provider_id,
                                               look=True)

    def pool(self, name: str = "n1") -> NodeIPPool:
        return self.pools.get(name)

    def ready(self, name: str = "n1") -> tuple[bool, str]:
        c = self.pool(name).status.condition(ConditionType.READY)
        assert c is not None
        return c.status, c.reason

    def inventory(self, name: str = "n1") -> dict[str, str]:
        return {ip.ip_configuration: ip.address for ip in self.pool(name).status.ips}


@pytest.fixture
def world() -> World:
    azure = FakeAzure()
    subnet_id = azure.add_subnet("198.18.0.0/24")
    provider_id, nic_id = azure.add_vm("n1", subnet_id)
    pools = RecordingPools()
    pools.create("n1", SPEC)
    w = World(azure, pools, subnet_id, provider_id, nic_id, reconciler=None)  # type: ignore[arg-type]
    w.restart()
    return w


async def filled(world: World) -> World:
    result = await world.reconcile()
    assert not result.outcome.failed, result.outcome.message
    return world


async def test_a_new_pool_is_filled_with_one_nic_write(world) -> None:
    await filled(world)
    assert world.inventory() == world.azure.ours(world.nic_id)
    assert len(world.inventory()) == 4
    assert len(world.azure.writes) == 1
    assert world.azure.calls["get_vm_nic"] == 1
    assert world.ready() == (True, "Scaled")
    assert world.pools.reasons("n1") == ["Allocated"]
    nic = world.pool().status.nic
    assert nic is not None and nic.id == world.nic_id and nic.subnet_cidr == "198.18.0.0/24"


async def test_usage_inside_the_warm_band_costs_no_azure_call(world) -> None:
    await filled(world)
    await world.reconcile()  # settles Ready from Scaled to WarmPoolReady
    calls = sum(world.azure.calls.values())
    world.pools.act_as_agent("n1", used=0)
    result = await world.reconcile()
    assert sum(world.azure.calls.values()) == calls
    assert result.stored is None and result.outcome.events == ()


async def test_growth_reads_the_nic_once_by_its_id_and_writes_once(world) -> None:
    await filled(world)
    world.pools.act_as_agent("n1", used=3)
    before = world.azure.calls.copy()
    await world.reconcile()
    assert world.azure.calls["get_nic"] - before["get_nic"] == 1
    assert world.azure.calls["get_vm_nic"] == before["get_vm_nic"]
    assert len(world.azure.writes) == 2
    assert len(world.inventory()) == 8


async def test_the_release_handshake_survives_operator_restarts(world) -> None:
    await filled(world)
    world.pools.act_as_agent("n1", used=5)
    await world.reconcile()  # 12 now: 8 free is the ceiling of the band
    world.pools.act_as_agent("n1", used=0)
    world.restart()
    await world.reconcile()
    marked = [ip.ip_configuration for ip in world.pool().status.ips
              if ip.state is IPState.RELEASING]
    assert len(marked) == 4
    writes = len(world.azure.writes)
    # a new operator with no memory: nothing leaves the NIC without an acknowledgement
    world.restart()
    await world.reconcile()
    assert len(world.azure.writes) == writes
    assert set(marked) <= set(world.azure.ours(world.nic_id))
    # the agent acknowledges three (the fourth is still in use): exactly those go
    world.pools.act_as_agent("n1", used=1, acks=set(marked[:3]))
    world.restart()
    await world.reconcile()
    on_nic = world.azure.ours(world.nic_id)
    assert not set(marked[:3]) & set(on_nic)
    assert marked[3] in on_nic
    assert world.inventory() == on_nic
    assert world.azure.writes[-1][2] == tuple(sorted(marked[:3]))


async def test_a_kill_between_the_nic_write_and_the_status_write_is_adopted(world) -> None:
    world.pools.kill_next_status_write = True
    with pytest.raises(Killed):
        await world.reconcile()
    assert len(world.azure.ours(world.nic_id)) == 4 and world.pool().status.ips == ()
    world.restart()
    await world.reconcile()
    assert world.inventory() == world.azure.ours(world.nic_id)
    assert len(world.azure.writes) == 1, "the restart wrote the NIC again"
    assert "Adopted" in world.pools.reasons("n1")


# -- drift ---------------------------------------------------------------------------------------


async def test_drift_is_repaired_with_the_same_addresses(world) -> None:
    await filled(world)
    before = world.inventory()
    victims = sorted(before)[:2]
    world.azure.remove_behind_our_back(world.nic_id, *victims)
    await world.drift_check()
    assert world.azure.ours(world.nic_id) == before
    assert "DriftRepaired" in world.pools.reasons("n1")


async def test_an_address_taken_meanwhile_is_lost_alone(world) -> None:
    """Defect 8: one of two vanished addresses is someone else's now; the other comes back."""
    await filled(world)
    before = world.inventory()
    taken, untaken = sorted(before, key=lambda n: before[n])[:2]
    world.azure.remove_behind_our_back(world.nic_id, taken, untaken)
    world.azure.take_address(world.subnet_id, before[taken])
    result = await world.drift_check()
    assert result.outcome.failed and result.outcome.requeue_after == 1.0
    assert taken not in world.inventory() and untaken in world.inventory()
    lost = [e for e in world.pools.events if e.reason == "AddressLost"]
    assert len(lost) == 1 and before[taken] in lost[0].message
    await world.drift_check()
    assert world.azure.ours(world.nic_id)[untaken] == before[untaken]
    assert taken not in world.azure.ours(world.nic_id)


# -- provisioning states ------------------------------------------------------------------------


@pytest.mark.parametrize("whole_nic", [False, True])
async def test_a_failed_provisioning_state_is_written_again_not_waited_on(
        world, whole_nic) -> None:
    """Defect 6: today's operator waited on Failed forever; ARM clears it only by a PUT."""
    await filled(world)
    name = sorted(world.inventory())[0]
    if whole_nic:
        world.azure.fail(world.nic_id)
    else:
        world.azure.fail(world.nic_id, name)
    await world.drift_check()
    assert len(world.azure.writes) == 2
    assert {c.state for c in world.azure.nic(world.nic_id).configs} == {"Succeeded"}
    assert world.azure.nic(world.nic_id).state == "Succeeded"
    assert "ProvisioningFailed" in world.pools.reasons("n1")
    assert world.ready()[0]


async def test_a_refused_rewrite_of_a_failed_nic_is_a_condition(world) -> None:
    await filled(world)
    world.azure.fail(world.nic_id, sorted(world.inventory())[0])
    world.azure.inject("update_ip_configurations",
                       CloudError("Internal error", code="InternalServerError", status=500))
    result = await world.drift_check()
    assert world.ready() == (False, "ProvisioningFailed")
    assert result.outcome.requeue_after == 30.0


async def test_a_write_in_flight_is_waited_for_briefly(world) -> None:
    await filled(world)
    world.azure.set_state(world.nic_id, sorted(world.inventory())[0], "Updating")
    world.pools.act_as_agent("n1", used=3)
    result = await world.reconcile()
    assert result.outcome.requeue_after == 5.0 and len(world.azure.writes) == 1


# -- the subnet ------------------------------------------------------------------------------------


async def test_acknowledged_removals_are_not_blocked_by_a_full_subnet(world) -> None:
    """Defect 7: a subnet whose usage Azure does not report, full to the last address."""
    await filled(world)
    world.pools.act_as_agent("n1", used=0)
    world.pools.edit_spec("n1", max_ips=2)  # two must go
    await world.reconcile()
    marked = {ip.ip_configuration for ip in world.pool().status.ips
              if ip.state is IPState.RELEASING}
    assert len(marked) == 2
    subnet = world.azure.subnets[world.subnet_id.lower()]
    for address in subnet.free():
        world.azure.take_address(world.subnet_id, address)
    subnet.hide_usage = True
    world.pools.edit_spec("n1", max_ips=64)
    world.pools.act_as_agent("n1", used=2, acks=marked)  # and the pool wants to grow
    for _ in range(3):
        world.reconciler.subnets.forget(world.subnet_id)
        await world.reconcile()
    assert not marked & set(world.azure.ours(world.nic_id)), "the full subnet kept them"
    exhausted = world.pool().status.condition(ConditionType.SUBNET_EXHAUSTED)
    assert exhausted is not None and exhausted.status


async def test_a_small_subnet_fills_up_and_says_so(world) -> None:
    tiny = world.azure.add_subnet("198.18.1.0/29", name="tiny")
    provider_id, _ = world.azure.add_vm("n2", tiny)
    world.pools.create("n2", replace(SPEC, node_name="n2", min_ips=16, max_ips=32))
    result = await world.reconciler.reconcile(world.pools.get("n2"), provider_id)
    assert len(world.inventory("n2")) == 2  # a /29 has 3 usable addresses, one is primary
    exhausted = world.pool("n2").status.condition(ConditionType.SUBNET_EXHAUSTED)
    assert exhausted is not None and exhausted.status
    assert world.ready("n2") == (False, "Limited")
    assert result.outcome.requeue_after == 60.0
    assert "SubnetExhausted" in world.pools.reasons("n2")


# -- every error type, reading and writing ---------------------------------------------------------


ERRORS = [
    (Throttled("throttled", retry_after=7.0, code="SubscriptionRequestsThrottled"), None, 7.0),
    (Conflict("etag", code="PreconditionFailed", status=412), None, 5.0),
    (SubnetFull("full", code="SubnetIsFull"), "SubnetFull", 60.0),
    (NicLimitExceeded("257", code="x"), "NicLimit", 300.0),
    (NotFound("gone", code="ResourceNotFound", status=404), "NotFound", 60.0),
    (AuthFailed("forbidden", code="AuthorizationFailed", status=403), "AzureAuthFailed", 120.0),
    (CloudError("boom", code="InternalServerError", status=500), "AzureError", 30.0),
]


@pytest.mark.parametrize(("error", "reason", "delay"), ERRORS)
async def test_every_write_error_becomes_its_condition_and_delay(world, error, reason,
                                                                 delay) -> None:
    world.azure.inject("update_ip_configurations", error)
    result = await world.reconcile()
    assert result.outcome.failed and result.outcome.requeue_after == delay
    if reason is None:
        assert world.pool().status.conditions == ()  # transient: nothing recorded
    else:
        assert world.ready() == (False, reason)
    # and the next reconcile, with Azure well again, converges
    await world.reconcile()
    assert len(world.inventory()) == 4 and world.ready()[0]


@pytest.mark.parametrize(("error", "reason", "delay"), ERRORS)
async def test_every_read_error_becomes_its_condition_and_delay(world, error, reason,
                                                                delay) -> None:
    world.azure.inject("get_vm_nic", error)
    result = await world.reconcile()
    assert result.outcome.failed and result.outcome.requeue_after == delay
    assert world.azure.writes == []
    if reason is not None:
        assert world.ready() == (False, reason)


async def test_throttling_waits_for_retry_after_and_says_so(world) -> None:
    world.azure.throttle("write", 1, retry_after=12.0)
    result = await world.reconcile()
    assert result.outcome.requeue_after == 12.0
    assert world.pools.reasons("n1") == ["AzureThrottled"]
    await world.reconcile()
    assert len(world.inventory()) == 4


async def test_a_node_without_provider_id_waits_without_an_event(world) -> None:
    result = await world.reconciler.reconcile(world.pool(), None)
    assert world.ready() == (False, "NoProviderID")
    assert result.outcome.requeue_after is None and world.pools.events == []


async def test_a_replaced_nic_is_found_again_through_the_vm(world) -> None:
    await filled(world)
    world.azure.delete_vm(world.provider_id)
    world.provider_id, world.nic_id = world.azure.add_vm("n1", world.subnet_id)
    await world.drift_check()
    assert world.pool().status.nic is not None
    assert world.pool().status.nic.id == world.nic_id
    assert len(world.azure.ours(world.nic_id)) == 4


@pytest.mark.parametrize("found_by", ["its own read", "the sweep's listing"])
async def test_a_nic_moved_to_another_vm_is_left_to_that_vm(world, found_by) -> None:
    """Issue 11, to settle: the NIC a pool knows now belongs to another VM. The pool follows
    its own VM to the NIC it has now and never writes the moved one on this node's behalf:
    the addresses there are the other VM's business (its pool adopts them). They leave this
    pool in one reconcile (restoring them here failed one write per address)."""
    await filled(world)
    moved = world.nic_id
    on_moved = world.azure.ours(moved)
    other, _ = world.azure.add_vm("n2", world.subnet_id)
    _, fresh = world.azure.add_vm("spare", world.subnet_id)
    world.azure.attach_nic(moved, other)
    world.azure.attach_nic(fresh, world.provider_id)
    writes = len(world.azure.writes)
    if found_by == "its own read":
        result = await world.drift_check()
    else:
        result = await world.reconciler.reconcile(world.pool(), world.provider_id,
                                                  world.azure.nic(fresh).snapshot())
    assert not result.outcome.failed, result.outcome.message
    assert world.pool().status.nic is not None and world.pool().status.nic.id == fresh
    assert [w for w in world.azure.writes[writes:] if w[0].lower() == moved.lower()] == []
    assert world.azure.ours(moved) == on_moved
    assert world.inventory() == world.azure.ours(fresh) and len(world.inventory()) == 4


# -- deletion (defect 5) ---------------------------------------------------------------------------


async def test_deleting_a_pool_takes_no_address_a_pod_uses(world) -> None:
    await filled(world)
    world.pools.act_as_agent("n1", used=2)
    world.pools.delete("n1")
    result = await world.reconcile()
    assert not result.outcome.release_finalizer
    assert len(world.azure.ours(world.nic_id)) == 4, "removed addresses pods may be using"
    assert world.ready() == (False, "Deleting")
    assert {ip.state for ip in world.pool().status.ips} == {IPState.RELEASING}
    assert "DeletionWaiting" in world.pools.reasons("n1")
    # the agent acknowledges the two its pods do not use: those two go
    names = sorted(world.inventory())
    world.pools.act_as_agent("n1", used=2, acks=set(names[:2]))
    await world.reconcile()
    assert sorted(world.azure.ours(world.nic_id)) == names[2:]
    assert FINALIZER in world.pool().finalizers
    # the pods go, the agent acknowledges the rest: the pool goes
    world.pools.act_as_agent("n1", used=0, acks=set(names))
    result = await world.reconcile()
    assert result.outcome.release_finalizer
    assert world.azure.ours(world.nic_id) == {}
    assert "n1" not in world.pools.pools


async def test_deleting_a_pool_whose_vm_is_gone_lets_it_go(world) -> None:
    await filled(world)
    world.azure.delete_vm(world.provider_id)
    world.pools.delete("n1")
    result = await world.reconcile()
    assert result.outcome.release_finalizer and "n1" not in world.pools.pools


async def test_an_admin_made_pool_gets_the_finalizer_before_its_first_write(world) -> None:
    world.pools.pools.clear()
    world.pools.create("n1", SPEC, finalizers=())
    await world.reconcile()
    assert world.pools.finalizer_calls == [("add", "n1")]
    assert FINALIZER in world.pool().finalizers


# -- blocks (issue 14) -------------------------------------------------------------------------


async def test_blocks_grow_and_shrink_by_whole_blocks_after_their_pods_go(world) -> None:
    """A Blocks pool of a /24: 40 pods need three /28 blocks; when most go, the excess is
    marked as a whole block, which stays on the NIC while a pod uses one of its addresses
    and leaves, all 16 addresses at once, when the agent acks it."""
    world.pools.create("n1", replace(SPEC, mode=PoolMode.BLOCKS, batch_size=8, min_free_ips=8,
                                     max_free_ips=16))
    await filled(world)
    assert [ip.prefix_length for ip in world.pool().status.ips] == [28]
    assert world.azure.ours(world.nic_id) == {world.pool().status.ips[0].ip_configuration:
                                              "198.18.0.16"}
    world.pools.act_as_agent("n1", used=40)
    await world.reconcile()
    status = world.pool().status
    assert (status.blocks, status.allocated) == (3, 48), "40 used + 8 warm = 48: 2 more"
    assert len(world.azure.writes) == 2

    world.pools.act_as_agent("n1", used=4)  # 36 pods went: 44 free, 16 allowed
    await world.reconcile()
    marked = [ip.ip_configuration for ip in world.pool().status.ips
              if ip.state is IPState.RELEASING]
    assert marked == [world.pool().status.ips[-1].ip_configuration], "(44-16)//16: the top"
    world.pools.act_as_agent("n1", used=4)  # its pods still sit in the marked block: no ack
    await world.reconcile()
    assert marked[0] in world.azure.ours(world.nic_id), "not acked: stays on the NIC"
    subnet = world.azure.subnets[world.subnet_id.lower()]
    assert sum(1 for owner in subnet.used.values() if marked[0] in owner) == 16
    world.pools.act_as_agent("n1", used=4, acks={marked[0]})
    await world.reconcile()
    assert marked[0] not in world.azure.ours(world.nic_id)
    assert sum(1 for owner in subnet.used.values() if marked[0] in owner) == 0
    assert (world.pool().status.blocks, world.pool().status.allocated) == (2, 32)
