"""One function per ARM operation the emulator serves; ``routes.ROUTES`` maps paths to them.

Each takes a ``Request`` (the routed request, the emulated world and the knobs) and returns
a ``Reply``. They run under the emulator's state lock and do no I/O; the rules a write must
obey live in ``azure_cni_sim.armstate``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from azure_cni_sim.arm.config import ArmConfig
from azure_cni_sim.armstate import (
    NETWORK_API_VERSION,
    ArmError,
    ArmState,
    NicChange,
    Operation,
    check_ip_json,
    new_etag,
    nic_json,
    subnet_json,
    usages_json,
    vm_json,
    vnet_json,
)


@dataclass(frozen=True)
class Request:
    """A routed ARM request and what serving it may use."""

    method: str
    path: str
    host: str
    params: Mapping[str, str]
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: Any
    state: ArmState
    config: ArmConfig
    #: (outcome, code, message) if a fault plan says this write's operation must fail
    operation_failure: Callable[[str], tuple[str, str, str] | None] = lambda path: None
    #: who sent it (the bearer token's principal)
    principal: str = ""

    @property
    def subscription(self) -> str:
        return self.params["subscription"]

    @property
    def resource_group(self) -> str:
        return self.params["resource_group"]

    def operation_url(self, op: Operation) -> str:
        return (f"https://{self.host}/subscriptions/{op.subscription}/providers/"
                f"Microsoft.Network/locations/{op.location}/operations/{op.id}"
                f"?api-version={NETWORK_API_VERSION}")


@dataclass
class Reply:
    payload: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    #: NIC address changes this request committed (announced after the lock is released)
    changes: list[NicChange] = field(default_factory=list)


# -- reads ------------------------------------------------------------------------------------


def get_vm(r: Request) -> Reply:
    return Reply(vm_json(r.state.vm(r.subscription, r.resource_group, r.params["vm"])))


def get_vnet(r: Request) -> Reply:
    vnet = r.state.vnet(r.subscription, r.resource_group, r.params["vnet"])
    return Reply(vnet_json(vnet, r.state, r.config.subnet_list_limit))


def get_subnet(r: Request) -> Reply:
    subnet = r.state.subnet(r.subscription, r.resource_group, r.params["vnet"],
                            r.params["subnet"])
    return Reply(subnet_json(subnet, r.state, r.config.subnet_list_limit))


def list_usages(r: Request) -> Reply:
    vnet = r.state.vnet(r.subscription, r.resource_group, r.params["vnet"])
    return Reply({"value": usages_json(vnet)})


def check_ip_address(r: Request) -> Reply:
    vnet = r.state.vnet(r.subscription, r.resource_group, r.params["vnet"])
    return Reply(check_ip_json(vnet, r.query.get("ipAddress", "")))


def list_nics(r: Request) -> Reply:
    """The resource group's NICs, ``list_page_size`` per page, the rest behind ``nextLink``."""
    r.state.require_group(r.subscription, r.resource_group)
    prefix = f"/subscriptions/{r.subscription}/resourcegroups/{r.resource_group}/".lower()
    # scale-set instances' NICs are Compute's: NRP lists them only under their scale set
    keys = sorted(key for key in r.state.nics if key.startswith(prefix)
                  and "/providers/microsoft.network/" in key)
    try:
        start = max(0, int(r.query.get("$skipToken", "0")))
    except ValueError:
        raise ArmError(400, "InvalidSkipToken", "The $skipToken is not valid.") from None
    size = max(1, r.config.list_page_size)
    page = keys[start:start + size]
    body: dict[str, Any] = {"value": [nic_json(r.state.nics[key]) for key in page]}
    if start + size < len(keys):
        body["nextLink"] = (f"https://{r.host}{r.path}?api-version="
                            f"{r.query.get('api-version', NETWORK_API_VERSION)}"
                            f"&$skipToken={start + size}")
    return Reply(body)


def get_nic(r: Request) -> Reply:
    return Reply(nic_json(r.state.nic(r.subscription, r.resource_group, r.params["nic"])))


def list_ip_configurations(r: Request) -> Reply:
    nic = r.state.nic(r.subscription, r.resource_group, r.params["nic"])
    return Reply({"value": nic_json(nic)["properties"]["ipConfigurations"]})


def get_ip_configuration(r: Request) -> Reply:
    nic = r.state.nic(r.subscription, r.resource_group, r.params["nic"])
    wanted = r.params["ipconfig"].lower()
    found = next((c for c in nic_json(nic)["properties"]["ipConfigurations"]
                  if c["name"].lower() == wanted), None)
    if found is None:
        raise ArmError(404, "NotFound", f"Resource {r.path} not found.")
    return Reply(found)


def get_operation(r: Request) -> Reply:
    op, change = r.state.poll(r.params["operation"])
    body: dict[str, Any] = {"id": op.id, "name": op.id, "status": op.status}
    if op.status in ("Failed", "Canceled") and op.error is not None:
        body["error"] = {"code": op.error[0], "message": op.error[1]}
    headers = {}
    if op.status == "InProgress" and r.config.poll_retry_after is not None:
        headers["Retry-After"] = f"{r.config.poll_retry_after:g}"
    return Reply(body, headers=headers, changes=[change] if change else [])


# -- writes -----------------------------------------------------------------------------------


def put_nic(r: Request) -> Reply:
    """Accept a NIC write as a long-running operation (200/201 + Azure-AsyncOperation)."""
    nic, created = r.state.put_nic(
        r.subscription, r.resource_group, r.params["nic"], r.body,
        if_match=r.headers.get("If-Match"), if_none_match=r.headers.get("If-None-Match"),
        polls=r.config.lro_polls, failure=r.operation_failure(r.path),
        block_lengths=r.config.block_prefix_lengths, vnet_limit=r.config.vnet_private_ip_limit,
        conflict_retry_after=r.config.conflict_retry_after, operation_url=r.operation_url)
    assert nic.operation is not None
    headers = {"Azure-AsyncOperation": r.operation_url(nic.operation),
               "Retry-After": str(r.config.put_retry_after)}
    return Reply(nic_json(nic), 201 if created else 200, headers)


def patch_nic_tags(r: Request) -> Reply:
    """updateTags: synchronous, touches nothing but the tags."""
    nic = r.state.nic(r.subscription, r.resource_group, r.params["nic"])
    tags = r.body.get("tags") if isinstance(r.body, Mapping) else None
    if not isinstance(tags, Mapping):
        raise ArmError(400, "InvalidRequestContent", "The body must be {\"tags\": {...}}.")
    nic.tags = {str(k): str(v) for k, v in tags.items()}
    nic.etag = new_etag()
    return Reply(nic_json(nic))
