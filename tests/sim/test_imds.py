"""The emulated IMDS: managed-identity tokens for the real azure-identity credentials, accepted
by the emulated ARM, and instance metadata as the node-side tools query it."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from azure.identity import ManagedIdentityCredential as SyncManagedIdentityCredential
from azure.identity.aio import ManagedIdentityCredential

from azure_cni.cloud.azure import AzureAdapter
from azure_cni.cloud.port import AuthFailed, NewIPConfiguration
from azure_cni.cloud.providerid import parse_provider_id
from azure_cni_sim.arm import ArmConfig, ArmEmulator, StaticTokenCredential, VmInfo

pytestmark = pytest.mark.timeout(60)
ARM_SCOPE = "https://management.azure.com/.default"
#: anything that would make azure-identity choose another managed-identity source than IMDS
_OTHER_SOURCES = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT",
                  "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "AZURE_FEDERATED_TOKEN_FILE",
                  "AZURE_CLIENT_ID", "AZURE_TENANT_ID")


class Imds:
    def __init__(self, emu: ArmEmulator) -> None:
        self.emu = emu
        vnet = emu.add_vnet("vnet1", "198.18.0.0/16", {"nodes": "198.18.0.0/24"})
        self.vm = emu.add_vm("node0", vnet.subnet_ids["nodes"], identities=("uami-client-id",))
        self.other = emu.add_vm("node1", vnet.subnet_ids["nodes"])

    def get(self, path: str, *, base: str | None = None, metadata: bool = True,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(f"{base or self.emu.imds_url}{path}",
                                         headers=dict(headers or {}))
        if metadata:
            request.add_header("Metadata", "true")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read().decode()
                is_json = response.headers.get_content_type() == "application/json"
                return response.status, json.loads(body) if is_json else body
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


@pytest.fixture
def imds(monkeypatch: pytest.MonkeyPatch) -> Iterator[Imds]:
    for name in _OTHER_SOURCES:
        monkeypatch.delenv(name, raising=False)
    with ArmEmulator(ArmConfig(lro_polls=0)) as emu:
        world = Imds(emu)
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", emu.imds_url_for("node0"))
        yield world


def _adapter(emu: ArmEmulator, **settings: Any) -> AzureAdapter:
    return AzureAdapter(emu.azure_settings(polling_interval=0.01, **settings))


# -- managed identity -----------------------------------------------------------------------------


async def test_the_async_managed_identity_credential_works_end_to_end(imds):
    """credential=managedIdentity: azure-identity asks IMDS, ARM accepts what IMDS issued."""
    async with _adapter(imds.emu, credential="managedIdentity") as adapter:
        nic = await adapter.get_vm_nic(parse_provider_id(imds.vm.provider_id))
        await adapter.update_ip_configurations(nic.id, add=[NewIPConfiguration("azcni-a")])
    arm_requests = imds.emu.requests()
    assert arm_requests
    assert {r.principal for r in arm_requests} == {"vm/node0"}
    assert {r.status for r in arm_requests} == {200}


async def test_the_async_credential_directly(imds):
    async with ManagedIdentityCredential() as credential:
        token = await credential.get_token(ARM_SCOPE)
    assert token.token.startswith("azcni-sim.")
    async with AzureAdapter(imds.emu.azure_settings(),
                            credential=StaticTokenCredential(token.token)) as adapter:
        nic = await adapter.get_nic(imds.vm.nic_id)
    assert nic.primary.address == imds.vm.primary_ip


async def test_the_sync_managed_identity_credential_gets_a_token_arm_accepts(imds):
    credential = SyncManagedIdentityCredential()
    token = credential.get_token(ARM_SCOPE)
    assert token.expires_on > 0
    async with AzureAdapter(imds.emu.azure_settings(),
                            credential=StaticTokenCredential(token.token)) as adapter:
        nic = await adapter.get_vm_nic(parse_provider_id(imds.vm.provider_id))
    assert nic.id == imds.vm.nic_id
    assert {r.principal for r in imds.emu.requests()} == {"vm/node0"}


async def test_a_user_assigned_identity_is_used_when_it_is_assigned(imds):
    async with _adapter(imds.emu, credential="managedIdentity",
                        managed_identity_client_id="uami-client-id") as adapter:
        await adapter.get_nic(imds.vm.nic_id)
    assert {r.principal for r in imds.emu.requests()} == {"uami-client-id"}
    async with _adapter(imds.emu, credential="managedIdentity",
                        managed_identity_client_id="not-assigned") as adapter:
        with pytest.raises(AuthFailed):
            await adapter.get_nic(imds.vm.nic_id)


def test_the_token_endpoint_refuses_requests_without_the_metadata_header(imds):
    status, body = imds.get("/vms/node0/metadata/identity/oauth2/token?api-version=2018-02-01"
                            "&resource=https://management.azure.com", metadata=False)
    assert status == 400
    assert body == {"error": "invalid_request",
                    "error_description": "Required metadata header not specified"}
    status, body = imds.get("/vms/node0/metadata/identity/oauth2/token?api-version=2018-02-01")
    assert (status, body["error"]) == (400, "invalid_resource")


def test_arm_refuses_a_token_issued_for_another_audience(imds):
    status, body = imds.get("/vms/node0/metadata/identity/oauth2/token?api-version=2018-02-01"
                            "&resource=https://vault.azure.net")
    assert status == 200
    assert set(body) >= {"access_token", "expires_in", "expires_on", "resource", "token_type"}
    assert all(isinstance(v, str) for v in body.values())
    request = urllib.request.Request(
        f"{imds.emu.arm_url}{imds.vm.nic_id.lstrip('/')}?api-version=2026-03-01",
        headers={"Authorization": f"Bearer {body['access_token']}"})
    tls = ssl.create_default_context(cafile=str(imds.emu.ca_path))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=tls, timeout=10)
    assert refused.value.code == 401
    assert json.loads(refused.value.read())["error"]["code"] == \
        "InvalidAuthenticationTokenAudience"


# -- instance metadata ----------------------------------------------------------------------------


def test_instance_metadata_names_the_vm_and_its_addresses(imds):
    status, doc = imds.get("/vms/node0/metadata/instance?api-version=2021-10-01")
    assert status == 200
    compute = doc["compute"]
    assert compute["resourceId"] == imds.vm.vm_id
    assert compute["name"] == "node0"
    assert compute["vmScaleSetName"] == ""
    assert compute["subscriptionId"] == imds.vm.vm_id.split("/")[2]
    interface = doc["network"]["interface"][0]
    assert interface["ipv4"]["ipAddress"] == [{"privateIpAddress": imds.vm.primary_ip,
                                               "publicIpAddress": ""}]
    assert interface["ipv4"]["subnet"] == [{"address": "198.18.0.0", "prefix": "24"}]
    assert len(interface["macAddress"]) == 12 and "-" not in interface["macAddress"]


async def test_secondary_addresses_appear_once_written(imds):
    async with AzureAdapter(imds.emu.azure_settings(polling_interval=0.01),
                            credential=imds.emu.credential()) as adapter:
        nic = await adapter.update_ip_configurations(
            imds.vm.nic_id, add=[NewIPConfiguration("azcni-a"), NewIPConfiguration("azcni-b")])
    status, listed = imds.get("/vms/node0/metadata/instance/network/interface/0/ipv4/ipAddress"
                              "?api-version=2021-10-01")
    assert status == 200
    assert [a["privateIpAddress"] for a in listed] == [c.address for c in nic.ip_configurations]


def test_leaves_need_format_text(imds):
    leaf = "/vms/node0/metadata/instance/network/interface/0/ipv4/ipAddress/0/privateIpAddress"
    status, text = imds.get(f"{leaf}?api-version=2019-06-01&format=text")
    assert (status, text) == (200, imds.vm.primary_ip)
    status, body = imds.get(f"{leaf}?api-version=2019-06-01")
    assert status == 400
    assert "format=text" in body["error"]
    status, listing = imds.get("/vms/node0/metadata/instance/compute/name"
                               "?api-version=2019-06-01&format=text")
    assert listing == "node0"


@pytest.mark.parametrize(("path", "headers", "metadata", "fragment"), [
    ("/vms/node0/metadata/instance?api-version=2021-10-01", {}, False,
     "Required metadata header not specified"),
    ("/vms/node0/metadata/instance", {}, True, "api-version is invalid or was not specified"),
    ("/vms/node0/metadata/instance?api-version=2021-10-01",
     {"X-Forwarded-For": "10.0.0.1"}, True, "X-Forwarded-For"),
])
def test_instance_requests_are_validated_like_imds(imds, path, headers, metadata, fragment):
    status, body = imds.get(path, headers=headers, metadata=metadata)
    assert status == 400
    assert fragment in body["error"]
    if "api-version" in fragment:
        assert body["newest-versions"][0] == "2025-04-07"


def test_a_vm_can_have_an_imds_port_of_its_own(imds):
    status, _ = imds.get("/metadata/instance?api-version=2021-10-01")
    assert status == 404  # two VMs share the port: the bare path cannot know which is asking
    own = imds.emu.open_vm_imds("node1")
    status, doc = imds.get("/metadata/instance/compute?api-version=2021-10-01", base=own)
    assert (status, doc["name"]) == (200, "node1")


def test_instance_requests_are_rate_limited_per_vm(imds):
    imds.emu.configure(imds_rps=0.2)
    path = "/vms/node0/metadata/instance?api-version=2021-10-01"
    assert imds.get(path)[0] == 200
    assert imds.get(path)[0] == 429
    assert imds.get("/vms/node1/metadata/instance?api-version=2021-10-01")[0] == 200


def test_vm_info_carries_the_provider_id(imds):
    assert isinstance(imds.vm, VmInfo)
    assert parse_provider_id(imds.vm.provider_id).name == "node0"
