"""The NodeIPPool and NodeIPPoolClass CustomResourceDefinitions, generated from the code.

Each field's schema comes from its declaration on the dataclass the code reads it into
(``api/wire.py``, ``api/openapi.py``); what is here is the CRD around them: names, columns,
subresources and the rules that span the whole object.

``deploy/crds/azurecni.io_*.yaml`` (also the chart's ``crds/`` files) are the output of
``python -m azure_cni.api.crd deploy/crds``, which ``hack/render-manifests.sh`` runs; a test
fails when a checked-in file drifts.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from azure_cni.api.nodeippool import (
    CLASS_LABEL,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    VERSION,
    PoolDefaults,
    PoolSpec,
    PoolStatus,
)
from azure_cni.api.openapi import object_schema
from azure_cni.api.poolclass import (
    CLASS_KIND,
    CLASS_PLURAL,
    CLASS_SHORT_NAME,
    LabelSelector,
)

_MODE_CHANGE_RULE = (
    "!has(oldSelf.spec.mode) || !has(self.spec.mode) || "
    "(self.spec.mode == oldSelf.spec.mode && (self.spec.mode == 'Addresses' || "
    "!has(self.spec.blockPrefixLength) || !has(oldSelf.spec.blockPrefixLength) || "
    "self.spec.blockPrefixLength == oldSelf.spec.blockPrefixLength)) || "
    "!has(self.status) || !has(self.status.used) || self.status.used == 0")


def _spec_schema() -> dict[str, Any]:
    return object_schema(PoolSpec, "The admin's intent for this node's pool of VNet addresses.")


def _status_schema() -> dict[str, Any]:
    return object_schema(PoolStatus, "Inventory and usage. The operator and the node agent "
                                     "each write only their own fields, with server-side "
                                     "apply.")


def _label_path(label: str) -> str:
    """A printer column's JSONPath to a label (its dots escaped)."""
    return ".metadata.labels." + label.replace(".", "\\.")


def _ready(condition: str) -> str:
    return f'.status.conditions[?(@.type=="{condition}")].status'


def _crd(kind: str, plural: str, short_name: str, version: dict[str, Any]) -> dict[str, Any]:
    """A cluster-scoped CRD of azure-cni with one version, ``version``'s columns and schema."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}",
                     "labels": {"app.kubernetes.io/part-of": "azure-cni"}},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short_name],
                "categories": ["azure-cni"],
            },
            "versions": [{"name": VERSION, "served": True, "storage": True, **version}],
        },
    }


def nodeippool_crd() -> dict[str, Any]:
    """The CRD document, ready to be dumped as YAML or applied."""
    return _crd(KIND, PLURAL, SHORT_NAME, {
        "subresources": {
            "status": {},
            "scale": {"specReplicasPath": ".spec.minIPs",
                      "statusReplicasPath": ".status.allocated"},
        },
        "additionalPrinterColumns": [
            {"name": "Allocated", "type": "integer", "jsonPath": ".status.allocated"},
            {"name": "Used", "type": "integer", "jsonPath": ".status.used"},
            {"name": "Scale-Min", "type": "integer", "jsonPath": ".spec.minIPs",
             "description": "spec.minIPs, the floor kubectl scale sets"},
            {"name": "Max", "type": "integer", "jsonPath": ".spec.maxIPs"},
            {"name": "Ready", "type": "string", "jsonPath": _ready("Ready")},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            {"name": "Cooling", "type": "integer", "jsonPath": ".status.cooling",
             "priority": 1},
            {"name": "Primary-IP", "type": "string", "jsonPath": ".status.nic.primaryIP",
             "priority": 1},
            {"name": "NIC", "type": "string", "jsonPath": ".status.nic.name",
             "priority": 1},
            {"name": "Subnet", "type": "string", "jsonPath": ".status.nic.subnetCIDR",
             "priority": 1},
            {"name": "Agent", "type": "string", "jsonPath": _ready("AgentReady"),
             "priority": 1},
            {"name": "Mode", "type": "string", "jsonPath": ".spec.mode", "priority": 1},
            {"name": "Blocks", "type": "integer", "jsonPath": ".status.blocks",
             "priority": 1},
            {"name": "Public-IPs", "type": "string",
             "jsonPath": '.status.podNetworking[?(@.state=="Attached")].publicIP',
             "priority": 1},
            {"name": "Class", "type": "string",
             "jsonPath": _label_path(CLASS_LABEL), "priority": 1},
        ],
        "schema": {"openAPIV3Schema": {
            "type": "object",
            "description": "A node's pool of addresses from the Azure virtual network: "
                           "secondary ipConfigurations of its NIC. `kubectl scale` sets its "
                           "floor (spec.minIPs, SCALE-MIN); what it holds is "
                           "status.allocated (ALLOCATED).",
            "required": ["spec"],
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "spec": _spec_schema(),
                "status": _status_schema(),
            },
            "x-kubernetes-validations": [{
                "rule": "self.spec.nodeName == self.metadata.name",
                "fieldPath": ".spec.nodeName",
                "message": "spec.nodeName must equal metadata.name (the pool is named "
                           "after its node)",
            }, {
                # a transition rule: the stored status (with the agent's count of
                # pods) is part of self on a spec update
                "rule": _MODE_CHANGE_RULE,
                "fieldPath": ".spec.mode",
                "message": "spec.mode and spec.blockPrefixLength cannot change while "
                           "pods use the pool's addresses (status.used > 0): drain "
                           "the node first; an idle pool then releases its old "
                           "ipConfigurations and takes new ones",
            }],
        }},
    })


def _class_pool_schema() -> dict[str, Any]:
    """A NodeIPPool spec's fields without nodeName, defaults or transition rules: a class
    holds only the fields its author set (the chart's defaults fill the rest)."""
    return object_schema(
        PoolDefaults, "NodeIPPool spec fields for the pools of the nodes this class selects "
                      "(any but nodeName); the chart's pool defaults fill the others.",
        partial=True)


def _selector_schema() -> dict[str, Any]:
    return object_schema(
        LabelSelector, "Which nodes this class is for: a label selector over the Node's "
                       "labels (e.g. kubernetes.azure.com/agentpool); {} selects every node.")


def nodeippoolclass_crd() -> dict[str, Any]:
    """The NodeIPPoolClass CRD: node groups and the pool settings of each."""
    return _crd(CLASS_KIND, CLASS_PLURAL, CLASS_SHORT_NAME, {
        "additionalPrinterColumns": [
            {"name": "Pod-Subnet", "type": "string",
             "jsonPath": ".spec.pool.podSubnetID"},
            {"name": "Mode", "type": "string", "jsonPath": ".spec.pool.mode"},
            {"name": "Min", "type": "integer", "jsonPath": ".spec.pool.minIPs"},
            {"name": "Max", "type": "integer", "jsonPath": ".spec.pool.maxIPs"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            {"name": "Batch", "type": "integer", "jsonPath": ".spec.pool.batchSize",
             "priority": 1},
            {"name": "Min-Free", "type": "integer",
             "jsonPath": ".spec.pool.minFreeIPs", "priority": 1},
            {"name": "Max-Free", "type": "integer",
             "jsonPath": ".spec.pool.maxFreeIPs", "priority": 1},
        ],
        "schema": {"openAPIV3Schema": {
            "type": "object",
            "description": "A group of nodes (by label) and the NodeIPPool settings the "
                           "operator gives each of their pools.",
            "required": ["spec"],
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "spec": {
                    "type": "object",
                    "required": ["nodeSelector"],
                    "properties": {"nodeSelector": _selector_schema(),
                                   "pool": _class_pool_schema()},
                },
            },
        }},
    })


#: every CRD azure-cni ships: file name -> document
def crds() -> dict[str, dict[str, Any]]:
    return {f"{GROUP}_{PLURAL}.yaml": nodeippool_crd(),
            f"{GROUP}_{CLASS_PLURAL}.yaml": nodeippoolclass_crd()}


#: the CRD's annotation naming its schema's revision (a hash of its spec): the chart's NOTES
#: compare it with the cluster's at `helm upgrade`, since Helm never upgrades crds/
REVISION_ANNOTATION = "azurecni.io/crd-revision"


def revision(crd: dict[str, Any]) -> str:
    """A short hash of what the API server enforces: the CRD's spec."""
    return hashlib.sha256(json.dumps(crd["spec"], sort_keys=True).encode()).hexdigest()[:16]


def annotated(crd: dict[str, Any]) -> dict[str, Any]:
    """The CRD with its revision annotation."""
    crd["metadata"]["annotations"] = {REVISION_ANNOTATION: revision(crd)}
    return crd


_HEADER = ("# Generated by `python -m azure_cni.api.crd`; do not edit by hand.\n"
           "# The chart ships this same file in charts/azure-cni/crds/.\n")


def render(document: dict[str, Any] | None = None) -> str:
    """One CRD as its checked-in file (the NodeIPPool's when none is named)."""
    return _HEADER + yaml.safe_dump(
        annotated(document if document is not None else nodeippool_crd()), sort_keys=False,
        width=100)


def write_all(directory: Path) -> list[Path]:
    """Write every CRD into ``directory``; returns the files."""
    out = []
    for name, document in crds().items():
        path = directory / name
        path.write_text(render(document))
        out.append(path)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1:
        for written in write_all(Path(sys.argv[1])):
            sys.stdout.write(f"{written}\n")
    else:
        sys.stdout.write(render())
