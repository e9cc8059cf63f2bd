"""Uniform scale sets in the ARM emulator, as the real azure-mgmt-compute and azure-mgmt-network
clients see them (arm-api.md §1.8, azure-features.md §2)."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError
from azure.core.rest import HttpRequest
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import VirtualMachineScaleSetVM
from azure.mgmt.network import NetworkManagementClient

from azure_cni_sim.arm import ArmConfig, ArmEmulator, VmInfo
from azure_cni_sim.arm.compute_throttling import RESOURCE_POLICY, SUBSCRIPTION_POLICY
from azure_cni_sim.armstate import DEFAULT_SUBSCRIPTION

pytestmark = pytest.mark.timeout(60)


class _Token:
    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)


class ScaleSetWorld:
    """One scale set ``pool`` with two instances in a /22, and real SDK clients."""

    def __init__(self, emu: ArmEmulator) -> None:
        self.emu = emu
        vnet = emu.add_vnet("vnet1", "198.18.0.0/16", {"nodes": "198.18.0.0/22",
                                                       "other": "198.18.8.0/24"})
        self.subnets = vnet.subnet_ids
        self.scale_set = emu.add_scale_set("pool", vnet.subnet_ids["nodes"])
        self.instances = [emu.add_instance(self.scale_set) for _ in range(2)]
        options: dict[str, Any] = {"base_url": emu.arm_url, "polling_interval": 0.01,
                                   "connection_verify": str(emu.ca_path), "retry_total": 0}
        token = _Token(emu.config.static_tokens[0])
        self.compute = ComputeManagementClient(token, DEFAULT_SUBSCRIPTION, **options)
        self.network = NetworkManagementClient(token, DEFAULT_SUBSCRIPTION, **options)

    def model(self, index: int = 0) -> Any:
        return self.compute.virtual_machine_scale_set_vms.get("rg1", "pool", str(index))

    def nic(self, index: int = 0) -> Any:
        return self.network.network_interfaces.get_virtual_machine_scale_set_network_interface(
            "rg1", "pool", str(index), "pool-nic")

    def with_ipconfigs(self, model: Any, *names: str, subnet: str = "nodes",
                       keep_image: bool = False) -> dict[str, Any]:
        """The model as JSON with these secondary ipConfigurations added, image cleared."""
        body: dict[str, Any] = copy.deepcopy(model.as_dict())
        if not keep_image:
            body["properties"]["storageProfile"].pop("imageReference")
        config = body["properties"]["networkProfileConfiguration"][
            "networkInterfaceConfigurations"][0]["properties"]
        for name in names:
            config["ipConfigurations"].append({"name": name, "properties": {
                "primary": False, "subnet": {"id": self.subnets[subnet]},
                "privateIPAddressVersion": "IPv4"}})
        return body

    def update(self, index: int, body: dict[str, Any], etag: str | None = None) -> Any:
        poller = self.compute.virtual_machine_scale_set_vms.begin_update(
            "rg1", "pool", str(index), VirtualMachineScaleSetVM(body), etag=etag,
            match_condition=MatchConditions.IfNotModified if etag else None)
        return poller.result()

    def secondary_addresses(self, index: int = 0) -> dict[str, str]:
        return {c.name: c.private_ip_address for c in self.nic(index).ip_configurations
                if not c.primary}


@pytest.fixture
def vmss() -> Iterator[ScaleSetWorld]:
    with ArmEmulator(ArmConfig(lro_polls=1)) as emu:
        world = ScaleSetWorld(emu)
        yield world
        world.compute.close()
        world.network.close()


def test_an_instance_reads_as_compute_and_network_report_it(vmss: ScaleSetWorld) -> None:
    model = vmss.model()
    first: VmInfo = vmss.instances[0]
    assert model.id == first.vm_id and model.name == "pool_0" and model.etag == '"1"'
    (config,) = model.network_profile_configuration.network_interface_configurations
    assert config.name == "pool-nic"
    assert [c.name for c in config.ip_configurations] == ["ipconfig1"]
    nic = vmss.nic()
    assert nic.id == first.nic_id
    assert nic.virtual_machine.id == first.vm_id
    assert nic.ip_configurations[0].private_ip_address == first.primary_ip
    listed = vmss.network.network_interfaces.list_virtual_machine_scale_set_network_interfaces(
        "rg1", "pool")
    assert sorted(str(n.id) for n in listed) == sorted(i.nic_id for i in vmss.instances)
    # a scale set's NICs are not the resource group's Network NICs
    assert list(vmss.network.network_interfaces.list("rg1")) == []
    # the SDK pins 2018-10-01 for these reads because newer versions are refused
    assert vmss.emu.request_count("GET", f"{first.nic_id}") == 1


def test_an_update_adds_ipconfigs_and_the_nic_api_shows_their_addresses(
        vmss: ScaleSetWorld) -> None:
    model = vmss.model()
    updated = vmss.update(0, vmss.with_ipconfigs(model, "azcni-a", "azcni-b"), model.etag)
    names = [c.name for c in updated.network_profile_configuration
             .network_interface_configurations[0].ip_configurations]
    assert names == ["ipconfig1", "azcni-a", "azcni-b"]
    assert updated.provisioning_state == "Succeeded"
    assert updated.etag == '"2"'
    # the model has no addresses; the read-only NIC API has them
    assert set(vmss.secondary_addresses()) == {"azcni-a", "azcni-b"}
    assert all(a.startswith("198.18.") for a in vmss.secondary_addresses().values())
    # only the instance written changed
    assert vmss.secondary_addresses(1) == {}
    # removing one keeps the other's address
    kept = vmss.secondary_addresses()["azcni-b"]
    body = vmss.with_ipconfigs(vmss.model())
    configs = body["properties"]["networkProfileConfiguration"][
        "networkInterfaceConfigurations"][0]["properties"]["ipConfigurations"]
    configs[:] = [c for c in configs if c["name"] != "azcni-a"]
    vmss.update(0, body, '"2"')
    assert vmss.secondary_addresses() == {"azcni-b": kept}


def test_a_stale_instance_etag_is_412(vmss: ScaleSetWorld) -> None:
    model = vmss.model()
    vmss.update(0, vmss.with_ipconfigs(model, "azcni-a"), model.etag)
    with pytest.raises(ResourceModifiedError) as raised:
        vmss.update(0, vmss.with_ipconfigs(model, "azcni-b"), model.etag)
    assert raised.value.status_code == 412
    assert set(vmss.secondary_addresses()) == {"azcni-a"}


def test_the_gallery_image_in_the_body_needs_a_permission_the_operator_lacks(
        vmss: ScaleSetWorld) -> None:
    model = vmss.model()
    with pytest.raises(HttpResponseError) as raised:
        vmss.update(0, vmss.with_ipconfigs(model, "azcni-a", keep_image=True), model.etag)
    assert raised.value.status_code == 403
    assert raised.value.error is not None and raised.value.error.code == "LinkedAuthorizationFailed"
    assert "Microsoft.Compute/galleries/images/versions/read" in str(raised.value)
    assert vmss.secondary_addresses() == {}


def test_the_model_has_no_private_address_member(vmss: ScaleSetWorld) -> None:
    body = vmss.with_ipconfigs(vmss.model(), "azcni-a")
    config = body["properties"]["networkProfileConfiguration"][
        "networkInterfaceConfigurations"][0]["properties"]["ipConfigurations"][-1]
    config["properties"]["privateIPAddress"] = "198.18.0.200"
    with pytest.raises(HttpResponseError) as raised:
        vmss.update(0, body)
    assert raised.value.status_code == 400
    assert "Could not find member 'privateIPAddress'" in str(raised.value)


def test_one_nic_config_uses_one_subnet(vmss: ScaleSetWorld) -> None:
    with pytest.raises(HttpResponseError) as raised:
        vmss.update(0, vmss.with_ipconfigs(vmss.model(), "azcni-a", subnet="other"))
    assert raised.value.error is not None
    assert raised.value.error.code == "VMScaleSetIpConfigurationsOnSameNicCannotUseDifferentSubnets"


def test_an_update_while_another_runs_on_the_instance_is_409(vmss: ScaleSetWorld) -> None:
    vmss.emu.configure(lro_polls=3, lro_timeout=60)
    client = vmss.compute
    started = client.send_request(HttpRequest(
        "PUT", f"{vmss.instances[0].vm_id}?api-version=2026-04-01",
        json=vmss.with_ipconfigs(vmss.model(), "azcni-a")))
    assert started.status_code == 200
    operation = started.headers["Azure-AsyncOperation"]
    assert "/providers/Microsoft.Compute/locations/eastus/operations/" in operation
    assert vmss.model().provisioning_state == "Updating"
    with pytest.raises(ResourceExistsError) as raised:
        vmss.update(0, vmss.with_ipconfigs(vmss.model(), "azcni-b"))
    assert raised.value.status_code == 409
    assert raised.value.error is not None and raised.value.error.code == "Conflict"
    # the other instance is not held up
    vmss.update(1, vmss.with_ipconfigs(vmss.model(1), "azcni-c"))
    assert set(vmss.secondary_addresses(1)) == {"azcni-c"}
    statuses = [client.send_request(HttpRequest("GET", operation)).json()["status"]
                for _ in range(4)]
    assert statuses == ["InProgress"] * 3 + ["Succeeded"]
    assert set(vmss.secondary_addresses()) == {"azcni-a"}


def test_a_throttled_update_while_another_runs_is_retried_after_retry_after(
        vmss: ScaleSetWorld) -> None:
    """429 with Retry-After (Compute's answer when the instance is busy or throttled) is
    retried by the SDK itself after the time asked for."""
    vmss.emu.inject_fault("PUT", vmss.instances[0].vm_id, 429, "RetryableError",
                          message="Another operation is in progress on the instance.",
                          headers={"Retry-After": "1"})
    compute = ComputeManagementClient(
        _Token(vmss.emu.config.static_tokens[0]), DEFAULT_SUBSCRIPTION,
        base_url=vmss.emu.arm_url, polling_interval=0.01,
        connection_verify=str(vmss.emu.ca_path))
    started = time.monotonic()
    compute.virtual_machine_scale_set_vms.begin_update(
        "rg1", "pool", "0",
        VirtualMachineScaleSetVM(vmss.with_ipconfigs(vmss.model(), "azcni-a"))).result()
    compute.close()
    assert time.monotonic() - started >= 1.0
    assert vmss.emu.request_count("PUT", vmss.instances[0].vm_id, status=429) == 1
    assert set(vmss.secondary_addresses()) == {"azcni-a"}


def test_a_failed_operation_rolls_the_instance_back(vmss: ScaleSetWorld) -> None:
    before = vmss.nic().ip_configurations[0].private_ip_address
    vmss.emu.fail_next_operation(vmss.instances[0].vm_id, "InternalExecutionError",
                                 "An internal execution error occurred.")
    with pytest.raises(HttpResponseError) as raised:
        vmss.update(0, vmss.with_ipconfigs(vmss.model(), "azcni-a"))
    assert raised.value.error is not None
    assert raised.value.error.code == "InternalExecutionError"
    assert vmss.secondary_addresses() == {}
    assert vmss.model().provisioning_state == "Failed"
    # a new write clears Failed
    vmss.update(0, vmss.with_ipconfigs(vmss.model(), "azcni-a"))
    assert vmss.model().provisioning_state == "Succeeded"
    assert set(vmss.secondary_addresses()) == {"azcni-a"}
    assert vmss.nic().ip_configurations[0].private_ip_address == before


def test_the_per_instance_update_limit_is_twelve_a_minute(vmss: ScaleSetWorld) -> None:
    original = vmss.model()
    for i in range(12):  # add azcni-0, remove it, add it, ...
        vmss.update(0, vmss.with_ipconfigs(original, *(["azcni-0"] if i % 2 == 0 else [])))
    with pytest.raises(HttpResponseError) as raised:
        vmss.update(0, vmss.with_ipconfigs(vmss.model(), "azcni-x"))
    assert raised.value.status_code == 429
    assert raised.value.error is not None
    assert raised.value.error.code == "OperationNotAllowed"
    assert raised.value.response is not None
    headers = raised.value.response.headers  # type: ignore[attr-defined]
    assert 1 <= int(headers["Retry-After"]) <= 5
    assert f"{RESOURCE_POLICY};0" in headers["x-ms-ratelimit-remaining-resource"]
    # the limit is the instance's: the other instance is written at once
    vmss.update(1, vmss.with_ipconfigs(vmss.model(1), "azcni-y"))
    assert set(vmss.secondary_addresses(1)) == {"azcni-y"}


def test_scale_set_nics_are_read_only_and_only_on_2018_10_01(vmss: ScaleSetWorld) -> None:
    nic_id = vmss.instances[0].nic_id
    client = vmss.network
    response = client.send_request(HttpRequest("GET", f"{nic_id}?api-version=2026-03-01"))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "NoRegisteredProviderFound"
    put = HttpRequest("PUT", f"{nic_id}?api-version=2018-10-01", json={})
    assert client.send_request(put).status_code == 405


def test_the_subscriptions_instance_updates_share_one_bucket(vmss: ScaleSetWorld) -> None:
    vmss.emu.configure(compute_subscription_vm_updates_per_minute=2)
    vmss.update(0, vmss.with_ipconfigs(vmss.model(0), "azcni-a"))
    vmss.update(1, vmss.with_ipconfigs(vmss.model(1), "azcni-b"))
    with pytest.raises(HttpResponseError) as raised:
        vmss.update(0, vmss.with_ipconfigs(vmss.model(0), "azcni-c"))
    assert raised.value.status_code == 429
    assert raised.value.response is not None
    headers = raised.value.response.headers  # type: ignore[attr-defined]
    assert f"{SUBSCRIPTION_POLICY};0" in headers["x-ms-ratelimit-remaining-resource"]
    # ARM's own bucket had room: a client can tell Compute's refusal from ARM's
    assert int(headers["x-ms-ratelimit-remaining-subscription-writes"]) > 0
    assert "subscription" in str(raised.value)
