"""A restarting agent compares its store with the host's veths and refuses on conflicts."""

from __future__ import annotations

from azure_cni.agent.recovery import plan_recovery
from azure_cni.api.attachment import AttachmentKey
from azure_cni.datapath.veth import HostVeth
from azure_cni.ipam.store import Assignment


def assignment(container: str, address: str, veth: str) -> Assignment:
    return Assignment(AttachmentKey(container, "eth0"), address, "/run/netns/x", veth, "", 1.0)


STORE = [assignment("c1", "198.18.0.10", "azv00000000001"),
         assignment("c2", "198.18.0.11", "azv00000000002")]


def test_agreement_is_fine_and_missing_veths_are_only_noted() -> None:
    plan = plan_recovery(STORE, [HostVeth("azv00000000001", 5, ("198.18.0.10",))])
    assert plan.conflicts == ()
    assert [a.key.container_id for a in plan.without_veth] == ["c2"]


def test_half_built_pair_of_a_recorded_pod_is_fine() -> None:
    plan = plan_recovery(STORE, [HostVeth("azv00000000002", 6, ())])
    assert plan.conflicts == () and plan.orphan_veths == ()


def test_addressless_unknown_veth_is_an_orphan_to_remove() -> None:
    plan = plan_recovery(STORE, [HostVeth("azv0000000000f", 9, ())])
    assert plan.orphan_veths == ("azv0000000000f",) and plan.conflicts == ()


def test_unknown_address_on_a_veth_refuses() -> None:
    plan = plan_recovery(STORE, [HostVeth("azv0000000000f", 9, ("198.18.0.99",))])
    (conflict,) = plan.conflicts
    assert "198.18.0.99" in conflict and "does not know" in conflict


def test_address_recorded_for_another_pod_refuses() -> None:
    plan = plan_recovery(STORE, [HostVeth("azv0000000000f", 9, ("198.18.0.10",))])
    (conflict,) = plan.conflicts
    assert "c1/eth0" in conflict and "two pods may share it" in conflict


def test_veth_routing_a_different_address_than_recorded_refuses() -> None:
    plan = plan_recovery(STORE, [HostVeth("azv00000000001", 5, ("198.18.0.11",))])
    assert len(plan.conflicts) == 2  # .11 belongs to c2, and c1's veth lacks .10
