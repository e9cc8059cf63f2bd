"""Both pool sources keep the PoolSource contract the agent relies on: the pool and each
change of it are delivered, a failure is reported and cleared, the agent's fields are taken.

The NodeIPPool source runs against a stateful fake of our own ``PoolApi`` port (the real API
server is in tests/agent/test_node_agent.py); the IMDS source against the IMDS emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Protocol

import pytest

from azure_cni.agent.pool_source import NodeIPPoolSource, PoolSource
from azure_cni.agent.vm.imds_source import InstanceMetadataSource
from azure_cni.api.nodeippool import NodeIPPool, PoolStatus
from azure_cni.api.settings import StandaloneSettings
from azure_cni.cloud.azure import AzureAdapter
from azure_cni.cloud.port import NewIPConfiguration
from azure_cni_sim.arm import ArmConfig, ArmEmulator

pytestmark = pytest.mark.timeout(60)


class Backend(Protocol):
    """What the contract test does to whatever stands behind a source."""

    source: PoolSource

    async def grow(self) -> list[str]:
        """Add one address to the pool; return every address the pool should now have."""
        ...

    def break_it(self) -> None: ...

    def mend(self) -> None: ...


class FakePoolApi:
    """A NodeIPPool in memory, listed and watched like the API server does it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.version = 1
        self.addresses = ["198.18.0.10"]
        self.applied: list[Mapping[str, Any]] = []
        self.broken = False
        self._events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    def object(self) -> dict[str, Any]:
        return {"metadata": {"name": self.name, "resourceVersion": str(self.version)},
                "spec": {"nodeName": self.name},
                "status": {"ips": [{"address": a, "ipConfiguration": f"azcni-{i}",
                                    "state": "Available"}
                                   for i, a in enumerate(self.addresses)]}}

    async def list_pool(self, name: str) -> tuple[dict[str, Any] | None, str]:
        if self.broken:
            raise ConnectionError("the API server is away")
        return self.object(), str(self.version)

    async def watch_pool(self, name: str, resource_version: str,
                         timeout_seconds: int = 300) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        while True:
            if self.broken:
                raise ConnectionError("the watch broke")
            with contextlib.suppress(TimeoutError):
                yield await asyncio.wait_for(self._events.get(), 0.1)

    async def apply_status(self, name: str, body: Mapping[str, Any]) -> None:
        self.applied.append(body)

    def modify(self) -> None:
        self.version += 1
        self._events.put_nowait(("MODIFIED", self.object()))


class NodeIPPoolBackend:
    def __init__(self) -> None:
        self.api = FakePoolApi("node-a")
        self.source: PoolSource = NodeIPPoolSource(self.api, "node-a")

    async def grow(self) -> list[str]:
        self.api.addresses.append(f"198.18.0.{10 + len(self.api.addresses)}")
        self.api.modify()
        return list(self.api.addresses)

    def break_it(self) -> None:
        self.api.broken = True

    def mend(self) -> None:
        self.api.broken = False


class ImdsBackend:
    def __init__(self, emu: ArmEmulator) -> None:
        self.emu = emu
        vnet = emu.add_vnet("vnet", "198.18.0.0/16", {"nodes": "198.18.0.0/24"})
        self.vm = emu.add_vm("vm0", vnet.subnet_ids["nodes"])
        settings = StandaloneSettings(enabled=True, imds_endpoint=emu.open_vm_imds("vm0"),
                                      refresh_seconds=1)
        self.source = InstanceMetadataSource(settings, "vm0")
        self.added = 0

    async def grow(self) -> list[str]:
        self.added += 1
        async with AzureAdapter(self.emu.azure_settings(polling_interval=0.01),
                                credential=self.emu.credential()) as adapter:
            nic = await adapter.update_ip_configurations(
                self.vm.nic_id, add=[NewIPConfiguration(f"extra-{self.added}")])
        return [c.address for c in nic.ip_configurations if not c.primary]

    def break_it(self) -> None:
        self.emu.inject_imds_fault("vm0", "instance/network", 500, '{"error": "down"}',
                                   count=1000)

    def mend(self) -> None:
        self.emu.clear_faults()


@pytest.fixture(params=["nodeippool", "imds"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "nodeippool":
        yield NodeIPPoolBackend()
        return
    with ArmEmulator(ArmConfig(lro_polls=0)) as emu:
        yield ImdsBackend(emu)


async def test_a_source_keeps_the_contract(backend: Backend) -> None:
    assert isinstance(backend.source, PoolSource)
    assert backend.source.hints.name and backend.source.hints.who_adds
    pools: list[NodeIPPool | None] = []
    troubles: list[str] = []
    changed = asyncio.Event()

    async def adopt(pool: NodeIPPool | None) -> None:
        pools.append(pool)
        changed.set()

    def trouble(problem: str) -> None:
        troubles.append(problem)
        changed.set()

    async def until(what: str, condition: Any) -> None:
        async def wait() -> None:
            while not condition():
                changed.clear()
                await changed.wait()

        try:
            await asyncio.wait_for(wait(), 20)
        except TimeoutError:
            raise AssertionError(f"gave up waiting for {what}: {pools} {troubles}") from None

    def addresses() -> list[str] | None:
        last = pools[-1] if pools else None
        return [ip.address for ip in last.status.ips] if last else None

    task = asyncio.create_task(backend.source.follow(adopt, trouble))
    try:
        await until("the first pool", lambda: pools and pools[-1] is not None)
        wanted = await backend.grow()
        await until(f"the pool to become {wanted}", lambda: addresses() == wanted)
        backend.break_it()
        await until("a failure to be reported", lambda: troubles and troubles[-1])
        assert addresses() == wanted, "a failure does not take the pool away"
        backend.mend()
        await until("the failure to be cleared", lambda: troubles[-1] == "")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await backend.source.publish(PoolStatus(used=1).agent_fields())
    reported = await backend.source.reported()
    assert reported is None or isinstance(reported, PoolStatus)
