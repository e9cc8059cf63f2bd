"""The node agent: follows its pool, serves the CNI shim, reports its status.

The pool comes from a ``PoolSource`` (``agent.pool_source``): the node's NodeIPPool on a
Kubernetes node, the NIC's addresses through the instance metadata service on a VM without
Kubernetes. Everything here is the same for both.

Start-up, in this order, so that nothing is handed out before the agent knows what is in use:
1. the host's python for the shim exists (else: condition AgentReady=False, exit 2);
2. the store opens and agrees with the host's pod veths (else: refuse to start, exit 3);
3. forwarding sysctls and the pod egress chains (a first attempt; retried from 1 s on,
   backing off to 30 s), then DEL requests the shim spooled while the agent was down;
4. the unix socket serves (DEL, CHECK, GC and STATUS work from here on; ADD only while the
   egress chains are in place: no pod may start without the wireserver/IMDS block);
5. once the pool is known (from its ``PoolSource``) and the egress chains are in place:
   the shim and the conflist are installed and AgentReady becomes True.

The conflist stays when the agent stops (a DaemonSet roll) and when the pool is deleted:
without it containerd reports the node's network as not ready and fails every DEL. While
the agent is away the shim fails ADD with "try again later" (kubelet retries), spools DEL,
and answers STATUS as ready for a short grace after a graceful stop (``shim.AGENT_STOPPED``).
It is removed when the agent refuses to start (exit 2 or 3: no restart will help until an
admin acts) and by ``azure-cni-agent --uninstall``.

This module is the agent's lifecycle and its pool: start-up in that order, adopting each
version of the pool, readiness, the shim's install, and a clean stop. The other jobs live in
modules of their own: the CNI verbs (``cni_handler``) over the attachment service
(``attachments``), the start-up check of the host (``recovery.recover_node``), the egress
chains kept in place (``egress``), the spooled DELs (``spool``), the status fields written
to the pool (``status_reporter``), the status document (``status``) and the metrics and
probe server (``metrics.serve_metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from azure_cni.agent import install
from azure_cni.agent.allocator import Allocator, stray_requests
from azure_cni.agent.attachments import Attachments, Datapath
from azure_cni.agent.cni_handler import CniHandler
from azure_cni.agent.egress import EgressReconciler
from azure_cni.agent.exitcodes import AgentExit
from azure_cni.agent.metrics import AgentMetrics, serve_metrics
from azure_cni.agent.pool_source import PoolSource
from azure_cni.agent.recovery import RefuseToStart, recover_node
from azure_cni.agent.server import AgentServer
from azure_cni.agent.spool import replay_spool
from azure_cni.agent.status import AgentStatus, Readiness, read_status
from azure_cni.agent.status_reporter import StatusReporter
from azure_cni.aio.periodic import every
from azure_cni.aio.threads import on_thread
from azure_cni.api.nodeippool import (
    Condition,
    ConditionType,
    NodeIPPool,
    PoolStatus,
    rfc3339,
    set_condition,
    utcnow,
)
from azure_cni.api.podnet import AttachmentState
from azure_cni.api.settings import Settings
from azure_cni.cni.request import CniRequest
from azure_cni.ipam.store import StoreError
from azure_cni.preflight.node import agent_report, node_findings

log = logging.getLogger(__name__)

SPOOL_RESCAN_SECONDS = 10.0
VANISHED_POD_SWEEP_SECONDS = 60.0
NETLINK_THREADS = 8


class AgentStartupError(RuntimeError):
    """The agent cannot start; ``exit_code`` tells the process supervisor which case."""

    def __init__(self, message: str, exit_code: AgentExit, reason: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.reason = reason


class NodeAgent:
    """One node's agent; ``run`` serves until ``stop`` is set."""

    def __init__(self, *, settings: Settings, node_name: str, source: PoolSource,
                 datapath: Datapath, mtu: int, host_root: Path = Path("/"),
                 metrics: AgentMetrics | None = None, metrics_address: str = "") -> None:
        self.settings = settings
        self.agent = settings.agent
        self.node_name = node_name
        self.source = source
        self.datapath = datapath
        self.mtu = mtu
        self.host_root = host_root
        #: served on besides loopback ("" = loopback only): the node's address, for Prometheus
        self.metrics_address = metrics_address
        self.netlink = ThreadPoolExecutor(NETLINK_THREADS, thread_name_prefix="netlink")
        self.allocator = Allocator(Path(self.agent.state_dir) / "ipam.db",
                                   self.agent.cooldown_seconds)
        self.metrics = metrics or AgentMetrics()
        self.egress = EgressReconciler(settings.snat, self.netlink, host_root)
        self.attachments = Attachments(allocator=self.allocator, datapath=datapath,
                                       netlink=self.netlink, mtu=mtu)
        self.handler = CniHandler(
            node_name=node_name, attachments=self.attachments,
            add_wait_seconds=self.agent.add_wait_seconds,
            on_change=self._changed, egress_problem=lambda: self.egress.problem,
            hints=source.hints, pool_problem=lambda: self.source_problem)
        self.server = AgentServer(self.handler, self.metrics, self.status_document,
                                  self.health_problem, self.readiness_problem)
        self.reporter = StatusReporter(source, self._status_fields)
        self.readiness = Readiness(False, "Starting", "the agent is starting")
        self._condition: Condition | None = None
        self._installed = False
        self._serving = False
        self._pool_seen = False
        #: the next status write first takes over podRequests entries nobody owns
        self._adopt_strays = False
        #: why the pool cannot be read from its source now ("" when it can)
        self.source_problem = ""
        #: addresses pods hold that left the pool, already logged
        self._outside_pool: frozenset[str] = frozenset()
        #: (used, cooling, releaseAcks) to report when the store cannot be read
        self._reported_usage: tuple[int, int, frozenset[str]] | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.start()
            await stop.wait()
        finally:
            await self.shutdown()

    async def start(self) -> None:
        try:
            await self.allocator.open()
        except StoreError as e:
            await self._fail_early("RecoveryFailed", str(e))
            raise AgentStartupError(str(e), AgentExit.REFUSED_TO_START, "RecoveryFailed") from e
        try:
            install.check_host_python(self.agent, self.host_root)
        except install.HostPythonMissing as e:
            await self._fail_early("HostPythonMissing", str(e))
            raise AgentStartupError(str(e), AgentExit.NO_HOST_PYTHON, "HostPythonMissing") from e
        try:
            await recover_node(self.attachments)
        except RefuseToStart as e:
            await self._fail_early("RecoveryFailed", str(e))
            raise AgentStartupError(str(e), AgentExit.REFUSED_TO_START, "RecoveryFailed") from e
        await self.egress.ensure_sysctls()
        # the pod filter (wireserver, IMDS) needs no pool: in place before the first pod
        await self.egress.reconcile(None)
        await self.replay_spool()
        # after a reboot every pod namespace is gone: free their addresses before serving
        await self.handler.free_vanished_pods(older_than=0.0)
        self._set_readiness(False, "WaitingForPool",
                            f"serving; waiting for {self.source.hints.name}")
        await self.server.start(Path(self.agent.socket_path))
        self._serving = True
        install.stopped_marker(self.agent).unlink(missing_ok=True)
        self._metrics_runner = await serve_metrics(
            self.metrics, self.health_problem, self.readiness_problem, self.agent.metrics_port,
            self.metrics_address)
        self._tasks = [
            asyncio.create_task(self._watch_forever(), name="pool-watch"),
            asyncio.create_task(self.reporter.run(), name="status-reporter"),
            asyncio.create_task(every(SPOOL_RESCAN_SECONDS, self.replay_spool),
                                name="spool-rescan"),
            asyncio.create_task(self.egress.keep_in_place(self._install_when_ready),
                                name="egress-sync"),
            asyncio.create_task(every(VANISHED_POD_SWEEP_SECONDS,
                                      self.handler.free_vanished_pods),
                                name="vanished-pod-sweep"),
        ]
        # Everything loaded so far (kubernetes_asyncio's models alone are tens of thousands of
        # objects) lives as long as the process: keep the cyclic GC from rescanning it, which
        # otherwise stalls a request now and then for tens of milliseconds.
        gc.freeze()

    async def shutdown(self) -> None:
        """Stop serving, and tell the shim this is a graceful stop; the conflist stays."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._serving:
            self._set_readiness(False, "Stopped", "the agent stopped: pods start once it is "
                                "back (ADD answers try again later), DELs are spooled")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.reporter.flush(), timeout=5)
        await self.server.stop()
        if self._serving:
            try:
                install.mark_stopped(self.agent)
            except OSError as e:
                log.warning("event=stop_not_marked error=%s", e)
        self._serving = False
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
            self._metrics_runner = None
        await self.allocator.close()
        self.netlink.shutdown(wait=True)

    async def _fail_early(self, reason: str, message: str) -> None:
        """Tell the cluster why the agent will not serve (best effort: it may be down too).

        This is no restart but a node that cannot network pods until an admin acts: the
        conflist of an earlier run goes, so the runtime reports the node NotReady and the
        scheduler stops sending pods that would only fail."""
        log.error("event=startup_failed reason=%s message=%s", reason, message)
        install.remove_conflist(self.agent)
        self._set_readiness(False, reason, message)
        try:
            status = await asyncio.wait_for(self.source.reported(), timeout=10)
            if status is None:
                return
            # without a store, keep what the last agent reported rather than erase it
            self._reported_usage = (status.used, status.cooling, status.release_acks)
            self._pool_seen = True
            await asyncio.wait_for(self.reporter.flush(), timeout=10)
        except Exception as e:  # noqa: BLE001 - the API server may be the problem too
            log.warning("event=condition_not_reported error=%r", e)

    async def replay_spool(self) -> int:
        async def delete(request: CniRequest) -> object:
            return await self.handler.delete(request)

        count = await replay_spool(install.spool_dir(self.agent), self.allocator.get, delete)
        if count:
            self.metrics.spool_replayed.inc(count)
        return count

    # -- the pool --------------------------------------------------------------------------

    async def _watch_forever(self) -> None:
        await self.source.follow(self.pool_changed, self._source_trouble)

    def _source_trouble(self, problem: str) -> None:
        if problem == self.source_problem:
            return
        self.source_problem = problem
        if problem:
            log.warning("event=pool_source_trouble source=%r problem=%s",
                        self.source.hints.name, problem)
        if not self._pool_seen and self._serving:
            if problem:
                self._set_readiness(False, "PoolUnavailable", problem)
            else:
                self._set_readiness(False, "WaitingForPool",
                                    f"serving; waiting for {self.source.hints.name}")

    async def pool_changed(self, pool: NodeIPPool | None) -> None:
        """Adopt a new version of the pool (None: it does not exist)."""
        previous = self.allocator.pool
        if pool is None or previous is None or previous.uid != pool.uid:
            self.reporter.forget()
            self._adopt_strays = True
        await self.allocator.set_pool(pool)  # wakes the ADDs waiting for an address
        self._pool_seen = pool is not None
        if pool is None:
            if previous is not None:
                log.warning("event=pool_deleted node=%s", self.node_name)
            # the conflist stays (DELs of running pods need it); ADDs wait for a pool
            self._set_readiness(False, "NoPool", f"{self.source.hints.name} does not exist")
            return
        public = public_sources(pool)
        if previous is None or previous.status.nic != pool.status.nic:
            await self.egress.reconcile(pool.status.nic, public_sources=public)
        elif public != self.egress.policy.public_sources:
            await self.egress.reconcile(keep_nic=True, public_sources=public)
        await self._install_when_ready()
        await self._note_addresses_outside_pool()
        self._changed()

    async def _install_when_ready(self) -> None:
        """Install the shim and conflist once the pool is known and the egress chains are in
        place; keep AgentReady saying whether pods can start here."""
        if self.allocator.pool is None:
            return
        if not self.egress.in_place:
            self._set_readiness(False, "EgressRulesMissing",
                                f"pods are not set up until the egress rules are in place: "
                                f"{self.egress.problem}")
            return
        if not self._installed:
            await self._install()
            if not self._installed:
                return
        # what the node lacks (preflight.node): a configuration that sorts before ours keeps
        # pods from azure-cni (not ready); a missing chained plugin costs a feature (ready)
        report = agent_report(node_findings(self.agent, self.node_name,
                                            host_root=self.host_root, cni_root=Path("/")))
        ready, reason, message = report or (True, "Serving",
                                            f"serving pods on {self.agent.socket_path}")
        if self.readiness != Readiness(ready, reason, message):
            if report is not None:
                log.warning("event=node_check_failed reason=%s message=%s", reason, message)
            self._set_readiness(ready, reason, message)

    async def _note_addresses_outside_pool(self) -> None:
        """Say so, once, when an address a pod holds is no longer in the pool.

        The pod keeps its address and interface (its traffic stops reaching it: the NIC no
        longer holds the address), nothing else is given that address, and it comes back to
        life if the address is put back on the NIC. ``azure-cni status`` lists it and the
        ``azure_cni_agent_addresses_outside_pool`` metric counts it until the pod goes.
        """
        usage = await self.allocator.usage()
        self.metrics.set_pool(usage)
        outside = frozenset(usage.outside_pool)
        if outside - self._outside_pool:
            holders = {a.address: a for a in await self.allocator.assignments()}
            for address in sorted(outside - self._outside_pool):
                holder = holders.get(address)
                log.warning("event=address_left_pool address=%s container=%s ifname=%s "
                            "pod=%s source=%r; the pod keeps it but its traffic is not "
                            "delivered until the address is back on the NIC", address,
                            holder.key.container_id if holder else "-",
                            holder.key.ifname if holder else "-",
                            (holder.pod if holder else "") or "-", self.source.hints.name)
        pool = self.allocator.pool
        inventory = {ip.address for ip in pool.status.ips} if pool else set()
        for address in sorted((self._outside_pool - outside) & inventory):
            log.info("event=address_back_in_pool address=%s", address)
        self._outside_pool = outside

    async def _install(self) -> None:
        try:
            await on_thread(self.netlink, install.install_shim, self.agent, self.host_root)
            await on_thread(self.netlink, install.install_conflist, self.agent)
        except (install.HostPythonMissing, OSError) as e:
            self._set_readiness(False, "InstallFailed", str(e))
            log.error("event=install_failed error=%s", e)
            return
        self._installed = True

    # -- status ----------------------------------------------------------------------------

    async def status_document(self) -> AgentStatus:
        """What ``azure-cni status`` shows."""
        return await read_status(
            node=self.node_name, pool_source=self.source.hints.name,
            pool_source_problem=self.source_problem, readiness=self.readiness,
            socket=self.agent.socket_path, mtu=self.mtu, egress=self.egress,
            allocator=self.allocator)

    def _set_readiness(self, ready: bool, reason: str, message: str) -> None:
        self.readiness = Readiness(ready, reason, message)
        self.metrics.ready.set(1 if ready else 0)
        self.reporter.request()

    def _changed(self) -> None:
        self.reporter.request()

    def health_problem(self) -> str:
        """Liveness: empty while the agent serves its socket (pool or not)."""
        return "" if self._serving else f"{self.readiness.reason}: {self.readiness.message}"

    def readiness_problem(self) -> str:
        """Readiness: empty when pods can start on this node."""
        if not self._serving or not self.readiness.ready:
            return f"{self.readiness.reason}: {self.readiness.message}"
        return ""

    async def _status_fields(self) -> dict[str, Any] | None:
        if self.allocator.is_open:
            usage = await self.allocator.usage()
            self.metrics.set_pool(usage)
            used, cooling, acks = usage.used, usage.cooling, usage.release_acks
            idle = usage.idle_blocks
            if usage.cooldown_ends_in is not None:
                self.reporter.request_later(usage.cooldown_ends_in)
        elif self._reported_usage is not None:
            used, cooling, acks = self._reported_usage
            idle = frozenset()
        else:
            return None
        if not self._pool_seen:
            return None  # nothing to write to yet
        condition = Condition(ConditionType.AGENT_READY, self.readiness.ready,
                              self.readiness.reason, self.readiness.message,
                              rfc3339(utcnow()))
        previous = (self._condition,) if self._condition else ()
        (self._condition,) = set_condition(previous, condition)
        requests = await self.allocator.pod_requests() if self.allocator.is_open else []
        status = PoolStatus(used=used, cooling=cooling, release_acks=acks, idle_blocks=idle,
                            conditions=(self._condition,), pod_requests=tuple(requests))
        if self._adopt_strays and self.allocator.is_open:
            # The first write to a pool (this one, after forget(), is never skipped): owning
            # the entries nobody owns for one write lets this one drop them
            strays = stray_requests(self.allocator.pool, requests)
            if strays:
                await self.source.publish(replace(
                    status, pod_requests=(*requests, *strays)).agent_fields())
                log.info("event=stray_pod_requests_dropped addresses=%s",
                         ",".join(r.address for r in strays))
            self._adopt_strays = False
        return status.agent_fields()

def public_sources(pool: NodeIPPool) -> tuple[str, ...]:
    """Pod addresses the operator reports with a public IP attached (pure)."""
    return tuple(sorted(a.address for a in pool.status.pod_networking
                        if a.state == AttachmentState.ATTACHED and a.public_ip and a.address))
