"""Pure conversions between ARM's JSON (or the SDK's models, which are mappings of the same JSON)
and the port's values, plus the one edit azure-cni makes to a NIC."""

from __future__ import annotations

import copy
import functools
import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from azure_cni.cloud.port import (
    CloudError,
    FeatureEdit,
    IPConfiguration,
    ListedNic,
    NewIPConfiguration,
    NicLimitExceeded,
    NicSnapshot,
    NotFound,
    SubnetInfo,
)

#: "Private IP addresses per network interface: 256" (Azure networking limits)
MAX_IP_CONFIGURATIONS = 256
#: the Network RP api-version azure-mgmt-network 33.1 uses (arm-api.md §0); requests the
#: adapter builds itself use it too (a test keeps it equal to the SDK's)
NETWORK_API_VERSION = "2026-03-01"
#: network, gateway (.1), two DNS (.2, .3) and broadcast: never assignable in an Azure subnet
RESERVED_PER_SUBNET = 5


def _props(resource: Mapping[str, Any]) -> Mapping[str, Any]:
    props = resource.get("properties")
    return props if isinstance(props, Mapping) else {}


def _ref_id(value: Any) -> str:
    return str(value.get("id") or "") if isinstance(value, Mapping) else ""


def parse_ip_configuration(ipc: Mapping[str, Any]) -> IPConfiguration:
    props = _props(ipc)
    # a block reads "<address>/<length>" (azure-features.md §1); the length is also its own
    # property, which a VMSS VM model returns without the CIDR form
    address, _, cidr_length = str(props.get("privateIPAddress") or "").partition("/")
    length = props.get("privateIPAddressPrefixLength") or cidr_length or None
    return IPConfiguration(
        name=str(ipc.get("name") or ""),
        address=address or None,
        primary=bool(props.get("primary")),
        provisioning_state=str(props.get("provisioningState") or ""),
        subnet_id=_ref_id(props.get("subnet")),
        prefix_length=int(length) if length is not None else None,
        public_ip_id=_ref_id(props.get("publicIPAddress")),
        backend_pool_ids=tuple(_ref_id(p) for p in props.get("loadBalancerBackendAddressPools")
                               or () if _ref_id(p)),
    )


def parse_nic(nic: Mapping[str, Any]) -> NicSnapshot:
    """A NicSnapshot from a NetworkInterface (SDK model or its JSON), keeping the JSON text as
    its ``document``."""
    props = _props(nic)
    configs = props.get("ipConfigurations") or ()
    return NicSnapshot(
        id=str(nic.get("id") or ""),
        name=str(nic.get("name") or ""),
        etag=str(nic.get("etag") or ""),
        location=str(nic.get("location") or ""),
        vm_id=_ref_id(props.get("virtualMachine")),
        ip_configurations=tuple(parse_ip_configuration(c) for c in configs),
        provisioning_state=str(props.get("provisioningState") or "Succeeded"),
        primary_nic=props.get("primary") is not False,
        mac_address=str(props.get("macAddress") or ""),
        document=json.dumps(nic, separators=(",", ":"), default=_model_json).encode(),
    )


def listed_nic(nic: Mapping[str, Any]) -> ListedNic:
    """A NIC of a listing page: its id, VM and etag read at once, ``parse_nic`` deferred."""
    return ListedNic(id=str(nic.get("id") or ""),
                     vm_id=_ref_id(_props(nic).get("virtualMachine")),
                     etag=str(nic.get("etag") or ""),
                     parse=functools.partial(parse_nic, nic))


def settled_nic(put_answer: Mapping[str, Any]) -> NicSnapshot | None:
    """The NIC a PUT answered, once its long-running operation has succeeded: the answer with
    its provisioning states ``Succeeded``. None when the answer lacks an address (the NIC must
    then be read). The snapshot has no ``document``: its etag is the one of the PUT's answer,
    not the settled NIC's, so no write may start from it."""
    nic = json.loads(json.dumps(put_answer, default=_model_json))
    props = nic.setdefault("properties", {})
    for config in props.get("ipConfigurations") or ():
        config_props = config.setdefault("properties", {})
        if not config_props.get("privateIPAddress"):
            return None
        if str(config_props.get("provisioningState") or "").lower() == "updating":
            config_props["provisioningState"] = "Succeeded"
    if str(props.get("provisioningState") or "").lower() == "updating":
        props["provisioningState"] = "Succeeded"
    return replace(parse_nic(nic), document=None)


def _model_json(value: Any) -> Any:
    """The JSON of an SDK model nested in a mapping (they are mappings with ``as_dict``)."""
    as_dict = getattr(value, "as_dict", None)
    if as_dict is None:
        raise TypeError(f"{type(value).__name__} is not JSON")
    return as_dict()


def parse_vm_nic_ids(vm: Mapping[str, Any]) -> list[str]:
    """The resource IDs of a VM's network interfaces (``networkProfile``), primary first."""
    profile = _props(vm).get("networkProfile") or {}
    nics = profile.get("networkInterfaces") or () if isinstance(profile, Mapping) else ()
    refs = [n for n in nics if isinstance(n, Mapping) and n.get("id")]
    if not refs:
        raise NotFound(f"virtual machine {vm.get('id') or vm.get('name')} has no network interface",
                       code="NoNetworkInterface")
    refs.sort(key=lambda ref: not _props(ref).get("primary"))
    return [str(ref["id"]) for ref in refs]


def parse_vm_primary_nic_id(vm: Mapping[str, Any]) -> str:
    """The resource ID of a VM's primary network interface (the only one, or the one marked)."""
    ids = parse_vm_nic_ids(vm)
    if len(ids) == 1:
        return ids[0]
    profile = _props(vm).get("networkProfile") or {}
    if any(_props(ref).get("primary") for ref in profile.get("networkInterfaces") or ()):
        return ids[0]
    raise CloudError(f"virtual machine {vm.get('id') or vm.get('name')} has {len(ids)} network "
                     "interfaces and none is marked primary", code="NoPrimaryNetworkInterface")


def usable_addresses(cidr: str) -> int:
    """Addresses of an IPv4 subnet Azure can assign (all but the 5 it reserves)."""
    network = ipaddress.ip_network(cidr, strict=False)
    return max(0, network.num_addresses - RESERVED_PER_SUBNET)


def parse_subnet(subnet: Mapping[str, Any], vnet_address_space: Sequence[str]) -> SubnetInfo:
    """SubnetInfo from a Subnet; free is None when Azure leaves ``ipConfigurations`` out."""
    props = _props(subnet)
    cidr = props.get("addressPrefix") or next(iter(props.get("addressPrefixes") or ()), None)
    if not cidr:
        raise CloudError(f"subnet {subnet.get('id')} has no address prefix", code="NoAddressPrefix")
    # Azure omits the list for subnets with very many ipConfigurations (Cilium parseSubnet)
    used = props.get("ipConfigurations")
    free = None if used is None else max(0, usable_addresses(str(cidr)) - len(used))
    return SubnetInfo(id=str(subnet.get("id") or ""), cidr=str(cidr),
                      vnet_address_space=tuple(str(p) for p in vnet_address_space),
                      free_addresses=free)


#: what a reference (an object holding only an ``id``) becomes in :func:`load_collapsed`
REFERENCE: Mapping[str, Any] = {"id": ""}


def _collapse_reference(pairs: list[tuple[str, Any]]) -> Any:
    if len(pairs) == 1 and pairs[0][0] == "id":
        return REFERENCE
    return dict(pairs)


def load_collapsed(body: bytes) -> Any:
    """ARM JSON with every bare reference (``{"id": ...}``) replaced, as it is parsed, by one
    shared object: what remains of a subnet holding 45,000 ipConfigurations is a list of 45,000
    pointers to it, instead of 45,000 dicts and their IDs (about 20 MB), and it still counts."""
    return json.loads(body, object_pairs_hook=_collapse_reference)


def parse_vnet_address_space(vnet: Mapping[str, Any]) -> tuple[str, ...]:
    space = _props(vnet).get("addressSpace") or {}
    return tuple(str(p) for p in space.get("addressPrefixes") or ())


@dataclass(frozen=True)
class NicEdit:
    """What one NIC write changes, and the NIC body to PUT."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    body: dict[str, Any]
    #: existing ipConfigurations whose public IP or backend pools this write changes
    featured: tuple[str, ...] = ()


def _check_request(add: Sequence[NewIPConfiguration], remove: Sequence[str]) -> None:
    wanted: dict[str, NewIPConfiguration] = {}
    for new in add:
        seen = wanted.setdefault(new.name.lower(), new)
        if seen != new:
            raise ValueError(f"ipConfiguration {new.name!r} is to be added twice, "
                             f"at {seen.address} and at {new.address}")
    both = wanted.keys() & {n.lower() for n in remove}
    if both:
        raise ValueError(f"ipConfigurations {sorted(both)} are both added and removed")


def edit_ip_configurations(
    nic: Mapping[str, Any],
    add: Sequence[NewIPConfiguration],
    remove: Sequence[str],
    *,
    copy_application_security_groups: bool,
    copy_load_balancer_pools: bool,
    features: Mapping[str, FeatureEdit] | None = None,
) -> NicEdit | None:
    """The NIC with ``add`` appended and ``remove`` dropped, or None when nothing changes.

    ``features`` edits the public IP and backend pools of named existing ipConfigurations as
    they are in ``nic`` (the primary's are never touched; unknown names are ignored).

    Names compare case-insensitively, as ARM's do. A name in ``add`` that exists is kept as
    it is; a name in ``remove`` that is gone is ignored; removing the primary is refused.
    New ipConfigurations join the primary's subnet, Dynamic unless an address is given.
    """
    _check_request(add, remove)
    body = copy.deepcopy(dict(nic))
    props = body.setdefault("properties", {})
    configs: list[dict[str, Any]] = [dict(c) for c in props.get("ipConfigurations") or ()]
    by_name = {str(c.get("name") or "").lower(): c for c in configs}
    primary = next((c for c in configs if _props(c).get("primary")), None)
    if primary is None:
        raise CloudError(f"NIC {nic.get('id')} has no primary ipConfiguration",
                         code="NoPrimaryIpConfiguration")

    doomed = {n.lower() for n in remove if n.lower() in by_name}
    if str(primary.get("name") or "").lower() in doomed:
        raise CloudError(f"ipConfiguration {primary.get('name')!r} is the primary of NIC "
                         f"{nic.get('id')}; azure-cni never removes it",
                         code="IpConfigDeleteNotSupported")
    fresh: list[NewIPConfiguration] = []
    for new in add:
        if new.name.lower() not in by_name and all(f.name.lower() != new.name.lower()
                                                     for f in fresh):
            fresh.append(new)
    featured = _set_features(configs, features or {}, doomed,
                             parse_ip_configuration(primary).backend_pool_ids)
    if not fresh and not doomed and not featured:
        return None

    kept = [c for c in configs if str(c.get("name") or "").lower() not in doomed]
    if len(kept) + len(fresh) > MAX_IP_CONFIGURATIONS:
        raise NicLimitExceeded(
            f"NIC {nic.get('id')} has {len(kept)} ipConfigurations; adding {len(fresh)} would "
            f"exceed Azure's limit of {MAX_IP_CONFIGURATIONS}", code="NicIpConfigurationLimit")

    primary_props = _props(primary)
    template: dict[str, Any] = {
        "subnet": {"id": _ref_id(primary_props.get("subnet"))},
        "primary": False,
        "privateIPAddressVersion": "IPv4",
    }
    if copy_application_security_groups and primary_props.get("applicationSecurityGroups"):
        template["applicationSecurityGroups"] = [
            {"id": _ref_id(g)} for g in primary_props["applicationSecurityGroups"]]
    if copy_load_balancer_pools and primary_props.get("loadBalancerBackendAddressPools"):
        template["loadBalancerBackendAddressPools"] = [
            {"id": _ref_id(p)} for p in primary_props["loadBalancerBackendAddressPools"]]
    for new in fresh:
        ipc_props = copy.deepcopy(template)
        if new.address is None:
            ipc_props["privateIPAllocationMethod"] = "Dynamic"
        else:
            ipc_props["privateIPAllocationMethod"] = "Static"
            ipc_props["privateIPAddress"] = new.address
        if new.prefix_length is not None:
            ipc_props["privateIPAddressPrefixLength"] = new.prefix_length
        kept.append({"name": new.name, "properties": ipc_props})

    props["ipConfigurations"] = kept
    removed = tuple(str(c.get("name")) for c in configs
                    if str(c.get("name") or "").lower() in doomed)
    return NicEdit(added=tuple(f.name for f in fresh), removed=removed, body=body,
                   featured=featured)


def _set_features(configs: list[dict[str, Any]], features: Mapping[str, FeatureEdit],
                  doomed: set[str], node_pools: Sequence[str]) -> tuple[str, ...]:
    """Make ``features``' edits to the named secondary ipConfigurations of ``configs`` (in
    place); returns the names that changed."""
    wanted = {name.lower(): f for name, f in features.items()}
    changed = []
    for i, config in enumerate(configs):
        name = str(config.get("name") or "")
        edit = wanted.get(name.lower())
        props = dict(_props(config))
        if edit is None or name.lower() in doomed or props.get("primary"):
            continue
        current = parse_ip_configuration(config).features
        feature = edit.applied(current, node_pools)
        if current.same(feature):
            continue
        if feature.public_ip:
            props["publicIPAddress"] = {"id": feature.public_ip}
        else:
            props.pop("publicIPAddress", None)
        if feature.backend_pools:
            props["loadBalancerBackendAddressPools"] = [{"id": p} for p in feature.backend_pools]
        else:
            props.pop("loadBalancerBackendAddressPools", None)
        configs[i] = {**config, "properties": props}
        changed.append(name)
    return tuple(changed)
