"""A real Ingress controller on the simulated cluster, as ``make conformance`` shows it.

Traefik (the pinned build of ``hack/build-tools.sh``, its image from ``hack/build-images.sh``)
runs as a Deployment with only the permissions its Kubernetes Ingress provider needs, watching
one namespace and one IngressClass. An Ingress there routes a host name to ``whoami``, the
simulation's test workload spread over every node. A client on the on-premises network reaches
Traefik through a NodePort Service, as a cloud load balancer in front of the nodes would.

Traefik forwards to the pods' own addresses (it reads EndpointSlices, not the ClusterIP), and
each pod answers with the address the request came from. With azure-cni that is Traefik's own
pod address, on every node: traffic inside the VNet is not SNATed (``datapath/snat.py``), so a
backend behind an Ingress can tell the controller's replicas apart and see ``X-Forwarded-For``
from a peer it can trust by address.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from azure_cni_sim import workloads
from azure_cni_sim.procs import wait_for

Kubectl = Callable[..., subprocess.CompletedProcess[str]]

NAMESPACE = "azure-cni-ingress-check"
#: the IngressClass (and ClusterRole) name: only this check's Ingress is Traefik's
INGRESS_CLASS = NAMESPACE
CONTROLLER = "traefik.io/ingress-controller"
HOST = "whoami.ingress.example"
BACKEND = "whoami"
#: Traefik's entry point for the Ingress's traffic, and the one of its health check
WEB_PORT, PING_PORT = 8000, 8080
REQUESTS = 30


class IngressCheckFailed(AssertionError):
    """The Ingress did not route as it should; the message says what was seen."""


def manifests(traefik_image: str, backend_image: str, nodes: int) -> str:
    """Traefik with its RBAC, IngressClass and NodePort Service; the ``whoami`` backend (two
    pods per node) and the Ingress routing ``HOST`` to it, as YAML."""
    backend = workloads.web_manifests(backend_image, name=BACKEND, replicas=2 * nodes,
                                      namespace=NAMESPACE)
    return f"""\
apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: traefik
  namespace: {NAMESPACE}
---
# what the Ingress provider reads, in the one namespace it watches
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: traefik
  namespace: {NAMESPACE}
rules:
  - apiGroups: [""]
    resources: [services, secrets]
    verbs: [get, list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
  - apiGroups: [networking.k8s.io]
    resources: [ingresses]
    verbs: [get, list, watch]
  - apiGroups: [networking.k8s.io]
    resources: [ingresses/status]
    verbs: [update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: traefik
  namespace: {NAMESPACE}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: traefik}}
subjects: [{{kind: ServiceAccount, name: traefik, namespace: {NAMESPACE}}}]
---
# IngressClasses and Nodes are cluster-scoped: reading them is all it may do outside its
# namespace (its Ingress provider watches Nodes too, and routes nothing until it can)
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {INGRESS_CLASS}
rules:
  - apiGroups: [networking.k8s.io]
    resources: [ingressclasses]
    verbs: [get, list, watch]
  - apiGroups: [""]
    resources: [nodes]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {INGRESS_CLASS}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {INGRESS_CLASS}}}
subjects: [{{kind: ServiceAccount, name: traefik, namespace: {NAMESPACE}}}]
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: {INGRESS_CLASS}
spec:
  controller: {CONTROLLER}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: traefik
  namespace: {NAMESPACE}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: traefik}}
  template:
    metadata:
      labels: {{app: traefik}}
    spec:
      serviceAccountName: traefik
      terminationGracePeriodSeconds: 2
      containers:
        - name: traefik
          image: {traefik_image}
          imagePullPolicy: IfNotPresent
          args:
            - --entryPoints.web.address=:{WEB_PORT}
            - --entryPoints.traefik.address=:{PING_PORT}
            - --ping=true
            - --providers.kubernetesingress=true
            - --providers.kubernetesingress.namespaces={NAMESPACE}
            - --providers.kubernetesingress.ingressClass={INGRESS_CLASS}
            - --accesslog=true
          ports:
            - {{name: web, containerPort: {WEB_PORT}}}
            - {{name: ping, containerPort: {PING_PORT}}}
          readinessProbe:
            httpGet: {{path: /ping, port: {PING_PORT}}}
            periodSeconds: 2
          securityContext:
            runAsNonRoot: true
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities: {{drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata:
  name: traefik
  namespace: {NAMESPACE}
spec:
  type: NodePort
  selector: {{app: traefik}}
  ports:
    - {{name: web, port: 80, targetPort: {WEB_PORT}}}
---
{backend}---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {BACKEND}
  namespace: {NAMESPACE}
spec:
  ingressClassName: {INGRESS_CLASS}
  rules:
    - host: {HOST}
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service:
                name: {BACKEND}
                port: {{number: 80}}
"""


@dataclass(frozen=True)
class Answer:
    """One request through the Ingress: the pod that answered, its node, the client it saw."""

    pod: str
    node: str
    seen: str


@dataclass(frozen=True)
class IngressResult:
    controller_pod: str
    controller_ip: str
    controller_node: str
    answers: tuple[Answer, ...]

    def problems(self, nodes: set[str]) -> list[str]:
        """What is wrong with the answers (empty: the Ingress routed to every node and every
        pod saw the controller's pod address)."""
        found = []
        reached = {a.node for a in self.answers}
        if reached != nodes:
            found.append(f"answers came from pods on {sorted(reached)}, not on every node "
                         f"{sorted(nodes)}")
        other = Counter(f"{a.seen} (on {a.node})" for a in self.answers
                        if a.seen != self.controller_ip)
        if other:
            found.append(f"pods saw {dict(other)} instead of the controller's pod address "
                         f"{self.controller_ip}: SNAT inside the VNet")
        return found

    def to_dict(self) -> dict[str, Any]:
        by_node = Counter(a.node for a in self.answers)
        return {"controller": {"pod": self.controller_pod, "ip": self.controller_ip,
                               "node": self.controller_node},
                "requests": len(self.answers), "answered_by_node": dict(sorted(by_node.items())),
                "seen": sorted({a.seen for a in self.answers})}

    def describe(self) -> str:
        by_node = Counter(a.node for a in self.answers)
        spread = ", ".join(f"{node} {count}" for node, count in sorted(by_node.items()))
        seen = ", ".join(sorted({a.seen for a in self.answers}))
        return (f"Traefik ({self.controller_pod}, {self.controller_ip} on "
                f"{self.controller_node}) routed {len(self.answers)} requests for {HOST} to "
                f"pods on {spread}; they saw {seen}")


def _pods(kubectl: Kubectl, selector: str) -> list[dict[str, Any]]:
    out = kubectl("get", "pods", "-n", NAMESPACE, "-l", selector, "-o", "json")
    return [p for p in json.loads(out.stdout)["items"]
            if not p["metadata"].get("deletionTimestamp")]


def _node_addresses(kubectl: Kubectl) -> dict[str, str]:
    nodes = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    return {n["metadata"]["name"]: next(a["address"] for a in n["status"]["addresses"]
                                        if a["type"] == "InternalIP") for n in nodes}


def check_ingress(kubectl: Kubectl, client_netns: str, traefik_image: str,
                  backend_image: str, timeout: float = 300) -> IngressResult:
    """Deploy Traefik, the backend and the Ingress; send ``REQUESTS`` requests from
    ``client_netns`` through Traefik's NodePort on every node in turn; remove it all again.
    Raises ``IngressCheckFailed`` unless pods on every node answered and every one of them saw
    Traefik's pod address."""
    nodes = _node_addresses(kubectl)
    remove(kubectl)
    try:
        kubectl("apply", "-f", "-", input=manifests(traefik_image, backend_image, len(nodes)))
        for deployment in ("traefik", BACKEND):
            kubectl("rollout", "status", f"deployment/{deployment}", "-n", NAMESPACE,
                    f"--timeout={int(timeout)}s", timeout=timeout + 10)
        (controller,) = _pods(kubectl, "app=traefik")
        backends = {p["metadata"]["name"]: p["spec"]["nodeName"]
                    for p in _pods(kubectl, f"app={BACKEND}")}
        service = json.loads(kubectl("get", "service", "traefik", "-n", NAMESPACE, "-o",
                                     "json").stdout)
        node_port = int(service["spec"]["ports"][0]["nodePort"])
        entries = [f"http://{address}:{node_port}{workloads.WHOAMI}"
                   for address in nodes.values()]

        def get(i: int) -> dict[str, Any] | None:
            return workloads.curl_json(client_netns, entries[i % len(entries)], host=HOST)

        # Traefik routes once it has read the Ingress and its EndpointSlices
        wait_for(f"Traefik to route {HOST}", lambda: all(
            get(i) is not None for i in range(len(entries))), timeout, interval=1)
        answers = []
        for i in range(REQUESTS):
            answer = get(i)
            if answer is None:
                raise IngressCheckFailed(f"request {i} through {entries[i % len(entries)]} "
                                         "got no answer")
            answers.append(Answer(answer["pod"], backends.get(answer["pod"], "?"),
                                  answer["seen"]))
        result = IngressResult(controller["metadata"]["name"], controller["status"]["podIP"],
                               controller["spec"]["nodeName"], tuple(answers))
    finally:
        remove(kubectl)
    problems = result.problems(set(nodes))
    if problems:
        raise IngressCheckFailed(f"{result.describe()}: {'; '.join(problems)}")
    return result


def remove(kubectl: Kubectl) -> None:
    """Delete everything ``check_ingress`` creates (also what an interrupted run left)."""
    kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true",
            timeout=180)
    for kind in ("ingressclass", "clusterrolebinding", "clusterrole"):
        kubectl("delete", kind, INGRESS_CLASS, "--ignore-not-found")
