"""A real Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager (+ scheduler).

Two shapes, with a throwaway CA either way, every process stopped on ``stop()`` (or
``azure-cni-sim cluster down``), also when its caller was interrupted:

- on loopback (the default, the cluster tier): everything binds to 127.0.0.1 on free ports, and
  there are no kubelets: tests create Node objects, as a cloud's kubelets would register them;
- on a VNet (``network=ControlPlaneNetwork(...)``, the simulated VMs' real nodes): every
  component runs in a network namespace of its own, plugged into the simulated VNet, and the
  API server advertises its address there, so the ``kubernetes`` Service's endpoint is real and
  reachable from the VMs and their pods. The scheduler and the node-lifecycle controller run,
  the Node authorizer and the NodeRestriction admission plugin are on, and each node gets a
  client certificate of its own (``node_kubeconfig``). The host reaches the API server through
  a portal on its loopback (``server``); the VMs use ``internal_server``.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import yaml

from azure_cni_sim import pki
from azure_cni_sim.procs import ManagedProcess, ProcessFailed, stop_owned, wait_for
from azure_cni_sim.tools import ToolMissing, find_tool, pinned_versions

log = logging.getLogger(__name__)

# Inside the documentation/benchmark block the simulation is allowed to use, and outside the
# simulated VNet's address space (as AKS requires); kube-proxy on the real nodes serves it.
SERVICE_CIDR = "198.18.240.0/24"
SERVICE_IP = "198.18.240.1"
STATE_FILE = "state.json"
ADMIN_USER = "azure-cni-admin"
#: the API server's port on its own address when it runs in a namespace of its own
VNET_API_PORT = 6443
#: controllers no simulated cluster has: node IPAM and routes (azure-cni owns pod addressing),
#: the cloud provider's node lifecycle and load balancers
_DISABLED_CONTROLLERS = ("node-ipam-controller", "cloud-node-lifecycle-controller",
                         "service-lb-controller", "node-route-controller")


@dataclass(frozen=True)
class ControlPlaneNetwork:
    """Where a control plane on the VNet runs: its namespace and its address there."""

    netns: str
    address: str


class ClusterError(RuntimeError):
    """The control plane could not be started; the message says which part and why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kubeconfig(server: str, ca: bytes, cert: bytes, key: bytes, user: str) -> str:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "azure-cni-sim", "cluster": {
            "server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
        "contexts": [{"name": "azure-cni-sim", "context": {
            "cluster": "azure-cni-sim", "user": user}}],
        "current-context": "azure-cni-sim",
    }
    return yaml.safe_dump(doc, sort_keys=False)


class KubectlFailed(subprocess.CalledProcessError):
    """kubectl exited non-zero; ``str()`` carries its stderr so test failures say why."""

    def __str__(self) -> str:
        args = " ".join(str(a) for a in self.cmd[2:])
        return f"kubectl {args} exited {self.returncode}: {str(self.stderr).strip()}"


def run_kubectl(kubeconfig: Path, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the pinned kubectl with ``kubeconfig``; raise CalledProcessError if ``check``."""
    cmd = [str(find_tool("kubectl")), f"--kubeconfig={kubeconfig}", *args]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True,
                            input=input, timeout=timeout)
    if check and result.returncode != 0:
        raise KubectlFailed(result.returncode, cmd, result.stdout, result.stderr)
    return result


class ExistingCluster:
    """A cluster the user already has (``KUBECONFIG``): used as it is, never stopped."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster and return the completed process."""
        return run_kubectl(self.kubeconfig, *args, check=check, input=input, timeout=timeout)


@dataclass
class ClusterState:
    """What ``azure-cni-sim cluster up`` leaves behind for ``down`` and for users."""

    owner: str
    kubeconfig: str
    server: str
    started_at: float

    def write(self, state_dir: Path) -> None:
        (state_dir / STATE_FILE).write_text(json.dumps(self.__dict__, indent=2) + "\n")

    @classmethod
    def read(cls, state_dir: Path) -> ClusterState:
        data = json.loads((state_dir / STATE_FILE).read_text())
        return cls(**data)


class LocalCluster:
    """etcd + kube-apiserver (+ kube-controller-manager) for one test session or demo."""

    def __init__(
        self,
        state_dir: Path,
        *,
        controller_manager: bool = True,
        owner: str | None = None,
        network: ControlPlaneNetwork | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.controller_manager = controller_manager
        self.owner = owner or f"cluster-{uuid.uuid4().hex[:12]}"
        self.network = network
        self.procs: list[ManagedProcess] = []
        self.kubeconfig = state_dir / "admin.kubeconfig"
        #: the API server as the host sees it (directly, or through the portal)
        self.server = ""
        #: the API server as the VMs see it (the same as ``server`` on loopback)
        self.internal_server = ""
        self._ssl: ssl.SSLContext | None = None
        self._ca: pki.CertificateAuthority | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> LocalCluster:
        """Start everything and wait until the API server is ready; clean up on failure."""
        try:
            names = ["etcd", "kube-apiserver", "kube-controller-manager", "kubectl"]
            if self.network is not None:
                names.append("kube-scheduler")
            binaries = {name: find_tool(name) for name in names}
        except ToolMissing as e:
            raise ClusterError(str(e)) from e
        self._check_versions(binaries)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            self._start(binaries, timeout)
        except BaseException:
            self.stop()
            raise
        log.info("event=cluster_ready server=%s seconds=%.1f", self.server,
                 time.monotonic() - started)
        return self

    def stop(self) -> None:
        """Stop every process this cluster started (and their children)."""
        for proc in reversed(self.procs):
            proc.stop()
        stop_owned(self.owner)
        self.procs.clear()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def kill_api_server(self) -> None:
        """SIGKILL kube-apiserver, as a crash would: every watch and request drops."""
        proc = self._api_server()
        assert proc.popen is not None
        proc.popen.kill()
        proc.popen.wait(30)

    def start_api_server(self, timeout: float = 120.0) -> None:
        """Start kube-apiserver again with the same flags and port; return once it is ready."""
        old = self._api_server()
        self.procs[self.procs.index(old)] = ManagedProcess(
            old.name, old.argv, old.log_path, old.owner).start()
        wait_for("kube-apiserver /readyz after its restart", self._api_ready, timeout,
                 alive=self._alive)

    def _api_server(self) -> ManagedProcess:
        return next(p for p in self.procs if p.name == "kube-apiserver")

    def _api_ready(self) -> bool:
        try:
            status, _ = self.get("/readyz")
        except OSError:
            return False
        return status == 200

    # -- helpers for callers ---------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster and return the completed process."""
        return run_kubectl(self.kubeconfig, *args, check=check, input=input, timeout=timeout)

    @property
    def ca_path(self) -> Path:
        """PEM of the cluster's CA (it signed the API server's certificate)."""
        return self.state_dir / "pki" / "ca.crt"

    def client_kubeconfig(self, path: Path, user: str, group: str | None = None,
                          server: str | None = None) -> Path:
        """Write a 0600 kubeconfig for ``user`` (in ``group``) with a client certificate the
        cluster's CA issued, pointing at ``server`` (default: ``internal_server``)."""
        assert self._ca is not None, "cluster not started"
        pair = self._ca.issue(user, organization=group, client=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_kubeconfig(server or self.internal_server, self._ca.pair.cert_pem,
                                    pair.cert_pem, pair.key_pem, user))
        path.chmod(0o600)
        return path

    def node_kubeconfig(self, path: Path, node: str) -> Path:
        """The kubelet's credential as a node is provisioned with one: ``system:node:<node>``
        in ``system:nodes``, which the Node authorizer and NodeRestriction confine to that
        node's own objects."""
        return self.client_kubeconfig(path, f"system:node:{node}", "system:nodes")

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """TLS to the API server as the admin: the cluster's CA, the admin's certificate."""
        assert self._ssl is not None, "cluster not started"
        return self._ssl

    def get(self, path: str) -> tuple[int, bytes]:
        """GET an API path as the admin; return (status, body)."""
        req = urllib.request.Request(self.server + path)
        try:
            with urllib.request.urlopen(req, context=self.ssl_context, timeout=5) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read()

    # -- internals -------------------------------------------------------------------------

    def _check_versions(self, binaries: dict[str, Path]) -> None:
        want = pinned_versions().get("kubernetes")
        if not want:
            return
        out = subprocess.run([str(binaries["kube-apiserver"]), "--version"],
                             capture_output=True, text=True, check=False, timeout=30)
        if want not in out.stdout:
            raise ClusterError(
                f"{binaries['kube-apiserver']} reports '{out.stdout.strip() or out.stderr.strip()}'"
                f" but {want} is pinned; rebuild the tools with 'make tools'"
            )

    def _in_netns(self, argv: list[str]) -> list[str]:
        if self.network is None:
            return argv
        return ["nsenter", f"--net=/run/netns/{self.network.netns}", "--", *argv]

    def _process(self, name: str, argv: list[str], *, on_host: bool = False) -> ManagedProcess:
        """Start a component (in the control plane's namespace unless ``on_host``)."""
        proc = ManagedProcess(name, argv if on_host else self._in_netns(argv),
                              self.state_dir / "logs" / f"{name}.log", self.owner).start()
        self.procs.append(proc)
        return proc

    def _alive(self) -> None:
        for proc in self.procs:
            proc.check_running()

    def _start(self, binaries: dict[str, Path], timeout: float) -> None:
        d = self.state_dir
        pki_dir = d / "pki"
        ca = self._ca = pki.CertificateAuthority("azure-cni-sim-kubernetes-ca")
        ca_crt, _ = ca.pair.write(pki_dir, "ca")
        on_vnet = self.network is not None
        addresses = ("127.0.0.1", SERVICE_IP, *((self.network.address,) if self.network else ()))
        apiserver_crt, apiserver_key = ca.issue(
            "kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                       "kubernetes.default.svc.cluster.local"),
            ip_addresses=addresses,
            server=True,
        ).write(pki_dir, "apiserver")
        sa_key, sa_pub = pki.signing_key_pair()
        (pki_dir / "sa.key").touch(mode=0o600)
        (pki_dir / "sa.key").write_bytes(sa_key)
        (pki_dir / "sa.pub").write_bytes(sa_pub)

        # in a namespace of its own every port is free; on loopback, ask the kernel for some
        etcd_client, etcd_peer = (2379, 2380) if on_vnet else (free_port(), free_port())
        api_port = VNET_API_PORT if on_vnet else free_port()
        self._process(
            "etcd",
            [str(binaries["etcd"]), "--name=sim", f"--data-dir={d / 'etcd'}",
             f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
             f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
             f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
             f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
             f"--initial-cluster=sim=http://127.0.0.1:{etcd_peer}",
             "--unsafe-no-fsync=true", "--log-level=warn", "--quota-backend-bytes=2147483648"])

        if self.network is not None:
            # the API server listens on the VNet; the host's kubectl goes through a portal
            portal_port = free_port()
            self.server = f"https://127.0.0.1:{portal_port}"
            self.internal_server = f"https://{self.network.address}:{api_port}"
            network_flags = [
                "--bind-address=0.0.0.0", f"--advertise-address={self.network.address}",
                "--enable-admission-plugins=NodeRestriction",
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={pki_dir / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki_dir / 'apiserver-kubelet-client.key'}"]
            # exec, logs and port-forward: the API server calls the kubelets as a cluster admin
            ca.issue("kube-apiserver-kubelet-client", organization="system:masters",
                     client=True).write(pki_dir, "apiserver-kubelet-client")
        else:
            self.server = self.internal_server = f"https://127.0.0.1:{api_port}"
            network_flags = ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                             "--endpoint-reconciler-type=none"]
        local_server = f"https://127.0.0.1:{api_port}"  # as the other components see it

        admin_crt, admin_key = ca.issue(ADMIN_USER, organization="system:masters", client=True
                                        ).write(pki_dir, "admin")
        self.kubeconfig.write_text(_kubeconfig(self.server, ca.pair.cert_pem,
                                               admin_crt.read_bytes(), admin_key.read_bytes(),
                                               ADMIN_USER))
        self.kubeconfig.chmod(0o600)
        self._ssl = ssl.create_default_context(cafile=str(ca_crt))
        self._ssl.load_cert_chain(str(admin_crt), str(admin_key))

        # the API server waits for etcd itself; _alive notices if etcd died instead
        self._process(
            "kube-apiserver",
            [str(binaries["kube-apiserver"]),
             f"--etcd-servers=http://127.0.0.1:{etcd_client}",
             f"--secure-port={api_port}", *network_flags,
             f"--tls-cert-file={apiserver_crt}", f"--tls-private-key-file={apiserver_key}",
             f"--client-ca-file={ca_crt}",
             "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
             f"--service-account-key-file={pki_dir / 'sa.pub'}",
             f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
             f"--service-cluster-ip-range={SERVICE_CIDR}",
             "--authorization-mode=Node,RBAC", "--allow-privileged=true",
             "--profiling=false", "--v=1"])
        if self.network is not None:
            self._process("api-portal", [
                sys.executable, "-m", "azure_cni_sim.portal",
                "--target", f"{self.network.netns}@{self.network.address}:{api_port}",
                "--listen", f"127.0.0.1:{portal_port}"], on_host=True)

        try:
            wait_for("kube-apiserver /readyz", self._api_ready, timeout, alive=self._alive)
        except ProcessFailed as e:
            raise ClusterError(str(e)) from e

        if self.controller_manager:
            # nodes with kubelets need the node-lifecycle controller (it lifts the not-ready
            # taint); without kubelets it would only evict everything from Nodes nobody runs
            disabled = _DISABLED_CONTROLLERS if on_vnet else (
                *_DISABLED_CONTROLLERS, "node-lifecycle-controller")
            kcm_kubeconfig = self.client_kubeconfig(
                d / "kcm.kubeconfig", "system:kube-controller-manager", server=local_server)
            self._process(
                "kube-controller-manager",
                [str(binaries["kube-controller-manager"]),
                 f"--kubeconfig={kcm_kubeconfig}", "--leader-elect=false",
                 "--secure-port=0", "--use-service-account-credentials=true",
                 f"--service-account-private-key-file={pki_dir / 'sa.key'}",
                 f"--root-ca-file={ca_crt}",
                 f"--cluster-signing-cert-file={ca_crt}",
                 f"--cluster-signing-key-file={pki_dir / 'ca.key'}",
                 f"--service-cluster-ip-range={SERVICE_CIDR}",
                 "--controllers=*," + ",".join(f"-{c}" for c in disabled),
                 "--v=1"])

            def kcm_working() -> bool:
                status, _ = self.get("/api/v1/namespaces/default/configmaps/kube-root-ca.crt")
                return status == 200

            try:
                wait_for("kube-controller-manager to publish kube-root-ca.crt", kcm_working,
                         timeout, alive=self._alive)
            except ProcessFailed as e:
                raise ClusterError(str(e)) from e

        if on_vnet:
            scheduler_kubeconfig = self.client_kubeconfig(
                d / "scheduler.kubeconfig", "system:kube-scheduler", server=local_server)
            self._process(
                "kube-scheduler",
                [str(binaries["kube-scheduler"]), f"--kubeconfig={scheduler_kubeconfig}",
                 f"--authentication-kubeconfig={scheduler_kubeconfig}",
                 f"--authorization-kubeconfig={scheduler_kubeconfig}",
                 "--leader-elect=false", "--secure-port=0", "--v=1"])

        ClusterState(self.owner, str(self.kubeconfig), self.server, time.time()
                     ).write(self.state_dir)

    @staticmethod
    def down(state_dir: Path) -> bool:
        """Stop a cluster started by ``azure-cni-sim cluster up``; True if one was running."""
        try:
            state = ClusterState.read(state_dir)
        except FileNotFoundError:
            return False
        stop_owned(state.owner)
        shutil.rmtree(state_dir, ignore_errors=True)
        return True
