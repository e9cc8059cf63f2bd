"""The admin API under ``/_sim/`` on the ARM port: another process drives the emulator with it.

One table maps (method, endpoint) to a function of the emulator and the JSON body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, fields
from typing import TYPE_CHECKING, Any

from aiohttp import web

from azure_cni_sim.arm.config import ArmConfig

if TYPE_CHECKING:
    from azure_cni_sim.arm.emulator import ArmEmulator

Answer = tuple[Any, int]
AdminHandler = Callable[["ArmEmulator", web.Request, Any], Awaitable[Answer]]


def placement(body: Mapping[str, Any], location_default: str | None = "eastus"
              ) -> dict[str, Any]:
    """``subscription``/``resourceGroup``/``location`` of a body as keyword arguments."""
    out: dict[str, Any] = {}
    if body.get("subscription"):
        out["subscription"] = body["subscription"]
    if body.get("resourceGroup"):
        out["resource_group"] = body["resourceGroup"]
    location = body.get("location") or location_default
    if location:
        out["location"] = location
    return out


async def _state(emu: ArmEmulator, request: web.Request, body: Any) -> Answer:
    return emu.snapshot(), 200


async def _endpoints(emu: ArmEmulator, request: web.Request, body: Any) -> Answer:
    return emu.endpoints(), 200


async def _requests(emu: ArmEmulator, request: web.Request, body: Any) -> Answer:
    found = emu.requests(request.query.get("method"), request.query.get("path"))
    return {"count": len(found), "requests": [asdict(r) for r in found]}, 200


async def _reset_requests(emu: ArmEmulator, request: web.Request, body: Any) -> Answer:
    emu.reset_requests()
    return {}, 200


async def _add_fault(emu: ArmEmulator, request: web.Request, body: Any) -> Answer:
    emu.inject_fault(body["method"], body["path"], int(body["status"]), body.get("code", ""),
                     message=body.get("message", ""), headers=body.get("headers"),
                     count=int(body.get("count", 1)))
    return {}, 201


async def _clear_faults(emu: ArmEmulator, request: web.Request, body: Any) -> Answer:
    emu.clear_faults()
    return {}, 200


async def _fail_operation(emu: ArmEmulator, request: web.Request, body: Any) -> Answer:
    emu.fail_next_operation(body["path"], body["code"], body.get("message", ""),
                            body.get("outcome", "Failed"))
    return {}, 201


async def _race_reads(emu: ArmEmulator, request: web.Request, body: Any) -> Answer:
    emu.race_next_reads(body["path"], int(body.get("count", 1)))
    return {}, 201


async def _fail_ipconfig(emu: ArmEmulator, request: web.Request, body: Any) -> Answer:
    emu.fail_ipconfig(body["nic"], body["ipConfiguration"])
    return {}, 201


async def _latency(emu: ArmEmulator, request: web.Request, body: Any) -> Answer:
    emu.set_latency(body["method"], float(body["seconds"]))
    return {}, 200


async def _get_config(emu: ArmEmulator, request: web.Request, body: Any) -> Answer:
    return asdict(emu.config), 200


async def _patch_config(emu: ArmEmulator, request: web.Request, body: Any) -> Answer:
    known = {f.name for f in fields(ArmConfig)}
    emu.configure(**{k: tuple(v) if isinstance(v, list) else v
                     for k, v in body.items() if k in known})
    return asdict(emu.config), 200


async def _add_vnet(emu: ArmEmulator, request: web.Request, body: Any) -> Answer:
    vnet = emu.add_vnet(body["name"], body["addressSpace"], body.get("subnets"),
                        **placement(body))
    return asdict(vnet), 201


async def _add_vm(emu: ArmEmulator, request: web.Request, body: Any) -> Answer:
    vm = emu.add_vm(body["name"], body["subnetId"], primary_ip=body.get("primaryIP"),
                    scale_set=body.get("scaleSet"),
                    identities=tuple(body.get("identities") or ()),
                    **placement(body, location_default=None))
    return {**asdict(vm), "providerID": vm.provider_id}, 201


async def _token(emu: ArmEmulator, request: web.Request, body: Any) -> Answer:
    return {"token": emu.issue_token(body.get("principal", "admin"))}, 200


async def _events(emu: ArmEmulator, request: web.Request, body: Any) -> Answer:
    return await emu.wait_events(int(request.query.get("after", "0")),
                                 float(request.query.get("timeout", "0"))), 200


ADMIN_ROUTES: dict[tuple[str, str], AdminHandler] = {
    ("GET", "state"): _state,
    ("GET", "endpoints"): _endpoints,
    ("GET", "requests"): _requests,
    ("DELETE", "requests"): _reset_requests,
    ("POST", "faults"): _add_fault,
    ("DELETE", "faults"): _clear_faults,
    ("POST", "operation-failures"): _fail_operation,
    ("POST", "latency"): _latency,
    ("POST", "read-races"): _race_reads,
    ("POST", "failed-ipconfigs"): _fail_ipconfig,
    ("GET", "config"): _get_config,
    ("PATCH", "config"): _patch_config,
    ("POST", "vnets"): _add_vnet,
    ("POST", "vms"): _add_vm,
    ("POST", "tokens"): _token,
    ("GET", "events"): _events,
}


async def serve_admin(emu: ArmEmulator, request: web.Request) -> web.StreamResponse:
    what = request.path.removeprefix("/_sim/").strip("/")
    handler = ADMIN_ROUTES.get((request.method, what))
    if handler is None:
        return web.json_response({"error": f"no admin endpoint {request.method} /_sim/{what}"},
                                 status=404)
    try:
        body: Any = await request.json() if request.can_read_body else {}
        answer, status = await handler(emu, request, body)
    except (ValueError, KeyError, TypeError) as e:
        return web.json_response({"error": f"{type(e).__name__}: {e}"}, status=400)
    return web.json_response(answer, status=status)
