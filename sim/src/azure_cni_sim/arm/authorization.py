"""Azure RBAC for the operator's identity, as ARM applies it: user-assigned managed identities
(Microsoft.ManagedIdentity), custom role definitions and role assignments
(Microsoft.Authorization), the permissions API, and, with ``ArmConfig.enforce_rbac``, the check
of every request against the caller's role assignments.

What ARM does, and the emulator with it (docs.microsoft.com, "Azure RBAC", "Azure resource
provider operations", arm-api.md §2.1):

- a principal may perform an action on a resource when a role assignment at the resource's
  scope or above it (its resource group, its subscription) names a role whose ``actions``
  match the action (``*`` is a wildcard, case does not matter) and whose ``notActions`` of the
  same permission set do not; assignments add up;
- a refusal is ``403 AuthorizationFailed`` naming the client, the action and the scope;
- a write that references other resources (an ipConfiguration's subnet, public IP, backend
  pools, application security groups) is also checked for the "join" action on each of them:
  ``403 LinkedAuthorizationFailed``. The emulator checks the references a write adds (new
  ipConfigurations, new references on kept ones); whether ARM re-checks unchanged ones is
  UNCONFIRMED and makes no difference to a role that grants the join;
- the permissions API (``GET {scope}/providers/Microsoft.Authorization/permissions``) lists the
  caller's permission sets that apply at a scope; the preflight reads it.

Simplifications: no deny assignments, no conditions, no data actions, no built-in roles
(principals named in ``ArmConfig.rbac_owners`` act as Owner everywhere), polls of long-running
operations are not checked, and a principal is the identity's ``principalId`` (IMDS issues a
user-assigned identity's tokens for it).
"""

from __future__ import annotations

import re
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from azure_cni_sim.arm.resources import Reply, Request
from azure_cni_sim.armstate import ArmError, ArmState, _rg_prefix, vm_json

TENANT_ID = "00000000-0000-0000-0000-0000000000aa"
MSI_API_VERSIONS = ("2024-11-30", "2023-07-31-preview", "2023-01-31", "2018-11-30")
AUTHORIZATION_API_VERSIONS = ("2022-04-01", "2022-05-01-preview", "2020-04-01-preview",
                              "2018-01-01-preview", "2015-07-01")
SUBNET_JOIN = "Microsoft.Network/virtualNetworks/subnets/join/action"
PUBLIC_IP_JOIN = "Microsoft.Network/publicIPAddresses/join/action"
BACKEND_POOL_JOIN = "Microsoft.Network/loadBalancers/backendAddressPools/join/action"
ASG_JOIN = "Microsoft.Network/applicationSecurityGroups/joinIpConfiguration/action"


@dataclass
class Identity:
    id: str
    name: str
    location: str
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    principal_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class PermissionSet:
    actions: tuple[str, ...]
    not_actions: tuple[str, ...] = ()

    def json(self) -> dict[str, Any]:
        return {"actions": list(self.actions), "notActions": list(self.not_actions),
                "dataActions": [], "notDataActions": []}


@dataclass
class RoleDefinition:
    id: str
    name: str
    role_name: str
    description: str
    permissions: tuple[PermissionSet, ...]
    assignable_scopes: tuple[str, ...]


@dataclass
class RoleAssignment:
    id: str
    name: str
    scope: str
    role_definition_id: str
    principal_id: str
    principal_type: str


@dataclass
class Authorization:
    """The identities, roles and assignments of one emulated tenant."""

    identities: dict[str, Identity] = field(default_factory=dict)
    roles: dict[str, RoleDefinition] = field(default_factory=dict)
    assignments: dict[str, RoleAssignment] = field(default_factory=dict)

    def identity_by_client_id(self, client_id: str) -> Identity | None:
        return next((i for i in self.identities.values()
                     if i.client_id.lower() == client_id.lower()), None)

    def permission_sets(self, principal: str, scope: str) -> list[PermissionSet]:
        """Every permission set that applies to ``principal`` at ``scope``."""
        sets: list[PermissionSet] = []
        for assignment in self.assignments.values():
            if assignment.principal_id.lower() != principal.lower() \
                    or not covers(assignment.scope, scope):
                continue
            role = self.roles.get(_role_key(assignment.role_definition_id))
            if role is not None:
                sets += role.permissions
        return sets


_AUTHORIZATIONS: weakref.WeakKeyDictionary[ArmState, Authorization] = \
    weakref.WeakKeyDictionary()


def authorization_of(state: ArmState) -> Authorization:
    found = _AUTHORIZATIONS.get(state)
    if found is None:
        found = _AUTHORIZATIONS[state] = Authorization()
    return found


def _role_key(role_definition_id: str) -> str:
    """Role definitions are found by their GUID, whatever scope their ID was written at."""
    return role_definition_id.rstrip("/").rsplit("/", 1)[-1].lower()


# -- the rules (pure) ---------------------------------------------------------------------------


def covers(scope: str, resource: str) -> bool:
    """True when an assignment at ``scope`` applies to ``resource`` (it or a parent of it)."""
    scope, resource = scope.rstrip("/").lower(), resource.rstrip("/").lower()
    return resource == scope or resource.startswith(scope + "/")


def action_matches(pattern: str, action: str) -> bool:
    """ARM's action patterns: ``*`` stands for anything, case does not matter."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, action, flags=re.IGNORECASE) is not None


def permitted(sets: Iterable[PermissionSet], action: str) -> bool:
    return any(any(action_matches(a, action) for a in s.actions)
               and not any(action_matches(n, action) for n in s.not_actions) for s in sets)


@dataclass(frozen=True)
class Needed:
    """One action a request needs on one scope; ``linked`` for a referenced resource."""

    action: str
    scope: str
    linked: bool = False


def _resource_type(template: str) -> str:
    """``Microsoft.Network/virtualNetworks/subnets`` of a route template."""
    tail = template.split("/providers/", 1)[1]
    return "/".join(part for part in tail.split("/") if not part.startswith("{"))


_VERBS = {"GET": "read", "PUT": "write", "PATCH": "write", "DELETE": "delete"}


def needed(method: str, path: str, template: str, body: Any, current: Sequence[Mapping[str, Any]]
           ) -> list[Needed]:
    """What a routed request needs: its own action on its path, and the join actions of what a
    NIC or scale-set instance write adds (``current``: the ipConfigurations it has now)."""
    kind = _resource_type(template)
    verb = _VERBS.get(method.upper(), "action")
    wants = [Needed(f"{kind}/{verb}", path)]
    if method.upper() == "PUT" and kind in ("Microsoft.Network/networkInterfaces",
                                            "Microsoft.Compute/virtualMachineScaleSets/"
                                            "virtualMachines"):
        wants += [Needed(action, ref, linked=True)
                  for action, ref in added_references(_ip_configurations(body), current)]
    return wants


def _refs(config: Mapping[str, Any]) -> set[tuple[str, str]]:
    props = config.get("properties") or {}
    if not isinstance(props, Mapping):
        return set()

    def ids(value: Any) -> list[str]:
        items = value if isinstance(value, list) else [value] if value else []
        return [str(i.get("id")) for i in items if isinstance(i, Mapping) and i.get("id")]

    found = {(SUBNET_JOIN, i) for i in ids(props.get("subnet"))}
    found |= {(PUBLIC_IP_JOIN, i) for i in ids(props.get("publicIPAddress"))}
    found |= {(BACKEND_POOL_JOIN, i) for i in ids(props.get("loadBalancerBackendAddressPools"))}
    found |= {(ASG_JOIN, i) for i in ids(props.get("applicationSecurityGroups"))}
    return {(a, i.lower()) for a, i in found}


def added_references(wanted: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]]
                     ) -> list[tuple[str, str]]:
    """(join action, referenced resource) for each reference the write adds."""
    before = {str(c.get("name", "")).lower(): _refs(c) for c in current}
    added: set[tuple[str, str]] = set()
    for config in wanted:
        added |= _refs(config) - before.get(str(config.get("name", "")).lower(), set())
    return sorted(added)


def _ip_configurations(body: Any) -> list[Mapping[str, Any]]:
    """The ipConfigurations of a NIC body or of a scale-set instance model."""
    props = body.get("properties") if isinstance(body, Mapping) else None
    if not isinstance(props, Mapping):
        return []
    if "ipConfigurations" in props:
        configs = props.get("ipConfigurations")
        return [c for c in configs or () if isinstance(c, Mapping)]
    profile = props.get("networkProfileConfiguration") or {}
    found: list[Mapping[str, Any]] = []
    for nic in profile.get("networkInterfaceConfigurations") or () \
            if isinstance(profile, Mapping) else ():
        nic_props = nic.get("properties") if isinstance(nic, Mapping) else None
        if isinstance(nic_props, Mapping):
            found += [c for c in nic_props.get("ipConfigurations") or ()
                      if isinstance(c, Mapping)]
    return found


def refusal(principal: str, need: Needed, write_action: str, write_scope: str) -> ArmError:
    """ARM's 403 for a missing permission (arm-api.md §2.1)."""
    client = f"The client '{principal}' with object id '{principal}'"
    if need.linked:
        return ArmError(403, "LinkedAuthorizationFailed",
                        f"{client} has permission to perform action '{write_action}' on scope "
                        f"'{write_scope}'; however, it does not have permission to perform "
                        f"action '{need.action}' on the linked scope(s) '{need.scope}' or the "
                        f"linked scope(s) are invalid.")
    return ArmError(403, "AuthorizationFailed",
                    f"{client} does not have authorization to perform action '{need.action}' "
                    f"over scope '{need.scope}' or the scope is invalid. If access was recently "
                    "granted, please refresh your credentials.")


def authorize(auth: Authorization, principal: str, wants: Sequence[Needed]) -> None:
    """Raise the 403 of the first need the principal's role assignments do not grant."""
    own = wants[0]
    for need in wants:
        if not permitted(auth.permission_sets(principal, need.scope), need.action):
            raise refusal(principal, need, own.action, own.scope)


# -- Microsoft.ManagedIdentity ----------------------------------------------------------------


def _identity_json(identity: Identity) -> dict[str, Any]:
    return {"id": identity.id, "name": identity.name, "location": identity.location,
            "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
            "properties": {"tenantId": TENANT_ID, "principalId": identity.principal_id,
                           "clientId": identity.client_id}}


def put_identity(r: Request) -> Reply:
    r.state.require_group(r.subscription, r.resource_group)
    auth = authorization_of(r.state)
    identity_id = (f"{_rg_prefix(r.subscription, r.resource_group)}/providers/"
                   f"Microsoft.ManagedIdentity/userAssignedIdentities/{r.params['identity']}")
    existing = auth.identities.get(identity_id.lower())
    if existing is not None:
        return Reply(_identity_json(existing))
    location = str((r.body or {}).get("location") or "eastus")
    identity = auth.identities[identity_id.lower()] = Identity(identity_id,
                                                               r.params["identity"], location)
    return Reply(_identity_json(identity), status=201)


def get_identity(r: Request) -> Reply:
    identity_id = (f"{_rg_prefix(r.subscription, r.resource_group)}/providers/"
                   f"Microsoft.ManagedIdentity/userAssignedIdentities/{r.params['identity']}")
    identity = authorization_of(r.state).identities.get(identity_id.lower())
    if identity is None:
        raise ArmError(404, "ResourceNotFound",
                       f"The Resource 'Microsoft.ManagedIdentity/userAssignedIdentities/"
                       f"{r.params['identity']}' under resource group '{r.resource_group}' was "
                       "not found.")
    return Reply(_identity_json(identity))


def list_identities(r: Request) -> Reply:
    r.state.require_group(r.subscription, r.resource_group)
    prefix = _rg_prefix(r.subscription, r.resource_group).lower() + "/"
    return Reply({"value": [_identity_json(i) for key, i in
                            sorted(authorization_of(r.state).identities.items())
                            if key.startswith(prefix)]})


def _assigned_identities(r: Request) -> tuple[str, ...]:
    """The client IDs of the user-assigned identities a VM or scale-set update names."""
    body = r.body if isinstance(r.body, Mapping) else {}
    wanted = (body.get("identity") or {}).get("userAssignedIdentities") or {}
    auth = authorization_of(r.state)
    client_ids = []
    for identity_id in wanted:
        identity = auth.identities.get(str(identity_id).lower())
        if identity is None:
            raise ArmError(400, "FailedIdentityOperation",
                           f"Identity '{identity_id}' is not found or not accessible.")
        client_ids.append(identity.client_id)
    return tuple(client_ids)


def patch_vm(r: Request) -> Reply:
    """``az vm identity assign``: an update of the VM's ``identity`` (the rest is ignored)."""
    vm = r.state.vm(r.subscription, r.resource_group, r.params["vm"])
    vm.identities = tuple(dict.fromkeys((*vm.identities, *_assigned_identities(r))))
    return Reply(with_identity(vm_json(vm), vm.identities, authorization_of(r.state)))


def with_identity(payload: dict[str, Any], client_ids: Sequence[str], auth: Authorization
                  ) -> dict[str, Any]:
    users = {}
    for client_id in client_ids:
        identity = auth.identity_by_client_id(client_id)
        if identity is not None:
            users[identity.id] = {"principalId": identity.principal_id,
                                  "clientId": identity.client_id}
    if users:
        payload["identity"] = {"type": "UserAssigned", "userAssignedIdentities": users}
    return payload


def patch_scale_set(r: Request) -> Reply:
    """``az vmss identity assign`` on a Uniform scale set: every instance gets the identity
    (the emulator applies the model at once, as ``az vmss update-instances`` would)."""
    from azure_cni_sim.arm.scaleset_resources import scale_sets_of  # noqa: PLC0415 - a cycle

    sets = scale_sets_of(r.state)
    ss_id = (f"{_rg_prefix(r.subscription, r.resource_group)}/providers/Microsoft.Compute/"
             f"virtualMachineScaleSets/{r.params['vmss']}")
    scale_set = sets.by_id.get(ss_id.lower())
    if scale_set is None:
        raise ArmError(404, "ResourceNotFound",
                       f"The Resource 'Microsoft.Compute/virtualMachineScaleSets/"
                       f"{r.params['vmss']}' under resource group '{r.resource_group}' was not "
                       "found.")
    added = _assigned_identities(r)
    for instance in scale_set.instances.values():
        instance.vm.identities = tuple(dict.fromkeys((*instance.vm.identities, *added)))
    payload = {"id": scale_set.id, "name": scale_set.name, "location": scale_set.location,
               "type": "Microsoft.Compute/virtualMachineScaleSets",
               "properties": {"orchestrationMode": "Uniform", "provisioningState": "Succeeded"}}
    return Reply(with_identity(payload, added, authorization_of(r.state)))


def list_vms(r: Request) -> Reply:
    """``az vm list -g RG``: the group's VMs (standalone and Flexible; Uniform instances are
    their scale set's)."""
    r.state.require_group(r.subscription, r.resource_group)
    auth = authorization_of(r.state)
    prefix = f"{_rg_prefix(r.subscription, r.resource_group)}/providers/microsoft.compute/" \
             "virtualmachines/".lower()
    vms = [vm for key, vm in sorted(r.state.vms.items()) if key.startswith(prefix)]
    return Reply({"value": [with_identity(vm_json(vm), vm.identities, auth) for vm in vms]})


def list_scale_sets(r: Request) -> Reply:
    """``az vmss list -g RG``: the group's Uniform scale sets."""
    from azure_cni_sim.arm.scaleset_resources import scale_sets_of  # noqa: PLC0415 - a cycle

    r.state.require_group(r.subscription, r.resource_group)
    sets = [ss for ss in scale_sets_of(r.state).by_id.values()
            if ss.subscription.lower() == r.subscription.lower()
            and ss.resource_group.lower() == r.resource_group.lower()]
    return Reply({"value": [{"id": ss.id, "name": ss.name, "location": ss.location,
                             "type": "Microsoft.Compute/virtualMachineScaleSets",
                             "properties": {"orchestrationMode": "Uniform"}}
                            for ss in sorted(sets, key=lambda ss: ss.name)]})


def manual_upgrade(r: Request) -> Reply:
    """``az vmss update-instances``: the emulator's instances follow their scale set's
    identity at once, so there is nothing left to apply."""
    return Reply(None)


# -- Microsoft.Authorization --------------------------------------------------------------------


def _role_json(role: RoleDefinition) -> dict[str, Any]:
    return {"id": role.id, "name": role.name,
            "type": "Microsoft.Authorization/roleDefinitions",
            "properties": {"roleName": role.role_name, "description": role.description,
                           "type": "CustomRole",
                           "permissions": [p.json() for p in role.permissions],
                           "assignableScopes": list(role.assignable_scopes)}}


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ArmError(400, "InvalidRoleDefinition", f"{what} must be a list of strings.")
    return tuple(value)


def put_role_definition(r: Request) -> Reply:
    props = (r.body or {}).get("properties") if isinstance(r.body, Mapping) else None
    if not isinstance(props, Mapping) or not props.get("roleName"):
        raise ArmError(400, "InvalidRoleDefinition", "The role definition has no roleName.")
    permissions = tuple(PermissionSet(_strings(p.get("actions"), "actions"),
                                      _strings(p.get("notActions"), "notActions"))
                        for p in props.get("permissions") or () if isinstance(p, Mapping))
    scopes = _strings(props.get("assignableScopes"), "assignableScopes")
    if not permissions or not scopes:
        raise ArmError(400, "InvalidRoleDefinition",
                       "A custom role needs permissions and assignableScopes.")
    auth = authorization_of(r.state)
    key = r.params["role"].lower()
    same_name = [role for k, role in auth.roles.items()
                 if k != key and role.role_name.lower() == str(props["roleName"]).lower()]
    if same_name:
        raise ArmError(409, "RoleDefinitionWithSameNameExists",
                       "A custom role with the same name already exists in this directory. "
                       "Use a different name.")
    role = RoleDefinition(f"{r.params['scope']}/providers/Microsoft.Authorization/"
                          f"roleDefinitions/{r.params['role']}", r.params["role"],
                          str(props["roleName"]), str(props.get("description") or ""),
                          permissions, scopes)
    created = key not in auth.roles
    auth.roles[key] = role
    return Reply(_role_json(role), status=201 if created else 200)


def list_role_definitions(r: Request) -> Reply:
    """``az role assignment create --role NAME`` finds the role by ``$filter=roleName eq``."""
    wanted = re.fullmatch(r"\s*roleName\s+eq\s+'(.*)'\s*", r.query.get("$filter", ""))
    roles = [role for role in authorization_of(r.state).roles.values()
             if wanted is None or role.role_name.lower() == wanted.group(1).lower()]
    return Reply({"value": [_role_json(role) for role in roles]})


def get_role_definition(r: Request) -> Reply:
    role = authorization_of(r.state).roles.get(r.params["role"].lower())
    if role is None:
        raise ArmError(404, "RoleDefinitionDoesNotExist",
                       "The specified role definition with ID "
                       f"'{r.params['role']}' does not exist.")
    return Reply(_role_json(role))


def _assignment_json(assignment: RoleAssignment) -> dict[str, Any]:
    return {"id": assignment.id, "name": assignment.name,
            "type": "Microsoft.Authorization/roleAssignments",
            "properties": {"roleDefinitionId": assignment.role_definition_id,
                           "principalId": assignment.principal_id,
                           "principalType": assignment.principal_type,
                           "scope": assignment.scope}}


def put_role_assignment(r: Request) -> Reply:
    props = (r.body or {}).get("properties") if isinstance(r.body, Mapping) else None
    if not isinstance(props, Mapping) or not props.get("principalId") \
            or not props.get("roleDefinitionId"):
        raise ArmError(400, "InvalidRoleAssignmentRequest",
                       "A role assignment needs principalId and roleDefinitionId.")
    auth = authorization_of(r.state)
    role = auth.roles.get(_role_key(str(props["roleDefinitionId"])))
    if role is None:
        raise ArmError(400, "RoleDefinitionDoesNotExist",
                       f"The specified role definition with ID "
                       f"'{_role_key(str(props['roleDefinitionId']))}' does not exist.")
    scope = r.params["scope"]
    if not any(covers(assignable, scope) for assignable in role.assignable_scopes):
        raise ArmError(403, "AuthorizationFailed",
                       f"The role '{role.role_name}' is not assignable at scope '{scope}': "
                       "it is outside the role's assignableScopes.")
    assignment = RoleAssignment(
        f"{scope}/providers/Microsoft.Authorization/roleAssignments/{r.params['assignment']}",
        r.params["assignment"], scope, str(props["roleDefinitionId"]),
        str(props["principalId"]), str(props.get("principalType") or "ServicePrincipal"))
    duplicate = [a for a in auth.assignments.values()
                 if a.name != assignment.name and a.scope.lower() == scope.lower()
                 and a.principal_id.lower() == assignment.principal_id.lower()
                 and _role_key(a.role_definition_id) == role.name.lower()]
    if duplicate:
        raise ArmError(409, "RoleAssignmentExists", "The role assignment already exists.")
    created = assignment.name.lower() not in auth.assignments
    auth.assignments[assignment.name.lower()] = assignment
    return Reply(_assignment_json(assignment), status=201 if created else 200)


def delete_role_assignment(r: Request) -> Reply:
    assignment = authorization_of(r.state).assignments.pop(r.params["assignment"].lower(), None)
    if assignment is None:
        return Reply(None, status=204)
    return Reply(_assignment_json(assignment))


def list_role_assignments(r: Request) -> Reply:
    """Assignments at the scope, above it and below it (what ``az role assignment list``
    shows), optionally ``$filter=principalId eq '<id>'``."""
    wanted = re.fullmatch(r"\s*principalId\s+eq\s+'(.*)'\s*", r.query.get("$filter", ""))
    scope = r.params["scope"]
    found = [a for a in authorization_of(r.state).assignments.values()
             if (covers(a.scope, scope) or covers(scope, a.scope))
             and (wanted is None or a.principal_id.lower() == wanted.group(1).lower())]
    return Reply({"value": [_assignment_json(a) for a in found]})


def get_permissions(r: Request) -> Reply:
    """The caller's permission sets at the scope."""
    if not r.config.enforce_rbac or r.principal in r.config.rbac_owners:
        sets = [PermissionSet(("*",))]
    else:
        sets = authorization_of(r.state).permission_sets(r.principal, r.params["scope"])
    return Reply({"value": [s.json() for s in sets]})


def check_request(r: Request, template: str) -> None:
    """Raise ARM's 403 when RBAC is enforced and the caller may not do this."""
    if not r.config.enforce_rbac or r.principal in r.config.rbac_owners:
        return
    nic = r.state.nics.get(r.path.lower()) if r.method.upper() == "PUT" else None
    # what the NIC holds now; an instance's NIC is keyed below the instance's path, and its
    # new ipConfigurations are all in the instance model's body
    current = [{"name": c.name, "properties": {**c.extra, "subnet": {"id": c.subnet.id}}}
               for c in nic.ip_configs] if nic is not None else []
    authorize(authorization_of(r.state), r.principal,
              needed(r.method, r.path, template, r.body, current))
