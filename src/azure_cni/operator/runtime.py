"""The operator's long-lived parts, built once at startup and shared by every handler."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from kubernetes_asyncio import client
from prometheus_client import start_http_server

from azure_cni.api.settings import Settings, load_settings
from azure_cni.cloud.azure import AzureAdapter
from azure_cni.kubeclient import connect
from azure_cni.operator.kube import KubePools
from azure_cni.operator.reconcile import PoolReconciler
from azure_cni.operator.scheduler import PoolScheduler

log = logging.getLogger(__name__)


@dataclass
class LaunchOptions:
    """What the command line decided before kopf took over the event loop."""

    config_path: Path | None = None
    kubeconfig: str | None = None
    settings: Settings | None = None


launch = LaunchOptions()


@dataclass
class Runtime:
    settings: Settings
    api: client.ApiClient
    azure: AzureAdapter
    reconciler: PoolReconciler
    scheduler: PoolScheduler
    started: float

    @classmethod
    async def start(cls) -> Runtime:
        settings = launch.settings or load_settings(launch.config_path)
        api = await connect(launch.kubeconfig)
        azure = AzureAdapter(settings.azure)
        pools = KubePools(api)
        reconciler = PoolReconciler(azure, pools)
        scheduler = PoolScheduler(reconciler, pools, settings.pool,
                                  drift_check_seconds=settings.operator.drift_check_seconds,
                                  debounce_seconds=settings.operator.usage_debounce_seconds)
        if settings.operator.metrics_port:
            start_http_server(settings.operator.metrics_port)
        log.info("event=operator_started arm=%s metrics_port=%d", settings.azure.arm_endpoint,
                 settings.operator.metrics_port)
        return cls(settings, api, azure, reconciler, scheduler, time.monotonic())

    def health(self) -> str:
        return f"up {time.monotonic() - self.started:.0f}s, {len(self.scheduler.latest)} pools"

    async def close(self) -> None:
        await self.azure.close()
        await self.api.close()
