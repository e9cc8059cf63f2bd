"""A simulated VM (host network namespace + NIC + API portal) whose agent tests start."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from azure_cni.sim.node import LocalNode, apply_crd, simulated_node


@pytest.fixture(scope="session")
def nodeippool_crd(kube) -> None:
    apply_crd(kube.kubectl)


@pytest.fixture
def node(kube, nodeippool_crd, netns_factory, tmp_path) -> Iterator[LocalNode]:
    """A node whose agent is not started yet: publish its pool, then ``start_agent()``."""
    with simulated_node(kube.kubectl, kube.kubeconfig, netns_factory.create,
                        tmp_path / "node") as local:
        yield local
