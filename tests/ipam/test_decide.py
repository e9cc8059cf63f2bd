"""The pure decision of one reconcile: each rule a row, each defect of issue 11 (5-8) a row.

The rows for defects 5-8 fail on the logic of the operator before this decision existed
(``PoolReconciler._converge`` and ``release_all``); the report of the change shows that run.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from azure_cni.api.nodeippool import (
    Condition,
    ConditionType,
    IPState,
    NicInfo,
    NodeIPPool,
    PoolIP,
    PoolMode,
    PoolSpec,
    PoolStatus,
)
from azure_cni.cloud.port import (
    AddressInUse,
    AuthFailed,
    CloudError,
    Conflict,
    InvalidProviderID,
    IPConfiguration,
    MissingProviderID,
    NicLimitExceeded,
    NicSnapshot,
    NotFound,
    SubnetFull,
    SubnetInfo,
    Throttled,
    Unsupported,
    VnetLimitReached,
)
from azure_cni.ipam.decide import (
    ERRORS,
    Decision,
    Observation,
    Outcome,
    decide,
    error_policy,
    observation_failed,
)

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
NIC_ID = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/n1-nic"
SUBNET_ID = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/" \
            "subnets/nodes"
SPEC = PoolSpec("n1", min_ips=0, max_ips=64, batch_size=4, min_free_ips=4, max_free_ips=8,
                release_delay_seconds=0)
SUBNET = SubnetInfo(SUBNET_ID, "198.18.0.0/24", ("198.18.0.0/16",), free_addresses=200)
UNKNOWN_FREE = replace(SUBNET, free_addresses=None)


def addr(i: int) -> str:
    return str(ipaddress.ip_address(int(ipaddress.ip_address("198.18.0.10")) + i))


def ips(n: int, releasing: Sequence[int] = (), start: int = 0) -> tuple[PoolIP, ...]:
    return tuple(PoolIP(addr(i), f"azcni-{i:03d}",
                        IPState.RELEASING if i in releasing else IPState.AVAILABLE)
                 for i in range(start, start + n))


def names_of(pool_ips: Sequence[PoolIP]) -> list[str]:
    return [ip.ip_configuration for ip in pool_ips]


def nic(configs: Sequence[PoolIP] = (), *, states: dict[str, str] | None = None,
        nic_state: str = "Succeeded", extra: Sequence[tuple[str, str]] = ()) -> NicSnapshot:
    states = states or {}
    secondary = [IPConfiguration(ip.ip_configuration, ip.address, False,
                                 states.get(ip.ip_configuration, "Succeeded"), SUBNET_ID,
                                 ip.prefix_length)
                 for ip in configs]
    secondary += [IPConfiguration(name, address, False, "Succeeded", SUBNET_ID)
                  for name, address in extra]
    primary = IPConfiguration("ipconfig1", "198.18.0.4", True, "Succeeded", SUBNET_ID)
    return NicSnapshot(NIC_ID, "n1-nic", 'W/"1"', "eastus", "vm", (primary, *secondary),
                       provisioning_state=nic_state, document=b"{}")


def healthy(ready_reason: str = "WarmPoolReady") -> tuple[Condition, ...]:
    """The conditions a pool holding its warm target has after its last reconcile."""
    return (Condition(ConditionType.PROVISIONED, True, "NicFound", "", "t", 1),
            Condition(ConditionType.READY, True, ready_reason, "the pool holds its warm target",
                      "t", 1),
            Condition(ConditionType.SUBNET_EXHAUSTED, False, "SubnetHasSpace", "", "t"))


def pool(inventory: Sequence[PoolIP] = (), *, used: int = 0, acks: Sequence[str] = (),
         spec: PoolSpec = SPEC, conditions: tuple[Condition, ...] | None = None,
         provisioned: bool = True, deleting: bool = False, **status: object) -> NodeIPPool:
    info = NicInfo(NIC_ID, "198.18.0.4", SUBNET_ID, "198.18.0.0/24", ("198.18.0.0/16",)) \
        if provisioned else None
    return NodeIPPool(
        "n1", spec,
        PoolStatus(nic=info, ips=tuple(inventory), used=used, release_acks=frozenset(acks),
                   observed_generation=1,
                   conditions=healthy() if conditions is None else conditions,
                   **status),  # type: ignore[arg-type]
        generation=1, deletion_timestamp=NOW if deleting else None)


def names() -> itertools.count[int]:
    return itertools.count()


def run(obs: Observation, written: NicSnapshot | None = None,
        error: CloudError | None = None) -> tuple[Decision, Outcome]:
    """Decide, and if the decision writes, settle it on ``written`` or fail it with ``error``."""
    counter = itertools.count(100)
    decision = decide(obs, lambda: f"azcni-{next(counter):03d}")
    if decision.write is None:
        assert decision.outcome is not None or decision.read_nic
        return decision, decision.outcome or Outcome()
    if error is not None:
        return decision, decision.failed(error)
    assert written is not None
    return decision, decision.settle(written)


def ready(status: PoolStatus | None) -> tuple[bool, str]:
    assert status is not None
    c = status.condition(ConditionType.READY)
    assert c is not None
    return c.status, c.reason


def reasons(outcome: Outcome) -> list[str]:
    return [e.reason for e in outcome.events]


# -- when the NIC is needed -------------------------------------------------------------------


@pytest.mark.parametrize(("name", "the_pool", "read"), [
    ("a new pool must find its NIC", pool(provisioned=False, conditions=()), True),
    ("usage inside the warm band needs nothing", pool(ips(8), used=3), False),
    ("usage below the warm band needs a write", pool(ips(8), used=6), True),
    ("an acknowledgement needs a write", pool(ips(8, releasing=[7]), acks=["azcni-007"]), True),
    ("excess only marks: no NIC", pool(ips(16), used=0), False),
    ("a pool that last failed looks at its NIC",
     pool(ips(8), conditions=(Condition(ConditionType.READY, False, "AzureError", ""),)), True),
    ("a pool whose NIC was Failed looks again",
     pool(ips(8), conditions=healthy("ProvisioningFailed")), True),
])
def test_the_nic_is_read_only_when_the_decision_needs_it(name, the_pool, read) -> None:
    decision = decide(Observation(the_pool, NOW), lambda: "azcni-new")
    assert decision.read_nic is read, name
    assert decision.write is None


def test_a_steady_pool_writes_nothing_at_all() -> None:
    _, outcome = run(Observation(pool(ips(8), used=3), NOW))
    assert outcome.status is None and outcome.events == () and outcome.requeue_after is None


def test_excess_is_marked_without_reading_the_nic() -> None:
    _, outcome = run(Observation(pool(ips(16), used=0), NOW))
    assert outcome.status is not None
    marked = [ip.ip_configuration for ip in outcome.status.ips if ip.state is IPState.RELEASING]
    assert marked == [f"azcni-{i:03d}" for i in range(8, 16)]  # the highest addresses
    assert reasons(outcome) == ["Releasing"]


def test_excess_waits_for_the_release_delay_and_says_when_to_look_again() -> None:
    slow = replace(SPEC, release_delay_seconds=180)
    since = NOW - dt.timedelta(seconds=60)
    the_pool = pool(ips(16), spec=slow, excess_since=since)
    _, outcome = run(Observation(the_pool, NOW))
    assert outcome.requeue_after == pytest.approx(120)
    assert outcome.status is not None and outcome.status.excess_since == since
    assert not [ip for ip in outcome.status.ips if ip.state is IPState.RELEASING]
    # looking again changes nothing more until the delay is over
    later = NOW + dt.timedelta(seconds=30)
    _, again = run(Observation(replace(the_pool, status=outcome.status), later))
    assert again.status is None and again.requeue_after == pytest.approx(90)


# -- growing, adopting, drift --------------------------------------------------------------------


def test_a_new_pool_is_filled_in_one_write_and_recorded() -> None:
    obs = Observation(pool(provisioned=False, conditions=()), NOW, nic(), SUBNET)
    decision, outcome = run(obs, written=nic(ips(4, start=100)))
    assert decision.write is not None
    assert [a.name for a in decision.write.add] == [f"azcni-{i}" for i in (100, 101, 102, 103)]
    assert all(a.address is None for a in decision.write.add)
    assert outcome.status is not None and outcome.status.nic is not None
    assert outcome.status.nic.vnet_address_space == ("198.18.0.0/16",)
    assert len(outcome.status.ips) == 4 and outcome.added == 4
    assert ready(outcome.status) == (True, "Scaled")
    provisioned = outcome.status.condition(ConditionType.PROVISIONED)
    assert provisioned is not None and provisioned.status and provisioned.reason == "NicFound"
    assert reasons(outcome) == ["Allocated"]


def test_names_on_the_nic_the_pool_did_not_know_are_adopted() -> None:
    on_nic = ips(8)
    _, outcome = run(Observation(pool(on_nic[:4], used=0), NOW, nic(on_nic), SUBNET))
    assert outcome.status is not None and names_of(outcome.status.ips) == names_of(on_nic)
    assert reasons(outcome) == ["Adopted"]


def test_vanished_addresses_come_back_under_their_name_in_the_same_write() -> None:
    recorded = ips(8)
    decision, outcome = run(Observation(pool(recorded, used=2), NOW, nic(recorded[2:]), SUBNET),
                            written=nic(recorded))
    assert decision.write is not None
    assert [(a.name, a.address) for a in decision.write.add] == \
        [(ip.ip_configuration, ip.address) for ip in recorded[:2]]
    assert outcome.status is not None and names_of(outcome.status.ips) == names_of(recorded)
    assert reasons(outcome) == ["DriftRepaired"]


def test_a_nic_moved_to_another_vm_takes_its_addresses_along() -> None:
    """Issue 11, to settle: the NIC the pool recorded still exists, on another VM, and the
    node has a NIC of its own again. The addresses went with the moved NIC: restoring them
    here would be refused (AddressInUse) one address per write, so they leave the pool at once
    with one Event, and the new NIC gets its warm pool in one write."""
    recorded = ips(4)
    other_nic = replace(nic(), id=NIC_ID.replace("n1-nic", "spare-nic"), name="spare-nic")
    moved = replace(nic(recorded), vm_id="another-vm")
    decision, outcome = run(Observation(pool(recorded), NOW, other_nic, SUBNET, moved=moved),
                            written=other_nic)
    assert decision.write is not None
    assert [a.address for a in decision.write.add] == [None] * 4, "nothing restored"
    assert reasons(outcome)[0] == "NicMoved"
    assert "4 addresses" in outcome.events[0].message


def test_defect_8_address_in_use_gives_up_only_the_taken_address() -> None:
    """Two addresses vanished, one of them is now used elsewhere: only that one is lost."""
    recorded = ips(8)
    taken, untaken = recorded[0], recorded[1]
    obs = Observation(pool(recorded, used=6), NOW, nic(recorded[2:]), SUBNET)
    error = AddressInUse(f"IP configuration x is using the private IP address {taken.address} "
                         "which is already allocated to resource y.",
                         addresses=(taken.address,), code="PrivateIPAddressIsAllocated")
    decision, outcome = run(obs, error=error)
    assert decision.write is not None and len(decision.write.add) >= 2
    assert outcome.status is not None
    kept = names_of(outcome.status.ips)
    assert taken.ip_configuration not in kept
    assert untaken.ip_configuration in kept, "an address nobody took was given up"
    assert reasons(outcome) == ["AddressLost"]
    assert taken.address in outcome.events[0].message
    assert outcome.requeue_after == 1.0
    # the next reconcile puts the untaken one back
    again = decide(Observation(replace(obs.pool, status=outcome.status), NOW, nic(recorded[2:]),
                               SUBNET), lambda: "azcni-new")
    assert again.write is not None
    assert (untaken.ip_configuration, untaken.address) in \
        [(a.name, a.address) for a in again.write.add]


def test_an_address_in_use_azure_does_not_name_gives_up_the_restores() -> None:
    recorded = ips(8)
    obs = Observation(pool(recorded, used=2), NOW, nic(recorded[2:]), SUBNET)
    _, outcome = run(obs, error=AddressInUse("in use", code="PrivateIPAddressInUse"))
    assert outcome.status is not None
    assert names_of(outcome.status.ips) == names_of(recorded[2:])
    assert reasons(outcome) == ["AddressLost", "AddressLost"]


# -- provisioning states (defect 6) -----------------------------------------------------------


@pytest.mark.parametrize(("states", "nic_state"), [
    ({"azcni-003": "Failed"}, "Succeeded"),
    ({}, "Failed"),
])
def test_defect_6_a_failed_provisioning_state_gets_a_new_write(states, nic_state) -> None:
    """ARM clears Failed only by a new PUT: the decision writes the NIC, never waits."""
    recorded = ips(8)
    obs = Observation(pool(recorded, used=2), NOW, nic(recorded, states=states,
                                                       nic_state=nic_state), SUBNET)
    decision, outcome = run(obs, written=nic(recorded))
    assert decision.write is not None and decision.write.reapply
    assert decision.write.add == () and decision.write.remove == ()
    assert "ProvisioningFailed" in reasons(outcome)
    assert ready(outcome.status or obs.pool.status)[0]


def test_defect_6_still_failed_after_the_write_is_a_condition_and_a_retry() -> None:
    recorded = ips(8)
    failed = nic(recorded, states={"azcni-003": "Failed"})
    _, outcome = run(Observation(pool(recorded, used=2), NOW, failed, SUBNET), written=failed)
    assert ready(outcome.status) == (False, "ProvisioningFailed")
    assert outcome.requeue_after == 30.0


def test_defect_6_a_refused_rewrite_is_a_condition_and_a_retry() -> None:
    recorded = ips(8)
    failed = nic(recorded, states={"azcni-003": "Failed"})
    _, outcome = run(Observation(pool(recorded, used=2), NOW, failed, SUBNET),
                     error=CloudError("internal error", code="InternalServerError"))
    assert ready(outcome.status) == (False, "ProvisioningFailed")
    assert outcome.failed and outcome.requeue_after == 30.0
    assert reasons(outcome) == ["ProvisioningFailed"]


def test_a_write_still_in_flight_is_looked_at_again_shortly() -> None:
    recorded = ips(8)
    _, outcome = run(Observation(pool(recorded, used=6), NOW,
                                 nic(recorded, states={"azcni-001": "Updating"}), SUBNET))
    assert outcome.requeue_after == 5.0 and outcome.status is None


# -- a full subnet (defect 7) ---------------------------------------------------------------------


def full_subnet_pool(exhausted: bool) -> NodeIPPool:
    conditions = (*healthy()[:2],
                  Condition(ConditionType.SUBNET_EXHAUSTED, exhausted, "SubnetFull", "", "t"))
    # 8 addresses, 2 of them Releasing and acknowledged; 6 in use: the plan wants to grow
    return pool(ips(8, releasing=[6, 7]), used=6, acks=["azcni-006", "azcni-007"],
                conditions=conditions)


def test_defect_7_acknowledged_removals_go_alone_when_the_subnet_is_full() -> None:
    """Azure does not say how full the subnet is, but the last write said SubnetIsFull."""
    the_pool = full_subnet_pool(exhausted=True)
    decision, outcome = run(Observation(the_pool, NOW, nic(the_pool.status.ips), UNKNOWN_FREE),
                            written=nic(ips(6)))
    assert decision.write is not None
    assert decision.write.add == (), "additions rode along and the subnet refuses them"
    assert decision.write.remove == ("azcni-006", "azcni-007")
    assert outcome.requeue_after == 0.5  # the additions follow
    assert reasons(outcome) == ["Released"] and "full" in outcome.events[0].message


def test_defect_7_a_subnet_known_to_be_full_also_splits_drift_repair_from_removals() -> None:
    the_pool = full_subnet_pool(exhausted=False)
    on_nic = the_pool.status.ips[1:]  # one address vanished: it must be restored
    decision = decide(Observation(the_pool, NOW, nic(on_nic),
                                  replace(SUBNET, free_addresses=0)), lambda: "azcni-new")
    assert decision.write is not None
    assert decision.write.add == () and decision.write.remove == ("azcni-006", "azcni-007")


def test_defect_7_the_refused_write_marks_the_subnet_exhausted() -> None:
    the_pool = full_subnet_pool(exhausted=False)
    decision, outcome = run(Observation(the_pool, NOW, nic(the_pool.status.ips), UNKNOWN_FREE),
                            error=SubnetFull("Subnet is full", code="SubnetIsFull"))
    assert decision.write is not None and decision.write.add and decision.write.remove
    exhausted = outcome.status.condition(ConditionType.SUBNET_EXHAUSTED)  # type: ignore[union-attr]
    assert exhausted is not None and exhausted.status
    assert ready(outcome.status) == (False, "SubnetFull")
    assert reasons(outcome) == ["SubnetExhausted"] and outcome.requeue_after == 60.0
    # and so the next decision removes alone
    after = decide(Observation(replace(the_pool, status=outcome.status), NOW,
                               nic(the_pool.status.ips), UNKNOWN_FREE), lambda: "azcni-new")
    assert after.write is not None and after.write.add == () and after.write.remove


# -- deletion (defect 5) --------------------------------------------------------------------------


def test_defect_5_a_deleted_pool_removes_nothing_a_pod_may_use() -> None:
    """No acknowledgement, so every address may be in use: mark, wait, say so."""
    recorded = ips(4)
    the_pool = pool(recorded, used=2, deleting=True)
    decision, outcome = run(Observation(the_pool, NOW, nic(recorded), SUBNET))
    assert decision.write is None, "removed addresses the agent never acknowledged"
    assert not outcome.release_finalizer
    assert outcome.status is not None
    assert {ip.state for ip in outcome.status.ips} == {IPState.RELEASING}
    assert ready(outcome.status) == (False, "Deleting")
    assert reasons(outcome) == ["DeletionWaiting"]


def test_defect_5_acknowledged_addresses_leave_and_the_rest_wait() -> None:
    recorded = tuple(replace(ip, state=IPState.RELEASING) for ip in ips(4))
    the_pool = pool(recorded, used=2, acks=["azcni-000", "azcni-001"], deleting=True,
                    conditions=(healthy()[0],
                                Condition(ConditionType.READY, False, "Deleting", "")))
    decision, outcome = run(Observation(the_pool, NOW, nic(recorded), SUBNET),
                            written=nic(recorded[2:]))
    assert decision.write is not None and decision.write.remove == ("azcni-000", "azcni-001")
    assert not outcome.release_finalizer
    assert outcome.status is not None and names_of(outcome.status.ips) == ["azcni-002",
                                                                           "azcni-003"]
    assert reasons(outcome) == ["Released"]


def test_defect_5_the_finalizer_goes_once_every_address_left() -> None:
    recorded = tuple(replace(ip, state=IPState.RELEASING) for ip in ips(2))
    the_pool = pool(recorded, acks=names_of(recorded), deleting=True)
    _, outcome = run(Observation(the_pool, NOW, nic(recorded), SUBNET), written=nic())
    assert outcome.release_finalizer


def test_defect_5_another_pools_addresses_on_a_shared_nic_are_never_removed() -> None:
    """A stale Node sharing the VM: its pool sees the live pool's ipConfigurations too."""
    mine = ips(2)
    theirs = ips(2, start=10)
    the_pool = pool(mine, acks=names_of(mine), deleting=True)
    decision, outcome = run(Observation(the_pool, NOW, nic(mine + theirs), SUBNET),
                            written=nic(theirs))
    assert decision.write is not None and set(decision.write.remove) == set(names_of(mine))
    assert not outcome.release_finalizer  # the others wait for an ack that never comes


@pytest.mark.parametrize("error", [NotFound("gone", code="ResourceNotFound"),
                                   MissingProviderID("no providerID")])
def test_defect_5_a_gone_nic_or_vm_has_nothing_left_to_release(error) -> None:
    outcome = observation_failed(Observation(pool(ips(4), deleting=True), NOW), error)
    assert outcome.release_finalizer


def test_a_pool_deleted_before_it_had_a_nic_goes_at_once() -> None:
    decision = decide(Observation(pool(provisioned=False, deleting=True), NOW),
                      lambda: "azcni-new")
    assert decision.outcome is not None and decision.outcome.release_finalizer


# -- errors: one table ---------------------------------------------------------------------------


@pytest.mark.parametrize(("error", "ready_reason", "not_provisioned", "event", "delay"), [
    (Throttled("slow down", retry_after=7.0), None, False, "AzureThrottled", 7.0),
    (Throttled("slow down", retry_after=0.0), None, False, "AzureThrottled", 1.0),
    (Conflict("etag", code="PreconditionFailed"), None, False, None, 5.0),
    (SubnetFull("full", code="SubnetIsFull"), "SubnetFull", False, "SubnetExhausted", 60.0),
    (NicLimitExceeded("257", code="x"), "NicLimit", False, "NicLimit", 300.0),
    (NotFound("gone", code="ResourceNotFound"), "NotFound", True, "NotFound", 60.0),
    (AuthFailed("403", code="AuthorizationFailed"), "AzureAuthFailed", True, "AzureAuthFailed",
     120.0),
    (Unsupported("uniform", code="x"), "Unsupported", True, "Unsupported", None),
    (MissingProviderID("no providerID"), "NoProviderID", True, None, None),
    (InvalidProviderID("aws:///x"), "InvalidProviderID", True, "InvalidProviderID", None),
    (CloudError("boom", code="InternalServerError"), "AzureError", False, "AzureError", 30.0),
])
def test_every_error_has_a_condition_an_event_and_a_delay(error, ready_reason, not_provisioned,
                                                         event, delay) -> None:
    the_pool = pool(ips(8))
    outcome = observation_failed(Observation(the_pool, NOW), error)
    assert outcome.failed
    assert outcome.requeue_after == delay
    assert reasons(outcome) == ([event] if event else [])
    if ready_reason is None:  # transient: the recorded state stays as it is
        assert outcome.status is None
        return
    assert ready(outcome.status) == (False, ready_reason)
    provisioned = outcome.status.condition(ConditionType.PROVISIONED)  # type: ignore[union-attr]
    assert provisioned is not None and provisioned.status is not not_provisioned
    assert outcome.status.ips == the_pool.status.ips  # type: ignore[union-attr]


def test_every_error_type_of_the_port_has_a_row() -> None:
    from azure_cni.cloud import port

    types = {v for v in vars(port).values()
             if isinstance(v, type) and issubclass(v, CloudError)}
    assert types <= set(ERRORS), types - set(ERRORS)
    assert error_policy(type("Odd", (NotFound,), {})("x")).reason == "NotFound"


def test_a_repeated_failure_posts_its_event_once() -> None:
    first = observation_failed(Observation(pool(ips(8)), NOW), AuthFailed("403"))
    assert first.status is not None
    again = observation_failed(Observation(pool(ips(8), conditions=first.status.conditions),
                                           NOW), AuthFailed("403"))
    assert reasons(again) == [] and again.status is None


def test_an_invalid_spec_is_a_condition_not_a_retry() -> None:
    bad = replace(SPEC, min_ips=100)
    _, outcome = run(Observation(pool(ips(4), spec=bad), NOW))
    assert ready(outcome.status) == (False, "InvalidSpec")
    assert "minIPs" in outcome.message and outcome.requeue_after is None


# -- the safety property ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 20), used=st.integers(0, 25), releasing=st.sets(st.integers(0, 19)),
       acked=st.sets(st.integers(0, 19)), vanished=st.sets(st.integers(0, 19)),
       foreign=st.integers(0, 3), deleting=st.booleans(), exhausted=st.booleans(),
       free=st.one_of(st.none(), st.integers(0, 30)))
def test_only_acknowledged_addresses_ever_leave_the_nic(n, used, releasing, acked, vanished,
                                                        foreign, deleting, exhausted,
                                                        free) -> None:
    recorded = ips(n, releasing=sorted(releasing))
    acks = [f"azcni-{i:03d}" for i in acked]
    on_nic = tuple(ip for i, ip in enumerate(recorded) if i not in vanished) + ips(foreign,
                                                                                  start=50)
    conditions = (*healthy()[:2],
                  Condition(ConditionType.SUBNET_EXHAUSTED, exhausted, "SubnetFull", ""))
    the_pool = pool(recorded, used=used, acks=acks, deleting=deleting, conditions=conditions)
    decision = decide(Observation(the_pool, NOW, nic(on_nic),
                                  replace(SUBNET, free_addresses=free)), lambda: "azcni-new")
    if decision.write is None:
        return
    releasing_names = {ip.ip_configuration for ip in recorded if ip.state is IPState.RELEASING}
    assert set(decision.write.remove) <= set(acks)
    if not deleting:
        assert set(decision.write.remove) <= releasing_names
    if decision.write.add and decision.write.remove:
        assert not (free is not None and free < len(decision.write.add))


# -- blocks (issue 14) -----------------------------------------------------------------------------

BLOCKS = replace(SPEC, mode=PoolMode.BLOCKS, min_free_ips=8, max_free_ips=24, batch_size=8)


def blocks(n: int, releasing: Sequence[int] = (), start: int = 1) -> tuple[PoolIP, ...]:
    """``n`` /28 blocks of 198.18.0.0/24 from the ``start``-th (the first holds .0-.3)."""
    base = int(ipaddress.ip_address("198.18.0.0"))
    return tuple(PoolIP(str(ipaddress.ip_address(base + 16 * i)), f"azcni-b{i:02d}",
                        IPState.RELEASING if i in releasing else IPState.AVAILABLE, 28)
                 for i in range(start, start + n))


def test_blocks_a_new_pool_asks_for_whole_blocks_in_one_write() -> None:
    """minFreeIPs 8 wants 8 addresses: one /28 block, with the prefix length in the write."""
    the_pool = pool(spec=BLOCKS)
    decision = decide(Observation(the_pool, NOW, nic(), SUBNET), lambda: "azcni-b01")
    assert decision.write is not None
    assert [(a.address, a.prefix_length) for a in decision.write.add] == [(None, 28)]
    outcome = decision.settle(nic(blocks(1)))
    assert outcome.status is not None
    assert outcome.status.ips == blocks(1) and outcome.status.allocated == 16
    assert outcome.status.blocks == 1
    assert reasons(outcome) == ["Allocated"] and "198.18.0.16/28" in outcome.events[0].message


@pytest.mark.parametrize(("held", "used", "min_ips", "add"), [
    (0, 0, 20, 2),     # minIPs 20 rounds up to two blocks
    (1, 9, 0, 1),      # 7 free < minFreeIPs 8: one more block
    (2, 24, 0, 0),     # 32 - 24 = 8 free: the warm target is met
    (16, 250, 0, 0),   # maxIPs 250 rounds up to 16 blocks (256 addresses): the ceiling
])
def test_blocks_sizes_count_addresses_and_round_to_blocks(held, used, min_ips, add) -> None:
    spec = replace(BLOCKS, min_ips=min_ips, max_ips=250)
    the_pool = pool(blocks(held, start=1), used=used, spec=spec)
    decision = decide(Observation(the_pool, NOW, nic(the_pool.status.ips),
                                  replace(SUBNET, cidr="198.18.0.0/20", free_addresses=4000)),
                      lambda: "azcni-new")
    assert (len(decision.write.add) if decision.write is not None else 0) == add


def test_blocks_release_marks_whole_blocks_from_the_top_and_keeps_min_ips() -> None:
    """40 free of 48 with maxFreeIPs 24: 16 excess -> one block, the highest."""
    the_pool = pool(blocks(3), used=8, spec=replace(BLOCKS, min_ips=20))
    decision, outcome = run(Observation(the_pool, NOW, nic(the_pool.status.ips), SUBNET))
    assert decision.write is None and outcome.status is not None
    marked = [ip.ip_configuration for ip in outcome.status.ips if ip.state is IPState.RELEASING]
    assert marked == ["azcni-b03"]
    assert reasons(outcome) == ["Releasing"]


def test_blocks_a_half_used_block_stays_on_the_nic_until_the_agent_acks_it() -> None:
    """The operator marked block 3 while pods used half of it: no ack, no removal; the ack
    (once its pods are gone) removes exactly that block, in one write."""
    inventory = blocks(3, releasing=[3])
    waiting = pool(inventory, used=8 + 8, spec=BLOCKS)   # 8 pods still on block 3
    decision = decide(Observation(waiting, NOW, nic(inventory), SUBNET), lambda: "azcni-new")
    assert decision.write is None or "azcni-b03" not in decision.write.remove
    acked = pool(inventory, used=8, acks=["azcni-b03"], spec=BLOCKS)
    decision, outcome = run(Observation(acked, NOW, nic(inventory), SUBNET),
                            written=nic(blocks(2)))
    assert decision.write is not None and decision.write.remove == ("azcni-b03",)
    assert decision.address_delta == -16
    assert outcome.status is not None and outcome.status.ips == blocks(2)


def test_blocks_mode_change_releases_the_other_kind_through_the_handshake() -> None:
    """An idle pool switched from Addresses to Blocks: its single addresses are marked (they
    leave once acked) and blocks are added in the same reconcile."""
    singles = ips(4)
    the_pool = pool(singles, spec=BLOCKS)
    decision, outcome = run(Observation(the_pool, NOW, nic(singles), SUBNET),
                            written=nic((*singles, *blocks(1))))
    assert decision.write is not None and len(decision.write.add) == 1
    assert decision.write.add[0].prefix_length == 28 and decision.write.remove == ()
    assert outcome.status is not None
    states = {ip.ip_configuration: ip.state for ip in outcome.status.ips}
    assert all(states[ip.ip_configuration] is IPState.RELEASING for ip in singles)
    assert states["azcni-b01"] is IPState.AVAILABLE


def test_blocks_fragmented_subnet_says_so_in_the_condition() -> None:
    """Azure refuses the block although the subnet reports free addresses: fragmentation."""
    the_pool = pool(spec=BLOCKS)
    subnet = replace(SUBNET, free_addresses=40)
    _, outcome = run(Observation(the_pool, NOW, nic(), subnet),
                     error=SubnetFull("Subnet nodes has no free /28 block", code="SubnetIsFull"))
    assert outcome.status is not None
    exhausted = outcome.status.condition(ConditionType.SUBNET_EXHAUSTED)
    assert exhausted is not None and exhausted.status and exhausted.reason == "NoFreeBlock"
    assert "40 unassigned addresses" in exhausted.message and "/28" in exhausted.message
    assert ready(outcome.status) == (False, "SubnetFull")


def test_blocks_a_subnet_with_fewer_free_addresses_than_a_block_is_exhausted() -> None:
    the_pool = pool(spec=BLOCKS)
    decision, outcome = run(Observation(the_pool, NOW, nic(),
                                        replace(SUBNET, free_addresses=10)))
    assert decision.write is None and outcome.status is not None
    exhausted = outcome.status.condition(ConditionType.SUBNET_EXHAUSTED)
    assert exhausted is not None and exhausted.status
    assert "room for at most 0 /28 blocks" in exhausted.message


def test_the_vnet_limit_is_its_own_reason_and_points_at_blocks() -> None:
    the_pool = pool()
    _, outcome = run(Observation(the_pool, NOW, nic(), SUBNET), error=VnetLimitReached(
        "too many", code="PrivateIPAddressesPerVirtualNetworkLimitReached"))
    assert outcome.status is not None
    exhausted = outcome.status.condition(ConditionType.SUBNET_EXHAUSTED)
    assert exhausted is not None and exhausted.reason == "VnetLimit"
    assert "Blocks mode" in exhausted.message
    assert ready(outcome.status) == (False, "VnetLimit")
    assert reasons(outcome) == ["SubnetExhausted"]


def test_blocks_vanished_block_comes_back_static_with_its_length() -> None:
    inventory = blocks(2)
    the_pool = pool(inventory, used=20, spec=BLOCKS)
    decision = decide(Observation(the_pool, NOW, nic(inventory[:1]), SUBNET), lambda: "x")
    assert decision.write is not None
    assert decision.write.add[0].address == "198.18.0.32"
    assert decision.write.add[0].prefix_length == 28


def test_blocks_the_agents_idle_blocks_are_released_first() -> None:
    """Pods left in the top block: the operator marks the block the agent reports idle."""
    the_pool = pool(blocks(3), used=8, spec=BLOCKS, idle_blocks=frozenset({"azcni-b01"}))
    _, outcome = run(Observation(the_pool, NOW, nic(the_pool.status.ips), SUBNET))
    assert outcome.status is not None
    assert [ip.ip_configuration for ip in outcome.status.ips
            if ip.state is IPState.RELEASING] == ["azcni-b01"]
