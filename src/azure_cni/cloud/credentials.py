"""The Entra ID credential and token audience the Azure clients use, chosen by the settings."""

from __future__ import annotations

from urllib.parse import urlsplit

from azure.core import AzureClouds
from azure.core.credentials_async import AsyncTokenCredential
from azure.identity.aio import (
    DefaultAzureCredential,
    EnvironmentCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)
from azure.mgmt.core.tools import get_arm_endpoints

from azure_cni.api.settings import AzureSettings

_PUBLIC_SCOPE = "https://management.azure.com/.default"


def arm_credential_scopes(arm_endpoint: str) -> list[str]:
    """The token scope for an ARM endpoint: its cloud's audience, else public Azure's.

    Sovereign clouds use an audience that differs from their endpoint (US Government), so it
    is looked up in the SDK's own table; any other endpoint (an emulator, Azure Stack behind a
    proxy) gets the public audience, which is what a token from IMDS is issued for by default.
    """
    host = urlsplit(arm_endpoint).hostname or ""
    for cloud in AzureClouds:
        endpoints = get_arm_endpoints(cloud)
        if urlsplit(endpoints["resource_manager"]).hostname == host.lower():
            return list(endpoints["credential_scopes"])
    return [_PUBLIC_SCOPE]


def build_credential(settings: AzureSettings) -> AsyncTokenCredential:
    """The async credential ``settings.credential`` names (``default`` tries them in turn)."""
    authority = settings.authority_host
    client_id = settings.managed_identity_client_id or None
    kind = settings.credential
    if kind == "managedIdentity":
        return ManagedIdentityCredential(client_id=client_id)
    if kind == "workloadIdentity":
        # tenant, client ID and token file come from the webhook-injected AZURE_* variables
        return WorkloadIdentityCredential(authority=authority)
    if kind == "servicePrincipal":
        # AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or a certificate path)
        return EnvironmentCredential(authority=authority)
    if kind == "default":
        return DefaultAzureCredential(authority=authority, managed_identity_client_id=client_id)
    raise ValueError(f"azure.credential {kind!r} is not one of default, managedIdentity, "
                     "workloadIdentity, servicePrincipal")
