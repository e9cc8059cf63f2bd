"""One simulated Azure VNet with three VMs, the operator and an agent per VM, for the tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from azure_cni_sim.world import Pod, World, first_pods


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("world"), vm_count=3, drift_check_seconds=10)
    w.start()
    try:
        w.wait_pools_ready()
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="session")
def pods(world: World) -> dict[str, Pod]:
    """Two pods per VM: vm0's through containerd, the others' through the CNI plugin."""
    return {p.name: p for p in first_pods(world, 2)}
