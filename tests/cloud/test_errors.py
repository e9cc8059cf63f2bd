"""The one mapping from Azure's statuses and codes to the port's typed errors."""

from __future__ import annotations

import pytest

from azure_cni.cloud.errors import DEFAULT_RETRY_AFTER, classify, retry_after_seconds
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
)


@pytest.mark.parametrize(("status", "code", "expected"), [
    (404, "ResourceNotFound", NotFound),
    (404, "ResourceGroupNotFound", NotFound),
    (400, "InvalidResourceReference", NotFound),
    (400, "PrivateIPAddressInUse", AddressInUse),
    (400, "PrivateIPAddressIsAllocated", AddressInUse),
    (400, "SubnetIsFull", SubnetFull),
    (200, "SubnetIsFull", SubnetFull),  # a failed long-running operation
    (400, "NetworkInterfaceIpConfigurationCountLimitReached", NicLimitExceeded),
    (409, "AnotherOperationInProgress", Conflict),
    (200, "AnotherOperationInProgress", Conflict),
    (200, "CanceledAndSupersededDueToAnotherOperation", Conflict),
    (412, "PreconditionFailed", Conflict),
    (412, "", Conflict),
    (429, "SubscriptionRequestsThrottled", Throttled),
    (429, "RetryableErrorDueToAnotherOperation", Throttled),
    (401, "InvalidAuthenticationToken", AuthFailed),
    (401, "ExpiredAuthenticationToken", AuthFailed),
    (403, "AuthorizationFailed", AuthFailed),
    (403, "LinkedAuthorizationFailed", AuthFailed),  # naming no public IP or pool
    (400, "IpConfigDeleteNotSupported", CloudError),
    (400, "NoRegisteredProviderFound", CloudError),
    (409, "MissingSubscriptionRegistration", CloudError),
    (500, "InternalServerError", CloudError),
])
def test_codes_map_to_typed_errors(status, code, expected):
    error = classify(status, code, "message", {})
    assert type(error) is expected
    assert error.code == (code or "PreconditionFailed")
    assert error.status == status


def test_throttled_carries_the_servers_wait():
    assert classify(429, "TooManyRequests", "m", {"Retry-After": "7"}).retry_after == 7
    assert classify(429, "", "m", {}).retry_after == DEFAULT_RETRY_AFTER


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"Retry-After": "3"}, 3.0),
    ({"retry-after": "0.25"}, 0.25),
    ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),
    ({"x-ms-retry-after-ms": "200"}, 0.2),
    ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
    ({}, None),
])
def test_retry_after(headers, seconds):
    assert retry_after_seconds(headers) == seconds


SUB = "00000000-0000-0000-0000-000000000001"
_NET = f"/subscriptions/{SUB}/resourceGroups/pips/providers/Microsoft.Network"
NIC = (f"/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Network/"
       "networkInterfaces/vm0-nic")
SUBNET = (f"/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Network/virtualNetworks/"
          "vnet/subnets/nodes")
PIP = f"{_NET}/publicIPAddresses/web.prod"
POOL = f"{_NET}/loadBalancers/edge.lb/backendAddressPools/web.prod"
CLIENT = ("The client 'c0ffee' with object id 'c0ffee' has permission to perform action "
          f"'Microsoft.Network/networkInterfaces/write' on scope '{NIC}'; however, it does not "
          "have permission to perform action '{action}' on the linked scope(s) '{scope}' or the "
          "linked scope(s) are invalid.")


@pytest.mark.parametrize(("status", "code", "message", "named"), [
    # issue 22 row 3: a dot in a name cut the name at the dot, so no request matched
    (400, "PublicIPAddressInUse",
     f"Resource {NIC}/ipConfigurations/azcni-1 is referencing public IP address {PIP} that is "
     f"already allocated to resource {NIC.replace('vm0', 'vm2')}/ipConfigurations/ipconfig1.",
     (PIP,)),
    (400, "InvalidResourceReference",
     f"Resource {POOL} referenced by resource {NIC} was not found. Please make sure that the "
     "referenced resource exists, and that both resources are in the same region.", (POOL,)),
    (400, "InvalidResourceReference", f"Resource {PIP}. referenced by resource {NIC}.", (PIP,)),
    # issue 22 row 3: the operator may not join the resource: that request's refusal
    (403, "LinkedAuthorizationFailed",
     CLIENT.format(action="Microsoft.Network/publicIPAddresses/join/action", scope=PIP), (PIP,)),
    (403, "LinkedAuthorizationFailed",
     CLIENT.format(action="Microsoft.Network/loadBalancers/backendAddressPools/join/action",
                   scope=POOL), (POOL,)),
    # a resource of a subscription in another tenant: ARM names only the subscription
    (403, "LinkedAuthorizationFailed",
     "The client has permission to perform action 'Microsoft.Network/networkInterfaces/write' "
     f"on scope '{NIC}', however the current tenant '72f988bf' is not authorized to access "
     "linked subscription '6c24bcdf-0c47-4359-b40b-6f82b12d83ca'.",
     ("/subscriptions/6c24bcdf-0c47-4359-b40b-6f82b12d83ca",)),
])
def test_a_refused_attachment_names_what_azure_refused(status, code, message, named):
    error = classify(status, code, message, {})
    assert isinstance(error, AttachmentRefused), type(error)
    assert error.resources == named
    assert error.code == code and error.status == status


def test_a_refusal_concerns_the_resources_it_names_and_those_under_a_named_scope():
    by_id = AttachmentRefused("m", resources=(PIP,))
    assert by_id.concerns(PIP.upper())
    assert not by_id.concerns(PIP.removesuffix(".prod"))
    assert not by_id.concerns(f"{PIP}2")
    tenant = AttachmentRefused("m", resources=("/subscriptions/6c24bcdf",))
    assert tenant.concerns("/subscriptions/6C24BCDF/resourceGroups/g/providers/x/y/z")
    assert not tenant.concerns("/subscriptions/6c24bcdf0/resourceGroups/g/providers/x/y/z")
    # Azure's message may name a resource its pattern does not parse: named verbatim counts
    verbatim = AttachmentRefused(f"the pool {POOL}, it seems, is not Standard")
    assert verbatim.concerns(POOL) and not verbatim.concerns(POOL.removesuffix(".prod"))


def test_linked_authorization_on_the_subnet_is_the_nodes_problem():
    message = CLIENT.format(action="Microsoft.Network/virtualNetworks/subnets/join/action",
                            scope=SUBNET)
    assert type(classify(403, "LinkedAuthorizationFailed", message, {})) is AuthFailed
