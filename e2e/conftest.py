"""One simulated Azure VNet with three real Kubernetes nodes and azure-cni installed by helm,
shared by the whole e2e tier; each test module runs its workloads in a namespace of its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from azure_cni_sim.world import World


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("world"), vm_count=3, drift_check_seconds=10)
    w.start()
    try:
        yield w
    finally:
        w.stop()
        left = w.leftovers()
        assert not any(left.values()), f"the world left things behind: {left}"


@pytest.fixture(scope="module")
def namespace(world: World, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace for one test module's workloads, deleted (with its pods) afterwards."""
    name = f"e2e-{Path(str(request.path)).stem.removeprefix('test_')[:20]}-" \
           f"{uuid.uuid4().hex[:4]}".replace("_", "-")
    world.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        world.kubectl("delete", "namespace", name, "--wait=false", check=False)
