"""The agent's Prometheus metrics, and the HTTP endpoint for them and for health checks.

Served on ``127.0.0.1:<agent.metricsPort>`` of the host's network namespace, and also on the
node's own address when the chart turns on scraping (``--metrics-address``): ``/metrics`` in
the Prometheus text format; ``/healthz`` (liveness) answers 200 once the agent serves its
socket, also while it waits for its NodeIPPool, so a slow operator does not get it restarted;
``/readyz`` answers 200 only when pods can start (pool known, egress rules in place,
conflist installed). Both say why with a 503 otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from azure_cni.agent.allocator import PoolUsage
from azure_cni.cni.request import COMMANDS

log = logging.getLogger(__name__)

#: from 1 ms (a warm ADD is a few ms) to the shim's deadline
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)


class AgentMetrics:
    """Counters, histograms and gauges of one agent, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "azure_cni_cni_requests", "CNI requests served by the agent, by verb and result",
            ["command", "result"], registry=self.registry)
        self.latency = Histogram(
            "azure_cni_cni_request_duration_seconds",
            "Time the agent took to serve a CNI request (excluding the shim's start-up)",
            ["command"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.pool = Gauge(
            "azure_cni_agent_pool_addresses",
            "Addresses of this node's pool by state: free (can be handed out), used (by a "
            "pod), cooling (freed, in their cooldown), releasing (marked for release by the "
            "operator and acknowledged, waiting to leave the NIC)",
            ["state"], registry=self.registry)
        self.outside_pool = Gauge(
            "azure_cni_agent_addresses_outside_pool",
            "Addresses pods still hold that are no longer in the pool (removed from the NIC "
            "behind the agent's back): their traffic is not delivered", registry=self.registry)
        self.instance_metadata_requests = Counter(
            "azure_cni_agent_instance_metadata_requests",
            "Requests a standalone agent made to the instance metadata service, by result "
            "(ok, throttled, unreachable, malformed, error)", ["result"],
            registry=self.registry)
        self.ready = Gauge("azure_cni_agent_ready",
                           "1 when the agent serves CNI requests", registry=self.registry)
        self.spool_replayed = Counter(
            "azure_cni_agent_spooled_deletes_replayed_total",
            "DEL requests the shim spooled while the agent was down, replayed",
            registry=self.registry)
        # every command's series from the start, at zero: a series born with its first
        # request has no earlier sample, and rate() or increase() would miss that request
        for command in COMMANDS:
            self.requests.labels(command, "ok")
            self.latency.labels(command)

    def observe(self, command: str, result: str, seconds: float) -> None:
        self.requests.labels(command, result).inc()
        self.latency.labels(command).observe(seconds)

    def set_pool(self, usage: PoolUsage) -> None:
        self.pool.labels("free").set(usage.free)
        self.pool.labels("used").set(usage.used)
        self.pool.labels("cooling").set(usage.cooling)
        # an address a pod still holds counts as used until the pod goes, not as releasing
        self.pool.labels("releasing").set(len(usage.release_acks))
        self.outside_pool.set(len(usage.outside_pool))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def probe_handler(problem: Callable[[], str]) -> Callable[[web.Request],
                                                        Awaitable[web.Response]]:
    """A probe endpoint: 200 "ok" when ``problem()`` is empty, else 503 with the reason."""

    async def serve(_: web.Request) -> web.Response:
        reason = problem()
        if reason:
            return web.Response(status=503, text=f"not ready: {reason}\n")
        return web.Response(text="ok\n")

    return serve


def metrics_app(metrics: AgentMetrics, health: Callable[[], str],
                readiness: Callable[[], str]) -> web.Application:
    """``/metrics``, ``/healthz`` and ``/readyz`` (the callables return "" or the reason)."""

    async def serve_metrics(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/healthz", probe_handler(health))
    app.router.add_get("/readyz", probe_handler(readiness))
    return app


class Stopwatch:
    """Elapsed seconds since creation (monotonic)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def seconds(self) -> float:
        return time.monotonic() - self.started


async def serve_metrics(metrics: AgentMetrics, health: Callable[[], str],
                        readiness: Callable[[], str], port: int,
                        node_address: str = "") -> web.AppRunner | None:
    """Serve /metrics, /healthz and /readyz on 127.0.0.1 (the kubelet probes loopback) and,
    when scraping is on, the node's address; None (logged) if a port cannot be had."""
    runner = web.AppRunner(metrics_app(metrics, health, readiness), access_log=None,
                           handle_signals=False)
    await runner.setup()
    addresses = ["127.0.0.1", *([node_address] if node_address else [])]
    try:
        for address in addresses:
            await web.TCPSite(runner, address, port).start()
    except OSError as e:
        await runner.cleanup()
        log.error("event=metrics_unavailable address=%s port=%d error=%s", address, port, e)
        return None
    return runner
