"""Kubernetes' own networking specs on this tier's cluster: a quick subset of make conformance
(docs/conformance.md), so a datapath change that breaks Services, cluster DNS, HostPort or the
pods' own addresses inside the VNet fails make test.

The specs are upstream's, from e2e-network.test (the pinned Kubernetes module's e2e suite with
only its networking specs linked in), run by ginkgo in parallel; the images they ask for are
the ones hack/build-images.sh builds, imported into the nodes under their upstream names."""

from __future__ import annotations

from pathlib import Path

import pytest

from azure_cni_sim import conformance
from azure_cni_sim.images import ensure_images
from azure_cni_sim.tools import find_tool
from azure_cni_sim.world import World

pytestmark = pytest.mark.e2e


def test_upstream_service_dns_hostport_and_no_snat_specs_pass(world: World,
                                                              tmp_path: Path) -> None:
    binary = find_tool("e2e-network.test")
    images = ensure_images(*conformance.E2E_IMAGES)
    conformance.import_images(world.nodes.values(), images,
                              conformance.upstream_names(conformance.list_images(binary)))
    focus = conformance.exact(conformance.QUICK_SPECS)
    assert world.cluster is not None
    run = conformance.run_specs(binary, world.cluster.kubeconfig, focus, (), tmp_path,
                                nodes=len(world.nodes))
    log = tmp_path / "ginkgo.log"
    assert not run.failed, f"upstream specs failed: {run.failed}; see {log}"
    assert not run.skipped, f"upstream specs skipped themselves: {run.skipped}"
    assert len(run.passed) == len(conformance.QUICK_SPECS), (run.passed, log)
