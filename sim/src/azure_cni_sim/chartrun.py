"""Run one container of the azure-cni chart from the built image, as a node runs it.

``render_chart`` is ``helm template`` with the values a simulation uses; ``ChartContainer``
takes one container of the result (the operator's Deployment, the agent's DaemonSet) and runs
it with a real containerd through its CRI, as kubelet does (``crispec`` is the translation):
the image's entry point and environment; the chart's command, args and env (fieldRefs and
``$(VAR)`` resolved); its securityContext (user and group, read-only root, capabilities
dropped, no privilege escalation, RuntimeDefault seccomp); its resources (memory limit, CPU
shares); its volumes (the ConfigMap's settings file, the emptyDir ``/tmp``, and the service
account token the admission plugin adds). The cluster first gets the chart's ServiceAccounts,
RBAC, ConfigMaps and Secrets, as ``helm install`` creates them, so the process talks to the API
server as its own service account, with the chart's permissions and nothing more. ``pid`` is
the process's PID on this machine: its memory and CPU are read from ``/proc`` (``procstat``).

Where it differs from a node, and why:

- containerd runs in the machine's network namespace (``Containerd()``: for a host-network
  pod, as the operator's is, reaching a loopback API server and ARM emulator) or in a
  simulated VM's (``Containerd(workdir, node)``);
- hostPath volumes resolve under ``host_root``, a directory standing in for the node's
  filesystem, never the machine's own paths (without one, a hostPath volume is refused);
  ``host_binds`` names the few node paths that are the machine's own there, bound read-only
  or writable as asked (the agent's ``/proc/sys/net``, which follows the network namespace
  of whoever writes it, and the ``/usr/bin`` that holds the shim's python);
- the token is minted once, unbound, for a day (kubelet binds it to the pod and rotates it);
- no kubelet: the readiness probe is polled once, at start; nothing restarts the container.

The CRI rather than ``ctr run``: Debian's ctr 1.6 cannot set the user (no ``--user``), and the
CRI builds the OCI spec exactly as it does for kubelet's pods (the default seccomp profile,
masked paths, capabilities, the cgroup parent, the memory limit).
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from azure_cni_sim import crispec
from azure_cni_sim.cluster import LocalCluster
from azure_cni_sim.containerd import Containerd
from azure_cni_sim.images import BuiltImage
from azure_cni_sim.procs import ProcessFailed, wait_for
from azure_cni_sim.tools import find_tool, pinned_versions, source_root

log = logging.getLogger(__name__)

RELEASE = "azure-cni"
NAMESPACE = "kube-system"
#: what ``helm install`` would have created that a running container depends on
APPLIED_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                 "ConfigMap", "Secret")
#: hours the service account token lasts (kubelet would rotate it; nothing does here)
SERVICE_ACCOUNT_HOURS = 24


class ChartRunError(RuntimeError):
    """The chart could not be rendered, or its container could not be run."""


def chart_dir() -> Path:
    root = source_root()
    if root is None:
        raise ChartRunError("charts/azure-cni is only in a source checkout")
    return root / "charts" / "azure-cni"


def run_helm(home: Path, *args: str, kubeconfig: Path | None = None, timeout: float = 180
             ) -> subprocess.CompletedProcess[str]:
    """The pinned helm with a private home under ``home`` (no repository is ever used)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home),
           "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    result = subprocess.run([str(find_tool("helm")), *args], capture_output=True, text=True,
                            timeout=timeout, check=False, env=env)
    if result.returncode != 0:
        raise ChartRunError(f"helm {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def render_chart(values: Mapping[str, Any], workdir: Path, *, release: str = RELEASE,
                 namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """The objects ``helm template`` makes of the chart with ``values``."""
    workdir.mkdir(parents=True, exist_ok=True)
    values_file = workdir / "values.json"
    values_file.write_text(json.dumps(values))  # JSON is YAML, and keeps every type exactly
    version = pinned_versions().get("kubernetes")
    out = run_helm(workdir / "helm", "template", release, str(chart_dir()), "--namespace",
                   namespace, "--values", str(values_file),
                   *([f"--kube-version={version}"] if version else []))
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


class ChartContainer:
    """One container of rendered chart ``manifests``, run from ``image`` by ``runtime``
    (started with the image's and the pause image's archives)."""

    def __init__(self, manifests: Sequence[Mapping[str, Any]], kind: str, container: str, *,
                 image: BuiltImage, runtime: Containerd, workdir: Path,
                 cluster: LocalCluster | None, node_name: str = "sim-node",
                 host_ip: str = "127.0.0.1", extra_objects: Sequence[Mapping[str, Any]] = (),
                 extra_env: Mapping[str, str] | None = None,
                 command: Sequence[str] | None = None, host_root: Path | None = None,
                 host_binds: Mapping[str, tuple[Path, bool]] | None = None) -> None:
        self.manifests = list(manifests)
        self.workload = crispec.find_workload(self.manifests, kind, container)
        workload_object = next(o for o in self.manifests if o.get("kind") == kind and
                               o["metadata"]["name"] == self.workload.name)
        namespace = str(workload_object["metadata"].get("namespace") or NAMESPACE)
        self.pod = crispec.PodIdentity(
            name=f"{self.workload.name}-{uuid.uuid4().hex[:5]}", namespace=namespace,
            uid=str(uuid.uuid4()), node_name=node_name, host_ip=host_ip)
        self.image = image
        self.runtime = runtime
        self.workdir = workdir
        self.cluster = cluster
        self.objects = [*self.manifests, *extra_objects]
        #: the simulation's own additions to the chart's environment (stand-ins for what a
        #: node provides, e.g. where IMDS is); recorded by ``describe``
        self.extra_env = dict(extra_env or {})
        self.command = list(command) if command is not None else None
        self.host_root = host_root
        #: node path -> (this machine's path bound there, read-only)
        self.host_binds = dict(host_binds or {})
        self._bound: list[Path] = []
        self.pod_id = ""
        self.container_id = ""
        self._pid = 0
        self._config: dict[str, Any] = {}
        self._shared_root = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, *, wait_ready: bool = True, timeout: float = 120) -> ChartContainer:
        """Create what the container needs, run it, and (``wait_ready``) wait until its
        readiness probe answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.cluster is not None:
            self._apply_chart_objects()
        mounts = self._write_volumes()
        self._bind_host_paths()
        image_user = self._image_user()
        base_env = {}
        if self.cluster is not None:
            server = urllib.parse.urlsplit(self.cluster.internal_server)
            base_env = crispec.service_env(str(server.hostname), int(server.port or 443))
        env = crispec.container_env(self.workload, self.pod, self.objects, base_env)
        env.update(self.extra_env)
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        sandbox = crispec.sandbox_config(self.workload, self.pod,
                                         cgroup_parent=f"/{self.runtime.cgroup_parent}",
                                         log_directory=str(logs))
        self._config = crispec.container_config(
            self.workload, image=self.image.image, env=env, mounts=mounts,
            log_path=f"{self.workload.container['name']}.log", image_user=image_user,
            command=self.command)
        sandbox_file = self.workdir / "sandbox.json"
        container_file = self.workdir / "container.json"
        sandbox_file.write_text(json.dumps(sandbox, indent=1))
        container_file.write_text(json.dumps(self._config, indent=1))
        self.pod_id = self.runtime.crictl("runp", str(sandbox_file)).stdout.strip()
        self.container_id = self.runtime.crictl(
            "create", self.pod_id, str(container_file), str(sandbox_file)).stdout.strip()
        self.runtime.crictl("start", self.container_id)
        self._pid = int(self._inspect()["info"]["pid"])
        log.info("event=chart_container_started workload=%s/%s image=%s pid=%d",
                 self.workload.kind, self.workload.name, self.image.image, self._pid)
        url = crispec.probe_url(self.workload)
        if wait_ready and url is not None:
            wait_for(f"{self.workload.name}'s readiness probe {url}", lambda: _answers(url),
                     timeout, interval=0.5, alive=self.check_running)
        return self

    def stop(self) -> None:
        """Stop the container with the pod's grace period, then remove it and its sandbox."""
        grace = int(self.workload.pod_spec.get("terminationGracePeriodSeconds", 30))
        if self.container_id:
            self.runtime.crictl("stop", "--timeout", str(grace), self.container_id, check=False)
            self.runtime.crictl("rm", self.container_id, check=False)
        if self.pod_id:
            self.runtime.crictl("stopp", self.pod_id, check=False)
            self.runtime.crictl("rmp", self.pod_id, check=False)
        for target in reversed(self._bound):
            subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)
        self._bound.clear()
        if self._shared_root:
            subprocess.run(["umount", "-l", str(self.host_root)], check=False,
                           capture_output=True)
            self._shared_root = False

    # -- the running process ---------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The container's main process, as this machine numbers it."""
        if not self._pid:
            raise ChartRunError("the container was never started")
        return self._pid

    def running(self) -> bool:
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        return state != "Z"

    def check_running(self) -> None:
        """Raise ProcessFailed, with the exit code and the end of the log, if it exited."""
        if not self.running():
            status = self._inspect()["status"]
            raise ProcessFailed(f"{self.workload.name} ({self.image.image}) exited with code "
                                f"{status.get('exitCode')}; last log lines:\n{self.log_tail()}")

    def wait_exit(self, timeout: float) -> int:
        """Wait until the container exits; its exit code."""
        wait_for(f"{self.workload.name} to exit", lambda: self._inspect()["status"]["state"]
                 == "CONTAINER_EXITED", timeout, interval=0.2)
        return int(self._inspect()["status"]["exitCode"])

    def logs(self) -> str:
        """Its output, stdout and stderr interleaved (the CRI's log file without prefixes)."""
        path = self.workdir / "logs" / f"{self.workload.container['name']}.log"
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        # "<time> <stream> <P|F> <text>": P is a partial line continued by the next
        out: list[str] = []
        partial = ""
        for line in lines:
            parts = line.split(" ", 3)
            if len(parts) < 4:
                continue
            partial += parts[3]
            if parts[2] == "F":
                out.append(partial)
                partial = ""
        return "\n".join(out)

    def log_tail(self, lines: int = 25) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    def describe(self) -> dict[str, Any]:
        """How it was run, for a benchmark's results (no values of the environment: they may
        hold credentials)."""
        sc = self._config["linux"]["security_context"]
        mounts = {m.container_path: m for m in crispec.plan_mounts(self.workload)}
        volumes = {v["name"]: v for v in self.workload.pod_spec.get("volumes") or ()}
        user = sc.get("run_as_user", {}).get("value", "image USER")
        group = sc.get("run_as_group", {}).get("value", "image")
        return {
            "how": "from the built image, as the chart runs it: helm template, then the "
                   "container through containerd's CRI as kubelet creates it",
            "image": self.image.image,
            "tag": self.image.tag,
            "runtime": f"containerd {self.runtime_version()} (CRI, crictl), "
                       f"{'host' if self.workload.host_network else 'pod'} network",
            "workload": f"{self.workload.kind}/{self.workload.name}",
            "command": self._config.get("command", []) + self._config.get("args", []),
            "user": f"{user}:{group}",
            "read_only_root": sc["readonly_rootfs"],
            "no_new_privileges": sc["no_new_privs"],
            "capabilities": sc["capabilities"],
            "seccomp": "RuntimeDefault" if sc.get("seccomp") == {
                "profile_type": crispec.SECCOMP_RUNTIME_DEFAULT} else sc.get("seccomp"),
            "resources": self._config["linux"]["resources"],
            "mounts": {path: _volume_kind(volumes.get(m.volume), m) for path, m in
                       mounts.items()},
            "service_account": (f"{self.pod.namespace}/{self.workload.service_account}, a "
                                "TokenRequest token" if self.cluster is not None and
                                self.workload.automount_token else None),
            "environment_added_by_the_simulation": sorted(self.extra_env),
            "node_paths_that_are_this_machines": sorted(self.host_binds),
        }

    def runtime_version(self) -> str:
        out = self.runtime.ctr("version").stdout
        server = out.split("Server:", 1)[-1]
        for line in server.splitlines():
            if line.strip().startswith("Version:"):
                return line.split(":", 1)[1].strip()
        return "unknown"

    # -- internals -------------------------------------------------------------------------

    def _inspect(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.runtime.crictl("inspect", self.container_id
                                                                ).stdout)
        return result

    def _image_user(self) -> tuple[int, int] | None:
        info = json.loads(self.runtime.crictl("inspecti", self.image.image).stdout)
        user = str(info["info"]["imageSpec"]["config"].get("User") or "")
        uid, _, gid = user.partition(":")
        if not uid.isdigit():
            return None
        return int(uid), int(gid) if gid.isdigit() else 0

    def _apply_chart_objects(self) -> None:
        assert self.cluster is not None
        wanted = [o for o in self.manifests if o.get("kind") in APPLIED_KINDS]
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": wanted}))

    def _token_files(self) -> dict[str, tuple[bytes, int]]:
        assert self.cluster is not None
        token = self.cluster.kubectl(
            "create", "token", self.workload.service_account, "-n", self.pod.namespace,
            f"--duration={SERVICE_ACCOUNT_HOURS}h").stdout.strip()
        return {"token": (token.encode(), 0o644),
                "ca.crt": (self.cluster.ca_path.read_bytes(), 0o644),
                "namespace": (self.pod.namespace.encode(), 0o644)}

    def _write_volumes(self) -> list[dict[str, Any]]:
        """Each volume on disk; the CRI mounts of the container."""
        plans = crispec.plan_volumes(self.workload, self.pod.namespace, self.objects)
        if self.cluster is None:  # no API server to mint a token for
            plans.pop(crispec.SERVICE_ACCOUNT_VOLUME, None)
        paths = {name: self._write_volume(plan) for name, plan in plans.items()}
        if self.host_root is not None and any(
                m.propagation and plans[m.volume].kind == "hostPath"
                for m in crispec.plan_mounts(self.workload) if m.volume in plans):
            self._share_host_root()
        mounts = []
        for mount in crispec.plan_mounts(self.workload):
            if mount.volume not in paths:
                if mount.volume == crispec.SERVICE_ACCOUNT_VOLUME:
                    continue
                raise ChartRunError(f"volumeMount {mount.container_path}: no volume "
                                    f"{mount.volume!r}")
            host_path = paths[mount.volume] / mount.sub_path if mount.sub_path else \
                paths[mount.volume]
            mounts.append({"container_path": mount.container_path, "host_path": str(host_path),
                           "readonly": mount.read_only, "propagation": mount.propagation})
        return mounts

    def _write_volume(self, plan: crispec.VolumePlan) -> Path:
        if plan.kind == "hostPath":
            return self._host_path(plan)
        directory = self.workdir / "volumes" / plan.name
        directory.mkdir(parents=True, exist_ok=True)
        if plan.kind == "emptyDir":
            directory.chmod(0o777)  # as kubelet makes it: any user of the pod may write
            return directory
        files = self._token_files() if plan.kind == "serviceAccountToken" else plan.files
        directory.chmod(0o755)
        for relative, (data, mode) in files.items():
            path = directory / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(mode)
        return directory

    def _share_host_root(self) -> None:
        """Make ``host_root`` a shared mount, as a node's ``/`` is (systemd makes it so): a
        hostPath mounted with propagation must sit on one (runc refuses it otherwise)."""
        assert self.host_root is not None
        root = str(self.host_root)
        subprocess.run(["mount", "--bind", root, root], check=True, capture_output=True)
        self._shared_root = True
        subprocess.run(["mount", "--make-rshared", root], check=True, capture_output=True)

    def _bind_host_paths(self) -> None:
        """Bind ``host_binds`` under ``host_root`` (after it is shared, so that the container's
        mounts with propagation see them)."""
        if self.host_binds and self.host_root is None:
            raise ChartRunError("host_binds need a host_root")
        for node_path, (source, read_only) in self.host_binds.items():
            assert self.host_root is not None
            target = self.host_root / node_path.lstrip("/")
            if source.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
            options = "bind,ro" if read_only else "bind"
            subprocess.run(["mount", "-o", options, str(source), str(target)], check=True,
                           capture_output=True)
            self._bound.append(target)

    def _host_path(self, plan: crispec.VolumePlan) -> Path:
        if self.host_root is None:
            raise ChartRunError(f"volume {plan.name} is the node's {plan.host_path}: give a "
                                "host_root to stand in for the node's filesystem")
        path = self.host_root / plan.host_path.lstrip("/")
        if plan.host_type in ("", "Directory", "DirectoryOrCreate"):
            path.mkdir(parents=True, exist_ok=True)
        elif plan.host_type in ("File", "FileOrCreate"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            raise ChartRunError(f"volume {plan.name}: hostPath type {plan.host_type!r}")
        return path


def _volume_kind(volume: Mapping[str, Any] | None, mount: crispec.MountPlan) -> str:
    access = "read-only" if mount.read_only else "read-write"
    if volume is None:  # the service account token's
        return f"service account token ({access})"
    kind = next(k for k in volume if k != "name")
    source = volume[kind]
    named = source.get("name") or source.get("secretName") or source.get("path") or ""
    return f"{kind} {named} ({access})".replace("  ", " ")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return 200 <= int(resp.status) < 400
    except (OSError, urllib.error.URLError):
        return False


@contextlib.contextmanager
def chart_container(manifests: Sequence[Mapping[str, Any]], kind: str, container: str, *,
                    image: BuiltImage, pause: BuiltImage, workdir: Path,
                    cluster: LocalCluster | None, wait_ready: bool = True,
                    **options: Any) -> Iterator[ChartContainer]:
    """A private containerd (root, state and socket of its own) in the machine's network
    namespace, running one container of the chart; everything removed on exit."""
    runtime = Containerd(workdir / "containerd")
    runtime.start(pause.archive, image.archive, sandbox_image=pause.image)
    run = None
    try:
        run = ChartContainer(manifests, kind, container, image=image, runtime=runtime,
                             workdir=workdir / container, cluster=cluster, **options)
        yield run.start(wait_ready=wait_ready)
    finally:
        if run is not None:
            with contextlib.suppress(Exception):
                run.stop()
        runtime.stop()
