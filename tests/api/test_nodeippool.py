"""NodeIPPool objects round-trip, and each writer renders only its own status fields."""

from __future__ import annotations

import datetime as dt

import pytest

from azure_cni.api.nodeippool import (
    Condition,
    ConditionType,
    InvalidPool,
    IPState,
    NicInfo,
    NodeIPPool,
    PoolIP,
    PoolSpec,
    PoolStatus,
    parse_time,
    set_condition,
)

OBJ = {
    "apiVersion": "azurecni.io/v1alpha1", "kind": "NodeIPPool",
    "metadata": {"name": "vm1", "generation": 3, "resourceVersion": "77", "uid": "u"},
    "spec": {"nodeName": "vm1", "minIPs": 2, "maxIPs": 30, "batchSize": 4,
             "minFreeIPs": 4, "maxFreeIPs": 12, "releaseDelaySeconds": 60},
    "status": {
        "nic": {"id": "/nic", "primaryIP": "198.18.0.4", "subnetID": "/sn",
                "subnetCIDR": "198.18.0.0/24", "vnetAddressSpace": ["198.18.0.0/16"]},
        "ips": [{"address": "198.18.0.5", "ipConfiguration": "azcni-a", "state": "Available"},
                {"address": "198.18.0.6", "ipConfiguration": "azcni-b", "state": "Releasing"}],
        "allocated": 2, "used": 1, "cooling": 1, "releaseAcks": ["azcni-b"],
        "excessSince": "2026-11-27T10:00:00Z",
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "WarmPoolReady",
             "lastTransitionTime": "2026-11-27T09:00:00Z"},
            {"type": "AgentReady", "status": "False", "reason": "Starting",
             "lastTransitionTime": "2026-11-27T09:00:00Z"},
            {"type": "SomebodyElses", "status": "True"}],
    },
}


def test_parse_everything() -> None:
    pool = NodeIPPool.from_object(OBJ)
    assert pool.spec == PoolSpec("vm1", 2, 30, 4, 4, 12, 60)
    assert pool.generation == 3
    assert pool.status.nic == NicInfo("/nic", "198.18.0.4", "/sn", "198.18.0.0/24",
                                      ("198.18.0.0/16",))
    assert pool.status.ips[1] == PoolIP("198.18.0.6", "azcni-b", IPState.RELEASING)
    assert pool.status.allocated == 2 and pool.status.used == 1 and pool.status.cooling == 1
    assert pool.status.release_acks == {"azcni-b"}
    assert pool.status.excess_since == dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)
    assert {c.type for c in pool.status.conditions} == {ConditionType.READY,
                                                        ConditionType.AGENT_READY}


def test_each_writer_renders_only_its_fields() -> None:
    status = NodeIPPool.from_object(OBJ).status
    operator = status.operator_fields()
    agent = status.agent_fields()
    assert set(operator) == {"nic", "ips", "allocated", "excessSince", "conditions"}
    assert [c["type"] for c in operator["conditions"]] == ["Ready"]
    assert set(agent) == {"used", "cooling", "releaseAcks", "conditions"}
    assert agent["cooling"] == 1
    assert [c["type"] for c in agent["conditions"]] == ["AgentReady"]


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-27T10:00:00Z", dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)),
    # what a Kubernetes MicroTime and other writers (kubectl, client-go's metav1.Time
    # with fractions) put into timestamps
    ("2026-11-27T10:00:00.5Z", dt.datetime(2026, 11, 27, 10, 0, 0, 500000, tzinfo=dt.UTC)),
    ("2026-11-27T10:00:00.123456Z",
     dt.datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=dt.UTC)),
    ("2026-11-27T10:00:00.123456789Z",
     dt.datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=dt.UTC)),
    ("2026-11-27T11:00:00+01:00", dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)),
    ("", None), (None, None), ("yesterday", None), ("2026-11-27", None),
])
def test_parse_time_reads_rfc3339_with_or_without_fractions(text, expected) -> None:
    assert parse_time(text) == expected


def test_no_excess_is_rendered_as_absence() -> None:
    assert "excessSince" not in PoolStatus().operator_fields()


def test_condition_keeps_its_transition_time_while_status_holds() -> None:
    old = Condition(ConditionType.READY, True, "A", last_transition_time="2026-01-01T00:00:00Z")
    same = set_condition([old], Condition(ConditionType.READY, True, "B"))
    assert same[0].last_transition_time == "2026-01-01T00:00:00Z" and same[0].reason == "B"
    flipped = set_condition([old], Condition(ConditionType.READY, False, "C"))
    assert flipped[0].last_transition_time == ""


@pytest.mark.parametrize(("change", "message"), [
    ({"minIPs": 40}, "spec.minIPs (40) must not exceed spec.maxIPs (30)"),
    ({"maxIPs": 300, "minIPs": 0}, "spec.maxIPs (300) must be between 1 and 255"),
    ({"batchSize": 0}, "spec.batchSize (0) must be between 1 and 255"),
    ({"minFreeIPs": 20}, "spec.minFreeIPs (20) must not exceed spec.maxFreeIPs (12)"),
    ({"minIPs": "many"}, "spec.minIPs: 'many' is not valid: expected an integer"),
    ({"mode": "Prefixes"}, "spec.mode: 'Prefixes' is not valid: expected one of Addresses, "
                          "Blocks"),
    ({"mode": "Blocks", "blockPrefixLength": 20}, "spec.blockPrefixLength (20) must be between "
                                                  "26 and 30"),
])
def test_invalid_specs_are_refused_with_the_field_named(change, message) -> None:
    spec = {**OBJ["spec"], **change}
    with pytest.raises(InvalidPool, match=message.replace("(", r"\(").replace(")", r"\)")):
        PoolSpec.from_dict(spec).validate()
