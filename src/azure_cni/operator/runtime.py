"""The operator process: its parts built once, its health endpoint, and its life.

1. Serve health and metrics at once, in every role.
2. Stand by until this replica holds the leader Lease (``operator/lease.py``); a standby
   watches nothing and holds no pool.
3. As leader: start kopf's watches, take the controller's own lists, reconcile; renew the
   Lease in the background. Every write is fenced by the Lease.
4. Leave in one of three ways:
   - SIGTERM or SIGINT (a rollout, a drain): stop taking work, let the reconciles under way
     finish their NIC and status writes (``drainSeconds``), release the Lease so a
     standby takes over at once, stop kopf, exit 0;
   - the Lease could not be renewed: stop at once without writing anything more, exit 1 (the
     kubelet restarts the container, which stands by);
   - the controller or kopf failed: stop, release the Lease, exit 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import start_http_server

from azure_cni.api.settings import Settings
from azure_cni.cloud.azure import AzureAdapter
from azure_cni.kubeclient import KubeClient
from azure_cni.operator import kopf_events
from azure_cni.operator.controller import PoolController
from azure_cni.operator.kube import KubePools
from azure_cni.operator.lease import KubeLeaseStore, LeaderElector, LeaseTimings
from azure_cni.operator.reconcile import PoolReconciler
from azure_cni.operator.usage import OperatorExit

log = logging.getLogger(__name__)

#: where the Lease lives when the operator does not run in a pod (POD_NAMESPACE unset)
DEFAULT_LEASE_NAMESPACE = "kube-system"
#: kopf's own shutdown (its watchers and workers) gets this long after the controller stops
KOPF_STOP_SECONDS = 10.0


def replica_identity() -> str:
    """This process's name in the Lease: the pod's name and a suffix of its own, so that a
    restarted container never takes the Lease its previous self held for granted."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{secrets.token_hex(4)}"


@dataclass
class Operator:
    settings: Settings
    api: KubeClient
    azure: AzureAdapter
    controller: PoolController
    elector: LeaderElector | None
    started: float

    @classmethod
    async def start(cls, settings: Settings, kubeconfig: str | None) -> Operator:
        api = await KubeClient.connect(kubeconfig)
        ops = settings.operator
        elector = None
        if ops.leader_election:
            store = KubeLeaseStore(api, os.environ.get("POD_NAMESPACE")
                                   or DEFAULT_LEASE_NAMESPACE, ops.lease_name)
            elector = LeaderElector(store, replica_identity(), LeaseTimings(
                ops.lease_duration_seconds, ops.renew_deadline_seconds,
                ops.retry_period_seconds))
        fence = elector.check if elector is not None else (lambda: None)
        azure = AzureAdapter(settings.azure)
        kube = KubePools(api, fence)
        reconciler = PoolReconciler(azure, kube, pod_networking=settings.pod_networking,
                                    fence=fence)
        controller = PoolController(reconciler, kube, azure, settings.pool, ops)
        return cls(settings, api, azure, controller, elector, time.monotonic())

    # -- health ------------------------------------------------------------------------------

    def role(self) -> str:
        if self.elector is None:
            return "leader (leader election off)"
        if self.elector.is_leader():
            return "leader"
        return f"standby, leader {self.elector.holder or 'unknown'}"

    def health(self) -> str:
        up = f"up {time.monotonic() - self.started:.0f}s, {self.role()}"
        if self.elector is not None and not self.elector.is_leader():
            return up
        state = "synced" if self.controller.synced.is_set() else "starting"
        return f"{up}, {state}, {self.controller.health()}"

    async def _serve_health(self) -> web.AppRunner:
        async def healthz(request: web.Request) -> web.Response:
            return web.Response(text=self.health() + "\n")

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", self.settings.operator.health_port).start()  # noqa: S104
        return runner

    # -- life ----------------------------------------------------------------------------------

    async def run(self) -> OperatorExit:
        """Stand by, lead, and stop as the module docstring says."""
        stop = asyncio.Event()
        self._on_signals(stop)
        ops = self.settings.operator
        if ops.metrics_port:
            start_http_server(ops.metrics_port)
        health = await self._serve_health()
        log.info("event=operator_started arm=%s metrics_port=%d health_port=%d workers=%d "
                 "identity=%s", self.settings.azure.arm_endpoint, ops.metrics_port,
                 ops.health_port, ops.max_concurrent_nodes,
                 self.elector.identity if self.elector else "-")
        try:
            if self.elector is not None and not await _first(self.elector.acquire(), stop):
                log.info("event=operator_stopped role=standby")
                return OperatorExit.STOPPED
            return await self._lead(stop)
        finally:
            await health.cleanup()
            await self.azure.close()
            await self.api.close()

    async def _lead(self, stop: asyncio.Event) -> OperatorExit:
        kopf_stop = asyncio.Event()
        existing = asyncio.all_tasks()
        kopf_tasks = await kopf.spawn_tasks(
            registry=kopf_events.registry(self.controller), settings=kopf_events.settings(),
            clusterwide=True, standalone=True, stop_flag=kopf_stop)
        # kopf installs its own SIGTERM/SIGINT handlers, which would stop it at once: the
        # operator's clean stop is ours
        self._on_signals(stop)
        watching = asyncio.create_task(kopf.run_tasks(kopf_tasks, ignored=existing),
                                       name="kopf")
        controller = asyncio.create_task(self.controller.run(), name="controller")
        holding = asyncio.create_task(
            self.elector.hold() if self.elector is not None else asyncio.Event().wait(),
            name="lease")
        stopping = asyncio.create_task(stop.wait(), name="stop")
        code, release = OperatorExit.FAILED, True
        try:
            done, _ = await asyncio.wait({watching, controller, holding, stopping},
                                         return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                await self.controller.drain(self.settings.operator.drain_seconds)
                code = OperatorExit.STOPPED
            elif holding in done:
                release = False  # someone else holds it now, or may at any moment
                log.error("event=operator_stopping reason=leadership_lost")
            else:
                failed = controller if controller in done else watching
                error = failed.exception() if not failed.cancelled() else None
                # str(): it has the status and the API server's answer
                log.error("event=operator_stopping reason=%s error=%r", failed.get_name(),
                          f"{type(error).__name__}: {error}" if error else "cancelled")
        finally:
            await _cancel(controller, holding, stopping)
            if release and self.elector is not None:
                # before kopf's stop, which takes seconds: by then nothing renews the Lease
                # and it lapses instead of being handed over. Nothing writes any more (the
                # controller is stopped and the release shuts the fence).
                await self.elector.release()
            kopf_stop.set()
            try:
                await asyncio.wait_for(watching, KOPF_STOP_SECONDS)
            except (TimeoutError, asyncio.CancelledError, Exception) as e:  # noqa: BLE001
                log.warning("event=kopf_stop_failed error=%r", e)
        log.info("event=operator_stopped role=leader exit=%d", code)
        return code

    @staticmethod
    def _on_signals(stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)


async def _first(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``work`` until it ends (True) or ``stop`` is set first (False)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    await _cancel(task, stopping)
    if task in done:
        task.result()
        return True
    return False


async def _cancel(*tasks: asyncio.Task[object] | asyncio.Future[object]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception as e:  # noqa: BLE001 - already reported by whoever ended it
            log.debug("event=task_ended task=%r error=%r", task, e)
