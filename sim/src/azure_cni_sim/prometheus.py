"""A real Prometheus for the simulation, finding targets the way the chart tells it to.

The chart's ServiceMonitors are the source: ``scrape_configs`` translates each one into the
scrape configuration the Prometheus Operator generates for it (Kubernetes service discovery
of the Service's EndpointSlices, keep rules for its label selector and port, the target
labels the operator adds, then the ServiceMonitor's own relabelings). So the demo's Prometheus
finds exactly the pods a cluster's Prometheus Operator would, without running the operator.

``PrometheusAPI`` queries a Prometheus over its HTTP API (its web UI is not built; the API is
complete): the simulated cluster's own (``monitoring``) or a ``PrometheusServer``, the binary
``hack/build-tools.sh prometheus`` builds, run as a process by the tests. The checks below
(``scrape_problems``, ``pool_mismatches``) are what the demo and the e2e tests hold it to.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from azure_cni_sim.cluster import free_port
from azure_cni_sim.procs import ManagedProcess, wait_for
from azure_cni_sim.tools import find_tool

#: ServiceMonitor relabeling keys and their names in a Prometheus configuration
_RELABEL_KEYS = {"sourceLabels": "source_labels", "targetLabel": "target_label",
                 "separator": "separator", "regex": "regex", "modulus": "modulus",
                 "replacement": "replacement", "action": "action"}


def label_name(name: str) -> str:
    """A Kubernetes label key as Prometheus's discovery spells it in meta labels."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _relabeling(rule: Mapping[str, Any]) -> dict[str, Any]:
    return {_RELABEL_KEYS[key]: value for key, value in rule.items() if key in _RELABEL_KEYS}


def monitored_namespaces(service_monitor: Mapping[str, Any]) -> list[str]:
    """The namespaces whose Services a ServiceMonitor selects (its own by default)."""
    selector = service_monitor["spec"].get("namespaceSelector", {})
    return list(selector.get("matchNames") or [service_monitor["metadata"]["namespace"]])


def scrape_configs(service_monitors: Iterable[Mapping[str, Any]],
                   kubeconfig: Path | None = None) -> list[dict[str, Any]]:
    """One scrape configuration per ServiceMonitor endpoint, as the Prometheus Operator
    writes it (role ``endpointslice``; ``kubeconfig``: how Prometheus reaches the API server,
    else in-cluster)."""
    configs = []
    for monitor in service_monitors:
        meta, spec = monitor["metadata"], monitor["spec"]
        discovery: dict[str, Any] = {"role": "endpointslice", "namespaces": {
            "names": monitored_namespaces(monitor)}}
        if kubeconfig is not None:
            discovery["kubeconfig_file"] = str(kubeconfig)
        for index, endpoint in enumerate(spec["endpoints"]):
            keep_service = [
                {"action": "keep",
                 "source_labels": [f"__meta_kubernetes_service_label_{label_name(key)}",
                                   f"__meta_kubernetes_service_labelpresent_{label_name(key)}"],
                 "regex": f"({re.escape(value)});true"}
                for key, value in sorted(spec["selector"].get("matchLabels", {}).items())]
            port = endpoint["port"]
            relabel = [
                *keep_service,
                {"action": "keep", "source_labels": ["__meta_kubernetes_endpointslice_port_name"],
                 "regex": re.escape(port)},
                {"source_labels": ["__meta_kubernetes_endpointslice_address_target_kind",
                                   "__meta_kubernetes_endpointslice_address_target_name"],
                 "separator": ";", "regex": "Pod;(.*)", "target_label": "pod"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"source_labels": ["__meta_kubernetes_pod_container_name"],
                 "target_label": "container"},
                {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"],
                 "regex": "(Failed|Succeeded)"},
                {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
                {"target_label": "endpoint", "replacement": port},
                *(_relabeling(rule) for rule in endpoint.get("relabelings", [])),
            ]
            config = {
                "job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/{index}",
                "kubernetes_sd_configs": [discovery],
                "scheme": endpoint.get("scheme", "http"),
                "metrics_path": endpoint.get("path", "/metrics"),
                "relabel_configs": relabel,
            }
            if "interval" in endpoint:
                config["scrape_interval"] = endpoint["interval"]
            configs.append(config)
    return configs


def prometheus_config(configs: Sequence[Mapping[str, Any]], *, scrape_interval: str = "5s",
                      rule_files: Sequence[Path] = ()) -> dict[str, Any]:
    """A whole prometheus.yml: ``configs`` and a short default interval (a demo, not a fleet)."""
    return {"global": {"scrape_interval": scrape_interval, "evaluation_interval": "15s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [dict(c) for c in configs]}


class PrometheusError(RuntimeError):
    """The Prometheus HTTP API answered with an error, or did not answer."""


class PrometheusUnreachable(PrometheusError):
    """Nothing (or something that is not Prometheus) answered."""


@dataclass(frozen=True)
class PrometheusAPI:
    """The HTTP API of the Prometheus at ``url`` (reachable from this process)."""

    url: str

    def ready(self) -> bool:
        """True once it has loaded its configuration and serves queries."""
        try:
            status, _ = self._get("/-/ready")
        except PrometheusUnreachable:
            return False
        return status == 200

    def _get(self, path: str) -> tuple[int, bytes]:
        """GET ``path``: the status and body (also of an error answer)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (OSError, http.client.HTTPException) as e:
            raise PrometheusUnreachable(f"{self.url}: {e}") from e

    def api_get(self, path: str, **params: str) -> Any:
        """The ``data`` of a Prometheus HTTP API answer (``/api/v1/...``)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = self._get(f"/api/v1/{path}{query}")
        try:
            answer = json.loads(body)
        except ValueError:
            raise PrometheusUnreachable(f"{path}: HTTP {status}, not an API answer: "
                                        f"{body[:200]!r}") from None
        if answer.get("status") != "success":
            raise PrometheusError(f"{path}: {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: ``[{"metric": {...}, "value": [time, "value"]}, ...]``."""
        data = self.api_get("query", query=expr)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr} is a {data['resultType']}, not a vector")
        result: list[dict[str, Any]] = data["result"]
        return result

    def by_label(self, expr: str, label: str) -> dict[str, float]:
        """An instant query's values keyed by one label of each series."""
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in self.query(expr)}

    def active_targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.api_get("targets", state="active")[
            "activeTargets"]
        return targets

    def alerting_rules(self) -> dict[str, str]:
        """Every alerting rule it loaded, by name: its state (inactive, pending, firing)."""
        groups = self.api_get("rules", type="alert")["groups"]
        return {r["name"]: r["state"] for g in groups for r in g["rules"]}


@dataclass
class PrometheusServer:
    """A Prometheus process with ``config``, its TSDB and log under ``workdir``, listening on
    the host's loopback."""

    workdir: Path
    config: Mapping[str, Any]
    owner: str
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None

    @property
    def api(self) -> PrometheusAPI:
        return PrometheusAPI(f"http://127.0.0.1:{self.port}")

    def start(self, timeout: float = 60) -> PrometheusServer:
        """Start it and wait until it is ready (its configuration loaded)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(dict(self.config), sort_keys=False))
        argv = [str(find_tool("prometheus")), f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                "--storage.tsdb.retention.time=1d",
                f"--web.listen-address=127.0.0.1:{self.port}"]
        self.process = ManagedProcess("prometheus", argv, self.workdir / "prometheus.log",
                                      self.owner, cwd=self.workdir).start()
        wait_for(f"Prometheus on {self.api.url} to load {config}", self.api.ready, timeout,
                 interval=0.2, alive=self.process.check_running)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


# -- what the demo shows and checks ------------------------------------------------------------

#: the job labels the chart's ServiceMonitors give the operator's and the agents' targets (the
#: alerts select on them)
OPERATOR_JOB = "azure-cni-operator"
AGENT_JOB = "azure-cni-agent"


@dataclass(frozen=True)
class ExampleQuery:
    """A query worth trying, what it shows, and the label that names each answer."""

    what: str
    expr: str
    by: str


#: two queries worth trying on the demo's Prometheus: one answered by the operator's series,
#: one by the agents'
EXAMPLE_QUERIES = (
    ExampleQuery("addresses on each node's NIC (ALLOCATED)",
                 "sum by (nodeippool) (azure_cni_operator_pool_addresses)", "nodeippool"),
    ExampleQuery("slowest pod network set-up per node, last 5 minutes (p99, seconds)",
                 'histogram_quantile(0.99, sum by (le, node) '
                 '(rate(azure_cni_cni_request_duration_seconds_bucket{command="ADD"}[5m])))',
                 "node"),
)


def scrape_problems(api: PrometheusAPI, nodes: Iterable[str]) -> list[str]:
    """What keeps Prometheus from having the operator and the agent of each of ``nodes`` up,
    one line each; empty when ``up`` is 1 for exactly those targets."""
    up = api.query(f'up{{job=~"{OPERATOR_JOB}|{AGENT_JOB}"}}')
    problems = [f"{t['labels'].get('job')} {t['labels'].get('instance')}: {t['health']} "
                f"({t.get('lastError') or 'not scraped yet'})"
                for t in api.active_targets() if t["health"] != "up"]
    operators = [s for s in up if s["metric"]["job"] == OPERATOR_JOB and s["value"][1] == "1"]
    if not operators:
        problems.append("no operator up")
    leaders = leader_instances(api)
    if len(leaders) != 1:
        problems.append(f"{len(leaders)} operator replicas lead ({', '.join(leaders)}), "
                        "expected 1")
    agents = sorted(s["metric"].get("node", "?") for s in up
                    if s["metric"]["job"] == AGENT_JOB and s["value"][1] == "1")
    if agents != sorted(nodes):
        problems.append(f"agents up on {agents}, expected on {sorted(nodes)}")
    return problems


def leader_instances(api: PrometheusAPI) -> list[str]:
    """The scraped operator replicas that say they hold the leader Lease."""
    return sorted(s["metric"].get("instance", "?")
                  for s in api.query(f'azure_cni_operator_leader{{job="{OPERATOR_JOB}"}} == 1'))


class PoolCounts(NamedTuple):
    """A NodeIPPool's numbers as ``kubectl get nip`` shows them."""

    allocated: int
    used: int
    cooling: int


def pool_mismatches(api: PrometheusAPI, pools: Mapping[str, PoolCounts]) -> list[str]:
    """Where Prometheus's pool series differ from the NodeIPPools (by name; a pool is named
    after its node), one line each; empty when the operator's ALLOCATED and USED and the
    agent's used and cooling agree for every pool and Prometheus knows no other pool."""
    allocated = api.by_label("sum by (nodeippool) (azure_cni_operator_pool_addresses)",
                             "nodeippool")
    used = api.by_label("sum by (nodeippool) (azure_cni_operator_pool_used_addresses)",
                        "nodeippool")
    agent_used = api.by_label('sum by (node) (azure_cni_agent_pool_addresses{state="used"})',
                              "node")
    agent_cooling = api.by_label(
        'sum by (node) (azure_cni_agent_pool_addresses{state="cooling"})', "node")
    problems = []
    for name, want in sorted(pools.items()):
        seen = (allocated.get(name), used.get(name), agent_used.get(name),
                agent_cooling.get(name))
        if seen != (want.allocated, want.used, want.used, want.cooling):
            problems.append(
                f"{name}: kubectl get nip says ALLOCATED {want.allocated} USED {want.used} "
                f"COOLING {want.cooling}; Prometheus: the operator's {_number(seen[0])} and "
                f"{_number(seen[1])}, the agent's used {_number(seen[2])} and cooling "
                f"{_number(seen[3])}")
    problems += [f"{name}: in Prometheus, but no such NodeIPPool"
                 for name in sorted(set(allocated) - set(pools))]
    return problems


def _number(value: float | None) -> str:
    if value is None:
        return "none"
    if math.isnan(value):
        return "NaN"
    return f"{value:.3g}"


def answered_examples(api: PrometheusAPI) -> list[str]:
    """The example queries as a user runs them (curl), each with its answer now."""
    lines = []
    for example in EXAMPLE_QUERIES:
        answers = api.by_label(example.expr, example.by)
        lines += [f"{example.what}:",
                  f"  $ curl -s {api.url}/api/v1/query --data-urlencode "
                  f"'query={example.expr}'",
                  "  " + ("   ".join(f"{key} {_number(value)}"
                                    for key, value in sorted(answers.items()))
                          or "(no series yet)")]
    return lines
