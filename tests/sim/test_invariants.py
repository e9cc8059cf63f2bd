"""The chaos campaign's invariant checker can fail: each planted violation is counted, once.

The campaign (bench/chaos.py) counts what ``check`` finds after every round and records the
counts; these tests plant each kind of violation in an otherwise healthy observation.
"""

from __future__ import annotations

import dataclasses
import subprocess
import uuid

import pytest

from azure_cni.api.nodeippool import (
    Condition,
    ConditionType,
    IPState,
    NodeIPPool,
    PoolIP,
    PoolSpec,
    PoolStatus,
)
from azure_cni_sim.invariants import (
    INVARIANTS,
    Life,
    NicView,
    Observation,
    Pod,
    Record,
    Write,
    check,
    interface_address,
    nic_view,
    writes_by_non_leaders,
)

NODE = "vm0"
NIC = {"azcni-a": "198.18.0.10", "azcni-b": "198.18.0.11", "azcni-c": "198.18.0.12"}


def pool(ips: dict[str, str] = NIC, *, acks: frozenset[str] = frozenset(), ready: bool = True,
         releasing: frozenset[str] = frozenset(), max_ips: int = 8, used: int = 2,
         cooling: int = 0, reason: str = "") -> NodeIPPool:
    """Two pods' pool with one address free, in a warm band of 1..2 free."""
    status = PoolStatus(
        ips=tuple(PoolIP(a, n, IPState.RELEASING if n in releasing else IPState.AVAILABLE)
                  for n, a in ips.items()),
        observed_generation=1, release_acks=acks, used=used, cooling=cooling,
        conditions=(Condition(ConditionType.READY, ready,
                              reason or ("WarmPoolReady" if ready else "Pending")),))
    spec = PoolSpec(NODE, max_ips=max_ips, batch_size=1, min_free_ips=1, max_free_ips=2)
    return NodeIPPool(NODE, spec, status, generation=1)


def healthy() -> Observation:
    """Two pods on two of three addresses, everything agreeing."""
    return Observation(
        pods=(Pod(NODE, "c1", "198.18.0.10"), Pod(NODE, "c2", "198.18.0.11")),
        records=(Record(NODE, "c1", "198.18.0.10"), Record(NODE, "c2", "198.18.0.11")),
        pools=(pool(),), nics=(NicView(NODE, NIC),), subnet_free=100)


def counts(seen: Observation) -> dict[str, int]:
    return {k: v for k, v in check(seen).counts().items() if v}


def test_a_healthy_round_is_clean() -> None:
    findings = check(healthy())
    assert findings.clean
    assert set(findings.counts()) == set(INVARIANTS)


def test_a_planted_duplicate_in_the_kernel_is_counted() -> None:
    """A third pod whose interface holds c1's address: handed to two pods."""
    seen = dataclasses.replace(healthy(), pods=(*healthy().pods, Pod(NODE, "c3", "198.18.0.10")),
                               records=(*healthy().records, Record(NODE, "c3", "198.18.0.12")))
    found = check(seen)
    assert found.counts()["duplicate"] == 1
    assert "198.18.0.10 is claimed by pod vm0/c1, pod vm0/c3" in found.by_invariant["duplicate"]


def test_a_planted_duplicate_across_nodes_is_counted() -> None:
    other = NicView("vm1", {"azcni-x": "198.18.0.10"})
    seen = dataclasses.replace(
        healthy(), pods=(*healthy().pods, Pod("vm1", "c9", "198.18.0.10")),
        records=(*healthy().records, Record("vm1", "c9", "198.18.0.10")),
        nics=(*healthy().nics, other))
    assert counts(seen) == {"duplicate": 1, "orphan": 1}  # vm1 has no pool here


def test_a_pod_holding_an_address_its_nic_gave_back_is_a_duplicate_in_waiting() -> None:
    nic = {k: v for k, v in NIC.items() if k != "azcni-b"}
    seen = dataclasses.replace(healthy(), nics=(NicView(NODE, nic),),
                               pools=(pool(nic, max_ips=2),))
    assert counts(seen) == {"duplicate": 1}


def test_a_planted_leak_is_counted() -> None:
    """The agent still records c2 after c2's pod is gone."""
    seen = dataclasses.replace(healthy(), pods=healthy().pods[:1])
    assert counts(seen) == {"leak": 1}


def test_a_pod_the_agent_forgot_is_counted() -> None:
    seen = dataclasses.replace(healthy(), records=healthy().records[:1], pools=(pool(used=1),))
    assert counts(seen) == {"unrecorded": 1}


def test_a_planted_orphan_is_counted() -> None:
    """An azure-cni ipConfiguration on the NIC that the pool's inventory does not name."""
    nic = {**NIC, "azcni-d": "198.18.0.13"}
    seen = dataclasses.replace(healthy(), nics=(NicView(NODE, nic),))
    found = check(seen)
    assert found.counts()["orphan"] == 1
    assert found.by_invariant["orphan"] == ["vm0: ipConfiguration azcni-d (198.18.0.13) is in "
                                            "no pool"]
    # the inventory disagreeing with the NIC is also a pool that has not settled
    assert counts(seen) == {"orphan": 1, "unsettled": 1}


def test_an_acknowledged_address_still_on_the_nic_is_counted() -> None:
    seen = dataclasses.replace(healthy(), pools=(pool(acks=frozenset({"azcni-c"}),
                                                      releasing=frozenset({"azcni-c"})),))
    # ... and a release under way is a pool that has not settled
    assert counts(seen) == {"acked_on_nic": 1, "unsettled": 2}


def test_a_pod_given_up_with_room_to_grow_is_counted_and_without_room_not() -> None:
    seen = dataclasses.replace(healthy(), gave_up=((NODE, "c7"),))
    assert counts(seen) == {"failed_with_room": 1}
    at_ceiling = dataclasses.replace(seen, pools=(pool(max_ips=3),))
    assert counts(at_ceiling) == {}
    subnet_full = dataclasses.replace(seen, subnet_free=0)
    assert counts(subnet_full) == {}


def test_a_wedged_pool_is_unsettled() -> None:
    seen = dataclasses.replace(healthy(), pools=(pool(ready=False),),
                               nics=(NicView(NODE, NIC, not_succeeded=("azcni-a",)),))
    assert counts(seen) == {"unsettled": 2}


@pytest.mark.parametrize(("the_pool", "subnet_free", "why"), [
    (pool(used=1), 100, "the agent published 1 used, it records 2"),
    (pool({**NIC, "azcni-d": "198.18.0.13"}, cooling=1), 100, "1 addresses still cooling down"),
    (pool({**NIC, "azcni-d": "198.18.0.13", "azcni-e": "198.18.0.14"}), 100,
     "3 free is above maxFreeIPs 2"),
    (pool({k: v for k, v in NIC.items() if k != "azcni-c"}), 100,
     "0 free is below minFreeIPs 1"),
])
def test_a_pool_not_at_rest_is_unsettled(the_pool, subnet_free, why) -> None:
    nic = NicView(NODE, {ip.ip_configuration: ip.address for ip in the_pool.status.ips})
    seen = dataclasses.replace(healthy(), pools=(the_pool,), nics=(nic,),
                               subnet_free=subnet_free)
    found = check(seen)
    assert found.by_invariant["unsettled"] == [f"vm0: {why}"]


def test_a_release_waiting_for_the_pod_that_holds_the_address_is_at_rest() -> None:
    """The operator marks the highest free addresses without knowing which a pod holds; such
    an address is released when its pod goes, not before (an unused one must go now)."""
    held = pool({**NIC, "azcni-d": "198.18.0.13"}, releasing=frozenset({"azcni-b"}))
    nic = NicView(NODE, {**NIC, "azcni-d": "198.18.0.13"})
    assert check(dataclasses.replace(healthy(), pools=(held,), nics=(nic,))).clean
    unused = pool({**NIC, "azcni-d": "198.18.0.13"}, releasing=frozenset({"azcni-d"}))
    found = check(dataclasses.replace(healthy(), pools=(unused,), nics=(nic,)))
    assert found.by_invariant["unsettled"] == ["vm0: a release is under way (1 Releasing, "
                                               "unused)"]


def test_a_short_warm_pool_in_a_full_subnet_is_at_rest() -> None:
    short = pool({k: v for k, v in NIC.items() if k != "azcni-c"}, ready=False, reason="Limited")
    seen = dataclasses.replace(healthy(), pools=(short,), subnet_free=0,
                               nics=(NicView(NODE, {"azcni-a": "198.18.0.10",
                                                    "azcni-b": "198.18.0.11"}),))
    assert check(seen).clean
    # Limited with room to grow is a pool that has not settled
    assert counts(dataclasses.replace(seen, subnet_free=5)) == {"unsettled": 2}


def test_nic_view_keeps_only_ours_and_names_what_is_not_succeeded() -> None:
    def ipconfig(name: str, address: str, state: str = "Succeeded") -> dict[str, object]:
        return {"name": name, "properties": {"privateIPAddress": address,
                                             "provisioningState": state}}

    nic = {"properties": {"ipConfigurations": [
        ipconfig("ipconfig1", "198.18.0.4"), ipconfig("azcni-a", "198.18.0.10"),
        ipconfig("azcni-b", "198.18.0.11", "Failed"), ipconfig("other", "198.18.0.20")]}}
    assert nic_view(NODE, nic) == NicView(NODE, {"azcni-a": "198.18.0.10",
                                                 "azcni-b": "198.18.0.11"}, ("azcni-b",))


#: replica a leads from 10 s, is killed at 25 s and restarts at 31 s; b leads from 30 s
TERMS = [(10.0, "operator-a-0_5e1f"), (30.0, "operator-b-0_9c2d")]
LIVES = [Life("operator-a-0", "vm/op-a", 0.0, 25.0), Life("operator-a-1", "vm/op-a", 31.0),
         Life("operator-b-0", "vm/op-b", 0.0)]


def test_writes_by_the_lease_holder_of_the_moment_are_no_violation() -> None:
    assert writes_by_non_leaders([Write(12.0, "vm/op-a"), Write(24.9, "vm/op-a"),
                                  Write(33.0, "vm/op-b")], TERMS, LIVES) == []


@pytest.mark.parametrize("write, why", [
    (Write(5.0, "vm/op-a"), "before anyone held the Lease"),
    (Write(20.0, "vm/op-b"), "the standby wrote while a led"),
    (Write(27.0, "vm/op-a"), "a's principal after a was killed, before b took over"),
    (Write(32.0, "vm/op-a"), "a restarted and wrote while b led"),
    (Write(33.0, "vm/someone"), "a principal no replica has"),
])
def test_a_write_by_anyone_but_the_live_holder_is_counted(write: Write, why: str) -> None:
    assert len(writes_by_non_leaders([write, Write(12.0, "vm/op-a")], TERMS, LIVES)) == 1, why


@pytest.mark.netns
def test_a_duplicate_planted_in_two_real_namespaces_is_counted(netns_factory) -> None:
    """The campaign reads each pod's address in its namespace: two pods given one address
    by hand are found as they would be after a real double hand-out."""
    pods = [netns_factory.create(f"dup{i}") for i in range(2)]
    for ns in pods:
        subprocess.run(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name",
                        "peer0"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", "198.18.0.10/32", "dev", "eth0"],
                       check=True)
    empty = netns_factory.create("none")
    key = uuid.uuid4().hex[:6]
    seen = Observation(pods=[Pod(NODE, f"{key}-{ns}", interface_address(ns))
                             for ns in [*pods, empty]])
    assert interface_address(empty) is None
    found = check(seen)
    assert found.counts()["duplicate"] == 1
    assert found.counts()["unrecorded"] == 2


PIP = "/subscriptions/s/resourceGroups/pips/providers/Microsoft.Network/publicIPAddresses/p1"
POOL = ("/subscriptions/s/resourceGroups/pips/providers/Microsoft.Network/loadBalancers/lb/"
        "backendAddressPools/web")


def carrying(features: dict[str, tuple[str, ...]], *asked: tuple[str, ...]) -> Observation:
    """The healthy round, the NIC's ipConfigurations carrying ``features``, the two pods
    having asked for ``asked``."""
    seen = healthy()
    pods = tuple(dataclasses.replace(p, asked=a) for p, a in zip(seen.pods, asked, strict=False))
    return dataclasses.replace(seen, pods=(*pods, *seen.pods[len(pods):]),
                               nics=(NicView(NODE, NIC, features=features),))


def test_what_a_pod_asked_for_on_its_own_address_is_no_violation() -> None:
    assert check(carrying({"azcni-a": (PIP,), "azcni-b": (POOL,)}, (PIP,), (POOL.upper(),))
                 ).clean


def test_a_released_or_reused_address_carrying_what_nobody_asked_is_counted() -> None:
    """Issue 22: a released address carries a public IP (the free azcni-c), a pod's address
    carries a pool another pod asked for (azcni-b), a pod got a public IP it never asked for
    (azcni-a)."""
    found = check(carrying({"azcni-a": (PIP,), "azcni-b": (POOL,), "azcni-c": (PIP,)},
                           (), (PIP,)))
    assert found.counts()["unasked_feature"] == 3
    assert any("198.18.0.12 (azcni-c) is no pod's" in f
               for f in found.by_invariant["unasked_feature"])
    assert any("pod vm0/c2 did not ask for" in f and POOL in f
               for f in found.by_invariant["unasked_feature"])


def test_nic_view_keeps_what_azure_cni_ipconfigurations_carry_beyond_the_nodes_pools() -> None:
    node_pool = POOL.replace("/web", "/nodes")
    nic = {"properties": {"ipConfigurations": [
        {"name": "ipconfig1", "properties": {
            "privateIPAddress": "198.18.0.4", "provisioningState": "Succeeded", "primary": True,
            "loadBalancerBackendAddressPools": [{"id": node_pool}]}},
        {"name": "azcni-a", "properties": {
            "privateIPAddress": "198.18.0.10", "provisioningState": "Succeeded",
            "publicIPAddress": {"id": PIP},
            "loadBalancerBackendAddressPools": [{"id": node_pool}, {"id": POOL}]}},
        {"name": "azcni-b", "properties": {
            "privateIPAddress": "198.18.0.11", "provisioningState": "Succeeded",
            "loadBalancerBackendAddressPools": [{"id": node_pool}]}}]}}
    assert nic_view(NODE, nic).features == {"azcni-a": (PIP, POOL)}
