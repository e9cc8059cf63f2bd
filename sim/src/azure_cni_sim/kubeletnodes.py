"""Node objects as kubelet writes them, and kubelet's status reports at kubelet's pace, for
benchmarks with thousands of nodes and no kubelets.

``kubelet_node`` is a Node as an AKS node's kubelet registers it (about 9 KiB of JSON): the
labels AKS and kubelet set, the annotations of the CSI drivers and the attach/detach
controller, capacity and allocatable, kubelet's four conditions, addresses, daemon endpoints,
nodeInfo, runtime handlers and the images the node holds (kubelet reports up to
``nodeStatusMaxImages`` = 50; an AKS node image pre-pulls about thirty).

``StatusReporter`` sends each node's status report as kubelet does when nothing changes: a
strategic-merge PATCH of ``nodes/<name>/status`` that moves every condition's
``lastHeartbeatTime``, every ``nodeStatusReportFrequency`` (5 minutes, kubelet's default since
heartbeats moved to Leases), the nodes spread evenly over that period as kubelets started at
different times are. Each report is a watch event for whoever watches Nodes, with the whole
Node in it. The Leases kubelet renews every 10 s are not sent: they are ``coordination.k8s.io``
objects in ``kube-node-lease`` that a Node watcher never sees, and 500 writes a second (at
5,000 nodes) would load the API server of a two-core machine, not the watcher measured.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from azure_cni_sim.cluster import LocalCluster

log = logging.getLogger(__name__)

#: kubelet's nodeStatusReportFrequency (its default): a report at least this often
REPORT_SECONDS = 300.0
#: kubelet's nodeStatusUpdateFrequency: how often it checks whether to report
CHECK_SECONDS = 10.0
KUBELET_VERSION = "v1.30.6"
#: the images of an AKS node image (Ubuntu 22.04, containerd), as kubelet lists them
_NODE_IMAGES = (
    ("mcr.microsoft.com/oss/kubernetes/kube-proxy", KUBELET_VERSION, 80_326_656),
    ("mcr.microsoft.com/oss/kubernetes/kube-proxy", "v1.29.10", 79_938_112),
    ("mcr.microsoft.com/oss/kubernetes/pause", "3.6", 299_396),
    ("mcr.microsoft.com/containernetworking/azure-cns", "v1.6.13", 121_003_245),
    ("mcr.microsoft.com/containernetworking/azure-cni", "v1.6.13", 105_782_113),
    ("mcr.microsoft.com/containernetworking/azure-ip-masq-merger", "v0.0.1-0", 9_838_410),
    ("mcr.microsoft.com/containernetworking/azure-npm", "v1.6.13", 153_240_811),
    ("mcr.microsoft.com/containernetworking/cilium/cilium", "v1.14.15-241024", 201_113_860),
    ("mcr.microsoft.com/oss/kubernetes-csi/azuredisk-csi", "v1.30.5", 106_117_374),
    ("mcr.microsoft.com/oss/kubernetes-csi/azurefile-csi", "v1.30.6", 173_540_031),
    ("mcr.microsoft.com/oss/kubernetes-csi/blob-csi", "v1.24.4", 108_306_993),
    ("mcr.microsoft.com/oss/kubernetes-csi/csi-node-driver-registrar", "v2.12.0", 10_922_781),
    ("mcr.microsoft.com/oss/kubernetes-csi/livenessprobe", "v2.14.0", 10_386_562),
    ("mcr.microsoft.com/oss/kubernetes/azure-cloud-node-manager", "v1.30.7", 21_842_120),
    ("mcr.microsoft.com/oss/kubernetes/ip-masq-agent", "v2.5.0.12", 11_290_208),
    ("mcr.microsoft.com/oss/kubernetes/kube-state-metrics", "v2.13.0", 19_720_448),
    ("mcr.microsoft.com/oss/kubernetes/apiserver-network-proxy/agent", "v0.30.3-hotfix.20240819",
     16_730_390),
    ("mcr.microsoft.com/oss/kubernetes/autoscaler/cluster-proportional-autoscaler", "v1.8.11",
     12_904_448),
    ("mcr.microsoft.com/oss/kubernetes/defaultbackend", "1.4", 2_437_390),
    ("mcr.microsoft.com/oss/kubernetes/metrics-server", "v0.6.3", 28_090_332),
    ("mcr.microsoft.com/oss/v2/kubernetes/coredns", "v1.9.4-6", 15_960_320),
    ("mcr.microsoft.com/azuremonitor/containerinsights/ciprod", "3.1.24", 395_408_617),
    ("mcr.microsoft.com/azure-policy/policy-kubernetes-addon-prod", "1.8.0", 28_510_122),
    ("mcr.microsoft.com/oss/open-policy-agent/gatekeeper", "v3.17.1-1", 41_122_801),
    ("mcr.microsoft.com/aks/ip-masq-agent-v2", "v0.1.13", 9_001_217),
    ("mcr.microsoft.com/aks/msi/addon-token-adapter", "master.241007.1", 8_720_381),
    ("mcr.microsoft.com/oss/azure/secrets-store/provider-azure", "v1.6.0", 14_551_040),
    ("mcr.microsoft.com/oss/kubernetes-csi/secrets-store/driver", "v1.4.6", 37_224_810),
    ("mcr.microsoft.com/oss/kubernetes/windows-gmsa-webhook", "v0.10.0", 14_012_931),
    ("mcr.microsoft.com/aks/aks-node-ca-watcher", "master.241021.1", 7_113_730),
)
_CONDITIONS = (
    ("MemoryPressure", "False", "KubeletHasSufficientMemory",
     "kubelet has sufficient memory available"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _hex(*parts: object, length: int = 64) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:length]


def _uuid(*parts: object) -> str:
    h = _hex(*parts, length=32)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def kubelet_node(name: str, provider_id: str, address: str, *,
                 region: str = "westeurope", zone: int = 1,
                 pool: str = "nodepool1") -> dict[str, Any]:
    """A Node as an AKS node's kubelet registers it (with the labels AKS gives it)."""
    now = _stamp(datetime.now(UTC))
    instance_type = "Standard_D4s_v5"
    labels = {
        "agentpool": pool, "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/instance-type": instance_type, "beta.kubernetes.io/os": "linux",
        "failure-domain.beta.kubernetes.io/region": region,
        "failure-domain.beta.kubernetes.io/zone": f"{region}-{zone}",
        "kubernetes.azure.com/agentpool": pool,
        "kubernetes.azure.com/cluster": f"MC_rg-bench_bench_{region}",
        "kubernetes.azure.com/consolidated-additional-properties": _uuid("props", pool),
        "kubernetes.azure.com/kubelet-identity-client-id": _uuid("kubelet-identity"),
        "kubernetes.azure.com/mode": "system",
        "kubernetes.azure.com/node-image-version": "AKSUbuntu-2204gen2containerd-202411.12.0",
        "kubernetes.azure.com/nodepool-type": "VirtualMachineScaleSets",
        "kubernetes.azure.com/os-sku": "Ubuntu", "kubernetes.azure.com/role": "agent",
        "kubernetes.azure.com/storageprofile": "managed",
        "kubernetes.azure.com/storagetier": "Premium_LRS",
        "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux", "kubernetes.io/role": "agent",
        "node-role.kubernetes.io/agent": "", "node.kubernetes.io/instance-type": instance_type,
        "storageprofile": "managed", "storagetier": "Premium_LRS",
        "topology.disk.csi.azure.com/zone": f"{region}-{zone}",
        "topology.kubernetes.io/region": region, "topology.kubernetes.io/zone": f"{region}-{zone}",
    }
    resources = {"cpu": "4", "ephemeral-storage": "129886128Ki", "hugepages-1Gi": "0",
                 "hugepages-2Mi": "0", "memory": "16375740Ki", "pods": "110"}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name, "labels": labels,
            "annotations": {
                "csi.volume.kubernetes.io/nodeid": json.dumps(
                    {"disk.csi.azure.com": name, "file.csi.azure.com": name}),
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
        "spec": {"providerID": provider_id},
        "status": {
            "addresses": [{"type": "InternalIP", "address": address},
                          {"type": "Hostname", "address": name}],
            "allocatable": {**resources, "cpu": "3860m", "ephemeral-storage": "119703055367",
                            "memory": "12880828Ki"},
            "capacity": resources,
            "conditions": [{"type": kind, "status": status, "reason": reason,
                            "message": message, "lastHeartbeatTime": now,
                            "lastTransitionTime": now}
                           for kind, status, reason, message in _CONDITIONS],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "features": {"supplementalGroupsPolicy": True},
            "images": [{"names": [f"{repo}@sha256:{_hex(repo, tag)}", f"{repo}:{tag}"],
                        "sizeBytes": size} for repo, tag, size in _NODE_IMAGES],
            "nodeInfo": {
                "architecture": "amd64", "bootID": _uuid("boot", name),
                "containerRuntimeVersion": "containerd://1.7.23-1",
                "kernelVersion": "5.15.0-1074-azure", "kubeProxyVersion": KUBELET_VERSION,
                "kubeletVersion": KUBELET_VERSION, "machineID": _hex("machine", name, length=32),
                "operatingSystem": "linux", "osImage": "Ubuntu 22.04.5 LTS",
                "systemUUID": _uuid("system", name)},
            "runtimeHandlers": [
                {"name": "runc", "features": {"recursiveReadOnlyMounts": True,
                                              "userNamespaces": True}},
                {"name": "", "features": {"recursiveReadOnlyMounts": True,
                                          "userNamespaces": True}}],
        },
    }


def status_report(moment: datetime) -> dict[str, Any]:
    """The PATCH kubelet sends when nothing changed: every condition's new heartbeat."""
    stamp = _stamp(moment)
    return {"status": {
        "$setElementOrder/conditions": [{"type": kind} for kind, *_ in _CONDITIONS],
        "conditions": [{"type": kind, "lastHeartbeatTime": stamp}
                       for kind, *_ in _CONDITIONS]}}


class ApiConnection:
    """One keep-alive HTTPS connection to the API server as the admin (a kubelet holds one
    of its own; here one connection carries many nodes' requests)."""

    def __init__(self, cluster: LocalCluster) -> None:
        server = urllib.parse.urlsplit(cluster.server)
        self._host, self._port = str(server.hostname), int(server.port or 443)
        self._context = cluster.ssl_context
        self._conn: http.client.HTTPSConnection | None = None

    def send(self, method: str, path: str, body: object,
             content_type: str = "application/json") -> int:
        """The response's status (0: no answer); reconnects once on a dropped connection."""
        data = json.dumps(body).encode()
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPSConnection(self._host, self._port,
                                                         context=self._context, timeout=30)
            try:
                self._conn.request(method, path, data, {"Content-Type": content_type,
                                                        "Accept": "application/json"})
                resp = self._conn.getresponse()
                resp.read()
                return int(resp.status)
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    return 0
        return 0

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


def register_nodes(cluster: LocalCluster, nodes: Sequence[dict[str, Any]], workers: int = 4
                   ) -> None:
    """Create the Nodes as their kubelets would (one POST each, status included)."""
    def create(batch: Iterable[dict[str, Any]]) -> None:
        conn = ApiConnection(cluster)
        try:
            for node in batch:
                status = conn.send("POST", "/api/v1/nodes", node)
                if status not in (200, 201, 409):
                    raise RuntimeError(f"creating Node {node['metadata']['name']}: HTTP "
                                       f"{status}")
        finally:
            conn.close()

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(create, nodes[i::workers]) for i in range(workers)]:
            future.result()


class StatusReporter:
    """Every node's status report every ``period`` seconds, the nodes spread evenly over the
    period, from one thread, until ``stop()``."""

    def __init__(self, cluster: LocalCluster, names: Sequence[str],
                 period: float = REPORT_SECONDS) -> None:
        self.names = list(names)
        self.period = period
        self.sent = 0
        self.failed = 0
        #: the most a report went out after its time (the machine could not keep up)
        self.max_late_seconds = 0.0
        self._conn = ApiConnection(cluster)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubelet-status", daemon=True)

    @property
    def per_second(self) -> float:
        return len(self.names) / self.period

    def start(self) -> StatusReporter:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._conn.close()

    def summary(self) -> dict[str, Any]:
        return {"every_seconds": self.period, "nodes": len(self.names),
                "per_second": round(self.per_second, 2), "sent": self.sent,
                "failed": self.failed, "max_late_seconds": round(self.max_late_seconds, 1)}

    def _run(self) -> None:
        step = self.period / max(1, len(self.names))
        due = self._started
        i = 0
        while not self._stop.is_set():
            wait = due - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                return
            self.max_late_seconds = max(self.max_late_seconds, time.monotonic() - due)
            name = self.names[i % len(self.names)]
            status = self._conn.send("PATCH", f"/api/v1/nodes/{name}/status",
                                     status_report(datetime.now(UTC)),
                                     "application/strategic-merge-patch+json")
            if 200 <= status < 300:
                self.sent += 1
            else:
                self.failed += 1
                log.warning("event=node_status_report_failed node=%s status=%d", name, status)
            i += 1
            due += step
