"""A simulated VM (host namespace + NIC + API portal) and a real containerd inside it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from azure_cni_sim.containerd import Containerd
from azure_cni_sim.images import BuiltImage, ensure_images
from azure_cni_sim.node import LocalNode


@pytest.fixture(scope="session")
def pause_image() -> BuiltImage:
    return ensure_images("pause")["pause"]


@pytest.fixture
def containerd(node: LocalNode, pause_image: BuiltImage, tmp_path: Path) -> Iterator[Containerd]:
    runtime = Containerd(tmp_path / "containerd", node)
    runtime.start(pause_image.archive, sandbox_image=pause_image.image)
    try:
        yield runtime
    finally:
        runtime.stop()
