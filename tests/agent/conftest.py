"""A simulated VM (host network namespace + NIC + API portal) for agent tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from azure_cni.agent.localnode import (
    LocalNode,
    api_port_of,
    apply_crd,
    delete_pool,
    setup_host_nic,
)


@pytest.fixture(scope="session")
def nodeippool_crd(kube) -> None:
    apply_crd(kube.kubectl)


@pytest.fixture
def node(kube, nodeippool_crd, netns_factory, tmp_path) -> Iterator[LocalNode]:
    """A node whose agent is not started yet: publish its pool, then ``start_agent()``."""
    hostns = netns_factory.create("host")
    setup_host_nic(hostns, primary_cidr="198.18.0.4/24", gateway="198.18.0.1")
    local = LocalNode(name=f"node-{uuid.uuid4().hex[:8]}", netns=hostns,
                      workdir=tmp_path / "node", kubeconfig=kube.kubeconfig,
                      api_port=api_port_of(kube.kubeconfig))
    local.link_reference_plugins()
    local.start_portal()
    try:
        yield local
    finally:
        local.stop()
        delete_pool(kube.kubectl, local.name)
