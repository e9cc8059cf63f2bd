"""The NodeIPPool and NodeIPPoolClass CustomResourceDefinitions, generated from the code.

``deploy/crds/azurecni.io_*.yaml`` (also the chart's ``crds/`` files) are the output of
``python -m azure_cni.api.crd deploy/crds``; a test fails when a checked-in file drifts.
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
    MAX_BLOCK_PREFIX_LENGTH,
    MAX_SECONDARY_IPS,
    MIN_BLOCK_PREFIX_LENGTH,
    PLURAL,
    SHORT_NAME,
    VERSION,
    PoolMode,
    PoolSpec,
)
from azure_cni.api.poolclass import (
    CLASS_KIND,
    CLASS_PLURAL,
    CLASS_SHORT_NAME,
    SelectorOperator,
)

_DEFAULTS = PoolSpec(node_name="")
_MODE_CHANGE_RULE = (
    "!has(oldSelf.spec.mode) || !has(self.spec.mode) || "
    "(self.spec.mode == oldSelf.spec.mode && (self.spec.mode == 'Addresses' || "
    "!has(self.spec.blockPrefixLength) || !has(oldSelf.spec.blockPrefixLength) || "
    "self.spec.blockPrefixLength == oldSelf.spec.blockPrefixLength)) || "
    "!has(self.status) || !has(self.status.used) || self.status.used == 0")


#: what ``kubectl scale nodeippool <node> --replicas=N`` means (``kubectl explain`` shows it)
SCALE_DESCRIPTION = (
    "Floor, and what `kubectl scale nodeippool <node> --replicas=N` sets (the SCALE-MIN "
    "column): the pool holds at least this many addresses, more when its pods and its warm "
    "pool (minFreeIPs) need them, and never more than maxIPs. Setting it below what the pool "
    "holds (ALLOCATED) releases nothing by itself: free addresses above maxFreeIPs go back to "
    "the subnet after releaseDelaySeconds. To shrink a pool, lower maxFreeIPs or maxIPs.")


def _count(description: str, default: int | None = None, maximum: int | None = None
           ) -> dict[str, Any]:
    prop: dict[str, Any] = {"type": "integer", "minimum": 0, "description": description}
    if maximum is not None:
        prop["maximum"] = maximum
    if default is not None:
        prop["default"] = default
    return prop


def _spec_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The admin's intent for this node's pool of VNet addresses.",
        "required": ["nodeName"],
        "properties": {
            "nodeName": {
                "type": "string", "minLength": 1, "maxLength": 253,
                "description": "The node this pool belongs to; equal to the pool's name.",
                "x-kubernetes-validations": [
                    {"rule": "self == oldSelf", "message": "nodeName is immutable"}],
            },
            "minIPs": _count(SCALE_DESCRIPTION, _DEFAULTS.min_ips),
            "maxIPs": _count("Ceiling on the addresses of this node (at most 255: a NIC holds "
                             "256 ipConfigurations and one is the primary).",
                             _DEFAULTS.max_ips),
            "batchSize": _count("Addresses are added in multiples of this, in one NIC write.",
                                _DEFAULTS.batch_size),
            "minFreeIPs": _count("Warm pool: keep at least this many addresses free for new "
                                 "pods.", _DEFAULTS.min_free_ips),
            "maxFreeIPs": _count("Release free addresses above this many (after "
                                 "releaseDelaySeconds).", _DEFAULTS.max_free_ips),
            "releaseDelaySeconds": _count("How long an excess must last before addresses are "
                                          "released (hysteresis).",
                                          _DEFAULTS.release_delay_seconds, maximum=86400),
            "mode": {
                "type": "string", "enum": [m.value for m in PoolMode],
                "default": _DEFAULTS.mode.value,
                "description": "Addresses: one ipConfiguration per address. Blocks: one "
                               "ipConfiguration per aligned CIDR block of blockPrefixLength "
                               "(privateIPAddressPrefixLength); the sizes above still count "
                               "addresses and are rounded up to whole blocks. Cannot change "
                               "while pods use the pool.",
            },
            "blockPrefixLength": {
                "type": "integer", "minimum": MIN_BLOCK_PREFIX_LENGTH,
                "maximum": MAX_BLOCK_PREFIX_LENGTH,
                "default": _DEFAULTS.block_prefix_length,
                "description": "Length of each block in Blocks mode (a /28 holds 16 "
                               "addresses). Cannot change while pods use the pool.",
            },
            "podSubnetID": {
                "type": "string", "default": _DEFAULTS.pod_subnet_id, "maxLength": 1024,
                "description": "Resource ID of the subnet pods take their addresses from: "
                               "the operator uses the VM's NIC in that subnet (a second NIC "
                               "attached when the VM or scale set was made). Empty: the "
                               "VM's primary NIC. Cannot change once set: delete the pool "
                               "(its node drained) to move it.",
                "x-kubernetes-validations": [
                    {"rule": "self == '' || self.matches("
                             "'(?i)^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
                             "Microsoft[.]Network/virtualNetworks/[^/]+/subnets/[^/]+$')",
                     "message": "podSubnetID must be a subnet's resource ID (/subscriptions/"
                                "<s>/resourceGroups/<g>/providers/Microsoft.Network/"
                                "virtualNetworks/<vnet>/subnets/<subnet>) or empty"},
                    {"rule": "self == oldSelf",
                     "message": "podSubnetID is immutable: the pool's addresses are on that "
                                "subnet's NIC; delete the pool (drain the node first) to "
                                "move it"}],
            },
        },
        "x-kubernetes-validations": [
            {"rule": "self.minIPs <= self.maxIPs", "fieldPath": ".minIPs",
             "message": "minIPs must not exceed maxIPs"},
            {"rule": f"self.maxIPs <= {MAX_SECONDARY_IPS}", "fieldPath": ".maxIPs",
             "message": f"maxIPs must be at most {MAX_SECONDARY_IPS}: a NIC holds 256 "
                        "ipConfigurations and one of them is the primary"},
            {"rule": "self.maxIPs >= 1", "fieldPath": ".maxIPs",
             "message": "maxIPs must be at least 1"},
            {"rule": "self.batchSize >= 1", "fieldPath": ".batchSize",
             "message": "batchSize must be at least 1"},
            {"rule": f"self.batchSize <= {MAX_SECONDARY_IPS}", "fieldPath": ".batchSize",
             "message": f"batchSize must be at most {MAX_SECONDARY_IPS}"},
            {"rule": "self.minFreeIPs <= self.maxFreeIPs", "fieldPath": ".minFreeIPs",
             "message": "minFreeIPs must not exceed maxFreeIPs"},
        ],
    }


def _condition_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer"},
        },
    }


def _status_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Inventory and usage. The operator and the node agent each write only "
                       "their own fields, with server-side apply.",
        "properties": {
            "nic": {
                "type": "object",
                "description": "The node's NIC as the operator found it on Azure.",
                "properties": {
                    "id": {"type": "string"},
                    "name": {"type": "string"},
                    "primary": {"type": "boolean",
                                "description": "Whether this is the VM's primary NIC."},
                    "macAddress": {"type": "string"},
                    "primaryIP": {"type": "string"},
                    "subnetID": {"type": "string"},
                    "subnetCIDR": {"type": "string"},
                    "vnetAddressSpace": {"type": "array", "items": {"type": "string"},
                                         "x-kubernetes-list-type": "atomic"},
                },
            },
            "ips": {
                "type": "array",
                "description": "Secondary addresses of the NIC that belong to the pool.",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["ipConfiguration"],
                "items": {
                    "type": "object",
                    "required": ["address", "ipConfiguration", "state"],
                    "properties": {
                        "address": {"type": "string"},
                        "ipConfiguration": {"type": "string"},
                        "state": {"type": "string", "enum": ["Available", "Releasing"]},
                        "prefixLength": {"type": "integer",
                                         "description": "Set for a block: the ipConfiguration "
                                                        "holds address/prefixLength."},
                    },
                },
            },
            "allocated": {"type": "integer", "description": "Number of addresses in ips (a "
                                                            "block counts all of its own)."},
            "blocks": {"type": "integer", "description": "Number of blocks in ips (Blocks "
                                                         "mode)."},
            "excessSince": {"type": "string", "format": "date-time",
                            "description": "Since when the pool has held more free addresses "
                                           "than maxFreeIPs."},
            "observedGeneration": {"type": "integer"},
            "used": {"type": "integer",
                     "description": "Addresses the node agent has handed to pods."},
            "cooling": {"type": "integer",
                        "description": "Available addresses freed by a pod less than the "
                                       "agent's cooldown ago: not handed out yet, so not free "
                                       "for the warm pool either."},
            "releaseAcks": {
                "type": "array", "items": {"type": "string"},
                "x-kubernetes-list-type": "set",
                "description": "ipConfiguration names the agent confirms are unused and will "
                               "not hand out: the operator may remove them.",
            },
            "idleBlocks": {
                "type": "array", "items": {"type": "string"},
                "x-kubernetes-list-type": "set",
                "description": "Blocks (their ipConfiguration names) none of whose addresses "
                               "a pod uses or cools down: the operator releases these first.",
            },
            "conditions": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": _condition_schema(),
            },
            **_pod_networking_schema(),
        },
    }


def _pod_networking_schema() -> dict[str, Any]:
    """The two per-pod Azure networking lists (api/podnet.py): the agent's, the operator's.

    Both are keyed by the pod's address: one address is one pod's, while in Blocks mode
    many pods share an ipConfiguration (keyed by that, two pods' entries collided and the
    API server refused the whole status write).
    """
    common = {
        "address": {"type": "string", "description": "the pod's address (the key)"},
        "ipConfiguration": {"type": "string",
                            "description": "the NIC's ipConfiguration holding the address"},
        "pod": {"type": "string", "description": "namespace/name"},
        "podUID": {"type": "string", "description": "the pod's metadata.uid"},
        "publicIP": {"type": "string"},
        "backendPools": {"type": "array", "items": {"type": "string"},
                         "x-kubernetes-list-type": "atomic"},
    }

    def listed(description: str, required: list[str], extra: dict[str, Any]) -> dict[str, Any]:
        return {"type": "array", "description": description,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["address"],
                "items": {"type": "object", "required": ["address", *required],
                          "properties": {**common, **extra}}}

    return {
        "podRequests": listed(
            "Written by the node agent: the public IP and backend pools pods asked for by "
            "annotation, per pod address. withdrawn: the pod is gone and the agent keeps "
            "the address until the operator reports it Detached.",
            ["ipConfiguration", "pod"], {"withdrawn": {"type": "boolean"}}),
        "podNetworking": listed(
            "Written by the operator, per pod address: what it attached to the address's "
            "ipConfiguration, what it refused and why, and which withdrawn requests are off "
            "the NIC.",
            ["ipConfiguration", "pod", "state"],
            {"state": {"type": "string", "enum": ["Attached", "Refused", "Detached"]},
             "reason": {"type": "string",
                        "description": "NotAllowed (the chart's policy) or Azure's error code"},
             "message": {"type": "string"}}),
    }


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
    spec = _spec_schema()
    properties = {}
    for name, field in spec["properties"].items():
        if name == "nodeName":
            continue
        prop = {k: v for k, v in field.items() if k != "default"}
        rules = [r for r in prop.pop("x-kubernetes-validations", [])
                 if "oldSelf" not in r["rule"]]
        if rules:
            prop["x-kubernetes-validations"] = rules
        properties[name] = prop
    pairs = [("minIPs", "maxIPs"), ("minFreeIPs", "maxFreeIPs")]
    return {
        "type": "object",
        "description": "NodeIPPool spec fields for the pools of the nodes this class selects "
                       "(any but nodeName); the chart's pool defaults fill the others.",
        "properties": properties,
        "x-kubernetes-validations": [
            {"rule": f"!has(self.{low}) || !has(self.{high}) || self.{low} <= self.{high}",
             "fieldPath": f".{low}", "message": f"{low} must not exceed {high}"}
            for low, high in pairs],
    }


def _selector_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Which nodes this class is for: a label selector over the Node's labels "
                       "(e.g. kubernetes.azure.com/agentpool); {} selects every node.",
        "properties": {
            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
            "matchExpressions": {
                "type": "array", "x-kubernetes-list-type": "atomic",
                "items": {
                    "type": "object", "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string", "minLength": 1},
                        "operator": {"type": "string",
                                     "enum": [o.value for o in SelectorOperator]},
                        "values": {"type": "array", "items": {"type": "string"},
                                   "x-kubernetes-list-type": "atomic"},
                    },
                    "x-kubernetes-validations": [{
                        "rule": "(self.operator in ['In', 'NotIn']) == "
                                "(has(self.values) && size(self.values) > 0)",
                        "message": "In and NotIn need values; Exists and DoesNotExist take none"}],
                },
            },
        },
    }


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
