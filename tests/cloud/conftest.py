"""An ARM emulator with one VNet and three VMs, and adapters pointed at it over TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from azure_cni.cloud.azure import AzureAdapter
from azure_cni_sim.arm import ArmConfig, ArmEmulator, VmInfo


@dataclass
class World:
    emu: ArmEmulator
    subnet_id: str
    tiny_subnet_id: str
    vms: list[VmInfo]


@pytest.fixture
def world() -> Iterator[World]:
    with ArmEmulator(ArmConfig(lro_polls=1)) as emu:
        vnet = emu.add_vnet("vnet1", "198.18.0.0/16",
                            {"nodes": "198.18.0.0/20", "tiny": "198.18.16.0/29"})
        vms = [emu.add_vm(f"vm{i}", vnet.subnet_ids["nodes"]) for i in range(3)]
        yield World(emu, vnet.subnet_ids["nodes"], vnet.subnet_ids["tiny"], vms)


AdapterFactory = Callable[..., AzureAdapter]


@pytest.fixture
async def make_adapter(world: World) -> AsyncIterator[AdapterFactory]:
    """Adapters on the emulator with fast polling; keyword arguments override settings."""
    made: list[AzureAdapter] = []

    def make(*, credential: Any = None, client_options: dict[str, Any] | None = None,
             max_write_attempts: int = 5, **settings: Any) -> AzureAdapter:
        settings.setdefault("polling_interval", 0.01)
        adapter = AzureAdapter(world.emu.azure_settings(**settings),
                               credential=credential or world.emu.credential(),
                               client_options=client_options,
                               max_write_attempts=max_write_attempts)
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        await adapter.close()


@pytest.fixture
def adapter(make_adapter: AdapterFactory) -> AzureAdapter:
    return make_adapter()
