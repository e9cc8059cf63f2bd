"""Cluster DNS for the simulated cluster: CoreDNS as the ``kube-dns`` Deployment and Service.

What a managed cluster runs in kube-system: two CoreDNS replicas on ordinary pod addresses
(azure-cni's, like any other pod), behind the ``kube-dns`` Service whose ClusterIP every
kubelet's ``clusterDNS`` names. Names outside the cluster are forwarded to the VM's resolver,
Azure DNS at 168.63.129.16 (nothing answers there in the simulation).
"""

from __future__ import annotations

COREFILE = """\
.:53 {
    errors
    health {
        lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf
    cache 30
    reload
    loadbalance
}
"""


def manifests(image: str, cluster_ip: str, replicas: int = 2) -> str:
    """The kube-dns objects, as YAML for ``kubectl apply``."""
    corefile = "\n".join(f"    {line}" if line else "" for line in COREFILE.splitlines())
    return f"""\
apiVersion: v1
kind: ServiceAccount
metadata:
  name: coredns
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:coredns
subjects:
  - kind: ServiceAccount
    name: coredns
    namespace: kube-system
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: coredns
  namespace: kube-system
data:
  Corefile: |
{corefile}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{k8s-app: kube-dns}}
  strategy:
    rollingUpdate: {{maxUnavailable: 1}}
  template:
    metadata:
      labels: {{k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      # the VM's resolver is CoreDNS's upstream, not CoreDNS itself
      dnsPolicy: Default
      tolerations:
        - {{key: CriticalAddonsOnly, operator: Exists}}
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector:
                  matchLabels: {{k8s-app: kube-dns}}
      containers:
        - name: coredns
          image: {image}
          imagePullPolicy: IfNotPresent
          args: [-conf, /etc/coredns/Corefile]
          ports:
            - {{name: dns, containerPort: 53, protocol: UDP}}
            - {{name: dns-tcp, containerPort: 53, protocol: TCP}}
            - {{name: metrics, containerPort: 9153, protocol: TCP}}
          resources:
            requests: {{cpu: 20m, memory: 40Mi}}
            limits: {{memory: 170Mi}}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              add: [NET_BIND_SERVICE]
              drop: [ALL]
          livenessProbe:
            httpGet: {{path: /health, port: 8080}}
            initialDelaySeconds: 10
            periodSeconds: 10
            failureThreshold: 5
          readinessProbe:
            httpGet: {{path: /ready, port: 8181}}
            periodSeconds: 2
          volumeMounts:
            - {{name: config, mountPath: /etc/coredns, readOnly: true}}
      volumes:
        - name: config
          configMap:
            name: coredns
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {{k8s-app: kube-dns, kubernetes.io/name: CoreDNS}}
spec:
  selector: {{k8s-app: kube-dns}}
  clusterIP: {cluster_ip}
  ports:
    - {{name: dns, port: 53, protocol: UDP}}
    - {{name: dns-tcp, port: 53, protocol: TCP}}
    - {{name: metrics, port: 9153, protocol: TCP}}
"""
