"""Public IPs, load balancers and network security groups: resources, ARM operations, rules.

What is modelled (azure-features.md §3):

- **Public IP addresses**: Standard (or Basic) SKU, Static, an address from the emulated
  internet's range; ``properties.ipConfiguration`` names the ipConfiguration holding it. One
  ipConfiguration at a time: a NIC write naming a public IP held elsewhere is refused with
  400 ``PublicIPAddressInUse``; a public IP still attached cannot be deleted (400
  ``PublicIPAddressCannotBeDeleted``); a write naming a deleted one gets 400
  ``InvalidResourceReference``.
- **Load balancers**: SKU, frontends (a public IP each), backend pools whose members are the
  NIC ipConfigurations that name them (``backendIPConfigurations``, read-only, as in Azure),
  and load-balancing rules (protocol, frontend port, backend port). A NIC write naming a pool
  of a Basic load balancer is refused (code UNVERIFIED, see below).
- **Linked authorization**: ARM checks that the caller may join every resource a NIC write
  references (``Microsoft.Network/publicIPAddresses/join/action``,
  ``.../loadBalancers/backendAddressPools/join/action``), unchanged references included (the
  subnet's join is needed on every NIC write, arm-api.md §2.1). A scope denied with
  ``ArmEmulator.deny_join`` refuses such a write with 403 ``LinkedAuthorizationFailed`` naming
  the linked scopes; a reference into a subscription the emulator does not hold (another
  tenant's) gets the same code with ARM's "is not authorized to access linked subscription"
  message. Every caller is treated alike (the emulator has no role assignments).
- **Tags** on public IPs and load balancers (PUT, and PATCH of ``tags`` alone as
  ``updateTags`` does), returned by GET as ARM returns them.
- **Network security groups** on NICs (``networkSecurityGroup`` of the NIC) and subnets (a
  subnet PUT that sets only that): rules with priority, direction, access, protocol, port
  ranges and address prefixes or the service tags ``VirtualNetwork``, ``Internet``,
  ``AzureLoadBalancer``, and Azure's default rules at 65000+.

:func:`fabric_policy` turns all of it into what the simulated SDN must enforce (``sdn.py``).
Handlers run under the emulator's state lock and do no I/O, like ``resources``.
"""

from __future__ import annotations

import contextlib
import inspect
import ipaddress
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from azure_cni_sim.arm import resources
from azure_cni_sim.arm.resources import Reply, Request
from azure_cni_sim.armstate import ArmError, ArmState, new_etag

log = logging.getLogger(__name__)

#: where public IPs (and so load balancer frontends) get their addresses: the emulated
#: internet (vnet.py's internet host is .10, ARM .20)
PUBLIC_RANGE = ("203.0.113.100", "203.0.113.199")
# UNVERIFIED: Microsoft documents that IP-based and cross-SKU pools need Standard, not the
# code a NIC write gets for a Basic load balancer's pool
BASIC_POOL_CODE = "BasicSkuLoadBalancerBackendPoolNotSupported"

#: who the emulator says a refused caller is (it keeps no directory of its own)
EMULATED_TENANT = "00000000-0000-0000-0000-0000000000aa"
EMULATED_CLIENT = "00000000-0000-0000-0000-0000000000cc"

#: Azure's default rules, evaluated after every user rule (priorities 65000+)
DEFAULT_RULES: tuple[tuple[str, int, str, str, str, str], ...] = (
    # name, priority, direction, access, source, destination
    ("AllowVnetInBound", 65000, "Inbound", "Allow", "VirtualNetwork", "VirtualNetwork"),
    ("AllowAzureLoadBalancerInBound", 65001, "Inbound", "Allow", "AzureLoadBalancer", "*"),
    ("DenyAllInBound", 65500, "Inbound", "Deny", "*", "*"),
    ("AllowVnetOutBound", 65000, "Outbound", "Allow", "VirtualNetwork", "VirtualNetwork"),
    ("AllowInternetOutBound", 65001, "Outbound", "Allow", "*", "Internet"),
    ("DenyAllOutBound", 65500, "Outbound", "Deny", "*", "*"),
)
SERVICE_TAGS = ("VirtualNetwork", "Internet", "AzureLoadBalancer")


@dataclass
class PublicIp:
    id: str
    name: str
    location: str
    sku: str
    address: str
    etag: str = field(default_factory=new_etag)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class LbRule:
    name: str
    frontend: str
    pool: str
    protocol: str
    frontend_port: int
    backend_port: int


@dataclass
class LoadBalancer:
    id: str
    name: str
    location: str
    sku: str
    #: frontend name -> public IP resource ID
    frontends: dict[str, str]
    pools: list[str]
    rules: list[LbRule]
    etag: str = field(default_factory=new_etag)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SecurityRule:
    name: str
    priority: int
    direction: str
    access: str
    protocol: str
    sources: tuple[str, ...]
    source_ports: tuple[str, ...]
    destinations: tuple[str, ...]
    destination_ports: tuple[str, ...]


@dataclass
class Nsg:
    id: str
    name: str
    location: str
    rules: dict[str, SecurityRule]
    etag: str = field(default_factory=new_etag)


@dataclass
class Features:
    """The resources of this module in one emulated world."""

    public_ips: dict[str, PublicIp] = field(default_factory=dict)
    load_balancers: dict[str, LoadBalancer] = field(default_factory=dict)
    nsgs: dict[str, Nsg] = field(default_factory=dict)
    #: subnet ID (lower) -> NSG ID
    subnet_nsgs: dict[str, str] = field(default_factory=dict)
    #: scopes (lower) under which no NIC write may reference anything (no join permission)
    join_denied: set[str] = field(default_factory=set)
    #: bumped by every write here (and read with the NICs' etags for change detection)
    version: int = 0


_FEATURES: weakref.WeakKeyDictionary[ArmState, Features] = weakref.WeakKeyDictionary()


def features_of(state: ArmState) -> Features:
    found = _FEATURES.get(state)
    if found is None:
        found = _FEATURES[state] = Features()
    return found


def _id(r: Request, kind: str, name: str) -> str:
    return (f"/subscriptions/{r.subscription}/resourceGroups/{r.resource_group}/providers/"
            f"Microsoft.Network/{kind}/{name}")


def _not_found(kind: str, name: str, resource_group: str) -> ArmError:
    return ArmError(404, "ResourceNotFound",
                    f"The Resource 'Microsoft.Network/{kind}/{name}' under resource group "
                    f"'{resource_group}' was not found. For more details please go to "
                    "https://aka.ms/ARMResourceNotFoundFix")


def _body_props(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise ArmError(400, "InvalidRequestContent",
                       "The request content was invalid and could not be deserialized.")
    props = body.get("properties") or {}
    if not isinstance(props, Mapping):
        raise ArmError(400, "InvalidRequestContent", "properties must be an object.")
    return props


def _ref(value: Any) -> str:
    return str(value.get("id") or "") if isinstance(value, Mapping) else ""


def _location(r: Request) -> str:
    body = r.body if isinstance(r.body, Mapping) else {}
    return str(body.get("location") or r.state.resource_groups.get(
        f"{r.subscription}/{r.resource_group}".lower()) or "eastus")


def _sku(body: Any) -> str:
    sku = body.get("sku") if isinstance(body, Mapping) else None
    return str(sku.get("name") or "Standard") if isinstance(sku, Mapping) else "Standard"


def _written(r: Request, payload: dict[str, Any], created: bool) -> Reply:
    features_of(r.state).version += 1
    return Reply(payload, 201 if created else 200)


# -- who holds what (computed from the NICs, as Azure's read-only back-references are) --------


def _holders(state: ArmState) -> dict[str, list[tuple[str, str, str]]]:
    """Referenced resource ID (lower) -> [(ipConfiguration ID, private address, subnet ID)]."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for nic in state.nics.values():
        for c in nic.ip_configs:
            held = (nic.ipconfig_id(c.name), str(c.address), c.subnet.id)
            pip = _ref(c.extra.get("publicIPAddress"))
            if pip:
                out.setdefault(pip.lower(), []).append(held)
            for pool in c.extra.get("loadBalancerBackendAddressPools") or ():
                if _ref(pool):
                    out.setdefault(_ref(pool).lower(), []).append(held)
    return out


# -- public IP addresses ----------------------------------------------------------------------


def public_ip_json(pip: PublicIp, state: ArmState) -> dict[str, Any]:
    props: dict[str, Any] = {"provisioningState": "Succeeded", "ipAddress": pip.address,
                             "publicIPAllocationMethod": "Static",
                             "publicIPAddressVersion": "IPv4", "idleTimeoutInMinutes": 4}
    held = _holders(state).get(pip.id.lower())
    if held:
        props["ipConfiguration"] = {"id": held[0][0]}
    out: dict[str, Any] = {"name": pip.name, "id": pip.id, "etag": pip.etag,
                           "type": "Microsoft.Network/publicIPAddresses",
                           "location": pip.location, "sku": {"name": pip.sku, "tier": "Regional"},
                           "properties": props}
    if pip.tags:
        out["tags"] = dict(pip.tags)
    return out


def _public_ip(r: Request, name: str) -> PublicIp:
    r.state.require_group(r.subscription, r.resource_group)
    found = features_of(r.state).public_ips.get(_id(r, "publicIPAddresses", name).lower())
    if found is None:
        raise _not_found("publicIPAddresses", name, r.resource_group)
    return found


def get_public_ip(r: Request) -> Reply:
    return Reply(public_ip_json(_public_ip(r, r.params["pip"]), r.state))


def put_public_ip(r: Request) -> Reply:
    r.state.require_group(r.subscription, r.resource_group)
    props = _body_props(r.body)
    pip_id = _id(r, "publicIPAddresses", r.params["pip"])
    known = features_of(r.state).public_ips
    existing = known.get(pip_id.lower())
    method = str(props.get("publicIPAllocationMethod") or "Static").capitalize()
    sku = _sku(r.body)
    if sku == "Standard" and method != "Static":
        raise ArmError(400, "StandardSkuPublicIPAddressesCannotBeDynamic",  # UNVERIFIED code
                       f"Standard SKU public IP address {pip_id} must be Static.")
    if existing is None:
        used = {p.address for p in known.values()} | {
            str(fe) for lb in features_of(r.state).load_balancers.values()
            for fe in lb.frontends.values() if "/" not in fe}
        first, last = (int(ipaddress.IPv4Address(a)) for a in PUBLIC_RANGE)
        free = next((str(ipaddress.IPv4Address(n)) for n in range(first, last + 1)
                     if str(ipaddress.IPv4Address(n)) not in used), None)
        if free is None:
            raise ArmError(400, "PublicIPCountLimitReached",
                           "Cannot create more public IP addresses in the emulated region.")
        existing = PublicIp(pip_id, r.params["pip"], _location(r), sku, free)
        known[pip_id.lower()] = existing
        created = True
    else:
        created = False
        existing.sku = sku
        existing.etag = new_etag()
    existing.tags = _tags(r.body)
    return _written(r, public_ip_json(existing, r.state), created)


def delete_public_ip(r: Request) -> Reply:
    pip_id = _id(r, "publicIPAddresses", r.params["pip"])
    held = _holders(r.state).get(pip_id.lower())
    if held:
        raise ArmError(400, "PublicIPAddressCannotBeDeleted",
                       f"Public IP address {pip_id} can not be deleted since it is still "
                       f"allocated to resource {held[0][0]}. In order to delete the public IP, "
                       "disassociate/detach the Public IP address from the resource.")
    if features_of(r.state).public_ips.pop(pip_id.lower(), None) is None:
        return Reply(None, 204)
    return _written(r, {}, False)


# -- load balancers ---------------------------------------------------------------------------


def load_balancer_json(lb: LoadBalancer, state: ArmState) -> dict[str, Any]:
    holders = _holders(state)

    def pool_id(name: str) -> str:
        return f"{lb.id}/backendAddressPools/{name}"

    def frontend_id(name: str) -> str:
        return f"{lb.id}/frontendIPConfigurations/{name}"

    return {
        "name": lb.name, "id": lb.id, "etag": lb.etag, "location": lb.location,
        **({"tags": dict(lb.tags)} if lb.tags else {}),
        "type": "Microsoft.Network/loadBalancers", "sku": {"name": lb.sku, "tier": "Regional"},
        "properties": {
            "provisioningState": "Succeeded",
            "frontendIPConfigurations": [
                {"name": n, "id": frontend_id(n),
                 "properties": {"publicIPAddress": {"id": pip}, "provisioningState": "Succeeded"}}
                for n, pip in lb.frontends.items()],
            "backendAddressPools": [
                {"name": n, "id": pool_id(n),
                 "properties": {"provisioningState": "Succeeded",
                                "backendIPConfigurations": [
                                    {"id": h[0]} for h in holders.get(pool_id(n).lower(), ())]}}
                for n in lb.pools],
            "loadBalancingRules": [
                {"name": rule.name, "id": f"{lb.id}/loadBalancingRules/{rule.name}",
                 "properties": {"frontendIPConfiguration": {"id": frontend_id(rule.frontend)},
                                "backendAddressPool": {"id": pool_id(rule.pool)},
                                "protocol": rule.protocol, "frontendPort": rule.frontend_port,
                                "backendPort": rule.backend_port,
                                "provisioningState": "Succeeded"}}
                for rule in lb.rules],
        },
    }


def _load_balancer(r: Request, name: str) -> LoadBalancer:
    r.state.require_group(r.subscription, r.resource_group)
    found = features_of(r.state).load_balancers.get(_id(r, "loadBalancers", name).lower())
    if found is None:
        raise _not_found("loadBalancers", name, r.resource_group)
    return found


def get_load_balancer(r: Request) -> Reply:
    return Reply(load_balancer_json(_load_balancer(r, r.params["lb"]), r.state))


def _last(ref: str, kind: str, lb_id: str) -> str:
    """The child name in ``<lb>/<kind>/<name>``, which must be a child of ``lb_id``."""
    prefix = f"{lb_id}/{kind}/".lower()
    if not ref.lower().startswith(prefix):
        raise ArmError(400, "InvalidResourceReference",
                       f"Resource {ref} referenced by resource {lb_id} was not found.")
    return ref[len(prefix):]


def put_load_balancer(r: Request) -> Reply:
    r.state.require_group(r.subscription, r.resource_group)
    props = _body_props(r.body)
    lb_id = _id(r, "loadBalancers", r.params["lb"])
    public_ips = features_of(r.state).public_ips
    frontends: dict[str, str] = {}
    for fe in props.get("frontendIPConfigurations") or ():
        pip = _ref((fe.get("properties") or {}).get("publicIPAddress"))
        if pip.lower() not in public_ips:
            raise ArmError(400, "InvalidResourceReference",
                           f"Resource {pip} referenced by resource {lb_id} was not found.")
        frontends[str(fe.get("name"))] = pip
    pools = [str(p.get("name")) for p in props.get("backendAddressPools") or ()]
    rules = []
    for rule in props.get("loadBalancingRules") or ():
        rp = rule.get("properties") or {}
        protocol = str(rp.get("protocol") or "Tcp")
        if protocol not in ("Tcp", "Udp"):
            raise ArmError(400, "InvalidRequestFormat",  # the emulator's limit, not Azure's
                           f"Load balancing rule {rule.get('name')}: protocol {protocol!r} is "
                           "not Tcp or Udp in the emulator.")
        rules.append(LbRule(
            str(rule.get("name")),
            _last(_ref(rp.get("frontendIPConfiguration")), "frontendIPConfigurations", lb_id),
            _last(_ref(rp.get("backendAddressPool")), "backendAddressPools", lb_id),
            protocol, int(rp.get("frontendPort") or 0), int(rp.get("backendPort") or 0)))
    known = features_of(r.state).load_balancers
    created = lb_id.lower() not in known
    known[lb_id.lower()] = LoadBalancer(lb_id, r.params["lb"], _location(r), _sku(r.body),
                                        frontends, pools, rules, tags=_tags(r.body))
    return _written(r, load_balancer_json(known[lb_id.lower()], r.state), created)


def _tags(body: Any) -> dict[str, str]:
    """The ``tags`` of a request body (a PUT replaces them all, as ARM's does)."""
    tags = body.get("tags") if isinstance(body, Mapping) else None
    return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, Mapping) else {}


def patch_public_ip_tags(r: Request) -> Reply:
    """``updateTags``: PATCH with ``{"tags": {...}}`` replaces the tags and nothing else."""
    pip = _public_ip(r, r.params["pip"])
    pip.tags, pip.etag = _tags(r.body), new_etag()
    return _written(r, public_ip_json(pip, r.state), False)


def patch_load_balancer_tags(r: Request) -> Reply:
    """``updateTags`` of a load balancer."""
    lb = _load_balancer(r, r.params["lb"])
    lb.tags, lb.etag = _tags(r.body), new_etag()
    return _written(r, load_balancer_json(lb, r.state), False)


def delete_load_balancer(r: Request) -> Reply:
    lb_id = _id(r, "loadBalancers", r.params["lb"])
    holders = _holders(r.state)
    lb = features_of(r.state).load_balancers.get(lb_id.lower())
    if lb is None:
        return Reply(None, 204)
    for pool in lb.pools:
        held = holders.get(f"{lb_id}/backendAddressPools/{pool}".lower())
        if held:
            raise ArmError(400, "InUseBackendAddressPoolCannotBeDeleted",  # UNVERIFIED code
                           f"Backend address pool {lb_id}/backendAddressPools/{pool} is in use "
                           f"by {held[0][0]} and cannot be deleted.")
    del features_of(r.state).load_balancers[lb_id.lower()]
    return _written(r, {}, False)


# -- network security groups --------------------------------------------------------------


def _rule_from_json(raw: Mapping[str, Any]) -> SecurityRule:
    name = str(raw.get("name") or "")
    p = raw.get("properties") or {}

    def many(one: str, several: str) -> tuple[str, ...]:
        values = [str(v) for v in p.get(several) or ()]
        return tuple(values or [str(p.get(one) or "*")])

    try:
        priority = int(str(p.get("priority")))
    except (TypeError, ValueError):
        raise ArmError(400, "SecurityRuleInvalidPriority",
                       f"Security rule {name} has no valid priority.") from None
    if not 100 <= priority <= 4096:
        raise ArmError(400, "SecurityRuleInvalidPriority",
                       f"Security rule {name} has invalid Priority. Value provided: {priority}. "
                       "Allowed range 100-4096.")
    direction, access = str(p.get("direction") or ""), str(p.get("access") or "")
    protocol = str(p.get("protocol") or "*")
    if direction not in ("Inbound", "Outbound") or access not in ("Allow", "Deny") or \
            protocol not in ("Tcp", "Udp", "Icmp", "*"):
        raise ArmError(400, "InvalidRequestFormat",
                       f"Security rule {name}: direction, access or protocol is not valid.")
    rule = SecurityRule(name, priority, direction, access, protocol,
                        many("sourceAddressPrefix", "sourceAddressPrefixes"),
                        many("sourcePortRange", "sourcePortRanges"),
                        many("destinationAddressPrefix", "destinationAddressPrefixes"),
                        many("destinationPortRange", "destinationPortRanges"))
    for prefix in (*rule.sources, *rule.destinations):
        if prefix != "*" and prefix not in SERVICE_TAGS:
            try:
                ipaddress.ip_network(prefix, strict=False)
            except ValueError:
                raise ArmError(400, "SecurityRuleParameterContainsUnsupportedValue",
                               f"Security rule parameter prefix {prefix!r} of rule {name} is "
                               "not a CIDR or a supported service tag.") from None
    return rule


def _rule_json(nsg: Nsg, rule: SecurityRule, default: bool = False) -> dict[str, Any]:
    kind = "defaultSecurityRules" if default else "securityRules"
    props: dict[str, Any] = {"priority": rule.priority, "direction": rule.direction,
                             "access": rule.access, "protocol": rule.protocol,
                             "provisioningState": "Succeeded"}
    for one, several, values in (("sourceAddressPrefix", "sourceAddressPrefixes", rule.sources),
                                 ("sourcePortRange", "sourcePortRanges", rule.source_ports),
                                 ("destinationAddressPrefix", "destinationAddressPrefixes",
                                  rule.destinations),
                                 ("destinationPortRange", "destinationPortRanges",
                                  rule.destination_ports)):
        if len(values) == 1:
            props[one], props[several] = values[0], []
        else:
            props[several] = list(values)
    return {"name": rule.name, "id": f"{nsg.id}/{kind}/{rule.name}", "etag": nsg.etag,
            "type": f"Microsoft.Network/networkSecurityGroups/{kind}", "properties": props}


def default_rules() -> tuple[SecurityRule, ...]:
    return tuple(SecurityRule(n, p, d, a, "*", (s,), ("*",), (t,), ("*",))
                 for n, p, d, a, s, t in DEFAULT_RULES)


def nsg_json(nsg: Nsg, state: ArmState) -> dict[str, Any]:
    features = features_of(state)
    nics = [{"id": n.id} for n in state.nics.values()
            if _ref(n.extra.get("networkSecurityGroup")).lower() == nsg.id.lower()]
    subnets = [{"id": state.subnets[s].id} for s, g in features.subnet_nsgs.items()
               if g.lower() == nsg.id.lower() and s in state.subnets]
    return {"name": nsg.name, "id": nsg.id, "etag": nsg.etag, "location": nsg.location,
            "type": "Microsoft.Network/networkSecurityGroups",
            "properties": {"provisioningState": "Succeeded",
                           "securityRules": [_rule_json(nsg, r) for r in nsg.rules.values()],
                           "defaultSecurityRules": [_rule_json(nsg, r, True)
                                                    for r in default_rules()],
                           "networkInterfaces": nics, "subnets": subnets}}


def _nsg(r: Request, name: str) -> Nsg:
    r.state.require_group(r.subscription, r.resource_group)
    found = features_of(r.state).nsgs.get(_id(r, "networkSecurityGroups", name).lower())
    if found is None:
        raise _not_found("networkSecurityGroups", name, r.resource_group)
    return found


def _check_rules(rules: Sequence[SecurityRule], nsg_id: str) -> None:
    seen: dict[tuple[str, int], str] = {}
    for rule in rules:
        other = seen.setdefault((rule.direction, rule.priority), rule.name)
        if other != rule.name:
            raise ArmError(400, "SecurityRuleConflict",
                           f"Security rule {rule.name} conflicts with rule {other}. Rules cannot "
                           "have the same Priority and Direction. (network security group "
                           f"{nsg_id})")


def get_nsg(r: Request) -> Reply:
    return Reply(nsg_json(_nsg(r, r.params["nsg"]), r.state))


def put_nsg(r: Request) -> Reply:
    r.state.require_group(r.subscription, r.resource_group)
    props = _body_props(r.body)
    nsg_id = _id(r, "networkSecurityGroups", r.params["nsg"])
    rules = [_rule_from_json(x) for x in props.get("securityRules") or ()]
    _check_rules(rules, nsg_id)
    known = features_of(r.state).nsgs
    created = nsg_id.lower() not in known
    known[nsg_id.lower()] = Nsg(nsg_id, r.params["nsg"], _location(r),
                                {rule.name: rule for rule in rules})
    return _written(r, nsg_json(known[nsg_id.lower()], r.state), created)


def delete_nsg(r: Request) -> Reply:
    nsg = features_of(r.state).nsgs.get(_id(r, "networkSecurityGroups", r.params["nsg"]).lower())
    if nsg is None:
        return Reply(None, 204)
    used = nsg_json(nsg, r.state)["properties"]
    if used["networkInterfaces"] or used["subnets"]:
        held = (used["networkInterfaces"] or used["subnets"])[0]["id"]
        raise ArmError(400, "InUseNetworkSecurityGroupCannotBeDeleted",
                       f"Network security group {nsg.id} cannot be deleted because it is in use "
                       f"by the following resources: {held}.")
    del features_of(r.state).nsgs[nsg.id.lower()]
    return _written(r, {}, False)


def get_security_rule(r: Request) -> Reply:
    nsg = _nsg(r, r.params["nsg"])
    rule = next((x for x in nsg.rules.values() if x.name.lower() == r.params["rule"].lower()),
                None)
    if rule is None:
        raise _not_found(f"networkSecurityGroups/{nsg.name}/securityRules", r.params["rule"],
                         r.resource_group)
    return Reply(_rule_json(nsg, rule))


def put_security_rule(r: Request) -> Reply:
    nsg = _nsg(r, r.params["nsg"])
    raw = dict(r.body) if isinstance(r.body, Mapping) else {}
    rule = _rule_from_json({**raw, "name": r.params["rule"]})
    rules = {k: v for k, v in nsg.rules.items() if k.lower() != rule.name.lower()}
    created = len(rules) == len(nsg.rules)
    _check_rules([*rules.values(), rule], nsg.id)
    nsg.rules = {**rules, rule.name: rule}
    nsg.etag = new_etag()
    return _written(r, _rule_json(nsg, rule), created)


def delete_security_rule(r: Request) -> Reply:
    nsg = _nsg(r, r.params["nsg"])
    before = len(nsg.rules)
    nsg.rules = {k: v for k, v in nsg.rules.items() if k.lower() != r.params["rule"].lower()}
    if len(nsg.rules) == before:
        return Reply(None, 204)
    nsg.etag = new_etag()
    return _written(r, {}, False)


# -- what NIC and subnet writes may reference ---------------------------------------------


def put_nic(r: Request) -> Reply:
    """The NIC write, refused as Azure refuses it when an ipConfiguration names a public IP
    or backend pool it cannot carry, or the NIC an NSG that does not exist."""
    nic_id = _id(r, "networkInterfaces", r.params["nic"])
    props = _body_props(r.body)
    features = features_of(r.state)
    nsg = _ref(props.get("networkSecurityGroup"))
    if nsg and nsg.lower() not in features.nsgs:
        raise _missing(nsg, nic_id)
    _check_linked_access(r, nic_id, props)
    holders = _holders(r.state)
    seen: dict[str, str] = {}
    for config in props.get("ipConfigurations") or ():
        name = str(config.get("name") or "") if isinstance(config, Mapping) else ""
        me = f"{nic_id}/ipConfigurations/{name}"
        cp = config.get("properties") or {} if isinstance(config, Mapping) else {}
        pip = _ref(cp.get("publicIPAddress"))
        if pip:
            if pip.lower() not in features.public_ips:
                raise _missing(pip, nic_id)
            others = [h for h, _, _ in holders.get(pip.lower(), ()) if h.lower() != me.lower()]
            other = seen.get(pip.lower()) or next(
                (h for h in others if not h.lower().startswith(nic_id.lower() + "/")), None)
            if other is not None:
                raise ArmError(400, "PublicIPAddressInUse",
                               f"Resource {me} is referencing public IP address {pip} that is "
                               f"already allocated to resource {other}.")
            seen[pip.lower()] = me
        for pool in cp.get("loadBalancerBackendAddressPools") or ():
            pool_id = _ref(pool)
            lb_id, _, pool_name = pool_id.rpartition("/backendAddressPools/")
            lb = features.load_balancers.get(lb_id.lower())
            if lb is None or pool_name.lower() not in {p.lower() for p in lb.pools}:
                raise _missing(pool_id, nic_id)
            if lb.sku != "Standard":
                raise ArmError(400, BASIC_POOL_CODE,
                               f"IP configuration {me} references backend address pool "
                               f"{pool_id} of Basic SKU load balancer {lb_id}; pods' "
                               "ipConfigurations can join Standard SKU load balancers only.")
    reply = resources.put_nic(r)
    features.version += 1
    return reply


#: the join action ARM checks per kind of reference on a NIC's ipConfiguration
_JOIN_ACTIONS = (("publicIPAddress", "Microsoft.Network/publicIPAddresses/join/action"),
                 ("loadBalancerBackendAddressPools",
                  "Microsoft.Network/loadBalancers/backendAddressPools/join/action"))


def _check_linked_access(r: Request, nic_id: str, props: Mapping[str, Any]) -> None:
    """403 LinkedAuthorizationFailed when the write references a resource the caller may not
    join, or one in a subscription outside this (emulated) tenant."""
    known = {key.split("/", 1)[0] for key in r.state.resource_groups}
    denied = features_of(r.state).join_denied
    refused: dict[str, list[str]] = {}
    for config in props.get("ipConfigurations") or ():
        cp = (config.get("properties") or {}) if isinstance(config, Mapping) else {}
        for key, action in _JOIN_ACTIONS:
            value = cp.get(key)
            for ref in (value if isinstance(value, list) else [value]):
                linked = _ref(ref)
                if not linked:
                    continue
                parts = linked.strip("/").split("/")
                subscription = parts[1] if len(parts) > 1 else ""
                if subscription.lower() not in known:
                    raise ArmError(403, "LinkedAuthorizationFailed",
                                   "The client has permission to perform action "
                                   "'Microsoft.Network/networkInterfaces/write' on scope "
                                   f"'{nic_id}', however the current tenant "
                                   f"'{EMULATED_TENANT}' is not authorized to access linked "
                                   f"subscription '{subscription}'.")
                lowered = linked.lower()
                if any(lowered == d or lowered.startswith(d + "/") for d in denied):
                    refused.setdefault(action, []).append(linked)
    if refused:
        action, scopes = next(iter(refused.items()))
        raise ArmError(403, "LinkedAuthorizationFailed",
                       f"The client '{EMULATED_CLIENT}' with object id '{EMULATED_CLIENT}' has "
                       "permission to perform action 'Microsoft.Network/networkInterfaces/write' "
                       f"on scope '{nic_id}'; however, it does not have permission to perform "
                       f"action '{action}' on the linked scope(s) '{','.join(scopes)}' or the "
                       "linked scope(s) are invalid.")


def _missing(ref: str, by: str) -> ArmError:
    return ArmError(400, "InvalidResourceReference",
                    f"Resource {ref} referenced by resource {by} was not found. Please make sure "
                    "that the referenced resource exists, and that both resources are in the "
                    "same region.")


def get_subnet(r: Request) -> Reply:
    reply = resources.get_subnet(r)
    nsg = features_of(r.state).subnet_nsgs.get(str(reply.payload["id"]).lower())
    if nsg:
        reply.payload["properties"]["networkSecurityGroup"] = {"id": nsg}
    return reply


def put_subnet(r: Request) -> Reply:
    """A subnet write: the emulator lets it change the subnet's NSG and nothing else."""
    subnet = r.state.subnet(r.subscription, r.resource_group, r.params["vnet"],
                            r.params["subnet"])
    props = _body_props(r.body)
    prefix = props.get("addressPrefix")
    if prefix is not None and str(prefix) != str(subnet.network):
        raise ArmError(400, "InUseSubnetCannotBeUpdated",  # the emulator's limit
                       f"Subnet {subnet.id}: the emulator changes only networkSecurityGroup.")
    features = features_of(r.state)
    nsg = _ref(props.get("networkSecurityGroup"))
    if nsg and nsg.lower() not in features.nsgs:
        raise _missing(nsg, subnet.id)
    if nsg:
        features.subnet_nsgs[subnet.id.lower()] = nsg
    else:
        features.subnet_nsgs.pop(subnet.id.lower(), None)
    features.version += 1
    return get_subnet(r)


# -- what the SDN enforces ------------------------------------------------------------------


@dataclass(frozen=True)
class Balancer:
    """One load-balancing rule: connections to ``frontend:port`` spread over ``members``."""

    frontend: str
    protocol: str
    port: int
    backend_port: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class GuardedAddress:
    """A NIC address and the NSGs that apply to it: the subnet's, then the NIC's."""

    address: str
    nsgs: tuple[tuple[SecurityRule, ...], ...]


@dataclass(frozen=True)
class FabricPolicy:
    """What the simulated SDN enforces besides routing: 1:1 NAT, load balancing, NSGs."""

    #: (public address, private address)
    nat: tuple[tuple[str, str], ...] = ()
    balancers: tuple[Balancer, ...] = ()
    guarded: tuple[GuardedAddress, ...] = ()
    #: every address a public IP or frontend answers on
    public_addresses: tuple[str, ...] = ()
    #: the VNets' address space (the VirtualNetwork service tag, besides connected networks)
    vnet_space: tuple[str, ...] = ()


def fabric_policy(state: ArmState) -> FabricPolicy:
    """What the SDN must do now, from the NICs, public IPs, load balancers and NSGs (pure)."""
    features = features_of(state)
    if not (features.public_ips or features.nsgs):
        return FabricPolicy()
    holders = _holders(state)
    nat = []
    for held in features.public_ips.values():
        for _, private, _ in holders.get(held.id.lower(), ())[:1]:
            nat.append((held.address, private))
    balancers = []
    for lb in features.load_balancers.values():
        for rule in lb.rules:
            pip = features.public_ips.get(lb.frontends.get(rule.frontend, "").lower())
            members = tuple(sorted(
                private for _, private, _ in
                holders.get(f"{lb.id}/backendAddressPools/{rule.pool}".lower(), ())))
            if pip is not None and members:
                balancers.append(Balancer(pip.address, rule.protocol, rule.frontend_port,
                                          rule.backend_port, members))
    guarded = []
    for nic in state.nics.values():
        nic_nsg = features.nsgs.get(_ref(nic.extra.get("networkSecurityGroup")).lower())
        for c in nic.ip_configs:
            subnet_nsg = features.nsgs.get(
                features.subnet_nsgs.get(c.subnet.id.lower(), "").lower())
            applied = tuple(_ordered(g) for g in (subnet_nsg, nic_nsg) if g is not None)
            if applied:
                guarded.append(GuardedAddress(str(c.address), applied))
    space = tuple(sorted({p for v in state.vnets.values() for p in v.address_space}))
    return FabricPolicy(tuple(sorted(nat)), tuple(balancers),
                        tuple(sorted(guarded, key=lambda g: g.address)),
                        tuple(sorted({p.address for p in features.public_ips.values()})), space)


def _ordered(nsg: Nsg) -> tuple[SecurityRule, ...]:
    return tuple(sorted((*nsg.rules.values(), *default_rules()), key=lambda x: x.priority))


def policy_key(state: ArmState) -> tuple[int, tuple[str, ...]]:
    """Changes whenever the policy may have (cheap: versions and NIC etags, no rendering)."""
    features = features_of(state)
    if not (features.public_ips or features.nsgs):
        return (features.version, ())
    return (features.version, tuple(sorted(n.etag for n in state.nics.values())))


PolicyCallback = Callable[[FabricPolicy], Awaitable[None] | None]


class PolicyFeed:
    """Tells subscribers (the fabric) the policy whenever it changes; ``lock`` is the
    emulator's state lock."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._callbacks: list[PolicyCallback] = []
        self._key: object = None
        self._last = FabricPolicy()

    def subscribe(self, callback: PolicyCallback) -> Callable[[], None]:
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    async def refresh(self, state: ArmState) -> None:
        with self._lock:
            key = policy_key(state)
            if key == self._key:
                return
            self._key = key
            policy = fabric_policy(state)
            if policy == self._last:
                return
            self._last = policy
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                result = callback(policy)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("event=policy_callback_failed")
