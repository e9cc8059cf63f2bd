"""The operator process: its parts built once, its health endpoint, its life until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass

from aiohttp import web
from kubernetes_asyncio import client
from prometheus_client import start_http_server

from azure_cni.api.settings import Settings
from azure_cni.cloud.azure import AzureAdapter
from azure_cni.kubeclient import connect
from azure_cni.operator.controller import PoolController
from azure_cni.operator.kube import KubePools
from azure_cni.operator.reconcile import PoolReconciler

log = logging.getLogger(__name__)


@dataclass
class Operator:
    settings: Settings
    api: client.ApiClient
    azure: AzureAdapter
    controller: PoolController
    started: float

    @classmethod
    async def start(cls, settings: Settings, kubeconfig: str | None) -> Operator:
        api = await connect(kubeconfig)
        azure = AzureAdapter(settings.azure)
        kube = KubePools(api)
        controller = PoolController(PoolReconciler(
            azure, kube, pod_networking=settings.pod_networking), kube, azure, settings.pool,
                                    settings.operator)
        return cls(settings, api, azure, controller, time.monotonic())

    def health(self) -> str:
        state = "synced" if self.controller.synced.is_set() else "starting"
        return f"up {time.monotonic() - self.started:.0f}s, {state}, {self.controller.health()}"

    async def _serve_health(self) -> web.AppRunner:
        async def healthz(request: web.Request) -> web.Response:
            return web.Response(text=self.health() + "\n")

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", self.settings.operator.health_port).start()  # noqa: S104
        return runner

    async def run(self) -> None:
        """Serve health and metrics and run the controller until SIGTERM or SIGINT."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if self.settings.operator.metrics_port:
            start_http_server(self.settings.operator.metrics_port)
        health = await self._serve_health()
        log.info("event=operator_started arm=%s metrics_port=%d health_port=%d workers=%d",
                 self.settings.azure.arm_endpoint, self.settings.operator.metrics_port,
                 self.settings.operator.health_port, self.settings.operator.max_concurrent_nodes)
        controller = asyncio.create_task(self.controller.run(), name="controller")
        stopping = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({controller, stopping},
                                         return_when=asyncio.FIRST_COMPLETED)
            if controller in done:
                controller.result()  # it only ends by raising
        finally:
            for task in (controller, stopping):
                task.cancel()
            await asyncio.gather(controller, stopping, return_exceptions=True)
            await health.cleanup()
            await self.azure.close()
            await self.api.close()
            log.info("event=operator_stopped")
