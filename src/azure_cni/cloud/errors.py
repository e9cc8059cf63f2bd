"""Azure's errors, translated into the port's typed errors in one place."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from azure_cni.cloud.port import (
    AddressInUse,
    AttachmentRefused,
    AuthFailed,
    CloudError,
    Conflict,
    NicLimitExceeded,
    NotFound,
    SubnetFull,
    Throttled,
    VnetLimitReached,
)

#: when a throttled response carries no Retry-After, the caller waits this long
DEFAULT_RETRY_AFTER = 5.0

_THROTTLED = {"subscriptionrequeststhrottled", "tenantrequeststhrottled", "toomanyrequests",
              "retryableerror", "retryableerrorduetoanotheroperation"}
_CONFLICT = {"anotheroperationinprogress", "canceledandsupersededduetoanotheroperation",
             "preconditionfailed",
             # Compute: "The request failed due to conflict with a concurrent request", and an
             # operation on an instance that a newer one replaced
             "conflict", "operationpreempted"}
_NOT_FOUND = {"resourcenotfound", "resourcegroupnotfound", "notfound", "subscriptionnotfound",
              "invalidresourcereference", "parentresourcenotfound"}
_AUTH = {"invalidauthenticationtoken", "expiredauthenticationtoken", "authenticationfailed",
         "invalidauthenticationtokenaudience", "authorizationfailed",
         "linkedauthorizationfailed"}
#: the operator may not join a resource the write references (arm-api.md §2.1): a refusal of
#: the pod that asked for it when Azure names a public IP, a pool or another tenant's
#: subscription; the node's own trouble when it names the subnet
_LINKED = "linkedauthorizationfailed"
_ADDRESS_IN_USE = {"privateipaddressinuse", "privateipaddressisallocated"}
#: a public IP or backend pool named on an ipConfiguration that Azure will not put there
_ATTACHMENT_REFUSED = {"publicipaddressinuse", "publicipreferencedbymultipleipconfigs",
                       "standardskupublicipaddresscannotbeusedwithbasicsku",
                       "basicskuloadbalancerbackendpoolnotsupported",
                       "publicipandloadbalancerskudonotmatch"}
#: an Azure resource name: letters, digits, ``_``, ``.``, ``-``, never ending with a dot (so a
#: sentence's full stop is not taken for part of it)
_NAME = r"[\w.\-]*[\w\-]"
_ATTACHED_RESOURCE = re.compile(
    r"/subscriptions/[^/\s']+/resourceGroups/[^/\s']+/providers/Microsoft\.Network/"
    rf"(?:publicIPAddresses/{_NAME}|loadBalancers/{_NAME}/backendAddressPools/{_NAME})",
    re.IGNORECASE)
#: "... the current tenant '<t>' is not authorized to access linked subscription '<s>'."
_LINKED_SUBSCRIPTION = re.compile(r"linked subscription '([^'\s]+)'", re.IGNORECASE)
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)")


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked to wait: retry-after-ms, x-ms-retry-after-ms or Retry-After."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, scale in (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001),
                        ("retry-after", 1.0)):
        raw = lowered.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) * scale
        except ValueError:
            continue  # an HTTP date; ARM does not send those
        if math.isfinite(value) and value >= 0:
            return value
    return None


def taken_addresses(message: str, requested: Iterable[str]) -> tuple[str, ...]:
    """Which of the ``requested`` static addresses an AddressInUse message names.

    ARM names the address in both messages ("is using the same private IP address 10.0.0.5
    as ...", "is using the private IP address 10.0.0.5 which is already allocated to ...",
    arm-api.md §2.1); that is the only place it says which one.
    """
    named = set(_IPV4.findall(message))
    return tuple(a for a in requested if a in named)


def attached_resources(message: str) -> tuple[str, ...]:
    """Public IP and backend pool resource IDs an ARM message names, in order, once each."""
    return tuple(dict.fromkeys(m.group(0) for m in _ATTACHED_RESOURCE.finditer(message)))


def linked_scopes(message: str) -> tuple[str, ...]:
    """What a LinkedAuthorizationFailed refuses that a pod may have asked for: the public IPs
    and backend pools it names, or the other tenant's subscription it names."""
    return attached_resources(message) + tuple(
        f"/subscriptions/{m.group(1)}" for m in _LINKED_SUBSCRIPTION.finditer(message))


def _is_nic_limit(code: str) -> bool:
    # The real code for "more than 256 ipConfigurations" is not documented (arm-api.md,
    # Appendix B); recognise any ipConfiguration count/limit code instead of one guess.
    return "ipconfiguration" in code and ("limit" in code or "exceed" in code)


def _is_vnet_limit(code: str) -> bool:
    # Azure documents the limit (65,536 private addresses per VNet) but not its error code:
    # recognise any private-address count/limit code that names the virtual network
    return ("virtualnetwork" in code or "vnet" in code) and "limit" in code


def classify(status: int | None, code: str, message: str,
             headers: Mapping[str, str]) -> CloudError:
    """The typed error for an Azure status, error code and message (a failed LRO has 200)."""
    key = code.lower()
    text = message or code or f"HTTP {status}"
    if status == 429 or key in _THROTTLED:
        retry_after = retry_after_seconds(headers)
        return Throttled(text, retry_after=DEFAULT_RETRY_AFTER if retry_after is None
                         else retry_after, code=code, status=status)
    if status == 412 or key in _CONFLICT:
        return Conflict(text, code=code or "PreconditionFailed", status=status)
    if key == "subnetisfull":
        return SubnetFull(text, code=code, status=status)
    if _is_vnet_limit(key):
        return VnetLimitReached(text, code=code, status=status)
    if key in _ADDRESS_IN_USE:
        return AddressInUse(text, code=code, status=status)
    named = linked_scopes(text) if key == _LINKED else attached_resources(text)
    if key in _ATTACHMENT_REFUSED or (key in ("invalidresourcereference", _LINKED) and named):
        # the second: "Resource <public IP or pool> referenced by resource <NIC> was not found"
        return AttachmentRefused(text, resources=named, code=code, status=status)
    if _is_nic_limit(key):
        return NicLimitExceeded(text, code=code, status=status)
    if status == 404 or key in _NOT_FOUND:
        return NotFound(text, code=code, status=status)
    if status in (401, 403) or key in _AUTH:
        return AuthFailed(text, code=code, status=status)
    return CloudError(text, code=code, status=status)


def to_cloud_error(error: BaseException) -> CloudError:
    """The port's typed error for anything the SDK or a credential raised."""
    if isinstance(error, CloudError):
        return error
    if isinstance(error, HttpResponseError):
        odata = error.error
        code = (odata.code if odata is not None else None) or ""
        message = (odata.message if odata is not None else None) or error.message or ""
        # every azure-core response type has headers; the exception's annotation omits them
        headers: Mapping[str, str] = dict(getattr(error.response, "headers", None) or {})
        if isinstance(error, ClientAuthenticationError) and error.response is None:
            # a credential that could not get a token: there was no ARM response at all
            return AuthFailed(f"could not get an Azure token: {error.message}",
                              code=code or "CredentialUnavailable")
        return classify(error.status_code, code, message, headers)
    if isinstance(error, ServiceRequestError | ServiceResponseError):
        return CloudError(f"could not reach Azure Resource Manager: {error.message}",
                          code="ServiceUnreachable")
    if isinstance(error, AzureError):
        return CloudError(error.message or type(error).__name__, code=type(error).__name__)
    return CloudError(f"{type(error).__name__}: {error}", code=type(error).__name__)
