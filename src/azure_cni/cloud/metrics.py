"""Prometheus metrics of the Azure adapter (names match Cilium's where the meaning matches)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

API_DURATION = Histogram(
    "azure_cni_azure_api_duration_seconds",
    "Duration of each Azure Resource Manager request (LRO polls and SDK retries included).",
    ["operation", "status"],
    buckets=_SECONDS,
)
API_CALLS = Counter(
    "azure_cni_azure_api_calls_total",
    "Azure Resource Manager requests by operation and HTTP status.",
    ["operation", "status"],
)
RATE_LIMIT_WAIT = Histogram(
    "azure_cni_azure_api_rate_limit_duration_seconds",
    "Time a request waited for the client-side token bucket before it was sent.",
    ["operation"],
    buckets=(0.0, *_SECONDS),
)
RATE_LIMIT_REMAINING = Gauge(
    "azure_cni_azure_api_rate_limit_remaining",
    "Requests Azure says are left in the subscription's bucket (x-ms-ratelimit-remaining-*).",
    ["kind"],
)
