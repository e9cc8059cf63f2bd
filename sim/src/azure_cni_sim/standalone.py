"""Azure VMs without Kubernetes: the standalone agent, containerd's ``ctr`` and Docker Engine.

``StandaloneWorld`` is the ARM + IMDS emulator, the VNet fabric (with its on-premises and
internet hosts and the wireserver), and per VM a network namespace running the real agent
with ``standalone.enabled``: no API server, no operator. Each agent reads its VM's addresses
from 169.254.169.254 through the fabric, where the IMDS relay answers every VM with its own
document (``imds_relay``), exactly the address a real VM asks. Admins change the NICs through
ARM (the tests use the raw ``azure-mgmt-network`` client, as the CLI or Terraform would).

On a VM, on demand:
- ``Containerd`` (Debian's 1.6) and ``ctr_run``: ``ctr run --cni`` as a user types it. ctr
  runs the CNI plugins itself and reads ``/etc/cni/net.d`` and ``/opt/cni/bin`` only, so it
  runs in a mount namespace of its own where those are the VM's (``dockerd.in_vm``);
- ``cnitool``: libcni's own command line, with ``CAP_ARGS`` port mappings, the way nerdctl's
  ``-p`` calls the same library;
- ``DockerEngine`` (Debian's docker.io), whose ``/run/docker/plugins`` is the VM's, where
  the agent serves the azure-cni network and IPAM plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from azure_cni.agent.status_cli import AgentDown
from azure_cni_sim.arm import ArmConfig, ArmEmulator, VmInfo
from azure_cni_sim.containerd import Containerd
from azure_cni_sim.dockerd import DockerEngine, in_vm
from azure_cni_sim.images import Image, busybox_image
from azure_cni_sim.node import LocalNode
from azure_cni_sim.procs import ManagedProcess, stop_owned, wait_for
from azure_cni_sim.tools import find_tool
from azure_cni_sim.vnet import IMDS, ONPREM_CIDR, Fabric, capture_packets
from azure_cni_sim.world import SUBNET, VNET_SPACE, namespaces_with_prefix

log = logging.getLogger(__name__)


@dataclass
class StandaloneNode(LocalNode):
    """A VM's standalone agent: ``LocalNode``'s files, no Kubernetes."""

    kubeconfig: Path = Path("/nonexistent")
    api_port: int = 0
    imds_endpoint: str = f"http://{IMDS}"
    standalone_settings: dict[str, Any] = field(default_factory=dict)

    @property
    def docker_plugin_dir(self) -> Path:
        """What this VM's dockerd sees as /run/docker/plugins."""
        return self.workdir / "docker-plugins"

    @property
    def cni_cache_dir(self) -> Path:
        """What runtimes on this VM see as /var/lib/cni (libcni's cached results)."""
        return self.workdir / "cni-cache"

    def write_config(self) -> None:
        agent = {"socketPath": str(self.socket_path), "stateDir": str(self.state_dir),
                 "cniBinDir": str(self.bin_dir), "cniConfDir": str(self.conf_dir),
                 "hostPython": "/usr/bin/python3", **self.agent_settings}
        standalone = {"enabled": True, "imdsEndpoint": self.imds_endpoint,
                      "dockerPluginSocket": str(self.docker_plugin_dir / "azure-cni.sock"),
                      **self.standalone_settings}
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(
            {"agent": agent, "snat": self.snat_settings, "standalone": standalone}))

    def agent_command(self, *extra: str) -> list[str]:
        agent = Path(sys.executable).with_name("azure-cni-agent")
        return ["ip", "netns", "exec", self.netns, str(agent), "--config",
                str(self.config_path), "--node-name", self.name, *extra]

    def wait_for_status(self, what: str, condition: Any, timeout: float = 30) -> dict[str, Any]:
        """Poll ``azure-cni status`` (the agent's socket) until ``condition(status)``."""
        seen: dict[str, Any] = {}

        def check() -> bool:
            nonlocal seen
            try:
                seen = self.agent_status()
            except AgentDown:
                return False
            return bool(condition(seen))

        alive = self.agent.check_running if self.agent else None
        try:
            wait_for(f"agent {self.name} to show {what}", check, timeout, interval=0.2,
                     alive=alive)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; last status: {json.dumps(seen)[:2000]}") from None
        return seen

    # -- containerd without Kubernetes --------------------------------------------------------

    def runtime_binds(self) -> list[tuple[Path, str]]:
        """This VM's CNI directories where libcni looks for them."""
        self.cni_cache_dir.mkdir(parents=True, exist_ok=True)
        return [(self.bin_dir, "/opt/cni/bin"), (self.conf_dir, "/etc/cni/net.d"),
                (self.cni_cache_dir, "/var/lib/cni")]

    def ctr(self, containerd: Containerd, *args: str) -> list[str]:
        """``ctr`` on this VM, seeing the VM's CNI configuration as its own. ``run`` keeps
        runc's state and the I/O fifos in containerd's directory (by default they go to
        the machine's /run/containerd)."""
        if args and args[0] == "run":
            args = ("run", "--runc-root", str(containerd.workdir / "runc"), "--fifo-dir",
                    str(containerd.workdir / "fifo"), *args[1:])
        return in_vm(self.netns, ["ctr", "-a", str(containerd.socket), "-n", "k8s.io", *args],
                     binds=self.runtime_binds(), tmpfs=["/opt"])

    def cnitool(self, command: str, netns: str,
                port_mappings: Sequence[Mapping[str, Any]] = (),
                network: str = "azure-cni") -> subprocess.CompletedProcess[str]:
        """libcni's ``cnitool`` with the VM's conflist, as nerdctl would call libcni."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "NETCONFPATH": str(self.conf_dir), "CNI_PATH": str(self.bin_dir)}
        if port_mappings:
            env["CAP_ARGS"] = json.dumps({"portMappings": list(port_mappings)})
        argv = in_vm(self.netns, [str(find_tool("cnitool")), command, network, netns],
                     binds=[(self.cni_cache_dir, "/var/lib/cni")])
        self.cni_cache_dir.mkdir(parents=True, exist_ok=True)
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120,
                              env=env)


@dataclass
class CtrContainer:
    """A container started with ``ctr run --rm --cni`` (the ctr process waits for it)."""

    name: str
    node: StandaloneNode
    containerd: Containerd
    process: subprocess.Popen[str]

    def pid(self) -> int:
        out = self.containerd.ctr("tasks", "ls").stdout
        for line in out.splitlines()[1:]:
            parts = line.split()
            if parts and parts[0] == self.name:
                return int(parts[1])
        raise LookupError(f"no task {self.name}: {out}")

    @property
    def netns(self) -> str:
        return f"/proc/{self.pid()}/ns/net"

    def remove(self, timeout: float = 60) -> str:
        """Kill the task; ctr then runs CNI DEL and deletes the container. Returns ctr's
        output."""
        self.containerd.ctr("tasks", "kill", "-s", "SIGKILL", self.name, check=False)
        out, _ = self.process.communicate(timeout=timeout)
        return out


def ctr_run(node: StandaloneNode, containerd: Containerd, image: str, name: str,
            *command: str, timeout: float = 60) -> CtrContainer:
    """``ctr run --rm --cni IMAGE NAME COMMAND...`` on the VM; returns once the task runs."""
    process = subprocess.Popen(
        node.ctr(containerd, "run", "--rm", "--cni", image, name, *command),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    container = CtrContainer(name, node, containerd, process)

    def running() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"ctr run {name} exited {process.returncode}: "
                                 f"{process.stdout.read() if process.stdout else ''}")
        with contextlib.suppress(LookupError):
            container.pid()
            return True
        return False

    wait_for(f"ctr run --cni {name} to start its task", running, timeout, interval=0.2)
    return container


@dataclass
class StandaloneWorld:
    """A VNet of VMs without Kubernetes, each running the standalone agent."""

    workdir: Path
    vm_count: int = 2
    refresh_seconds: float = 2.0
    #: shorter than the default 30 s, so tests that start and remove many containers do not
    #: wait for the small pools to cool down
    cooldown_seconds: float = 3.0
    prefix: str = field(default_factory=lambda: f"as{uuid.uuid4().hex[:4]}")
    owner: str = field(default_factory=lambda: f"standalone-{uuid.uuid4().hex[:10]}")
    emulator: ArmEmulator | None = None
    fabric: Fabric | None = None
    relay: ManagedProcess | None = None
    vms: dict[str, VmInfo] = field(default_factory=dict)
    nodes: dict[str, StandaloneNode] = field(default_factory=dict)
    runtimes: list[Containerd | DockerEngine] = field(default_factory=list)
    _image: Image | None = None
    _unhook: Any = None

    def start(self) -> StandaloneWorld:
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.emulator = ArmEmulator(ArmConfig(lro_polls=1, put_retry_after=0),
                                        state_dir=self.workdir / "arm").start()
            vnet = self.emulator.add_vnet("vnet", VNET_SPACE, {"nodes": SUBNET})
            self.fabric = Fabric(self.prefix, SUBNET, self.workdir / "fabric", self.owner
                                 ).create()
            self._unhook = self.emulator.on_nic_change(self._program_fabric)
            for i in range(self.vm_count):
                vm = self.emulator.add_vm(f"vm{i}", vnet.subnet_ids["nodes"])
                self.fabric.add_vm(vm)
                self.vms[vm.name] = vm
            self.start_relay()
            for vm in self.vms.values():
                self.nodes[vm.name] = self._start_node(vm)
        except BaseException:
            self.stop()
            raise
        return self

    def _program_fabric(self, nic_id: str, vm_id: str, old: tuple[str, ...],
                        new: tuple[str, ...]) -> Any:
        assert self.fabric is not None
        return asyncio.to_thread(self.fabric.on_nic_change, nic_id, vm_id, old, new)

    def start_relay(self) -> None:
        """The instance metadata service at 169.254.169.254 in the fabric."""
        assert self.emulator is not None and self.fabric is not None
        argv = [sys.executable, "-m", "azure_cni_sim.imds_relay", "--netns",
                self.fabric.fabric_ns, "--target", f"127.0.0.1:{self.emulator.imds_port}",
                *(a for vm in self.vms.values() for a in ("--vm", f"{vm.primary_ip}={vm.name}"))]
        log_path = self.workdir / "imds-relay.log"
        start = log_path.stat().st_size if log_path.exists() else 0
        self.relay = ManagedProcess("imds-relay", argv, log_path, self.owner).start()
        wait_for("the IMDS relay at 169.254.169.254",
                 lambda: "imds_relay_listening" in log_path.read_text()[start:], 20,
                 alive=self.relay.check_running)

    def stop_relay(self) -> None:
        """Make IMDS unreachable from every VM (nothing listens at 169.254.169.254:80)."""
        if self.relay is not None:
            self.relay.stop()
            self.relay = None

    def _start_node(self, vm: VmInfo) -> StandaloneNode:
        assert self.fabric is not None
        node = StandaloneNode(name=vm.name, netns=self.fabric.vms[vm.name].netns,
                              workdir=self.workdir / "nodes" / vm.name, owner=self.owner,
                              agent_settings={"cooldownSeconds": self.cooldown_seconds},
                              snat_settings={"nonMasqueradeCIDRs": [ONPREM_CIDR]},
                              standalone_settings={"refreshSeconds": self.refresh_seconds})
        node.link_reference_plugins()
        node.start_agent()
        return node

    @property
    def image(self) -> Image:
        """The busybox image, built once per world."""
        if self._image is None:
            self._image = busybox_image(self.workdir / "images")
        return self._image

    def containerd(self, vm: str) -> Containerd:
        """Debian's containerd on ``vm`` with the busybox image imported."""
        runtime = Containerd(self.workdir / "containerd" / vm, self.nodes[vm])
        self.runtimes.append(runtime)
        runtime.start(self.image.oci_archive)
        return runtime

    def docker(self, vm: str, bridge_cidr: str | None = None) -> DockerEngine:
        """Debian's dockerd on ``vm`` (agent first, as the systemd unit orders them)."""
        node = self.nodes[vm]
        engine = DockerEngine(self.workdir / "docker" / vm, node.netns, node.docker_plugin_dir)
        self.runtimes.append(engine)
        engine.start(bridge_cidr)
        engine.load(self.image.docker_archive)
        return engine

    def stop(self) -> None:
        for runtime in reversed(self.runtimes):
            with contextlib.suppress(Exception):
                runtime.stop()
        self.runtimes.clear()
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.stop()
        self.stop_relay()
        if self._unhook is not None:
            self._unhook()
        if self.emulator is not None:
            with contextlib.suppress(Exception):
                self.emulator.stop()
        if self.fabric is not None:
            self.fabric.destroy()
        stop_owned(self.owner)
        for leftover in namespaces_with_prefix(self.prefix):
            subprocess.run(["ip", "netns", "del", leftover], capture_output=True, check=False)
        shutil.rmtree(self.workdir / "nodes", ignore_errors=True)

    def __enter__(self) -> StandaloneWorld:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- looking at the network ----------------------------------------------------------------

    def in_netns(self, netns: str, *argv: str, timeout: float = 20
                 ) -> subprocess.CompletedProcess[str]:
        """Run a command from the machine in a network namespace (a container's, a VM's)."""
        return subprocess.run(["nsenter", f"--net={netns}", *argv], capture_output=True,
                              text=True, check=False, timeout=timeout)

    def ping(self, netns: str, address: str) -> bool:
        return self.in_netns(netns, "ping", "-c", "1", "-W", "2", address).returncode == 0

    def http_get(self, netns: str, url: str, timeout: float = 3) -> dict[str, Any] | None:
        """GET ``url`` from the namespace; the echo servers answer with the address they saw."""
        out = self.in_netns(netns, "curl", "-s", "-m", str(timeout), url, timeout=timeout + 5)
        if out.returncode != 0 or not out.stdout.strip():
            return None
        try:
            answer: dict[str, Any] = json.loads(out.stdout)
        except ValueError:
            return {"text": out.stdout}
        return answer

    def capture_on_fabric(self, vm: str, bpf: str, action: Any,
                          packets: int = 2) -> list[str]:
        """What the VNet carries on ``vm``'s link while ``action()`` runs (tcpdump lines)."""
        assert self.fabric is not None
        return capture_packets(self.fabric.fabric_ns, self.fabric.vms[vm].fabric_if, bpf,
                               action, packets=packets)

    def nic_addresses(self, vm: str) -> tuple[str, ...]:
        assert self.emulator is not None
        return self.emulator.nic_addresses(self.vms[vm].nic_id)
