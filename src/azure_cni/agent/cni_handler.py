"""The CNI verbs, served by the agent: ADD, DEL, CHECK, STATUS and GC.

Concurrency: requests for the same (container id, ifname) run one after the other (a lock per
key); requests for different pods run in parallel and meet only in the allocator's short
pick-and-record step. Netlink work runs on a thread pool, so the event loop stays free.

Errors are raised as they happen (typed CNI errors, datapath and store exceptions); the
server maps them to CNI codes in one place (``server.cni_error_for``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from azure_cni.agent.allocator import AttachedElsewhere, PodAsks, PoolBeingDeleted
from azure_cni.agent.attachments import Attachments
from azure_cni.agent.pool_source import PoolHints, nodeippool_hints
from azure_cni.api.attachment import AttachmentKey
from azure_cni.api.podnet import requested_features
from azure_cni.cni.errors import (
    DatapathMismatch,
    InvalidConfig,
    LimitedConnectivity,
    NotAvailable,
    TryAgainLater,
    UnknownContainer,
)
from azure_cni.cni.request import CniRequest
from azure_cni.cni.result import AttachmentResult, build_result
from azure_cni.datapath.names import host_veth_name
from azure_cni.ipam.store import Assignment

log = logging.getLogger(__name__)


class PoolExhausted(TryAgainLater):
    """No address could be handed out within the wait budget."""


@dataclass(frozen=True)
class Reply:
    """What the shim prints on success (possibly nothing) and a note for the runtime's log."""

    output: bytes = b""
    warning: str = ""


class CniHandler:
    """Serves the CNI verbs for one node."""

    def __init__(
        self,
        *,
        node_name: str,
        attachments: Attachments,
        add_wait_seconds: float,
        on_change: Callable[[], None] = lambda: None,
        egress_problem: Callable[[], str] = lambda: "",
        hints: PoolHints | None = None,
        pool_problem: Callable[[], str] = lambda: "",
    ) -> None:
        self.node_name = node_name
        self.attachments = attachments
        self.allocator = attachments.allocator
        self.add_wait_seconds = add_wait_seconds
        self.on_change = on_change
        self.egress_problem = egress_problem
        self.hints = hints or nodeippool_hints(node_name)
        self.pool_problem = pool_problem
        self.locks = attachments.locks
        #: attachments whose ADD is running (GC leaves them alone, see ``gc``)
        self._adding: Counter[AttachmentKey] = Counter()

    async def handle(self, request: CniRequest) -> Reply:
        verb = {"ADD": self.add, "DEL": self.delete, "CHECK": self.check,
                "STATUS": self.status, "GC": self.gc}[request.command]
        return await verb(request)

    # -- ADD -------------------------------------------------------------------------------

    async def add(self, request: CniRequest) -> Reply:
        problem = self.egress_problem()
        if problem:
            # fail closed: without the filter a pod could reach the wireserver and IMDS
            raise TryAgainLater("pods are not set up on this node until its egress rules are "
                                "in place (the wireserver and instance metadata block)",
                                f"{problem}; the agent retries by itself")
        self._adding[request.key] += 1
        try:
            return await self._add(request)
        finally:
            self._adding[request.key] -= 1
            if not self._adding[request.key]:
                del self._adding[request.key]

    async def _add(self, request: CniRequest) -> Reply:
        key = request.key
        budget = max(0.0, min(self.add_wait_seconds, request.deadline_seconds - 1.0))
        public_ip, backend_pools = requested_features(request.pod_annotations)
        # for the operator, through the pool's status; pods asking nothing skip this
        asks = (PodAsks(public_ip, backend_pools, request.pod_uid)
                if public_ip or backend_pools else None)
        try:
            attached = await self.attachments.attach(
                key, netns=request.netns, pod=request.pod, network=request.network,
                wait=budget, asks=asks)
        except PoolBeingDeleted as e:
            raise TryAgainLater(
                f"the NodeIPPool of node {self.node_name} is being deleted; no new pod "
                "gets an address on this node until the pool is recreated",
                f"its addresses go back to Azure as their pods go (kubectl describe "
                f"nodeippool {e})") from e
        except AttachedElsewhere as e:
            raise TryAgainLater(f"{key} is already attached in another network namespace",
                                f"recorded {e.netns}, requested {request.netns}; "
                                "the runtime must DEL it first") from e
        if attached is None:
            raise await self._exhausted(budget)
        address, pod = attached.assignment.address, attached.pod
        if attached.created or asks is not None:
            self.on_change()
        if attached.created:
            log.info("event=add container=%s ifname=%s address=%s veth=%s pod=%s",
                     key.container_id, key.ifname, address, pod.host_veth, request.pod or "-")
        result = build_result(AttachmentResult(
            host_veth=pod.host_veth, host_mac=pod.host_mac, ifname=pod.ifname,
            pod_mac=pod.pod_mac, sandbox=request.netns, address=address,
            gateway=pod.gateway, mtu=pod.mtu), request.cni_version)
        return Reply(json.dumps(result).encode())

    async def _exhausted(self, waited: float) -> PoolExhausted:
        usage = await self.allocator.usage()
        if not usage.known:
            return PoolExhausted(f"the pool of node {self.node_name} is not known yet",
                                 f"waited {waited:.0f}s for {self.hints.name}; "
                                 f"{self.pool_problem() or self.hints.when_unknown}")
        return PoolExhausted(
            f"the pool of node {self.node_name} is exhausted",
            f"waited {waited:.0f}s for {self.hints.who_adds} to add addresses: "
            f"{usage.describe()}")

    # -- DEL -------------------------------------------------------------------------------

    async def delete(self, request: CniRequest) -> Reply:
        key = request.key
        warnings = []
        try:
            listed = request.prev_result_addresses()
        except InvalidConfig as e:
            listed = None
            warnings.append(f"ignored an unreadable prevResult ({e})")
        async with self.locks.hold(key):
            assignment = await self.allocator.get(key)
            veth = assignment.host_veth if assignment else host_veth_name(*_parts(key))
            await self.attachments.teardown(veth)
            if assignment is not None:
                await self.allocator.release(key)
        if listed:
            warnings += self._foreign_addresses(listed, assignment)
        if assignment is not None:
            self.on_change()
            log.info("event=del container=%s ifname=%s address=%s", key.container_id,
                     key.ifname, assignment.address)
        for warning in warnings:
            log.warning("event=del_warning container=%s ifname=%s warning=%r",
                        key.container_id, key.ifname, warning)
        return Reply(warning="; ".join(warnings))

    def _foreign_addresses(self, listed: set[str], assignment: Assignment | None) -> list[str]:
        pool = self.allocator.pool
        inventory = {ip.address for ip in pool.status.ips} if pool else set()
        held = assignment.address if assignment else None
        notes = []
        for address in sorted(listed - {held}):
            if address not in inventory:
                notes.append(f"prevResult lists {address}, which is not in the pool of node "
                             f"{self.node_name}; it was left alone")
            elif held is not None:
                notes.append(f"prevResult lists {address}, but this attachment holds {held}")
        return notes

    # -- CHECK -----------------------------------------------------------------------------

    async def check(self, request: CniRequest) -> Reply:
        key = request.key
        listed = request.prev_result_addresses()
        if listed is None:
            raise InvalidConfig("CHECK needs prevResult", "the runtime must pass the cached "
                                                          "ADD result")
        async with self.locks.hold(key):
            assignment = await self.allocator.get(key)
            if assignment is None:
                raise UnknownContainer(f"no address is recorded for {key}",
                                       "ADD was never run for it, or it was deleted")
            if assignment.address not in listed:
                foreign = self._foreign_addresses(listed, assignment)
                raise InvalidConfig("prevResult does not match the agent's record",
                                    "; ".join(foreign) or f"prevResult lists no address; "
                                    f"{key} holds {assignment.address}")
            if assignment.netns != request.netns:
                raise InvalidConfig("CNI_NETNS differs from the ADD's",
                                    f"ADD used {assignment.netns}, CHECK got {request.netns}")
            pod = self.attachments.pod_network(key, netns=request.netns,
                                               address=assignment.address)
            problems = await self.attachments.netlink(self.attachments.datapath.check_pod_veth,
                                                      pod)
        if problems:
            raise DatapathMismatch(f"the network of {key} differs from what ADD built",
                                   "; ".join(problems))
        return Reply()

    # -- STATUS ----------------------------------------------------------------------------

    async def status(self, request: CniRequest) -> Reply:
        """Fails only when this node cannot network pods (pool unknown, egress rules missing;
        the shim answers for an agent that does not serve). A pool with no address free this
        second is not such a case: it grows, and containerd 2.x turns a STATUS error into a
        NotReady node."""
        if self.allocator.pool is None:
            raise NotAvailable(f"the agent has not received {self.hints.name} yet",
                               self.pool_problem() or self.hints.when_unknown)
        problem = self.egress_problem()
        if problem:
            raise LimitedConnectivity("the node's egress rules are not in place", problem)
        return Reply()

    # -- the agent's own sweep ---------------------------------------------------------------

    async def free_vanished_pods(self, older_than: float = 30.0) -> list[Assignment]:
        """Free addresses of pods whose network namespace and host veth are both gone.

        Runtimes do not always send DEL (a node reboot, a DEL chain stopped by a failing
        plugin, containerd #12130) and containerd 1.6 never sends GC, so the agent also looks
        for itself. Both signals are required: a missing namespace file alone could mean the
        agent cannot see the runtime's namespace directory, and a live pod always has its
        host veth. Young attachments are left alone (their ADD may still be running).
        """
        now = time.time()
        candidates = [a for a in await self.allocator.assignments()
                      if a.netns and now - a.assigned_at >= older_than
                      and not os.path.exists(a.netns)]
        if not candidates:
            return []
        freed = []
        for assignment in candidates:
            async with self.locks.hold(assignment.key):
                if await self.allocator.get(assignment.key) != assignment:
                    continue
                veths = await self.attachments.netlink(
                    self.attachments.datapath.list_host_veths)
                if os.path.exists(assignment.netns) or assignment.host_veth in {
                        v.name for v in veths}:
                    continue
                await self.allocator.release(assignment.key)
                freed.append(assignment)
                log.warning("event=vanished_pod_freed container=%s ifname=%s address=%s "
                            "netns=%s", assignment.key.container_id, assignment.key.ifname,
                            assignment.address, assignment.netns)
        if freed:
            self.on_change()
        return freed

    # -- GC --------------------------------------------------------------------------------

    async def gc(self, request: CniRequest) -> Reply:
        """Free the attachments of ``request.network`` that its list does not name.

        The spec's list is of the still valid attachments *to this network*: an attachment
        another network's ADD made (a second conflist of this plugin, a Multus secondary
        network) is not that GC's to judge, and neither is one recorded before the agent kept
        network names (DEL and the vanished-pod sweep free those).
        """
        keep = request.valid_attachments()
        if keep is None:
            note = ("GC without cni.dev/valid-attachments frees nothing; the runtime has "
                    "already sent DEL for the attachments it knows")
            log.warning("event=gc_without_list")
            return Reply(warning=note)
        started = time.time()
        # The runtime made its list before this GC; an ADD still running now is missing from
        # it although it will succeed (its address is recorded before its veth is built).
        adding = set(self._adding)
        failures = []
        freed = []
        for assignment in await self.allocator.assignments():
            if (assignment.network != request.network or assignment.key in keep
                    or assignment.key in adding or assignment.assigned_at >= started):
                continue
            async with self.locks.hold(assignment.key):
                if await self.allocator.get(assignment.key) != assignment:
                    continue  # a DEL got there first
                try:
                    await self.attachments.teardown(assignment.host_veth)
                except OSError as e:
                    failures.append(f"{assignment.key}: {e}")
                    continue
                await self.allocator.release(assignment.key)
                freed.append(assignment)
        if freed:
            self.on_change()
        log.info("event=gc network=%s kept=%d freed=%d failed=%d addresses=%s",
                 request.network, len(keep), len(freed), len(failures),
                 ",".join(a.address for a in freed) or "-")
        if failures:
            raise TryAgainLater(f"GC could not free {len(failures)} attachment(s)",
                                "; ".join(failures))
        return Reply()


def _parts(key: AttachmentKey) -> tuple[str, str]:
    return key.container_id, key.ifname
