"""Which NodeIPPoolClass a node's pool comes from, and what a class change does to a pool."""

from __future__ import annotations

from typing import Any

import pytest

from azure_cni.api.nodeippool import CLASS_LABEL, ConditionType, NodeIPPool, PoolMode, PoolSpec
from azure_cni.api.poolclass import (
    Choice,
    InvalidClass,
    LabelSelector,
    PoolClass,
    choose_class,
    class_condition,
    class_plan,
    follow_class,
)

POD_SUBNET = ("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/"
              "virtualNetworks/vnet/subnets/pods")
DEFAULTS = PoolSpec("n1", batch_size=4, min_free_ips=4, max_free_ips=12, max_ips=32)
AGENTPOOL = "kubernetes.azure.com/agentpool"


def cls(name: str, selector: dict[str, Any], **pool: Any) -> PoolClass:
    return PoolClass.from_object({"metadata": {"name": name, "generation": 3},
                                  "spec": {"nodeSelector": selector, "pool": pool}})


GPU = cls("gpu", {"matchLabels": {AGENTPOOL: "gpu"}}, podSubnetID=POD_SUBNET, maxIPs=64,
          minFreeIPs=16, maxFreeIPs=48)
SPOT = cls("spot", {"matchExpressions": [{"key": AGENTPOOL, "operator": "In",
                                          "values": ["spot", "spot2"]}]}, mode="Blocks")
NOT_GPU = cls("rest", {"matchExpressions": [{"key": AGENTPOOL, "operator": "NotIn",
                                             "values": ["gpu"]}]})
EVERY = cls("every", {})


@pytest.mark.parametrize(("labels", "classes", "kind", "chosen", "spec"), [
    # no class at all: today's chart defaults, and no condition
    ({AGENTPOOL: "gpu"}, [], Choice.NO_CLASSES, (), DEFAULTS),
    # one class selects the node: its fields over the chart's defaults
    ({AGENTPOOL: "gpu"}, [GPU, SPOT], Choice.MATCHED, ("gpu",),
     PoolSpec("n1", batch_size=4, min_free_ips=16, max_free_ips=48, max_ips=64,
              pod_subnet_id=POD_SUBNET)),
    ({AGENTPOOL: "spot2"}, [GPU, SPOT], Choice.MATCHED, ("spot",),
     PoolSpec("n1", batch_size=4, min_free_ips=4, max_free_ips=12, max_ips=32,
              mode=PoolMode.BLOCKS)),
    # classes exist, none selects the node: the chart's defaults (and a condition says so)
    ({AGENTPOOL: "system"}, [GPU, SPOT], Choice.NO_MATCHING_CLASS, (), DEFAULTS),
    ({}, [GPU, SPOT], Choice.NO_MATCHING_CLASS, (), DEFAULTS),
    # NotIn selects nodes without the label too, as in Kubernetes
    ({}, [GPU, NOT_GPU], Choice.MATCHED, ("rest",), DEFAULTS),
    # two classes select the node: none is applied
    ({AGENTPOOL: "spot"}, [SPOT, NOT_GPU], Choice.AMBIGUOUS, ("rest", "spot"), None),
    ({AGENTPOOL: "gpu"}, [GPU, EVERY], Choice.AMBIGUOUS, ("every", "gpu"), None),
    # a class whose fields make the node's pool invalid is not applied
    ({AGENTPOOL: "x"}, [cls("big", {}, minIPs=40)], Choice.INVALID, ("big",), None),
])
def test_choose_class(labels: dict[str, str], classes: list[PoolClass], kind: Choice,
                      chosen: tuple[str, ...], spec: PoolSpec | None) -> None:
    choice = choose_class("n1", labels, classes, DEFAULTS)
    assert (choice.kind, choice.classes, choice.spec) == (kind, chosen, spec)


def test_the_messages_name_the_node_and_the_classes() -> None:
    none = choose_class("n1", {AGENTPOOL: "system"}, [GPU], DEFAULTS)
    assert "no NodeIPPoolClass selects node n1" in none.message
    assert f"{AGENTPOOL}=system" in none.message
    both = choose_class("n1", {AGENTPOOL: "spot"}, [SPOT, NOT_GPU], DEFAULTS)
    assert "rest, spot all select node n1" in both.message
    big = choose_class("n1", {}, [cls("big", {}, minIPs=40)], DEFAULTS)
    assert "NodeIPPoolClass big over the chart's defaults gives node n1 an invalid pool: " \
           "spec.minIPs (40) must not exceed spec.maxIPs (32)" in big.message


@pytest.mark.parametrize(("current", "used", "klass", "changed", "refused", "after"), [
    # sizes follow the class at once, with pods or without
    (PoolSpec("n1"), 5, cls("c", {}, maxIPs=100, batchSize=16), ("maxIPs", "batchSize"), 0,
     PoolSpec("n1", max_ips=100, batch_size=16)),
    # fields the class leaves out keep the pool's own (an admin's kubectl scale)
    (PoolSpec("n1", min_ips=20), 0, cls("c", {}, maxIPs=100), ("maxIPs",), 0,
     PoolSpec("n1", min_ips=20, max_ips=100)),
    # nothing to change
    (PoolSpec("n1", max_ips=100), 3, cls("c", {}, maxIPs=100), (), 0,
     PoolSpec("n1", max_ips=100)),
    # a mode change while pods use the pool is refused; the sizes still follow
    (PoolSpec("n1"), 2, cls("c", {}, mode="Blocks", maxIPs=64), ("maxIPs",), 1,
     PoolSpec("n1", max_ips=64)),
    # ... and goes through once the pool is idle
    (PoolSpec("n1"), 0, cls("c", {}, mode="Blocks", blockPrefixLength=27),
     ("mode", "blockPrefixLength"), 0,
     PoolSpec("n1", mode=PoolMode.BLOCKS, block_prefix_length=27)),
    # the pod subnet never changes on an existing pool
    (PoolSpec("n1"), 0, cls("c", {}, podSubnetID=POD_SUBNET), (), 1, PoolSpec("n1")),
    # a change that would make the pool invalid changes nothing
    (PoolSpec("n1", min_ips=50), 0, cls("c", {}, maxIPs=40, batchSize=2), (), 1,
     PoolSpec("n1", min_ips=50)),
])
def test_follow_class(current: PoolSpec, used: int, klass: PoolClass,
                      changed: tuple[str, ...], refused: int, after: PoolSpec) -> None:
    update = follow_class(current, used, klass)
    assert (update.changed, len(update.refused), update.spec) == (changed, refused, after)


def test_a_refused_mode_change_says_why_in_the_condition() -> None:
    klass = cls("c", {}, mode="Blocks")
    choice = choose_class("n1", {}, [klass], DEFAULTS)
    update = follow_class(PoolSpec("n1"), 7, klass)
    condition = class_condition(choice, update)
    assert condition is not None and condition.type is ConditionType.POOL_CLASS
    assert not condition.status and condition.reason == "ChangeRefused"
    assert "mode cannot change while 7 pods use the pool" in condition.message
    following = class_condition(choice, follow_class(PoolSpec("n1"), 0, klass))
    assert following is not None and following.status and following.reason == "Following"
    assert class_condition(choose_class("n1", {}, [], DEFAULTS)) is None


@pytest.mark.parametrize(("selector", "labels", "selected"), [
    ({}, {}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
    ({"matchLabels": {"a": "1"},
      "matchExpressions": [{"key": "b", "operator": "In", "values": ["x"]}]},
     {"a": "1", "b": "y"}, False),
])
def test_label_selector(selector: dict[str, Any], labels: dict[str, str],
                        selected: bool) -> None:
    assert LabelSelector.from_dict(selector).matches(labels) is selected


def test_a_class_cannot_set_the_node_name() -> None:
    with pytest.raises(InvalidClass, match="cannot set \\['nodeName'\\]"):
        cls("bad", {}, nodeName="n2")


def pool(labels: dict[str, str] | None = None, used: int = 0,
         condition: tuple[bool, str, str] | None = None, **spec: Any) -> NodeIPPool:
    status: dict[str, Any] = {"used": used}
    if condition is not None:
        status["conditions"] = [{"type": "PoolClass", "status": str(condition[0]),
                                 "reason": condition[1], "message": condition[2]}]
    return NodeIPPool.from_object({"metadata": {"name": "n1", "labels": labels or {}},
                                   "spec": {"nodeName": "n1", **spec}, "status": status})


def test_class_plan_brings_a_pool_to_its_class_and_then_has_nothing_to_do() -> None:
    plan = class_plan(pool(), {AGENTPOOL: "gpu"}, [GPU], DEFAULTS)
    assert plan.spec == {"maxIPs": 64, "minFreeIPs": 16, "maxFreeIPs": 48}
    # the pod subnet of an existing pool is not the class's to change, and the pool says so
    assert plan.label == "gpu" and plan.condition is not None
    assert (plan.condition.status, plan.condition.reason) == (False, "ChangeRefused")
    assert "podSubnetID" not in plan.spec and plan.refused
    done = pool({CLASS_LABEL: "gpu"}, 0, (True, "Following", "spec follows NodeIPPoolClass gpu"),
                maxIPs=64, minFreeIPs=16, maxFreeIPs=48, podSubnetID=POD_SUBNET)
    settled = class_plan(done, {AGENTPOOL: "gpu"}, [GPU], DEFAULTS)
    assert not settled.writes, settled
    assert settled.condition is None


@pytest.mark.parametrize(("before", "labels", "classes", "label", "reason", "clear"), [
    # the node left every group: the label goes, the condition says why
    ({CLASS_LABEL: "gpu"}, {AGENTPOOL: "system"}, [GPU], "", "NoMatchingClass", False),
    # the last class was deleted: label and condition go, the spec stays
    ({CLASS_LABEL: "gpu"}, {AGENTPOOL: "gpu"}, [], "", None, True),
    # two classes select it: the pool keeps its label
    ({CLASS_LABEL: "gpu"}, {AGENTPOOL: "gpu"}, [GPU, EVERY], None, "AmbiguousClasses", False),
])
def test_class_plan_when_no_single_class_selects_the_node(
        before: dict[str, str], labels: dict[str, str], classes: list[PoolClass],
        label: str | None, reason: str | None, clear: bool) -> None:
    current = (True, "Following", "spec follows NodeIPPoolClass gpu")
    plan = class_plan(pool(before, condition=current), labels, classes, DEFAULTS)
    assert plan.spec == {} and plan.label == label and plan.clear is clear
    assert (plan.condition.reason if plan.condition else None) == reason
