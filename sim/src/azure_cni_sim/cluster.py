"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

No kubelet and no container runtime: Node objects are created by tests or the demo, exactly as
a cloud's kubelets would register them. Everything binds to 127.0.0.1 on free ports, with a
throwaway CA, and every process is stopped on ``stop()`` (or ``azure-cni-sim cluster down``),
also when its caller was interrupted.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import socket
import ssl
import subprocess
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

# Service ClusterIPs are only allocated, never routed (there is no kube-proxy here); the range
# still stays inside the documentation/benchmark block the simulation is allowed to use.
SERVICE_CIDR = "198.18.240.0/24"
SERVICE_IP = "198.18.240.1"
STATE_FILE = "state.json"
ADMIN_USER = "azure-cni-admin"


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
    ) -> None:
        self.state_dir = state_dir
        self.controller_manager = controller_manager
        self.owner = owner or f"cluster-{uuid.uuid4().hex[:12]}"
        self.procs: list[ManagedProcess] = []
        self.kubeconfig = state_dir / "admin.kubeconfig"
        self.server = ""
        self._ssl: ssl.SSLContext | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> LocalCluster:
        """Start everything and wait until the API server is ready; clean up on failure."""
        try:
            binaries = {
                name: find_tool(name)
                for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
            }
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

    # -- helpers for callers ---------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster and return the completed process."""
        return run_kubectl(self.kubeconfig, *args, check=check, input=input, timeout=timeout)

    def get(self, path: str) -> tuple[int, bytes]:
        """GET an API path as the admin; return (status, body)."""
        assert self._ssl is not None, "cluster not started"
        req = urllib.request.Request(self.server + path)
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=5) as resp:
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

    def _start(self, binaries: dict[str, Path], timeout: float) -> None:
        d = self.state_dir
        pki_dir = d / "pki"
        ca = pki.CertificateAuthority("azure-cni-sim-kubernetes-ca")
        ca_crt, _ = ca.pair.write(pki_dir, "ca")
        apiserver_crt, apiserver_key = ca.issue(
            "kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                       "kubernetes.default.svc.cluster.local"),
            ip_addresses=("127.0.0.1", SERVICE_IP),
            server=True,
        ).write(pki_dir, "apiserver")
        sa_key, sa_pub = pki.signing_key_pair()
        (pki_dir / "sa.key").touch(mode=0o600)
        (pki_dir / "sa.key").write_bytes(sa_key)
        (pki_dir / "sa.pub").write_bytes(sa_pub)

        etcd_client, etcd_peer, api_port = free_port(), free_port(), free_port()
        etcd = ManagedProcess(
            "etcd",
            [str(binaries["etcd"]), "--name=sim", f"--data-dir={d / 'etcd'}",
             f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
             f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
             f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
             f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
             f"--initial-cluster=sim=http://127.0.0.1:{etcd_peer}",
             "--unsafe-no-fsync=true", "--log-level=warn", "--quota-backend-bytes=2147483648"],
            d / "logs" / "etcd.log", self.owner,
        ).start()
        self.procs.append(etcd)

        self.server = f"https://127.0.0.1:{api_port}"
        apiserver = ManagedProcess(
            "kube-apiserver",
            [str(binaries["kube-apiserver"]),
             f"--etcd-servers=http://127.0.0.1:{etcd_client}",
             "--bind-address=127.0.0.1", f"--secure-port={api_port}",
             "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
             f"--tls-cert-file={apiserver_crt}", f"--tls-private-key-file={apiserver_key}",
             f"--client-ca-file={ca_crt}",
             "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
             f"--service-account-key-file={pki_dir / 'sa.pub'}",
             f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
             f"--service-cluster-ip-range={SERVICE_CIDR}",
             "--authorization-mode=Node,RBAC", "--allow-privileged=true",
             "--profiling=false", "--v=1"],
            d / "logs" / "kube-apiserver.log", self.owner,
        )

        admin_crt, admin_key = ca.issue(ADMIN_USER, organization="system:masters", client=True
                                        ).write(pki_dir, "admin")
        self.kubeconfig.write_text(_kubeconfig(self.server, ca.pair.cert_pem,
                                               admin_crt.read_bytes(), admin_key.read_bytes(),
                                               ADMIN_USER))
        self.kubeconfig.chmod(0o600)
        self._ssl = ssl.create_default_context(cafile=str(ca_crt))
        self._ssl.load_cert_chain(str(admin_crt), str(admin_key))

        def etcd_ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{etcd_client}/health",
                                            timeout=2) as resp:
                    return b'"true"' in resp.read()
            except OSError:
                return False

        wait_for("etcd /health", etcd_ready, timeout, alive=etcd.check_running)
        apiserver.start()
        self.procs.append(apiserver)

        def api_ready() -> bool:
            try:
                status, _ = self.get("/readyz")
            except OSError:
                return False
            return status == 200

        def all_alive() -> None:
            etcd.check_running()
            apiserver.check_running()

        try:
            wait_for("kube-apiserver /readyz", api_ready, timeout, alive=all_alive)
        except ProcessFailed as e:
            raise ClusterError(str(e)) from e

        if self.controller_manager:
            kcm_crt, kcm_key = ca.issue("system:kube-controller-manager", client=True
                                        ).write(pki_dir, "kcm")
            kcm_kubeconfig = d / "kcm.kubeconfig"
            kcm_kubeconfig.write_text(_kubeconfig(self.server, ca.pair.cert_pem,
                                                  kcm_crt.read_bytes(), kcm_key.read_bytes(),
                                                  "system:kube-controller-manager"))
            kcm_kubeconfig.chmod(0o600)
            kcm = ManagedProcess(
                "kube-controller-manager",
                [str(binaries["kube-controller-manager"]),
                 f"--kubeconfig={kcm_kubeconfig}", "--leader-elect=false",
                 "--secure-port=0", "--use-service-account-credentials=true",
                 f"--service-account-private-key-file={pki_dir / 'sa.key'}",
                 f"--root-ca-file={ca_crt}",
                 f"--cluster-signing-cert-file={ca_crt}",
                 f"--cluster-signing-key-file={pki_dir / 'ca.key'}",
                 f"--service-cluster-ip-range={SERVICE_CIDR}",
                 "--controllers=*,-node-ipam-controller,-node-lifecycle-controller,"
                 "-cloud-node-lifecycle-controller,-service-lb-controller,-node-route-controller",
                 "--v=1"],
                d / "logs" / "kube-controller-manager.log", self.owner,
            ).start()
            self.procs.append(kcm)

            def kcm_working() -> bool:
                status, _ = self.get("/api/v1/namespaces/default/configmaps/kube-root-ca.crt")
                return status == 200

            def kcm_alive() -> None:
                all_alive()
                kcm.check_running()

            try:
                wait_for("kube-controller-manager to publish kube-root-ca.crt", kcm_working,
                         timeout, alive=kcm_alive)
            except ProcessFailed as e:
                raise ClusterError(str(e)) from e

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
