"""The reconciler on a node that is a Uniform scale-set instance: the same decisions, carried
out through the port's instance writes (the stateful fake of the port, in the unit tier)."""

from __future__ import annotations

import pytest
from tests.cloud.fake_network import FakeAzure
from tests.operator.recording import RecordingPools
from tests.operator.test_reconcile import SPEC, World, filled

from azure_cni.api.nodeippool import ConditionType, IPState
from azure_cni.cloud.port import NewIPConfiguration, Throttled


@pytest.fixture
def world() -> World:
    azure = FakeAzure()
    subnet_id = azure.add_subnet("198.18.0.0/24")
    provider_id, nic_id = azure.add_instance("pool", "0", subnet_id)
    pools = RecordingPools()
    pools.create("n1", SPEC)
    w = World(azure, pools, subnet_id, provider_id, nic_id, reconciler=None)  # type: ignore[arg-type]
    w.restart()
    return w


async def test_a_uniform_node_is_filled_with_one_instance_write(world: World) -> None:
    await filled(world)
    assert world.inventory() == world.azure.ours(world.nic_id)
    assert len(world.inventory()) == 4
    assert [w[0] for w in world.azure.writes] == [world.nic_id]
    c = world.pool().status.condition(ConditionType.PROVISIONED)
    assert c is not None and c.status
    assert world.ready() == (True, "Scaled")
    nic = world.pool().status.nic
    assert nic is not None and nic.id == world.nic_id


async def test_scaling_up_and_down_is_one_instance_write_per_reconcile(world: World) -> None:
    await filled(world)
    for used, allocated in ((3, 8), (5, 12)):
        world.pools.act_as_agent("n1", used=used)
        await world.reconcile()
        assert len(world.inventory()) == allocated
    assert len(world.azure.writes) == 3
    world.pools.act_as_agent("n1", used=0)
    await world.reconcile()  # marks the excess Releasing: no write
    assert len(world.azure.writes) == 3
    marked = {ip.ip_configuration for ip in world.pool().status.ips
              if ip.state is IPState.RELEASING}
    assert len(marked) == 4
    world.pools.act_as_agent("n1", used=0, acks=marked)
    await world.reconcile()
    assert len(world.azure.writes) == 4
    assert set(world.azure.writes[-1][2]) == marked
    assert world.inventory() == world.azure.ours(world.nic_id)
    assert not marked & set(world.inventory())


async def test_deleting_a_uniform_nodes_pool_removes_only_our_ipconfigs(world: World) -> None:
    await world.azure.update_ip_configurations(world.nic_id, [NewIPConfiguration("admins")])
    await filled(world)
    world.pools.delete("n1")
    await world.reconcile()
    world.pools.act_as_agent("n1", used=0, acks=set(world.inventory()))
    result = await world.reconcile()
    assert result.outcome.release_finalizer
    assert [c.name for c in world.azure.nic(world.nic_id).configs] == ["ipconfig1", "admins"]


async def test_drift_on_an_instance_is_repaired_without_duplicates(world: World) -> None:
    await filled(world)
    victim = sorted(world.inventory())[0]
    world.azure.remove_behind_our_back(world.nic_id, victim)
    await world.drift_check()
    on_nic = world.azure.ours(world.nic_id)
    assert victim in on_nic and len(on_nic) == 4
    assert len(set(on_nic.values())) == 4
    assert world.inventory() == on_nic
    assert "DriftRepaired" in world.pools.reasons("n1")


async def test_a_throttled_instance_write_is_retried_after_its_retry_after(
        world: World) -> None:
    world.azure.inject("update_ip_configurations",
                       Throttled("per-VM update limit", retry_after=42.0,
                                 code="OperationNotAllowed", status=429))
    result = await world.reconcile()
    assert result.outcome.failed and result.outcome.requeue_after == pytest.approx(42.0)
    assert world.azure.ours(world.nic_id) == {}
    await filled(world)
    assert len(world.inventory()) == 4

