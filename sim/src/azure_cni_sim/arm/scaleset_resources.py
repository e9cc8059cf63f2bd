"""The Uniform scale-set operations the emulator serves; ``routes.ROUTES`` maps paths to them.

Compute (api-version 2026-04-01, as azure-mgmt-compute 39 sends): GET and PUT of an instance
(``VirtualMachineScaleSetVM``), the PUT a long-running operation polled at
``.../providers/Microsoft.Compute/locations/<loc>/operations/<id>``. Network (api-version
2018-10-01 only, arm-api.md §0): the read-only NICs of an instance and of a scale set.
"""

from __future__ import annotations

import datetime as dt
import weakref
from typing import Any

from azure_cni_sim.arm.compute_throttling import ComputeLimits, ComputeThrottle
from azure_cni_sim.arm.resources import Reply, Request
from azure_cni_sim.arm.scalesets import Instance, ScaleSets, instance_json
from azure_cni_sim.armstate import ArmError, ArmState, Operation, nic_json

COMPUTE_API_VERSION = "2026-04-01"
#: the only api-version NRP serves scale-set NICs with (azure-sdk-for-python#32029)
VMSS_NETWORK_API_VERSION = "2018-10-01"

_SCALE_SETS: weakref.WeakKeyDictionary[ArmState, ScaleSets] = weakref.WeakKeyDictionary()
_THROTTLES: weakref.WeakKeyDictionary[ScaleSets, ComputeThrottle] = weakref.WeakKeyDictionary()


def scale_sets_of(state: ArmState) -> ScaleSets:
    """The Uniform scale sets of an emulated world (made on first use)."""
    found = _SCALE_SETS.get(state)
    if found is None:
        found = _SCALE_SETS[state] = ScaleSets(state)
    return found


def _throttle(r: Request) -> ComputeThrottle:
    sets = scale_sets_of(r.state)
    limits = ComputeLimits(r.config.compute_vm_updates_per_minute,
                           r.config.compute_subscription_vm_updates_per_minute)
    found = _THROTTLES.get(sets)
    if found is None or found.limits != limits or found.enabled != r.config.throttling:
        found = _THROTTLES[sets] = ComputeThrottle(limits, enabled=r.config.throttling)
    return found


def _instance(r: Request) -> Instance:
    return scale_sets_of(r.state).instance(r.subscription, r.resource_group, r.params["vmss"],
                                           r.params["instance"])


def _operation_url(r: Request, op: Operation) -> str:
    return (f"https://{r.host}/subscriptions/{op.subscription}/providers/Microsoft.Compute/"
            f"locations/{op.location}/operations/{op.id}?api-version={COMPUTE_API_VERSION}")


# -- Compute ----------------------------------------------------------------------------------


def get_instance(r: Request) -> Reply:
    instance = _instance(r)
    return Reply(instance_json(instance, scale_sets_of(r.state).instance_nics(instance)))


def put_instance(r: Request) -> Reply:
    """Accept an instance update as a long-running operation (200 + Azure-AsyncOperation)."""
    instance = _instance(r)
    headers = _throttle(r).admit_update(r.subscription, instance.id)
    sets = scale_sets_of(r.state)
    op = sets.put_instance(
        instance, r.body, if_match=r.headers.get("If-Match"), polls=r.config.lro_polls,
        failure=r.operation_failure(r.path))
    headers["Azure-AsyncOperation"] = _operation_url(r, op)
    return Reply(instance_json(instance, sets.instance_nics(instance)), 200, headers)


def get_compute_operation(r: Request) -> Reply:
    op, change = r.state.poll(r.params["operation"])
    started = dt.datetime.now(dt.UTC).isoformat()
    body: dict[str, Any] = {"startTime": started, "status": op.status, "name": op.id}
    if op.status != "InProgress":
        body["endTime"] = started
    if op.status in ("Failed", "Canceled") and op.error is not None:
        body["error"] = {"code": op.error[0], "message": op.error[1]}
    headers = {}
    if op.status == "InProgress" and r.config.poll_retry_after is not None:
        headers["Retry-After"] = f"{r.config.poll_retry_after:g}"
    return Reply(body, headers=headers, changes=[change] if change else [])


# -- Network (read-only) ----------------------------------------------------------------------


def get_instance_nic(r: Request) -> Reply:
    instance = _instance(r)
    return Reply(nic_json(scale_sets_of(r.state).nic(instance, r.params["nic"])))


def list_instance_nics(r: Request) -> Reply:
    instance = _instance(r)
    return Reply({"value": [nic_json(n) for n in scale_sets_of(r.state).instance_nics(instance)]})


def list_scale_set_nics(r: Request) -> Reply:
    """Every instance's NIC, ``list_page_size`` per page, the rest behind ``nextLink``."""
    sets = scale_sets_of(r.state)
    ss = sets.scale_set(r.subscription, r.resource_group, r.params["vmss"])
    instances = sorted(ss.instances.values(), key=lambda i: int(i.instance_id))
    try:
        start = max(0, int(r.query.get("$skipToken", "0")))
    except ValueError:
        raise ArmError(400, "InvalidSkipToken", "The $skipToken is not valid.") from None
    size = max(1, r.config.list_page_size)
    body: dict[str, Any] = {"value": [nic_json(n) for i in instances[start:start + size]
                                      for n in sets.instance_nics(i)]}
    if start + size < len(instances):
        body["nextLink"] = (f"https://{r.host}{r.path}?api-version={VMSS_NETWORK_API_VERSION}"
                            f"&$skipToken={start + size}")
    return Reply(body)
