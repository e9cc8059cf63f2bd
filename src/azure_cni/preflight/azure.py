"""The Azure part of the preflight: with the operator's own credential, read each node's NIC
and ask the permissions API whether the identity may write it and join its subnet.

It runs where the operator's identity is: the chart's Helm test pod has the operator's
service account, credential wiring and settings file (never the agent: it holds no
credential). A read that fails says why (ARM's 403 names the action and the scope); a write
is never tried: the permissions API answers without changing anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from azure_cni.api.settings import Settings
from azure_cni.cloud.azure import AzureAdapter
from azure_cni.cloud.permissions import PermissionSet, missing
from azure_cni.cloud.port import AuthFailed, CloudError, NicSnapshot, NotFound, VMRef
from azure_cni.cloud.resourceid import parse_resource_id
from azure_cni.preflight.findings import Check, Finding, Result

ROLE_DOC = "docs/install-azure.md (The operator's identity and role)"
SUBNET_ACTIONS = ("Microsoft.Network/virtualNetworks/subnets/read",
                  "Microsoft.Network/virtualNetworks/subnets/join/action")
VNET_ACTIONS = ("Microsoft.Network/virtualNetworks/read",)
VM_NIC_ACTIONS = ("Microsoft.Network/networkInterfaces/read",
                  "Microsoft.Network/networkInterfaces/write")
VM_ACTIONS = ("Microsoft.Compute/virtualMachines/read",)
INSTANCE_ACTIONS = ("Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
                    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/write",
                    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/"
                    "networkInterfaces/read")
PUBLIC_IP_JOIN = "Microsoft.Network/publicIPAddresses/join/action"
BACKEND_POOL_JOIN = "Microsoft.Network/loadBalancers/backendAddressPools/join/action"
ASG_JOIN = "Microsoft.Network/applicationSecurityGroups/joinIpConfiguration/action"


@dataclass(frozen=True)
class Needs:
    """Actions the operator needs on one scope, and why."""

    scope: str
    actions: tuple[str, ...]
    why: str


def needs_of(vm: VMRef, nic: NicSnapshot, settings: Settings) -> list[Needs]:
    """What the operator's identity needs for this node (pure)."""
    subnet = nic.primary.subnet_id
    vnet = subnet.rsplit("/subnets/", 1)[0]
    wanted = [Needs(subnet, SUBNET_ACTIONS, "new ipConfigurations join the node's subnet"),
              Needs(vnet, VNET_ACTIONS, "its address space")]
    if vm.scale_set is not None:
        wanted.append(Needs(vm.id, INSTANCE_ACTIONS,
                            "a Uniform instance's addresses are written through its model"))
    else:
        wanted += [Needs(vm.id, VM_ACTIONS, "the VM names its NIC"),
                   Needs(nic.id, VM_NIC_ACTIONS, "addresses are ipConfigurations of the NIC")]
        if settings.azure.copy_load_balancer_pools:
            wanted += [Needs(pool, (BACKEND_POOL_JOIN,), "azure.copyLoadBalancerPools")
                       for pool in nic.primary.backend_pool_ids]
        if settings.azure.copy_application_security_groups:
            wanted += [Needs(group, (ASG_JOIN,), "azure.copyApplicationSecurityGroups")
                       for group in _primary_groups(nic)]
        for group in settings.pod_networking.resource_groups:
            scope = f"/subscriptions/{vm.subscription_id}/resourceGroups/{group}"
            wanted.append(Needs(scope, (PUBLIC_IP_JOIN, BACKEND_POOL_JOIN),
                                "podNetworking: pods' public IPs and backend pools"))
    return wanted


def _primary_groups(nic: NicSnapshot) -> list[str]:
    """The application security groups of the NIC's primary ipConfiguration."""
    if nic.document is None:
        return []
    for config in json.loads(nic.document).get("properties", {}).get("ipConfigurations") or ():
        props = config.get("properties") or {}
        if props.get("primary"):
            return [str(g["id"]) for g in props.get("applicationSecurityGroups") or ()
                    if g.get("id")]
    return []


async def azure_findings(adapter: AzureAdapter, nodes: Sequence[tuple[str, VMRef]],
                         settings: Settings) -> list[Finding]:
    """For each node: its NIC read with the identity, and the permissions it needs."""
    findings: list[Finding] = []
    sets: dict[str, tuple[PermissionSet, ...]] = {}
    for name, vm in nodes:
        try:
            nic = await adapter.get_vm_nic(vm)
        except NotFound as e:
            findings.append(Finding(Check.NIC, name, Result.FAIL,
                                    f"its providerID names {vm.id}, whose NIC Azure does not "
                                    f"find: {e}",
                                    "fix the node's providerID, or the VM's NIC"))
            continue
        except AuthFailed as e:
            findings.append(Finding(Check.NIC, name, Result.FAIL,
                                    f"the operator's identity may not read it: {e}",
                                    f"grant the identity the role of {ROLE_DOC} on the node's "
                                    "resource group"))
            continue
        except CloudError as e:
            findings.append(Finding(Check.NIC, name, Result.FAIL, f"reading it failed: {e}",
                                    "see the error; the operator would fail the same way"))
            continue
        findings.append(Finding(Check.NIC, name, Result.PASS,
                                f"{nic.name} read with the operator's identity "
                                f"({len(nic.ip_configurations)} ipConfigurations)"))
        findings.append(await _permissions(adapter, name, needs_of(vm, nic, settings), sets))
    return findings


async def _permissions(adapter: AzureAdapter, node: str, wanted: Sequence[Needs],
                       sets: dict[str, tuple[PermissionSet, ...]]) -> Finding:
    lacking: list[str] = []
    for need in wanted:
        key = need.scope.lower()
        if key not in sets:
            try:
                sets[key] = await adapter.get_permissions(need.scope)
            except CloudError as e:
                return Finding(Check.PERMISSIONS, node, Result.FAIL,
                               f"the permissions API did not answer for {need.scope}: {e}",
                               "see the error")
        absent = missing(need.actions, sets[key])
        if absent:
            lacking.append(f"{', '.join(absent)} on {_short(need.scope)} ({need.why})")
    if lacking:
        return Finding(Check.PERMISSIONS, node, Result.FAIL,
                       "the operator's identity lacks " + "; ".join(lacking),
                       f"assign the identity the role of {ROLE_DOC} at those scopes (or a "
                       "parent of them: the resource group, the subscription)")
    return Finding(Check.PERMISSIONS, node, Result.PASS,
                   "the operator's identity may read and write the NIC and join the subnet")


def _short(scope: str) -> str:
    """``virtualNetworks/vnet/subnets/nodes`` rather than the whole ID, for reading."""
    try:
        ref = parse_resource_id(scope)
    except CloudError:
        return scope
    return "/".join(f"{kind}/{name}" for kind, name in ref.chain) + \
        f" (resource group {ref.resource_group})"
