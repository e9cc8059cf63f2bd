"""The agent's metrics as Prometheus scrapes them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from azure_cni.agent.metrics import AgentMetrics
from azure_cni.cni.request import COMMANDS


def samples(metrics: AgentMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_fresh_agent_exports_every_cni_command_at_zero() -> None:
    # a series born with its first request has no earlier sample, so rate() and increase()
    # miss that request: the first pods of a node would show no ADD latency and no failure
    seen = samples(AgentMetrics())
    for command in COMMANDS:
        assert seen[("azure_cni_cni_requests_total",
                     (("command", command), ("result", "ok")))] == 0
        assert seen[("azure_cni_cni_request_duration_seconds_count",
                     (("command", command),))] == 0


def test_a_request_counts_under_its_command_and_result() -> None:
    metrics = AgentMetrics()
    metrics.observe("ADD", "error_11", 0.2)
    seen = samples(metrics)
    assert seen[("azure_cni_cni_requests_total",
                 (("command", "ADD"), ("result", "error_11")))] == 1
    assert seen[("azure_cni_cni_requests_total", (("command", "ADD"), ("result", "ok")))] == 0
    assert seen[("azure_cni_cni_request_duration_seconds_bucket",
                 (("command", "ADD"), ("le", "0.25")))] == 1
    assert seen[("azure_cni_cni_request_duration_seconds_bucket",
                 (("command", "ADD"), ("le", "0.1")))] == 0
