"""The agent on a VM without Kubernetes (``standalone.enabled``).

The same agent as on a Kubernetes node (store, datapath, SNAT, the wireserver and IMDS block,
the CNI socket and shim), with two differences: the pool is the NIC's secondary addresses as
the instance metadata service lists them (``imds_source``), and Docker Engine's network and
IPAM plugin is served beside the CNI socket (``docker_plugin``). Nothing talks to Azure's
control plane: an admin adds and removes the NIC's ipConfigurations (portal, CLI, Terraform).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from azure_cni.agent.metrics import AgentMetrics
from azure_cni.agent.nodeagent import NodeAgent
from azure_cni.agent.vm.docker_plugin import DockerDatapath, DockerPlugin
from azure_cni.agent.vm.imds_source import InstanceMetadataSource
from azure_cni.api.settings import Settings


class StandaloneAgent:
    """A ``NodeAgent`` fed by IMDS, plus the Docker plugin once the agent serves."""

    def __init__(self, *, settings: Settings, node_name: str, datapath: DockerDatapath,
                 mtu: int, host_root: Path = Path("/"), metrics_address: str = ""
                 ) -> None:
        metrics = AgentMetrics()
        self.source = InstanceMetadataSource(
            settings.standalone, node_name,
            count=lambda result: metrics.instance_metadata_requests.labels(result).inc())
        self.agent = NodeAgent(settings=settings, node_name=node_name, source=self.source,
                               datapath=datapath, mtu=mtu, host_root=host_root,
                               metrics=metrics, metrics_address=metrics_address)
        socket = settings.standalone.docker_plugin_socket
        # one attachment service under both front-ends: one lock per key, one wake-up
        self.docker = DockerPlugin(
            socket_path=Path(socket), state_dir=Path(settings.agent.state_dir),
            attachments=self.agent.attachments, datapath=datapath,
            add_wait_seconds=settings.agent.add_wait_seconds,
            pool_problem=lambda: self.agent.source_problem,
            on_change=self.agent.handler.on_change) if socket else None

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; the agent's start-up errors propagate unchanged."""
        try:
            await self.agent.start()
            if self.docker is not None:
                await self.docker.start()
            await stop.wait()
        finally:
            if self.docker is not None:
                await self.docker.stop()
            await self.agent.shutdown()
