"""Node groups: new pools from their NodeIPPoolClass, and existing pools following it.

The operator keeps every NodeIPPoolClass and every Node's labels (from its watches), and
carries out the pure decisions of ``api.poolclass``: a new node's pool is made from the one
class that selects it (the chart's ``pool`` defaults when the cluster has no class, or none
selects the node); when a class or a node's labels change, each pool affected gets the
class's fields where that is safe, its ``azurecni.io/pool-class`` label and its ``PoolClass``
condition, and an Event says what changed or what was refused.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

from azure_cni.api.nodeippool import NodeIPPool
from azure_cni.api.poolclass import (
    Choice,
    ClassChoice,
    InvalidClass,
    PoolClass,
    choose_class,
    class_plan,
)
from azure_cni.api.settings import PoolDefaults
from azure_cni.operator.kube import KubePools

log = logging.getLogger(__name__)


#: a Node's labels, sorted by key: key, value, key, value, ...
PackedLabels = tuple[str, ...]


def pack_labels(labels: Mapping[str, Any]) -> PackedLabels:
    """A Node's labels as one flat tuple of interned strings. Nodes share most of their
    labels (an AKS node has about 27, all alike but its hostname), and every watch event
    parses them afresh: kept as a dict of their own strings they took 5 KB a node."""
    return tuple(sys.intern(str(s)) for key in sorted(labels) for s in (key, labels[key]))


def unpack_labels(packed: PackedLabels) -> dict[str, str]:
    return dict(zip(packed[::2], packed[1::2], strict=True))


class ClassSync:
    """What the operator knows of classes and node labels, and the writes that follow."""

    def __init__(self, kube: KubePools, defaults: PoolDefaults) -> None:
        self.kube = kube
        self.defaults = defaults
        self.classes: dict[str, PoolClass] = {}
        #: every Node's labels (packed: they are read only when a pool is made or synced)
        self.labels: dict[str, PackedLabels] = {}

    # -- watch events ----------------------------------------------------------------------

    def class_event(self, kind: str, obj: Mapping[str, Any]) -> bool:
        """Keep what a class event says (the caller drops stale ones); True when what the
        class decides changed."""
        name = str((obj.get("metadata") or {}).get("name") or "")
        if kind == "DELETED":
            return self.classes.pop(name, None) is not None
        try:
            cls = PoolClass.from_object(obj)
        except InvalidClass as e:
            log.warning("event=pool_class_unreadable class=%s error=%s", name, e)
            return False
        changed = self.classes.get(name) != cls
        self.classes[name] = cls
        return changed

    def node_labels(self, node: str, labels: Mapping[str, str]) -> bool:
        """Record a Node's labels; True when they changed (its pool may follow another class)."""
        wanted = pack_labels(labels)
        before = self.labels.get(node)
        self.labels[node] = wanted
        return before is not None and before != wanted

    def node_labels_of(self, node: str) -> dict[str, str]:
        return unpack_labels(self.labels.get(node, ()))

    def forget_node(self, node: str) -> None:
        self.labels.pop(node, None)

    # -- decisions carried out --------------------------------------------------------------

    def choose(self, node: str) -> ClassChoice:
        return choose_class(node, self.node_labels_of(node), self.classes.values(),
                            self.defaults.spec_for(node))

    async def create_pool(self, node: str, uid: str) -> bool:
        """Create the node's pool from its class; False when it exists or no single class can
        make it (an Event on the Node says why; a class change tries again)."""
        choice = self.choose(node)
        if choice.spec is None:
            log.warning("event=pool_not_created node=%s reason=%s message=%r", node,
                        choice.kind, choice.message)
            await self.kube.post_node_event(node, "Warning", str(choice.kind), choice.message)
            return False
        created = await self.kube.create_pool(node, uid, choice.spec, choice.class_name)
        if created and choice.kind is Choice.MATCHED:
            log.info("event=pool_created_from_class node=%s class=%s", node, choice.class_name)
        elif created and choice.kind is Choice.NO_MATCHING_CLASS:
            await self.kube.post_node_event(node, "Warning", str(choice.kind), choice.message)
        return created

    async def sync(self, pool: NodeIPPool) -> None:
        """Bring an existing pool to its class (what is safe) and say what happened."""
        if pool.deleting:
            return
        plan = class_plan(pool, self.node_labels_of(pool.name), self.classes.values(),
                          self.defaults.spec_for(pool.name))
        if not plan.writes:
            return
        await self.kube.follow_class(pool.name, plan)
        name = plan.choice.class_name
        if plan.spec:
            changed = ", ".join(f"{k}={v}" for k, v in plan.spec.items())
            log.info("event=pool_follows_class pool=%s class=%s changed=%s", pool.name, name,
                     changed)
            await self.kube.post_event(pool, "Normal", "FollowsPoolClass",
                                       f"spec follows NodeIPPoolClass {name}: {changed}")
        if plan.condition is not None and not plan.condition.status:
            log.warning("event=pool_class_refused pool=%s reason=%s message=%r", pool.name,
                        plan.condition.reason, plan.condition.message)
            await self.kube.post_event(pool, "Warning", plan.condition.reason,
                                       plan.condition.message)
