"""The emulated Instance Metadata Service: instance metadata and managed-identity tokens.

Plain HTTP, as the real one (arm-api.md §4). All VMs share one emulator, so a VM is named by
a path prefix: ``http://127.0.0.1:<port>/vms/<vm name>/metadata/...``. Setting
``AZURE_POD_IDENTITY_AUTHORITY_HOST`` to ``http://127.0.0.1:<port>/vms/<vm name>`` points an
unmodified ``ManagedIdentityCredential`` at that VM's identity endpoint. The bare
``/metadata/...`` paths answer for the only VM when there is exactly one (tokens work with
none). ``ArmEmulator.open_vm_imds`` can also give one VM a port of its own, serving the bare
paths, for a network-namespace VM whose traffic to 169.254.169.254 is relayed there.

``Imds.inject_fault`` answers a VM's next metadata requests with a given status and body
(a malformed document, a 500), after the header and api-version checks.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from azure_cni_sim.armstate import ArmState, Vm
from azure_cni_sim.throttling import RateLimit

IMDS_VERSIONS = ("2017-03-01", "2017-04-02", "2017-08-01", "2017-12-01", "2018-02-01",
                 "2018-04-02", "2018-10-01", "2019-02-01", "2019-03-11", "2019-04-30",
                 "2019-06-01", "2019-06-04", "2019-08-01", "2019-08-15", "2019-11-01",
                 "2020-06-01", "2020-07-15", "2020-09-01", "2020-10-01", "2020-12-01",
                 "2021-01-01", "2021-02-01", "2021-03-01", "2021-05-01", "2021-08-01",
                 "2021-10-01", "2021-11-01", "2021-11-15", "2021-12-13", "2023-07-01",
                 "2023-11-15", "2024-03-15", "2024-07-17", "2025-04-07")
#: audiences the emulated ARM accepts, as IMDS writes ``resource`` (compared without "/")
ARM_AUDIENCES = frozenset({"https://management.azure.com", "https://management.core.windows.net"})


@dataclass
class ImdsFault:
    """The next ``remaining`` instance requests of ``vm`` under ``path`` get this answer."""

    vm: str
    path: str
    status: int
    body: bytes
    content_type: str
    remaining: int


@dataclass(frozen=True)
class IssuedToken:
    principal: str
    audience: str
    expires_on: float


class TokenIssuer:
    """Bearer tokens the emulated IMDS hands out and the emulated ARM accepts."""

    def __init__(self, static_tokens: tuple[str, ...] = ()) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, IssuedToken] = {}
        self.static_tokens = static_tokens

    def issue(self, principal: str, audience: str, lifetime: float) -> tuple[str, IssuedToken]:
        token = "azcni-sim." + secrets.token_urlsafe(24)
        issued = IssuedToken(principal, audience.rstrip("/"), time.time() + lifetime)
        with self._lock:
            self._tokens[token] = issued
        return token, issued

    def issued(self) -> dict[str, IssuedToken]:
        """Every token handed out so far (tests check none of them leaks into a log)."""
        with self._lock:
            return dict(self._tokens)

    def lookup(self, token: str) -> IssuedToken | None:
        """The token's record; static tokens never expire and act for principal ``static``."""
        if token in self.static_tokens:
            return IssuedToken("static", "https://management.azure.com", float("inf"))
        with self._lock:
            return self._tokens.get(token)


class ImdsHost(Protocol):
    """What the IMDS needs from the emulator that hosts it."""

    @property
    def state(self) -> ArmState: ...

    @property
    def state_lock(self) -> threading.RLock: ...

    @property
    def tokens(self) -> TokenIssuer: ...

    def imds_limits(self) -> tuple[float, float, float]:
        """(instance requests per second, identity requests per second, token lifetime)."""
        ...


def _bad_request(error: str, **extra: Any) -> web.Response:
    return web.json_response({"error": error, **extra}, status=400)


def instance_metadata(state: ArmState, vm: Vm) -> dict[str, Any]:
    """``/metadata/instance`` for a VM: compute and network, primitives as strings."""
    compute: dict[str, Any] = {
        "azEnvironment": "AzurePublicCloud",
        "location": vm.location,
        "name": vm.name,
        "osType": "Linux",
        "resourceGroupName": vm.resource_group,
        "resourceId": vm.id,
        "subscriptionId": vm.subscription,
        "vmId": vm.vm_guid,
        "vmScaleSetName": vm.scale_set or "",
        "vmSize": "Standard_D4s_v5",
        "zone": "",
    }
    if vm.scale_set:
        compute["virtualMachineScaleSet"] = {
            "id": f"/subscriptions/{vm.subscription}/resourceGroups/{vm.resource_group}/"
                  f"providers/Microsoft.Compute/virtualMachineScaleSets/{vm.scale_set}"}
    interfaces = []
    for nic_id in vm.nic_ids:
        nic = state.nics.get(nic_id.lower())
        if nic is None:
            continue
        # only committed configurations: an address appears once its write has succeeded
        committed = [c for c in sorted(nic.ip_configs, key=lambda c: not c.primary)
                     if c.state == "Succeeded"]
        subnets = {c.subnet.id: c.subnet for c in committed}
        interfaces.append({
            "ipv4": {
                "ipAddress": [{"privateIpAddress": str(c.address), "publicIpAddress": ""}
                              for c in committed],
                "subnet": [{"address": str(s.network.network_address),
                            "prefix": str(s.network.prefixlen)} for s in subnets.values()],
            },
            "ipv6": {"ipAddress": []},
            "macAddress": nic.mac.replace("-", ""),
        })
    return {"compute": compute, "network": {"interface": interfaces}}


def _select(document: Any, path: list[str]) -> Any:
    node = document
    for step in path:
        if isinstance(node, dict):
            key = next((k for k in node if k.lower() == step.lower()), None)
            if key is None:
                raise KeyError(step)
            node = node[key]
        elif isinstance(node, list):
            if not step.isdigit() or int(step) >= len(node):
                raise KeyError(step)
            node = node[int(step)]
        else:
            raise KeyError(step)
    return node


def _as_text(node: Any) -> str:
    if isinstance(node, dict):
        return "\n".join(f"{k}/" if isinstance(v, dict | list) else k for k, v in node.items())
    if isinstance(node, list):
        return "\n".join(f"{i}/" for i in range(len(node)))
    return str(node)


class Imds:
    """aiohttp handlers of the IMDS; ``app(vm_name)`` pins every request to one VM."""

    def __init__(self, host: ImdsHost) -> None:
        self._host = host
        self._limit = RateLimit()
        self._limit_lock = threading.Lock()
        self._faults: list[ImdsFault] = []

    def inject_fault(self, vm: str, path: str, status: int, body: bytes | str, *,
                     content_type: str = "application/json", count: int = 1) -> None:
        """Answer ``vm``'s next ``count`` metadata requests whose path (after
        ``/metadata/``) starts with ``path`` with ``status`` and ``body`` as given."""
        data = body.encode() if isinstance(body, str) else body
        with self._limit_lock:
            self._faults.append(ImdsFault(vm, path.strip("/"), status, data, content_type,
                                          count))

    def clear_faults(self) -> None:
        with self._limit_lock:
            self._faults.clear()

    def _take_fault(self, vm: str, tail: str) -> ImdsFault | None:
        with self._limit_lock:
            for fault in self._faults:
                if fault.vm == vm and tail.startswith(fault.path) and fault.remaining > 0:
                    fault.remaining -= 1
                    return fault
        return None

    def app(self, vm_name: str | None = None) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            return await self._handle(request, request.match_info.get("vm") or vm_name)

        app = web.Application()
        app.router.add_route("GET", "/vms/{vm}/metadata/{tail:.*}", handle)
        app.router.add_route("GET", "/metadata/{tail:.*}", handle)
        return app

    def _throttled(self, vm: str, category: str) -> bool:
        instance_rps, identity_rps, _ = self._host.imds_limits()
        rate = identity_rps if category == "identity" else instance_rps
        with self._limit_lock:
            return not self._limit.admit((vm, category), rate)

    async def _handle(self, request: web.Request, vm_name: str | None) -> web.Response:
        tail = request.match_info["tail"].strip("/")
        if "X-Forwarded-For" in request.headers:
            return _bad_request("Bad request. Requests with X-Forwarded-For headers are not "
                                "accepted by the instance metadata service.")
        if tail.startswith("identity/oauth2/token"):
            return self._token(request, vm_name)
        if request.headers.get("Metadata", "").lower() != "true":
            return _bad_request("Bad request. Required metadata header not specified")
        if tail == "versions":
            return web.json_response({"apiVersions": list(IMDS_VERSIONS)})
        query = request.query
        if any(len(query.getall(k)) > 1 for k in query):
            return _bad_request("Bad request. Duplicate query parameters are not allowed.")
        if query.get("api-version") not in IMDS_VERSIONS:
            return _bad_request(
                "Bad request. api-version is invalid or was not specified in the request. "
                "For more information refer to aka.ms/azureimds",
                **{"newest-versions": list(reversed(IMDS_VERSIONS[-3:]))})
        parts = tail.split("/")
        if parts[0] != "instance":
            return web.json_response({"error": "Not found"}, status=404)
        with self._host.state_lock:
            vm = self._vm(vm_name)
            if vm is None:
                return web.json_response(
                    {"error": f"Not found. No VM {vm_name!r}; use /vms/<vm name>/metadata/... "
                              "when the emulator has several VMs"}, status=404)
            document = instance_metadata(self._host.state, vm)
        if self._throttled(vm.name, "instance"):
            return web.json_response({"error": "Too many requests"}, status=429)
        fault = self._take_fault(vm.name, tail)
        if fault is not None:
            return web.Response(body=fault.body, status=fault.status,
                                content_type=fault.content_type)
        try:
            node = _select(document, [p for p in parts[1:] if p])
        except KeyError:
            return web.json_response({"error": "Not found"}, status=404)
        if query.get("format") == "text":
            return web.Response(text=_as_text(node), content_type="text/plain")
        if not isinstance(node, dict | list):
            return _bad_request("Bad request. Leaf nodes of the metadata can only be queried "
                                "with format=text.")
        return web.json_response(node)

    def _vm(self, vm_name: str | None) -> Vm | None:
        state = self._host.state
        if vm_name is not None:
            return state.vm_by_name(vm_name)
        only = list(state.vms.values())
        return only[0] if len(only) == 1 else None

    def _principal(self, client_id: str | None, vm: Vm | None) -> str:
        """Whom a token acts for: a user-assigned identity's principal (object) ID when the
        emulator made that identity, else the client ID; the VM's system-assigned identity
        without one."""
        if client_id:
            from azure_cni_sim.arm.authorization import authorization_of  # noqa: PLC0415

            with self._host.state_lock:
                identity = authorization_of(self._host.state).identity_by_client_id(client_id)
            return identity.principal_id if identity is not None else client_id
        return f"vm/{vm.name}" if vm is not None else "system"

    def _token(self, request: web.Request, vm_name: str | None) -> web.Response:
        if request.headers.get("Metadata", "").lower() != "true":
            return _bad_request("invalid_request",
                                error_description="Required metadata header not specified")
        query = request.query
        if not query.get("api-version"):
            return _bad_request("invalid_request",
                                error_description="api-version was not specified")
        resource = query.get("resource", "")
        if not resource:
            return _bad_request("invalid_resource",
                                error_description="resource was not specified")
        client_id = query.get("client_id") or query.get("object_id") or query.get("msi_res_id")
        with self._host.state_lock:
            vm = self._vm(vm_name) if vm_name is not None else None
            if vm_name is not None and vm is None:
                return web.json_response({"error": "not_found",
                                          "error_description": f"No VM {vm_name!r}"}, status=404)
            if client_id and vm is not None and client_id not in vm.identities:
                return _bad_request("invalid_request", error_description="Identity not found")
        principal = self._principal(client_id, vm)
        if self._throttled(vm.name if vm is not None else "", "identity"):
            return web.json_response({"error": "too_many_requests",
                                      "error_description": "Too many requests"}, status=429)
        _, _, lifetime = self._host.imds_limits()
        token, issued = self._host.tokens.issue(principal, resource, lifetime)
        now = int(time.time())
        return web.json_response({
            "access_token": token,
            "refresh_token": "",
            "expires_in": str(int(lifetime)),
            "expires_on": str(int(issued.expires_on)),
            "not_before": str(now),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": client_id or "",
        })

