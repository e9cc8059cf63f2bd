"""The one mapping from Azure's statuses and codes to the port's typed errors."""

from __future__ import annotations

import pytest

from azure_cni.cloud.errors import DEFAULT_RETRY_AFTER, classify, retry_after_seconds
from azure_cni.cloud.port import (
    AddressInUse,
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
    (403, "LinkedAuthorizationFailed", AuthFailed),
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
