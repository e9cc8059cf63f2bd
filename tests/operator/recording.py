"""A recording ``PoolWriter``: NodeIPPools kept as an API server would keep them, in memory.

Status writes merge the operator's fields and bump the resourceVersion; the agent's fields are
set with ``act_as_agent``; Events and finalizer changes are recorded. Faults can be planned
for the next status write (an operator killed between its NIC write and its status write).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from azure_cni.api.nodeippool import (
    AGENT_CONDITIONS,
    CLASS_CONDITIONS,
    CLASS_LABEL,
    NodeIPPool,
    PoolSpec,
    PoolStatus,
    rfc3339,
    utcnow,
)
from azure_cni.api.poolclass import ClassPlan
from azure_cni.operator.kube import FINALIZER, PoolGone


@dataclass
class RecordedEvent:
    pool: str
    type: str
    reason: str
    message: str


class Killed(Exception):
    """The operator died here (raised by a planned fault)."""


@dataclass
class RecordingPools:
    pools: dict[str, NodeIPPool] = field(default_factory=dict)
    events: list[RecordedEvent] = field(default_factory=list)
    status_writes: int = 0
    version: int = 0
    kill_next_status_write: bool = False
    finalizer_calls: list[tuple[str, str]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    #: called with (name, pool) after every change, (name, None) after a deletion: a watch
    listeners: list[Callable[[str, NodeIPPool | None], None]] = field(default_factory=list)
    #: the Node objects the API server holds, by name (what the controller lists)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the NodeIPPoolClass objects the API server holds, by name (what the controller lists)
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: called after a status write is stored, before it returns (a concurrent actor)
    after_status_write: Callable[[str], None] | None = None

    def _bump(self, pool: NodeIPPool) -> NodeIPPool:
        self.version += 1
        stored = replace(pool, resource_version=str(self.version))
        self.pools[pool.name] = stored
        for listener in self.listeners:
            listener(pool.name, stored)
        return stored

    def _gone(self, name: str) -> None:
        del self.pools[name]
        for listener in self.listeners:
            listener(name, None)

    def create(self, name: str, spec: PoolSpec | None = None, *,
               finalizers: tuple[str, ...] = (FINALIZER,),
               labels: Mapping[str, str] | None = None) -> NodeIPPool:
        return self._bump(NodeIPPool(name, spec or PoolSpec(name), generation=1, uid=f"uid-{name}",
                                     finalizers=finalizers, labels=dict(labels or {})))

    def get(self, name: str) -> NodeIPPool:
        return self.pools[name]

    def edit_spec(self, name: str, **changes: Any) -> NodeIPPool:
        pool = self.pools[name]
        return self._bump(replace(pool, spec=replace(pool.spec, **changes),
                                  generation=pool.generation + 1))

    def act_as_agent(self, name: str, used: int, acks: set[str] | None = None,
                     cooling: int = 0) -> NodeIPPool:
        pool = self.pools[name]
        status = replace(pool.status, used=used, cooling=cooling,
                         release_acks=frozenset(acks or ()))
        return self._bump(replace(pool, status=status))

    def delete(self, name: str) -> NodeIPPool:
        pool = self.pools[name]
        if not pool.finalizers:
            self._gone(name)
            return pool
        return self._bump(replace(pool, deletion_timestamp=utcnow()))

    def reasons(self, name: str) -> list[str]:
        return [e.reason for e in self.events if e.pool == name]

    # -- the PoolWriter protocol ------------------------------------------------------------

    async def apply_status(self, name: str, fields: Mapping[str, Any]) -> NodeIPPool:
        if self.kill_next_status_write:
            self.kill_next_status_write = False
            raise Killed("killed before the status write")
        self.status_writes += 1
        pool = self.pools.get(name)
        if pool is None:
            raise PoolGone(f"NodeIPPool {name} no longer exists")
        mine = PoolStatus.from_dict(dict(fields))
        agents = tuple(c for c in pool.status.conditions
                       if c.type in AGENT_CONDITIONS | CLASS_CONDITIONS)
        # the agent's fields stay as they are, as under server-side apply
        status = replace(mine, used=pool.status.used, cooling=pool.status.cooling,
                         release_acks=pool.status.release_acks,
                         idle_blocks=pool.status.idle_blocks,
                         pod_requests=pool.status.pod_requests,
                         conditions=mine.conditions + agents)
        stored = self._bump(replace(pool, status=status))
        if self.after_status_write is not None:
            self.after_status_write(name)
        return stored

    async def post_event(self, pool: NodeIPPool, kind: str, reason: str, message: str) -> None:
        self.events.append(RecordedEvent(pool.name, kind, reason, message))

    async def post_pod_event(self, namespace: str, pod: str, kind: str, reason: str,
                             message: str) -> None:
        self.events.append(RecordedEvent(f"pod:{namespace}/{pod}", kind, reason, message))

    async def add_finalizer(self, name: str) -> None:
        self.finalizer_calls.append(("add", name))
        pool = self.pools[name]
        self._bump(replace(pool, finalizers=(*pool.finalizers, FINALIZER)))

    async def remove_finalizer(self, pool: NodeIPPool) -> None:
        self.finalizer_calls.append(("remove", pool.name))
        stored = self.pools.get(pool.name)
        if stored is None:
            return
        finalizers = tuple(f for f in stored.finalizers if f != FINALIZER)
        if stored.deleting and not finalizers:
            self._gone(pool.name)
        else:
            self._bump(replace(stored, finalizers=finalizers))

    # -- what the controller lists and reads ------------------------------------------------

    async def list_pools(self) -> AsyncIterator[list[dict[str, Any]]]:
        yield [as_object(pool) for pool in self.pools.values()]

    async def list_nodes(self) -> AsyncIterator[list[dict[str, Any]]]:
        yield list(self.nodes.values())

    async def list_classes(self) -> AsyncIterator[list[dict[str, Any]]]:
        yield list(self.classes.values())

    async def node_uid(self, name: str) -> str | None:
        node = self.nodes.get(name)
        return str(node["metadata"]["uid"]) if node is not None else None

    # -- what the controller adds: pools of new nodes ----------------------------------------

    async def create_pool(self, node_name: str, node_uid: str, spec: PoolSpec,
                          pool_class: str = "") -> bool:
        if node_name in self.pools:
            return False
        self.created.append(node_name)
        self.create(node_name, spec, labels={CLASS_LABEL: pool_class} if pool_class else {})
        return True

    async def follow_class(self, name: str, plan: ClassPlan) -> None:
        pool = self.pools.get(name)
        if pool is None:
            return
        if plan.spec:
            spec = PoolSpec.from_dict({**pool.spec.to_dict(), **plan.spec}, name)
            pool = replace(pool, spec=spec, generation=pool.generation + 1)
        if plan.label is not None:
            labels = {k: v for k, v in pool.labels.items() if k != CLASS_LABEL}
            pool = replace(pool, labels={**labels, **({CLASS_LABEL: plan.label}
                                                      if plan.label else {})})
        if plan.condition is not None or plan.clear:
            others = tuple(c for c in pool.status.conditions if c.type not in CLASS_CONDITIONS)
            mine = (plan.condition,) if plan.condition is not None else ()
            pool = replace(pool, status=replace(pool.status, conditions=others + mine))
        self._bump(pool)

    async def post_node_event(self, node: str, kind: str, reason: str, message: str) -> None:
        self.events.append(RecordedEvent(f"node:{node}", kind, reason, message))

    async def delete_pool(self, name: str) -> None:
        if name in self.pools:
            self.delete(name)


def as_object(pool: NodeIPPool) -> dict[str, Any]:
    """The pool as the API server would list it."""
    meta: dict[str, Any] = {"name": pool.name, "uid": pool.uid,
                            "resourceVersion": pool.resource_version,
                            "generation": pool.generation, "finalizers": list(pool.finalizers)}
    if pool.deletion_timestamp is not None:
        meta["deletionTimestamp"] = rfc3339(pool.deletion_timestamp)
    if pool.labels:
        meta["labels"] = dict(pool.labels)
    status = {**pool.status.operator_fields(), **pool.status.agent_fields()}
    status["conditions"] = [c.to_dict() for c in pool.status.conditions]
    return {"metadata": meta, "spec": pool.spec.to_dict(), "status": status}
