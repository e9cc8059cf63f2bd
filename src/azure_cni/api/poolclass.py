"""NodeIPPoolClass: pool settings for a group of nodes, chosen by the nodes' labels.

A cluster-scoped resource (``kubectl get nipc``) with a node selector (a Kubernetes label
selector) and the NodeIPPool spec fields it sets (``spec.pool``: any field but ``nodeName``).
The operator creates a new node's pool from the one class that selects the node, the chart's
``pool`` defaults filling the fields the class leaves out, and labels the pool with the class
(``azurecni.io/pool-class``). When a class changes, the pools of the nodes it selects follow
it where that is safe; where it is not (a mode change while pods use the pool, another pod
subnet), the pool keeps its spec and its ``PoolClass`` condition says why.

Everything here is pure: :func:`choose_class` (which class a node's pool comes from) and
:func:`follow_class` (what a class change does to an existing pool).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from azure_cni.api.nodeippool import (
    CLASS_LABEL,
    Condition,
    ConditionType,
    InvalidPool,
    NodeIPPool,
    PoolDefaults,
    PoolSpec,
)
from azure_cni.api.wire import Rule, WireError, decode, keys, wire

CLASS_KIND = "NodeIPPoolClass"
CLASS_PLURAL = "nodeippoolclasses"
CLASS_SHORT_NAME = "nipc"
#: spec fields a class may set (all of a NodeIPPool's but nodeName), as the CRD names them
CLASS_FIELDS = keys(PoolDefaults)
#: fields that cannot change while pods use the pool (the NodeIPPool CRD refuses it too)
_WHILE_UNUSED = ("mode", "blockPrefixLength")
#: a field that cannot change at all once the pool exists
_IMMUTABLE = ("podSubnetID",)


class InvalidClass(ValueError):
    """A NodeIPPoolClass that cannot be interpreted; the message names the field."""


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True)
class Requirement:
    key: str = field(metadata=wire(required=True, min_length=1))
    operator: SelectorOperator = field(metadata=wire(required=True))
    values: frozenset[str] = field(default=frozenset(), metadata=wire(list_type="atomic"))

    WIRE_RULES: ClassVar[tuple[Rule, ...]] = (Rule(
        "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
        "In and NotIn need values; Exists and DoesNotExist take none"),)

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator is SelectorOperator.EXISTS:
            return present
        if self.operator is SelectorOperator.DOES_NOT_EXIST:
            return not present
        if self.operator is SelectorOperator.IN:
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector; the empty one selects every node."""

    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels.items())
                and all(r.matches(labels) for r in self.match_expressions))

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.match_labels.items())]
        for r in self.match_expressions:
            if r.operator is SelectorOperator.EXISTS:
                parts.append(r.key)
            elif r.operator is SelectorOperator.DOES_NOT_EXIST:
                parts.append(f"!{r.key}")
            else:
                word = "in" if r.operator is SelectorOperator.IN else "notin"
                parts.append(f"{r.key} {word} ({','.join(sorted(r.values))})")
        return ",".join(parts) or "<every node>"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelSelector:
        try:
            return decode(cls, d, "spec.nodeSelector")
        except WireError as e:
            raise InvalidClass(str(e)) from e


@dataclass(frozen=True)
class PoolClass:
    """One NodeIPPoolClass: which nodes, and the pool fields it sets."""

    name: str
    selector: LabelSelector
    #: the NodeIPPool spec fields this class sets (CRD names), and only those
    pool: Mapping[str, Any] = field(default_factory=dict)
    generation: int = 0
    #: which event is newer (kopf's, or the controller's own list taken meanwhile); not
    #: part of what the class decides
    resource_version: str = field(default="", compare=False)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> PoolClass:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name") or "")
        if not name:
            raise InvalidClass("metadata.name is missing")
        spec = obj.get("spec") or {}
        pool = dict(spec.get("pool") or {})
        unknown = sorted(set(pool) - set(CLASS_FIELDS))
        if unknown:
            raise InvalidClass(f"NodeIPPoolClass {name}: spec.pool cannot set {unknown}")
        return cls(name, LabelSelector.from_dict(spec.get("nodeSelector") or {}), pool,
                   int(meta.get("generation") or 0), str(meta.get("resourceVersion") or ""))

    def spec_over(self, base: PoolSpec) -> PoolSpec:
        """``base`` with this class's fields in place of its own (not validated)."""
        merged = {**base.to_dict(), **self.pool}
        return PoolSpec.from_dict(merged, base.node_name)


class Choice(StrEnum):
    #: one class selects the node: its pool comes from it
    MATCHED = "Matched"
    #: the cluster has no class at all: the chart's defaults, as before classes existed
    NO_CLASSES = "NoClasses"
    #: classes exist, none selects the node: the chart's defaults, and a condition saying so
    NO_MATCHING_CLASS = "NoMatchingClass"
    #: several classes select the node: no pool is made (or changed) until that is mended
    AMBIGUOUS = "AmbiguousClasses"
    #: the one class that selects the node would give it an invalid pool: none is made
    INVALID = "InvalidClass"


@dataclass(frozen=True)
class ClassChoice:
    kind: Choice
    #: the spec a new pool gets (None when ambiguous or invalid: no pool is made)
    spec: PoolSpec | None
    #: the class chosen (MATCHED, INVALID) or the classes in conflict (AMBIGUOUS)
    classes: tuple[str, ...] = ()
    message: str = ""

    @property
    def class_name(self) -> str:
        return self.classes[0] if self.kind is Choice.MATCHED else ""


def choose_class(node_name: str, labels: Mapping[str, str], classes: Iterable[PoolClass],
                 defaults: PoolSpec) -> ClassChoice:
    """Which class the pool of ``node_name`` (with ``labels``) comes from, and its spec.

    ``defaults`` is the chart's pool for this node; a class's fields go over it. A class
    whose fields make an invalid spec for this node is not applied (the choice says why).
    """
    known = sorted(classes, key=lambda c: c.name)
    if not known:
        return ClassChoice(Choice.NO_CLASSES, defaults)
    chosen = [c for c in known if c.selector.matches(labels)]
    if not chosen:
        return ClassChoice(
            Choice.NO_MATCHING_CLASS, defaults,
            message=f"no NodeIPPoolClass selects node {node_name} (labels "
                    f"{_labels(labels)}); its pool has the chart's pool defaults")
    if len(chosen) > 1:
        names = tuple(c.name for c in chosen)
        return ClassChoice(
            Choice.AMBIGUOUS, None, names,
            message=f"NodeIPPoolClasses {', '.join(names)} all select node {node_name}; "
                    "make their nodeSelectors exclusive (the pool is left as it is)")
    cls = chosen[0]
    spec = cls.spec_over(defaults)
    try:
        spec.validate()
    except InvalidPool as e:
        return ClassChoice(Choice.INVALID, None, (cls.name,),
                           message=f"NodeIPPoolClass {cls.name} over the chart's defaults "
                                   f"gives node {node_name} an invalid pool: {e}")
    return ClassChoice(Choice.MATCHED, spec, (cls.name,),
                       message=f"from NodeIPPoolClass {cls.name} (generation "
                               f"{cls.generation})")


@dataclass(frozen=True)
class ClassUpdate:
    """What following a class does to an existing pool's spec."""

    spec: PoolSpec
    #: the fields that change (CRD names), in CLASS_FIELDS order
    changed: tuple[str, ...] = ()
    #: why the fields that were not changed could not be (one sentence each)
    refused: tuple[str, ...] = ()


def follow_class(current: PoolSpec, used: int, cls: PoolClass) -> ClassUpdate:
    """The pool's spec once it follows ``cls``, changing only what is safe.

    Only the fields the class sets are its; the others stay as the pool has them (an
    admin's ``kubectl scale`` of a field the class leaves out is kept). ``podSubnetID``
    never changes on an existing pool, ``mode`` and ``blockPrefixLength`` only while no pod
    uses it (``used`` is the agent's count), and a result that would be an invalid spec
    changes nothing.
    """
    now = current.to_dict()
    wanted = {k: v for k, v in cls.pool.items() if now.get(k) != v}
    refused = []
    for key in _IMMUTABLE:
        if key in wanted:
            wanted.pop(key)
            refused.append(f"{key} stays {now[key]!r}: the pool's addresses are on that "
                           "subnet's NIC; drain the node and delete its NodeIPPool to move it")
    if used > 0 and any(k in wanted for k in _WHILE_UNUSED):
        keys = [k for k in _WHILE_UNUSED if k in wanted]
        for key in keys:
            wanted.pop(key)
        refused.append(f"{' and '.join(keys)} cannot change while {used} pods use the pool; "
                       "drain the node and it will follow")
    if not wanted:
        return ClassUpdate(current, (), tuple(refused))
    spec = PoolSpec.from_dict({**now, **wanted}, current.node_name)
    try:
        spec.validate()
    except InvalidPool as e:
        refused.append(f"following it would make the pool invalid: {e}")
        return ClassUpdate(current, (), tuple(refused))
    changed = tuple(k for k in CLASS_FIELDS if k in wanted)
    return ClassUpdate(spec, changed, tuple(refused))


def class_condition(choice: ClassChoice, update: ClassUpdate | None = None
                    ) -> Condition | None:
    """The pool's ``PoolClass`` condition (None when the cluster has no class at all)."""
    if choice.kind is Choice.NO_CLASSES:
        return None
    if choice.kind is not Choice.MATCHED:
        return Condition(ConditionType.POOL_CLASS, False, str(choice.kind), choice.message)
    if update is not None and update.refused:
        return Condition(ConditionType.POOL_CLASS, False, "ChangeRefused",
                         f"follows NodeIPPoolClass {choice.class_name} except: "
                         + "; ".join(update.refused))
    return Condition(ConditionType.POOL_CLASS, True, "Following",
                     f"spec follows NodeIPPoolClass {choice.class_name}")


@dataclass(frozen=True)
class ClassPlan:
    """What to write to an existing pool so that it follows its class (nothing: all empty)."""

    choice: ClassChoice
    #: spec fields to change (CRD names -> values)
    spec: Mapping[str, Any] = field(default_factory=dict)
    #: the pool's class label: a class name, "" to remove it, None to leave it
    label: str | None = None
    #: the PoolClass condition to apply, when it differs from the pool's; ``clear`` removes it
    condition: Condition | None = None
    clear: bool = False
    refused: tuple[str, ...] = ()

    @property
    def writes(self) -> bool:
        return bool(self.spec) or self.label is not None or self.condition is not None \
            or self.clear


def class_plan(pool: NodeIPPool, labels: Mapping[str, str], classes: Iterable[PoolClass],
               defaults: PoolSpec) -> ClassPlan:
    """What following the classes means for ``pool`` (on the node with ``labels``) now.

    The matching class's fields go onto the pool where that is safe (``follow_class``); the
    pool's class label names the class (none when no class selects the node); the
    ``PoolClass`` condition says which class the pool follows, or why not. A pool whose node
    several classes select keeps its spec and its label.
    """
    known = list(classes)
    choice = choose_class(pool.name, labels, known, defaults)
    update = None
    spec: dict[str, Any] = {}
    label: str | None = None
    if choice.kind is Choice.MATCHED:
        cls = next(c for c in known if c.name == choice.class_name)
        update = follow_class(pool.spec, pool.status.used, cls)
        after = update.spec.to_dict()
        spec = {k: after[k] for k in update.changed}
        label = choice.class_name
    elif choice.kind in (Choice.NO_CLASSES, Choice.NO_MATCHING_CLASS):
        label = ""
    if label is not None and pool.labels.get(CLASS_LABEL, "") == label:
        label = None
    condition = class_condition(choice, update)
    current = pool.status.condition(ConditionType.POOL_CLASS)
    clear = condition is None and current is not None
    if condition is not None and current is not None and (
            condition.status, condition.reason, condition.message) == (
            current.status, current.reason, current.message):
        condition = None
    return ClassPlan(choice, spec, label, condition, clear,
                     update.refused if update is not None else ())


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"


def classes_from(objects: Sequence[Mapping[str, Any]]) -> tuple[list[PoolClass], list[str]]:
    """The readable classes among ``objects``, and a message per unreadable one."""
    out, problems = [], []
    for obj in objects:
        try:
            out.append(PoolClass.from_object(obj))
        except InvalidClass as e:
            problems.append(str(e))
    return out, problems

