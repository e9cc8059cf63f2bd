"""A real Prometheus for the simulation, finding targets the way the chart tells it to.

The chart's ServiceMonitors are the source: ``scrape_configs`` translates each one into the
scrape configuration the Prometheus Operator generates for it (Kubernetes service discovery
of the Service's EndpointSlices, keep rules for its label selector and port, the target
labels the operator adds, then the ServiceMonitor's own relabelings). So the demo's Prometheus
finds exactly the pods a cluster's Prometheus Operator would, without running the operator.

``PrometheusServer`` runs the binary ``hack/build-tools.sh prometheus`` builds (its web UI is
not built; the HTTP API is complete), optionally inside a network namespace, and queries it.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def scrape_configs(service_monitors: Iterable[Mapping[str, Any]],
                   kubeconfig: Path | None = None) -> list[dict[str, Any]]:
    """One scrape configuration per ServiceMonitor endpoint, as the Prometheus Operator
    writes it (role ``endpointslice``; ``kubeconfig``: how Prometheus reaches the API server,
    else in-cluster)."""
    configs = []
    for monitor in service_monitors:
        meta, spec = monitor["metadata"], monitor["spec"]
        namespaces = spec.get("namespaceSelector", {}).get("matchNames") or [meta["namespace"]]
        discovery: dict[str, Any] = {"role": "endpointslice", "namespaces": {
            "names": list(namespaces)}}
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
    """The Prometheus HTTP API answered with an error."""


@dataclass
class PrometheusServer:
    """A Prometheus process with ``config``, its TSDB and log under ``workdir``.

    With ``netns`` it runs inside that network namespace (where the scraped addresses are
    reachable) and its API is on 127.0.0.1 there; ``api_get`` reaches it from the host.
    """

    workdir: Path
    config: Mapping[str, Any]
    owner: str
    netns: str | None = None
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> PrometheusServer:
        """Start it and wait until it is ready (its configuration loaded)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(dict(self.config), sort_keys=False))
        argv = [str(find_tool("prometheus")), f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                "--storage.tsdb.retention.time=1d",
                f"--web.listen-address=127.0.0.1:{self.port}"]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.process = ManagedProcess("prometheus", argv, self.workdir / "prometheus.log",
                                      self.owner, cwd=self.workdir).start()
        process = self.process
        wait_for(f"Prometheus on {self.url} to load {config}", self._ready, timeout,
                 interval=0.2, alive=process.check_running)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def _ready(self) -> bool:
        try:
            status, _ = self._http("/-/ready")
        except OSError:
            return False
        return status == 200

    def _http(self, path: str) -> tuple[int, bytes]:
        """GET ``path``: the status and body (also of an error answer); OSError when Prometheus
        cannot be reached."""
        url = self.url + path
        if self.netns is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return int(response.status), response.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()
        out = subprocess.run(["ip", "netns", "exec", self.netns, "curl", "-s", "-m", "5",
                              "-w", "\n%{http_code}", url],
                             capture_output=True, check=False, timeout=15)
        if out.returncode != 0:
            raise OSError(f"GET {url} in {self.netns}: curl exit {out.returncode}")
        body, _, status = out.stdout.rpartition(b"\n")
        return int(status), body

    def api_get(self, path: str, **params: str) -> Any:
        """The ``data`` of a Prometheus HTTP API answer (``/api/v1/...``)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        _, body = self._http(f"/api/v1/{path}{query}")
        answer = json.loads(body)
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

    def active_targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.api_get("targets", state="active")[
            "activeTargets"]
        return targets


# -- what the demo shows and checks ------------------------------------------------------------

#: two queries worth trying on the demo's Prometheus, with what they show
EXAMPLE_QUERIES = (
    ("addresses on each node's NIC (ALLOCATED)",
     "sum by (nodeippool) (azure_cni_operator_pool_addresses)"),
    ("slowest pod network set-up per node, last 5 minutes (p99, seconds)",
     'histogram_quantile(0.99, sum by (le, node) '
     '(rate(azure_cni_cni_request_duration_seconds_bucket{command="ADD"}[5m])))'),
)


def unhealthy_targets(server: PrometheusServer) -> list[str]:
    """Every active target that is not up, as ``job instance: health (last error)``."""
    return [f"{t['labels'].get('job')} {t['labels'].get('instance')}: {t['health']} "
            f"({t.get('lastError') or 'not scraped yet'})"
            for t in server.active_targets() if t["health"] != "up"]


def pool_mismatches(server: PrometheusServer, pools: Mapping[str, tuple[int, int]]
                    ) -> list[str]:
    """Where Prometheus's pool series differ from the NodeIPPools (name -> (ALLOCATED, USED)),
    one line each; empty when they agree for every pool and Prometheus knows no other."""

    def per_pool(expr: str) -> dict[str, int]:
        return {s["metric"]["nodeippool"]: int(float(s["value"][1]))
                for s in server.query(expr)}

    allocated = per_pool("sum by (nodeippool) (azure_cni_operator_pool_addresses)")
    used = per_pool("sum by (nodeippool) (azure_cni_operator_pool_used_addresses)")
    problems = [f"{name}: ALLOCATED {want[0]} USED {want[1]}, Prometheus "
                f"{allocated.get(name)} and {used.get(name)}"
                for name, want in sorted(pools.items())
                if (allocated.get(name), used.get(name)) != want]
    problems += [f"{name}: in Prometheus, but no such NodeIPPool"
                 for name in sorted(set(allocated) - set(pools))]
    return problems


def describe(server: PrometheusServer) -> str:
    """The demo's lines about its Prometheus: where it is and what to ask it."""
    lines = [f"Prometheus (its HTTP API; the web UI is not built): {server.url}"]
    for what, expr in EXAMPLE_QUERIES:
        lines += [f"  {what}:",
                  f"    curl -s {server.url}/api/v1/query --data-urlencode "
                  f"'query={expr}'"]
    return "\n".join(lines)
