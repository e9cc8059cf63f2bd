"""The checked-in CRD is the generated one, and its defaults are the code's defaults."""

from __future__ import annotations

from pathlib import Path

import yaml

from azure_cni.api.crd import crds, nodeippool_crd, render
from azure_cni.api.nodeippool import PoolSpec

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "deploy" / "crds" / "azurecni.io_nodeippools.yaml"


def list_map_keys(field: str) -> list[str]:
    """The keys the API server requires to be unique in ``status.<field>``."""
    schema = nodeippool_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return list(schema["properties"]["status"]["properties"][field][
        "x-kubernetes-list-map-keys"])


def test_checked_in_crds_are_generated() -> None:
    for name, document in crds().items():
        assert (CRD_FILE.parent / name).read_text() == render(document), (
            "deploy/crds is stale: run hack/render-manifests.sh")


def test_schema_defaults_equal_code_defaults() -> None:
    spec_props = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"]["properties"]["spec"]["properties"]
    defaults = PoolSpec(node_name="x").to_dict()
    for key, value in defaults.items():
        if key == "nodeName":
            continue
        assert spec_props[key]["default"] == value, key


def test_scale_subresource_maps_replicas_to_min_ips_and_allocated() -> None:
    version = nodeippool_crd()["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {"specReplicasPath": ".spec.minIPs",
                                                "statusReplicasPath": ".status.allocated"}
    names = [c["name"].upper() for c in version["additionalPrinterColumns"]
             if "priority" not in c]
    assert names == ["ALLOCATED", "USED", "SCALE-MIN", "MAX", "READY", "AGE"]
