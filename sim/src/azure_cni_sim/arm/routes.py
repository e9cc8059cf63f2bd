"""The ARM surface the emulator serves, as one table: method, path template, handler.

Paths match case-insensitively, as ARM's do (arm-api.md §1.1). ``{name}`` segments capture
a value; everything else must match literally. A path that matches a template under another
method is answered 405, a path that matches none 404.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from azure_cni_sim.arm import authorization, netfeatures, resources, scaleset_resources
from azure_cni_sim.arm.resources import Reply, Request

Handler = Callable[[Request], Reply]

_RG = "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers"
_NETWORK = f"{_RG}/Microsoft.Network"
_INSTANCE = f"{_RG}/Microsoft.Compute/virtualMachineScaleSets/{{vmss}}/virtualMachines/{{instance}}"


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Handler
    #: which api-versions apply: the Network RP's, the Compute RP's, the Network RP's for
    #: scale-set NICs ("vmss-network"), Managed Identity's ("msi") or Authorization's
    provider: str = "network"
    #: the template follows a scope of any length (a subscription, a resource group or a
    #: resource), as Microsoft.Authorization's paths do; the scope is ``params["scope"]``
    scoped: bool = False
    #: not checked by the emulator's RBAC (polls of long-running operations)
    unchecked: bool = False

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(s for s in self.template.split("/") if s)

    def match(self, parts: Sequence[str]) -> dict[str, str] | None:
        segments = self.segments
        scope: list[str] = []
        if self.scoped:
            if len(parts) < len(segments) + 2 or parts[0].lower() != "subscriptions":
                return None
            scope, parts = list(parts[:-len(segments)]), parts[-len(segments):]
        if len(segments) != len(parts):
            return None
        params = {}
        for want, got in zip(segments, parts, strict=True):
            if want.startswith("{"):
                params[want.strip("{}")] = got
            elif want.lower() != got.lower():
                return None
        if self.scoped:
            params["scope"] = "/" + "/".join(scope)
            params["subscription"] = scope[1]
        return params


_AUTHORIZATION = "/providers/Microsoft.Authorization"

ROUTES: tuple[Route, ...] = (
    Route("GET", f"{_RG}/Microsoft.Compute/virtualMachines/{{vm}}", resources.get_vm,
          provider="compute"),
    Route("GET", f"{_RG}/Microsoft.Compute/virtualMachines", authorization.list_vms,
          provider="compute"),
    Route("GET", f"{_RG}/Microsoft.Compute/virtualMachineScaleSets",
          authorization.list_scale_sets, provider="compute"),
    Route("POST", f"{_RG}/Microsoft.Compute/virtualMachineScaleSets/{{vmss}}/manualupgrade",
          authorization.manual_upgrade, provider="compute"),
    Route("GET", f"{_RG}/Microsoft.ManagedIdentity/userAssignedIdentities",
          authorization.list_identities, provider="msi"),
    # `az vm identity assign` / `az vmss identity assign`: an update of the identity
    Route("PATCH", f"{_RG}/Microsoft.Compute/virtualMachines/{{vm}}", authorization.patch_vm,
          provider="compute"),
    Route("PATCH", f"{_RG}/Microsoft.Compute/virtualMachineScaleSets/{{vmss}}",
          authorization.patch_scale_set, provider="compute"),
    Route("PUT", f"{_RG}/Microsoft.ManagedIdentity/userAssignedIdentities/{{identity}}",
          authorization.put_identity, provider="msi"),
    Route("GET", f"{_RG}/Microsoft.ManagedIdentity/userAssignedIdentities/{{identity}}",
          authorization.get_identity, provider="msi"),
    *(Route(method, f"{_AUTHORIZATION}/{path}", handler, provider="authorization", scoped=True)
      for method, path, handler in (
          ("PUT", "roleDefinitions/{role}", authorization.put_role_definition),
          ("GET", "roleDefinitions/{role}", authorization.get_role_definition),
          ("GET", "roleDefinitions", authorization.list_role_definitions),
          ("PUT", "roleAssignments/{assignment}", authorization.put_role_assignment),
          ("DELETE", "roleAssignments/{assignment}", authorization.delete_role_assignment),
          ("GET", "roleAssignments", authorization.list_role_assignments))),
    # every principal may list its own permissions (UNCONFIRMED: Microsoft documents no
    # action for it, and azure-cni's preflight needs none)
    Route("GET", f"{_AUTHORIZATION}/permissions", authorization.get_permissions,
          provider="authorization", scoped=True, unchecked=True),
    Route("GET", f"{_NETWORK}/networkInterfaces", resources.list_nics),
    Route("GET", f"{_NETWORK}/networkInterfaces/{{nic}}", resources.get_nic),
    # the NIC write, after the checks of what its ipConfigurations reference (netfeatures)
    Route("PUT", f"{_NETWORK}/networkInterfaces/{{nic}}", netfeatures.put_nic),
    Route("PATCH", f"{_NETWORK}/networkInterfaces/{{nic}}", resources.patch_nic_tags),
    Route("GET", f"{_NETWORK}/networkInterfaces/{{nic}}/ipConfigurations",
          resources.list_ip_configurations),
    Route("GET", f"{_NETWORK}/networkInterfaces/{{nic}}/ipConfigurations/{{ipconfig}}",
          resources.get_ip_configuration),
    Route("GET", f"{_NETWORK}/virtualNetworks/{{vnet}}", resources.get_vnet),
    Route("GET", f"{_NETWORK}/virtualNetworks/{{vnet}}/subnets/{{subnet}}",
          netfeatures.get_subnet),
    Route("PUT", f"{_NETWORK}/virtualNetworks/{{vnet}}/subnets/{{subnet}}",
          netfeatures.put_subnet),
    Route("GET", f"{_NETWORK}/virtualNetworks/{{vnet}}/usages", resources.list_usages),
    Route("GET", f"{_NETWORK}/virtualNetworks/{{vnet}}/checkIPAddressAvailability",
          resources.check_ip_address),
    # public IPs, load balancers and network security groups (netfeatures)
    *(Route(method, f"{_NETWORK}/{path}", handler) for method, path, handler in (
        ("GET", "publicIPAddresses/{pip}", netfeatures.get_public_ip),
        ("PUT", "publicIPAddresses/{pip}", netfeatures.put_public_ip),
        ("DELETE", "publicIPAddresses/{pip}", netfeatures.delete_public_ip),
        ("PATCH", "publicIPAddresses/{pip}", netfeatures.patch_public_ip_tags),
        ("GET", "loadBalancers/{lb}", netfeatures.get_load_balancer),
        ("PUT", "loadBalancers/{lb}", netfeatures.put_load_balancer),
        ("PATCH", "loadBalancers/{lb}", netfeatures.patch_load_balancer_tags),
        ("DELETE", "loadBalancers/{lb}", netfeatures.delete_load_balancer),
        ("GET", "networkSecurityGroups/{nsg}", netfeatures.get_nsg),
        ("PUT", "networkSecurityGroups/{nsg}", netfeatures.put_nsg),
        ("DELETE", "networkSecurityGroups/{nsg}", netfeatures.delete_nsg),
        ("GET", "networkSecurityGroups/{nsg}/securityRules/{rule}",
         netfeatures.get_security_rule),
        ("PUT", "networkSecurityGroups/{nsg}/securityRules/{rule}",
         netfeatures.put_security_rule),
        ("DELETE", "networkSecurityGroups/{nsg}/securityRules/{rule}",
         netfeatures.delete_security_rule),
    )),
    Route("GET", "/subscriptions/{subscription}/providers/Microsoft.Network/locations/"
                 "{location}/operations/{operation}", resources.get_operation, unchecked=True),
    # Uniform scale sets: the instance model through Compute, its NICs read-only through NRP
    Route("GET", _INSTANCE, scaleset_resources.get_instance, provider="compute"),
    Route("PUT", _INSTANCE, scaleset_resources.put_instance, provider="compute"),
    Route("GET", "/subscriptions/{subscription}/providers/Microsoft.Compute/locations/"
                 "{location}/operations/{operation}", scaleset_resources.get_compute_operation,
          provider="compute", unchecked=True),
    Route("GET", f"{_INSTANCE}/networkInterfaces", scaleset_resources.list_instance_nics,
          provider="vmss-network"),
    Route("GET", f"{_INSTANCE}/networkInterfaces/{{nic}}", scaleset_resources.get_instance_nic,
          provider="vmss-network"),
    Route("GET", f"{_RG}/Microsoft.Compute/virtualMachineScaleSets/{{vmss}}/networkInterfaces",
          scaleset_resources.list_scale_set_nics, provider="vmss-network"),
)


@dataclass(frozen=True)
class Match:
    route: Route
    params: dict[str, str]


class MethodNotAllowed(Exception):
    """The path is served, but not for this method (``route`` serves it for another)."""

    def __init__(self, method: str, route: Route) -> None:
        super().__init__(f"{method} {route.template}")
        self.route = route


def resolve(method: str, path: str, routes: Sequence[Route] = ROUTES) -> Match | None:
    """The route serving ``method path`` (None: no such resource type).

    Raises MethodNotAllowed when the path is served for other methods only.
    """
    parts = [p for p in path.split("/") if p]
    other: Route | None = None
    # a resource's own route before a scoped one (a scope may end in anything)
    for route in sorted(routes, key=lambda r: r.scoped):
        params = route.match(parts)
        if params is None:
            continue
        if route.method == method.upper():
            return Match(route, params)
        other = other or route
    if other is not None:
        raise MethodNotAllowed(method, other)
    return None
