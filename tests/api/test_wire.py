"""The one codec every wire dataclass goes through: round trips, and bad input named by path."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from azure_cni.api.nodeippool import (
    Condition,
    ConditionType,
    InvalidPool,
    IPState,
    NicInfo,
    NodeIPPool,
    PoolDefaults,
    PoolIP,
    PoolMode,
    PoolSpec,
    PoolStatus,
)
from azure_cni.api.podnet import AttachmentState, PodAttachment, PodNetworkRequest
from azure_cni.api.poolclass import InvalidClass, LabelSelector, Requirement, SelectorOperator
from azure_cni.api.wire import WireError, decode, encode, problems

SPEC = PoolSpec("n1", 3, 40, 4, 2, 9, 60, PoolMode.BLOCKS, 27,
                "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/"
                "virtualNetworks/v/subnets/pods")
NIC = NicInfo("/nic", "198.18.0.4", "/sn", "198.18.0.0/24", ("198.18.0.0/16", "203.0.113.0/24"),
              "nic-1", "00-0D-3A-00-00-01", primary_nic=False)
REQUEST = PodNetworkRequest("azcni-a", "198.18.0.5", "web/a", "pip", ("/lb/pool",),
                            withdrawn=True, pod_uid="u1")
ANSWER = PodAttachment("azcni-a", "198.18.0.5", "web/a", AttachmentState.REFUSED, "pip",
                       ("/lb/pool",), "NotAllowed", "no", "u1")
STATUS = PoolStatus(
    nic=NIC,
    ips=(PoolIP("198.18.0.5", "azcni-a"), PoolIP("198.18.0.16", "azcni-b", IPState.RELEASING, 28)),
    excess_since=dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC), observed_generation=4, used=2,
    cooling=1, release_acks=frozenset({"azcni-b"}), idle_blocks=frozenset({"azcni-b"}),
    conditions=(Condition(ConditionType.READY, True, "WarmPoolReady", "ok",
                          "2026-11-27T09:00:00Z", 4),
                Condition(ConditionType.AGENT_READY, False, "Starting", "",
                          "2026-11-27T09:00:00Z")),
    pod_requests=(REQUEST,), pod_networking=(ANSWER,))
SELECTOR = LabelSelector({"pool": "gpu"}, (
    Requirement("zone", SelectorOperator.IN, frozenset({"1", "2"})),
    Requirement("spot", SelectorOperator.DOES_NOT_EXIST)))


@pytest.mark.parametrize("value", [SPEC, PoolSpec("n2"), NIC, NicInfo(), REQUEST, ANSWER,
                                   PoolIP("198.18.0.16", "azcni-b", IPState.RELEASING, 28),
                                   STATUS.conditions[0], SELECTOR, LabelSelector(),
                                   PoolDefaults(max_ips=60, mode=PoolMode.BLOCKS)],
                         ids=lambda v: type(v).__name__)
def test_every_value_round_trips(value: Any) -> None:
    assert decode(type(value), encode(value)) == value


def test_a_status_round_trips_through_its_two_writers() -> None:
    written = {**STATUS.operator_fields(), **STATUS.agent_fields(),
               "conditions": [c.to_dict() for c in STATUS.conditions]}
    assert PoolStatus.from_dict(written) == STATUS
    assert written["allocated"] == 17 and written["blocks"] == 1
    assert written["releaseAcks"] == ["azcni-b"] and written["excessSince"] == \
        "2026-11-27T10:00:00Z"


def test_empty_fields_are_left_out_where_the_writer_omits_them() -> None:
    assert encode(PodNetworkRequest("c", "198.18.0.5", "web/a")) == {
        "ipConfiguration": "c", "address": "198.18.0.5", "pod": "web/a"}
    assert PoolStatus().operator_fields() == {"ips": [], "allocated": 0, "conditions": []}
    assert PoolStatus().agent_fields() == {"used": 0, "cooling": 0, "releaseAcks": [],
                                           "conditions": []}
    assert encode(NicInfo("/nic")) == {"id": "/nic", "primaryIP": "", "subnetID": "",
                                       "subnetCIDR": "", "vnetAddressSpace": [],
                                       "primary": True}


def test_an_operator_message_is_kept_to_its_bound() -> None:
    long = PodAttachment("c", "198.18.0.5", "web/a", AttachmentState.REFUSED, message="x" * 5000)
    assert len(encode(long)["message"]) == 1024


@pytest.mark.parametrize(("cls", "data", "message"), [
    (PoolSpec, {"nodeName": "n", "maxIPs": "many"},
     "spec.maxIPs: 'many' is not valid: expected an integer"),
    (PoolSpec, {"nodeName": "n", "maxIPs": True},
     "spec.maxIPs: True is not valid: expected an integer"),
    (PoolSpec, {"nodeName": "n", "maxIPs": 2.5},
     "spec.maxIPs: 2.5 is not valid: expected an integer"),
    (PoolSpec, {"nodeName": 7}, "spec.nodeName: 7 is not valid: expected a string"),
    (PoolSpec, {"nodeName": "n", "mode": "Prefixes"},
     "spec.mode: 'Prefixes' is not valid: expected one of Addresses, Blocks"),
    (PoolSpec, ["n"], "spec must be a mapping, not list"),
    (PoolStatus, {"nic": "eth0"}, "status.nic must be a mapping, not str"),
    (PoolStatus, {"nic": {"primary": "yes"}},
     "status.nic.primary: 'yes' is not valid: expected true or false"),
    (PoolStatus, {"ips": [{"address": "198.18.0.5"}]}, "status.ips[0].ipConfiguration is required"),
    (PoolStatus, {"ips": [{"address": "198.18.0.5", "ipConfiguration": 3}]},
     "status.ips[0].ipConfiguration: 3 is not valid: expected a string"),
    (PoolStatus, {"ips": [{"address": "198.18.0.5", "ipConfiguration": "c", "state": "Gone"}]},
     "status.ips[0].state: 'Gone' is not valid: expected one of Available, Releasing"),
    (PoolStatus, {"releaseAcks": "azcni-a"},
     "status.releaseAcks: 'azcni-a' is not valid: expected a list"),
    (PoolStatus, {"excessSince": "yesterday"},
     "status.excessSince: 'yesterday' is not valid: expected an RFC 3339 date-time"),
    (PoolStatus, {"podRequests": [{"address": "198.18.0.5", "ipConfiguration": "c"}]},
     "status.podRequests[0].pod is required"),
    (LabelSelector, {"matchLabels": ["gpu"]},
     "spec.nodeSelector.matchLabels: ['gpu'] is not valid: expected a mapping"),
    (LabelSelector, {"matchExpressions": [{"key": "a", "operator": "Near"}]},
     "spec.nodeSelector.matchExpressions[0].operator: 'Near' is not valid: expected one of "
     "In, NotIn, Exists, DoesNotExist"),
])
def test_bad_input_is_refused_naming_the_field(cls: type, data: Any, message: str) -> None:
    path = {PoolSpec: "spec", PoolStatus: "status", LabelSelector: "spec.nodeSelector"}[cls]
    with pytest.raises(WireError) as refused:
        decode(cls, data, path)
    assert str(refused.value) == message
    # the types' own readers say the same, as the error their callers handle
    error = InvalidClass if cls is LabelSelector else InvalidPool
    with pytest.raises(error, match=f"^{message.replace('[', '.').replace(']', '.')}$"):
        cls.from_dict(data)  # type: ignore[attr-defined]


def test_fields_this_code_does_not_know_are_ignored_in_objects() -> None:
    """A newer writer may add fields (the API server keeps them once its CRD has them)."""
    obj = {"metadata": {"name": "n1"},
           "spec": {"nodeName": "n1", "maxIPs": 30, "futureKnob": 1},
           "status": {"used": 2, "futureCount": 3,
                      "ips": [{"address": "198.18.0.5", "ipConfiguration": "c",
                               "zone": "1"}]}}
    pool = NodeIPPool.from_object(obj)
    assert pool.spec == PoolSpec("n1", max_ips=30)
    assert pool.status.used == 2 and pool.status.ips == (PoolIP("198.18.0.5", "c"),)


def test_other_writers_conditions_are_left_out_and_unknown_answers_read_as_refused() -> None:
    status = PoolStatus.from_dict({
        "conditions": [{"type": "Ready", "status": "True", "reason": "r"},
                       {"type": "SomebodyElses", "status": "True"},
                       {"type": "AgentReady", "status": "Unknown"}],
        "podNetworking": [{"address": "198.18.0.5", "ipConfiguration": "c", "pod": "web/a",
                           "state": "Quarantined"}]})
    assert [(c.type, c.status) for c in status.conditions] == [
        (ConditionType.READY, True), (ConditionType.AGENT_READY, False)]
    assert status.pod_networking[0].state is AttachmentState.REFUSED


def test_null_is_absence() -> None:
    assert PoolSpec.from_dict({"nodeName": "n1", "maxIPs": None}) == PoolSpec("n1")
    assert PoolStatus.from_dict({"nic": None, "ips": None}) == PoolStatus()


@pytest.mark.parametrize(("spec", "expected"), [
    (PoolSpec("n1"), []),
    (PoolSpec(""), ["spec.nodeName must be set"]),
    (PoolSpec("n1", min_ips=-1), ["spec.minIPs (-1) must be at least 0"]),
    (PoolSpec("n1", min_ips=40, max_ips=30),
     ["spec.minIPs (40) must not exceed spec.maxIPs (30)"]),
    (PoolSpec("n1", max_ips=0, min_ips=0),
     ["spec.maxIPs (0) must be between 1 and 255: a NIC holds 256 ipConfigurations and one of "
      "them is the primary"]),
    (PoolSpec("n1", batch_size=256), ["spec.batchSize (256) must be between 1 and 255"]),
    (PoolSpec("n1", release_delay_seconds=86401),
     ["spec.releaseDelaySeconds (86401) must be between 0 and 86400"]),
    (PoolSpec("n1", block_prefix_length=31),
     ["spec.blockPrefixLength (31) must be between 26 and 30"]),
    (PoolSpec("n1", pod_subnet_id="x" * 1025),
     ["spec.podSubnetID must be at most 1024 characters long"]),
])
def test_problems_are_the_schemas_bounds_in_words(spec: PoolSpec, expected: list[str]) -> None:
    assert problems(spec, "spec") == expected
