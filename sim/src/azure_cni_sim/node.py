"""Run a node agent for a simulated VM: a network namespace standing in for the host.

The host namespace gets a NIC (a dummy ``eth0`` with the primary IP and a default route) and
a portal that makes the API server reachable on its loopback; the agent runs inside it with
``ip netns exec``, configured by a settings file, with its socket, state and CNI directories
under a work directory. ``run_shim`` executes the installed plugin as a container runtime
does (environment + stdin), and ``publish_pool`` writes a NodeIPPool the way the operator
does (server-side apply under ``azure-cni-operator``).

Used by the tests, the latency benchmark and the demo; nothing here touches the machine's own
network namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from azure_cni.agent.status_cli import AgentDown, fetch_status
from azure_cni.api.nodeippool import (
    API_VERSION,
    KIND,
    OPERATOR_FIELD_MANAGER,
    IPState,
    NicInfo,
    PoolIP,
    PoolSpec,
    PoolStatus,
    status_apply_body,
)
from azure_cni_sim.procs import ManagedProcess, wait_for

Kubectl = Callable[..., subprocess.CompletedProcess[str]]

REPO_CRD = Path(__file__).resolve().parents[3] / "deploy" / "crds" / "azurecni.io_nodeippools.yaml"
DEFAULT_NETWORK = "azure-cni"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def netns_path(name: str) -> str:
    return name if name.startswith("/") else f"/run/netns/{name}"


def setup_host_nic(netns: str, *, primary_cidr: str, gateway: str, mtu: int = 1500,
                   name: str = "eth0", fabric_netns: str | None = None) -> None:
    """Give the host namespace a NIC with the VM's primary IP and a default route.

    The NIC is one end of a veth pair. With ``fabric_netns`` the other end goes there and
    carries the gateway address (a stand-in for Azure's network); otherwise it stays, unused,
    in the host namespace.
    """
    peer = f"{name}-fabric"[:15]
    _ip("-n", netns, "link", "add", name, "mtu", str(mtu), "type", "veth", "peer", "name", peer)
    _ip("-n", netns, "addr", "add", primary_cidr, "dev", name)
    if fabric_netns is not None:
        _ip("-n", netns, "link", "set", peer, "netns", fabric_netns)
        prefix = primary_cidr.split("/")[1]
        _ip("-n", fabric_netns, "addr", "add", f"{gateway}/{prefix}", "dev", peer)
        _ip("-n", fabric_netns, "link", "set", peer, "up")
        _ip("-n", fabric_netns, "link", "set", "lo", "up")
    else:
        _ip("-n", netns, "link", "set", peer, "up")
    _ip("-n", netns, "link", "set", name, "up")
    _ip("-n", netns, "link", "set", "lo", "up")
    _ip("-n", netns, "route", "add", "default", "via", gateway, "dev", name, "onlink")


@dataclass
class ShimResult:
    """What a runtime sees from one plugin invocation."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None

    def address(self) -> str:
        """The pod address of a successful ADD."""
        return str(self.output["ips"][0]["address"]).split("/")[0]


@dataclass
class LocalNode:
    """One simulated VM's agent and its files."""

    name: str
    netns: str
    workdir: Path
    kubeconfig: Path
    api_port: int
    owner: str = field(default_factory=lambda: f"localnode-{uuid.uuid4().hex[:10]}")
    agent_settings: dict[str, Any] = field(default_factory=dict)
    snat_settings: dict[str, Any] = field(default_factory=dict)
    agent: ManagedProcess | None = None
    portal: ManagedProcess | None = None
    agent_runs: int = 0

    @property
    def socket_path(self) -> Path:
        return self.workdir / "run" / "agent.sock"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def bin_dir(self) -> Path:
        return self.workdir / "bin"

    @property
    def conf_dir(self) -> Path:
        return self.workdir / "net.d"

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.yaml"

    @property
    def conflist_path(self) -> Path:
        return self.conf_dir / "10-azure.conflist"

    @property
    def shim_path(self) -> Path:
        return self.bin_dir / "azure-vnet"

    def write_config(self) -> None:
        agent = {"socketPath": str(self.socket_path), "stateDir": str(self.state_dir),
                 "cniBinDir": str(self.bin_dir), "cniConfDir": str(self.conf_dir),
                 "hostPython": "/usr/bin/python3", **self.agent_settings}
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump({"agent": agent, "snat": self.snat_settings}))

    def link_reference_plugins(self, names: Iterable[str] = ("loopback", "portmap"),
                               source: Path = Path("/usr/lib/cni")) -> None:
        """Put Debian's plugins next to ours (the runtime uses one bin dir)."""
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        for plugin in names:
            link = self.bin_dir / plugin
            if not link.exists():
                link.symlink_to(source / plugin)

    def start_portal(self) -> None:
        self.portal = ManagedProcess(
            f"portal-{self.name}",
            [sys.executable, "-m", "azure_cni_sim.portal", "--target",
             f"127.0.0.1:{self.api_port}", f"{self.netns}:{self.api_port}"],
            self.workdir / "logs" / "portal.log", self.owner).start()
        wait_for(f"the API portal into {self.netns}",
                 lambda: "portal_listening" in _read(self.portal_log), 30,
                 alive=self.portal.check_running)

    @property
    def portal_log(self) -> Path:
        return self.workdir / "logs" / "portal.log"

    def agent_command(self, *extra: str) -> list[str]:
        """The exact command line of the agent for this node."""
        agent = Path(sys.executable).with_name("azure-cni-agent")
        return ["ip", "netns", "exec", self.netns, str(agent), "--config",
                str(self.config_path), "--node-name", self.name, "--kubeconfig",
                str(self.kubeconfig), *extra]

    def start_agent(self, *extra: str, env: Mapping[str, str] | None = None) -> ManagedProcess:
        """Start the agent (writing the config first), with ``env`` added to its environment;
        does not wait for readiness."""
        self.write_config()
        self.agent_runs += 1
        self.agent = ManagedProcess(
            f"agent-{self.name}", self.agent_command(*extra),
            self.workdir / "logs" / f"agent-{self.agent_runs}.log", self.owner,
            env=dict(env or {})).start()
        return self.agent

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until this agent process serves, ready, and its conflist is installed."""
        assert self.agent is not None

        def ready() -> bool:
            try:
                return bool(self.agent_status()["ready"]) and self.conflist_path.exists()
            except AgentDown:
                return False

        wait_for(f"agent {self.name} to serve and install {self.conflist_path}", ready,
                 timeout, interval=0.05, alive=self.agent.check_running)

    def stop_agent(self, kill: bool = False, timeout: float = 20) -> int | None:
        """SIGTERM (or SIGKILL) the agent; return its exit code."""
        if self.agent is None or self.agent.popen is None:
            return None
        if kill:
            self.agent.popen.kill()
            self.agent.popen.wait(timeout)
        else:
            self.agent.stop(timeout)
        return self.agent.popen.returncode

    def agent_log(self) -> str:
        return self.agent.log_tail(200) if self.agent else ""

    def stop(self) -> None:
        self.stop_agent()
        if self.portal is not None:
            self.portal.stop()

    # -- the runtime's side ----------------------------------------------------------------

    def plugin_config(self, cni_version: str | None = None,
                      extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What libcni gives our plugin on stdin: the installed conflist's first plugin plus
        the network's name and the negotiated version."""
        conflist = json.loads(self.conflist_path.read_text())
        plugin = dict(conflist["plugins"][0])
        config = {"cniVersion": cni_version or conflist["cniVersion"],
                  "name": conflist["name"], **plugin}
        config.update(extra or {})
        return config

    def run_shim(self, command: str, container_id: str = "", netns: str = "",
                 ifname: str = "eth0", *, config: Mapping[str, Any] | None = None,
                 stdin: bytes | None = None, env: Mapping[str, str] | None = None,
                 cni_args: str = "", timeout: float = 60) -> ShimResult:
        """Execute the installed plugin exactly as a runtime does."""
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                       "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
                       "CNI_NETNS": netns_path(netns) if netns else "",
                       "CNI_IFNAME": ifname if command in ("ADD", "DEL", "CHECK") else "",
                       "CNI_ARGS": cni_args, "CNI_PATH": str(self.bin_dir),
                       **(env or {})}
        if stdin is None:
            stdin = json.dumps(config if config is not None else self.plugin_config()).encode()
        done = subprocess.run([str(self.shim_path)], input=stdin, env=environment,
                              capture_output=True, timeout=timeout, check=False)
        return ShimResult(done.returncode, done.stdout.decode(errors="replace"),
                          done.stderr.decode(errors="replace"))

    def agent_status(self) -> dict[str, Any]:
        """The agent's ``/v1/status`` document, over its socket."""
        return fetch_status(self.socket_path)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


# -- the operator's side, for tests and demos ----------------------------------------------


def apply_crd(kubectl: Kubectl) -> None:
    """Every CRD the chart ships (NodeIPPool, NodeIPPoolClass), applied and Established."""
    kubectl("apply", "--server-side", "-f", str(REPO_CRD.parent))
    wait_crd_established(kubectl, "nodeippools.azurecni.io")
    wait_crd_established(kubectl, "nodeippoolclasses.azurecni.io")


def wait_crd_established(kubectl: Kubectl, name: str, timeout: float = 60) -> None:
    """Wait until the CRD ``name`` serves its kind.

    Not ``kubectl wait --for=condition=Established``: it fails at once ("status.conditions
    accessor error") when asked before the API server has written any condition."""
    query = '{.status.conditions[?(@.type=="Established")].status}'

    def established() -> bool:
        out = kubectl("get", "crd", name, "-o", f"jsonpath={query}", check=False)
        return out.returncode == 0 and out.stdout.strip() == "True"

    wait_for(f"CRD {name} to be Established", established, timeout, interval=0.2)


def pool_addresses(prefix: str, first: int, count: int) -> list[str]:
    """``count`` addresses ``prefix.first``, ``prefix.first+1``, ... (a /24 prefix)."""
    return [f"{prefix}.{first + i}" for i in range(count)]


def publish_pool(kubectl: Kubectl, node: str, addresses: Sequence[str], *,
                 releasing: Iterable[str] = (), subnet_cidr: str = "198.18.0.0/24",
                 vnet: Sequence[str] = ("198.18.0.0/16",), primary_ip: str = "198.18.0.4",
                 spec: PoolSpec | None = None, prefix_length: int | None = None,
                 nic: NicInfo | None = None) -> None:
    """Create (or update) node's NodeIPPool and write its inventory as the operator would.

    ipConfiguration names are derived from the address so that an address keeps its name.
    With ``prefix_length``, each address is the first of a block (Blocks mode). ``nic``
    replaces the NIC made of ``primary_ip``, ``subnet_cidr`` and ``vnet`` (e.g. a second NIC
    of the VM, with its MAC).
    """
    pool_spec = spec or PoolSpec(node_name=node, min_ips=0, max_ips=255, batch_size=1,
                                 min_free_ips=0, max_free_ips=255)
    manifest = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": node},
                "spec": pool_spec.to_dict()}
    kubectl("apply", "--server-side", f"--field-manager={OPERATOR_FIELD_MANAGER}",
            "--force-conflicts", "-f", "-", input=json.dumps(manifest))
    releasing = set(releasing)
    status = PoolStatus(
        nic=nic or NicInfo(id=f"/subscriptions/sim/nics/{node}", primary_ip=primary_ip,
                           subnet_id="/subscriptions/sim/subnets/pods", subnet_cidr=subnet_cidr,
                           vnet_address_space=tuple(vnet)),
        ips=tuple(PoolIP(a, ipconfig_name(a),
                         IPState.RELEASING if a in releasing else IPState.AVAILABLE,
                         prefix_length)
                  for a in addresses))
    body = status_apply_body(node, status.operator_fields())
    kubectl("apply", "--server-side", f"--field-manager={OPERATOR_FIELD_MANAGER}",
            "--subresource=status", "--force-conflicts", "-f", "-", input=json.dumps(body))


def ipconfig_name(address: str) -> str:
    return "azcni-" + address.replace(".", "-")


def read_pool(kubectl: Kubectl, node: str, managed_fields: bool = False) -> dict[str, Any]:
    extra = ["--show-managed-fields"] if managed_fields else []
    out = kubectl("get", "nodeippool", node, "-o", "json", *extra).stdout
    return dict(json.loads(out))


def wait_for_pool_status(kubectl: Kubectl, node: str, what: str,
                         condition: Callable[[dict[str, Any]], bool],
                         timeout: float = 30) -> dict[str, Any]:
    """Poll the NodeIPPool until ``condition(status)`` holds; return that status."""
    seen: dict[str, Any] = {}

    def check() -> bool:
        nonlocal seen
        seen = read_pool(kubectl, node).get("status") or {}
        return condition(seen)

    try:
        wait_for(f"NodeIPPool {node} to show {what}", check, timeout, interval=0.25)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; last status: {json.dumps(seen)}") from None
    return seen


def delete_pool(kubectl: Kubectl, node: str) -> None:
    kubectl("delete", "nodeippool", node, "--ignore-not-found", "--wait=false")



def api_port_of(kubeconfig: Path) -> int:
    """The API server's port on 127.0.0.1, from a kubeconfig (the portal relays it)."""
    document = yaml.safe_load(kubeconfig.read_text())
    server = str(document["clusters"][0]["cluster"]["server"])
    host_port = server.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError(f"{server} is not on this machine's loopback; a portal cannot reach it")
    return int(port)


@contextlib.contextmanager
def simulated_node(kubectl: Kubectl, kubeconfig: Path, create_netns: Callable[[str], str],
                   workdir: Path, *, primary_cidr: str = "198.18.0.4/24",
                   gateway: str = "198.18.0.1", mtu: int = 1500,
                   fabric_netns: str | None = None) -> Iterator[LocalNode]:
    """A simulated VM with its portal running and its agent not yet started; on exit the
    agent and portal stop and the node's NodeIPPool is deleted."""
    hostns = create_netns("host")
    setup_host_nic(hostns, primary_cidr=primary_cidr, gateway=gateway, mtu=mtu,
                   fabric_netns=fabric_netns)
    node = LocalNode(name=f"node-{uuid.uuid4().hex[:8]}", netns=hostns, workdir=workdir,
                     kubeconfig=kubeconfig, api_port=api_port_of(kubeconfig))
    node.link_reference_plugins()
    node.start_portal()
    try:
        yield node
    finally:
        node.stop()
        delete_pool(kubectl, node.name)
