"""Kubeconfigs that authenticate as a service account of the chart, for tests and the e2e flows.

A real token from the TokenRequest API (``kubectl create token``), optionally bound to a Node or
to a Pod. Bound tokens carry the node's name in the user's extra
(``authentication.kubernetes.io/node-name``), which is what the chart's admission policy checks
for the agent: a Pod-bound token names the node the pod is scheduled on (Kubernetes 1.32+),
a Node-bound token names that node. With no kubelet in the local cluster, a Pod bound to a node
by ``spec.nodeName`` stays Pending, but it exists, so tokens bound to it are valid.

    kubeconfig = service_account_kubeconfig(kube.kubeconfig, "kube-system", "azure-cni-agent",
                                            tmp_path / "agent.kubeconfig", node="node-1")
    run_kubectl(kubeconfig, "get", "nodeippools")          # as the agent of node-1
    azure-cni-agent --kubeconfig <kubeconfig> --node-name node-1 ...   # the real process
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import yaml

from azure_cni_sim.cluster import run_kubectl

#: The user's extra key that names the node a bound service account token belongs to.
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"


def service_account_kubeconfig(
    admin_kubeconfig: Path,
    namespace: str,
    service_account: str,
    dest: Path,
    *,
    node: str | None = None,
    pod: str | None = None,
    duration: str = "1h",
) -> Path:
    """Write ``dest``: a kubeconfig that authenticates as ``namespace/service_account``.

    ``node`` binds the token to that Node, ``pod`` to that Pod of ``namespace`` (give one at
    most); either way the API server puts the node's name in the token's user. The cluster
    address and CA are the admin kubeconfig's; the admin's client certificate is not copied.
    """
    if node and pod:
        raise ValueError("bind the token to a node or to a pod, not both")
    args = ["create", "token", service_account, "-n", namespace, f"--duration={duration}"]
    if node:
        args += ["--bound-object-kind=Node", f"--bound-object-name={node}"]
    if pod:
        args += ["--bound-object-kind=Pod", f"--bound-object-name={pod}"]
    token = run_kubectl(admin_kubeconfig, *args).stdout.strip()
    cluster = _current_cluster(admin_kubeconfig)
    user = f"{namespace}-{service_account}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        # the service account's own namespace, as in its pod
        "contexts": [{"name": user, "context": {"cluster": "cluster", "user": user,
                                                "namespace": namespace}}],
        "current-context": user,
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.touch(mode=0o600)
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


def whoami(kubeconfig: Path) -> dict[str, object]:
    """The user the API server sees for ``kubeconfig`` (SelfSubjectReview)."""
    out = run_kubectl(kubeconfig, "auth", "whoami", "-o", "json").stdout
    info: dict[str, object] = json.loads(out)["status"]["userInfo"]
    return info


def create_pod_on_node(admin_kubeconfig: Path, namespace: str, name: str, node: str,
                       service_account: str) -> None:
    """A Pod already bound to ``node`` (no scheduler needed) running as ``service_account``.

    Nothing runs it without a kubelet; it exists so that tokens can be bound to it.
    """
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": node,
            "serviceAccountName": service_account,
            "automountServiceAccountToken": False,
            "containers": [{"name": "placeholder", "image": "registry.invalid/placeholder"}],
        },
    }
    run_kubectl(admin_kubeconfig, "apply", "-f", "-", input=json.dumps(pod))


def _current_cluster(kubeconfig: Path) -> dict[str, object]:
    raw = run_kubectl(kubeconfig, "config", "view", "--raw", "--minify", "-o", "json").stdout
    cluster: dict[str, object] = json.loads(raw)["clusters"][0]["cluster"]
    ca = cluster.get("certificate-authority")
    if isinstance(ca, str):  # a path relative to the admin kubeconfig: inline it
        ca_path = Path(ca) if Path(ca).is_absolute() else kubeconfig.parent / ca
        cluster["certificate-authority-data"] = base64.b64encode(ca_path.read_bytes()).decode()
        del cluster["certificate-authority"]
    return cluster
