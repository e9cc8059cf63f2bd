"""The ARM emulator as the real SDK and plain HTTPS clients see it (arm-api.md §6)."""

from __future__ import annotations

import json
import math
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError
from azure.mgmt.network import NetworkManagementClient

from azure_cni.cloud.azure import AzureAdapter
from azure_cni.cloud.port import NewIPConfiguration
from azure_cni_sim.arm import ArmConfig, ArmEmulator, Topology, VmInfo
from azure_cni_sim.armstate import (
    DEFAULT_SUBSCRIPTION,
    DIFFERENT_SUBNETS_CODE,
    MAX_IP_CONFIGURATIONS,
    NIC_LIMIT_CODE,
)

pytestmark = pytest.mark.timeout(60)
API = "api-version=2026-03-01"


class Arm:
    """An emulator with a /22, a /29 and a /24 subnet and two VMs, plus plain-HTTPS helpers."""

    def __init__(self, emu: ArmEmulator) -> None:
        self.emu = emu
        vnet = emu.add_vnet("vnet1", ["198.18.0.0/16"],
                            {"nodes": "198.18.0.0/22", "tiny": "198.18.8.0/29",
                             "other": "198.18.12.0/24"})
        self.subnets = vnet.subnet_ids
        self.vms = [emu.add_vm(f"vm{i}", vnet.subnet_ids["nodes"]) for i in range(2)]
        self.tls = ssl.create_default_context(cafile=str(emu.ca_path))
        self.token = emu.config.static_tokens[0]

    def call(self, method: str, path: str, body: Any = None, *, query: str = API,
             token: str | None = "default", headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, str], Any]:
        url = f"{self.emu.arm_url.rstrip('/')}{path}" + (f"?{query}" if query else "")
        request = urllib.request.Request(url, method=method, headers=dict(headers or {}))
        if token is not None:
            request.add_header("Authorization",
                               f"Bearer {self.token if token == 'default' else token}")
        if body is not None:
            request.data = json.dumps(body).encode()
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, context=self.tls, timeout=10) as response:
                return response.status, dict(response.headers), _json(response.read())
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), _json(e.read())

    def sdk(self) -> NetworkManagementClient:
        return NetworkManagementClient(_SyncToken(self.token), DEFAULT_SUBSCRIPTION,
                                       base_url=self.emu.arm_url,
                                       connection_verify=str(self.emu.ca_path),
                                       polling_interval=0.01, retry_total=0)

    def nic_body(self, vm: VmInfo) -> dict[str, Any]:
        status, _, body = self.call("GET", vm.nic_id)
        assert status == 200
        return body


def _json(raw: bytes) -> Any:
    return json.loads(raw) if raw else None


class _SyncToken:
    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)


def secondary(name: str, subnet_id: str, **props: Any) -> dict[str, Any]:
    return {"name": name, "properties": {"subnet": {"id": subnet_id}, "primary": False,
                                         "privateIPAllocationMethod": "Dynamic", **props}}


@pytest.fixture
def arm() -> Iterator[Arm]:
    with ArmEmulator(ArmConfig(lro_polls=1)) as emu:
        yield Arm(emu)


def error_code(raised: pytest.ExceptionInfo[HttpResponseError]) -> str:
    assert raised.value.error is not None
    return str(raised.value.error.code)


# -- reading --------------------------------------------------------------------------------------


def test_a_nic_reads_like_nrps(arm):
    status, headers, nic = arm.call("GET", arm.vms[0].nic_id)
    assert status == 200
    assert nic["etag"].startswith('W/"') and len(nic["etag"]) == 36 + 4
    assert nic["type"] == "Microsoft.Network/networkInterfaces"
    props = nic["properties"]
    assert props["provisioningState"] == "Succeeded"
    assert props["virtualMachine"]["id"] == arm.vms[0].vm_id
    assert len(props["macAddress"].split("-")) == 6
    ipc = props["ipConfigurations"][0]
    assert ipc["id"] == f"{arm.vms[0].nic_id}/ipConfigurations/ipconfig1"
    assert ipc["etag"] == nic["etag"]
    assert ipc["properties"]["privateIPAddress"] == "198.18.0.4"  # .0-.3 are Azure's
    assert ipc["properties"]["primary"] is True
    assert headers["x-ms-ratelimit-remaining-subscription-reads"].isdigit()
    assert "x-ms-request-id" in headers


def test_paths_are_case_insensitive(arm):
    status, _, nic = arm.call("GET", arm.vms[0].nic_id.lower().replace("vm0-nic", "VM0-NIC"))
    assert status == 200
    assert nic["name"] == "vm0-nic"


def test_the_api_version_is_required_and_checked(arm):
    status, _, body = arm.call("GET", arm.vms[0].nic_id, query="")
    assert (status, body["error"]["code"]) == (400, "MissingApiVersionParameter")
    status, _, body = arm.call("GET", arm.vms[0].nic_id, query="api-version=2015-01-01")
    assert (status, body["error"]["code"]) == (400, "NoRegisteredProviderFound")
    status, _, _ = arm.call("GET", arm.vms[0].vm_id, query="api-version=2026-04-01")
    assert status == 200


def test_a_bearer_token_is_required(arm):
    status, headers, body = arm.call("GET", arm.vms[0].nic_id, token=None)
    assert (status, body["error"]["code"]) == (401, "AuthenticationFailed")
    assert headers["WWW-Authenticate"].startswith("Bearer ")
    status, _, body = arm.call("GET", arm.vms[0].nic_id, token="forged")
    assert (status, body["error"]["code"]) == (401, "InvalidAuthenticationToken")
    arm.emu.configure(token_lifetime=-1)
    status, _, body = arm.call("GET", arm.vms[0].nic_id, token=arm.emu.issue_token())
    assert (status, body["error"]["code"]) == (401, "ExpiredAuthenticationToken")


def test_unknown_resources_are_not_found(arm):
    base = f"/subscriptions/{DEFAULT_SUBSCRIPTION}/resourceGroups/rg1/providers"
    status, _, body = arm.call("GET", f"{base}/Microsoft.Network/networkInterfaces/nope")
    assert (status, body["error"]["code"]) == (404, "ResourceNotFound")
    assert "Microsoft.Network/networkInterfaces/nope" in body["error"]["message"]
    status, _, body = arm.call(
        "GET", f"/subscriptions/{DEFAULT_SUBSCRIPTION}/resourceGroups/nope/providers/"
               "Microsoft.Network/networkInterfaces/vm0-nic")
    assert (status, body["error"]["code"]) == (404, "ResourceGroupNotFound")


def test_a_served_path_with_another_method_is_not_allowed(arm):
    status, _, body = arm.call("DELETE", arm.vms[0].vm_id, query="api-version=2026-04-01")
    assert (status, body["error"]["code"]) == (405, "MethodNotAllowed")
    status, _, body = arm.call("GET", f"{arm.vms[0].nic_id}/nonsense")
    assert (status, body["error"]["code"]) == (404, "InvalidResourceType")


def test_nic_lists_come_in_pages_the_sdk_follows(arm):
    arm.emu.configure(list_page_size=1)
    status, _, first = arm.call("GET", arm.vms[0].nic_id.rsplit("/", 1)[0])
    assert status == 200
    assert [n["name"] for n in first["value"]] == ["vm0-nic"]
    assert first["nextLink"].startswith(arm.emu.arm_url)
    with arm.sdk() as client:
        assert sorted(n.name for n in client.network_interfaces.list("rg1")) == \
            ["vm0-nic", "vm1-nic"]
    assert arm.emu.request_count("GET", "*/networkinterfaces") == 1 + 2


def test_every_answer_says_what_is_left_of_arms_buckets(arm):
    """ARM counts down the caller's buckets in every response (arm-api.md §1.5, §2.3)."""
    nic_id = arm.vms[0].nic_id
    reads, times = [], []
    for _ in range(3):
        times.append(time.monotonic())
        reads.append(arm.call("GET", nic_id)[1])
    times.append(time.monotonic())
    counts = [int(h["x-ms-ratelimit-remaining-subscription-reads"]) for h in reads]
    assert counts[0] <= 250 - 1
    # each read takes one token; the bucket refills 250 per minute meanwhile (a loaded
    # machine may take a token's worth of time, 0.24 s, between two reads)
    for i in (1, 2):
        refilled = (times[i + 1] - times[i - 1]) * 250 / 60
        assert counts[i - 1] - 1 <= counts[i] <= counts[i - 1] - 1 + math.ceil(refilled), (
            counts, refilled)
    assert int(reads[-1]["x-ms-ratelimit-remaining-subscription-global-reads"]) > counts[2]
    body = arm.nic_body(arm.vms[0])
    _, written, _ = arm.call("PUT", nic_id, body)
    assert written["x-ms-ratelimit-remaining-subscription-writes"] == "199"
    assert written["x-ms-ratelimit-remaining-subscription-global-writes"] == str(15 * 200 - 1)
    assert "x-ms-ratelimit-remaining-subscription-reads" not in written


def test_vnet_usage_and_address_checks(arm):
    with arm.sdk() as client:
        usage = {u.id: u for u in client.virtual_networks.list_usage("rg1", "vnet1")}
        nodes = usage[arm.subnets["nodes"]]
        assert (nodes.current_value, nodes.limit) == (2, 1024 - 5)
        assert nodes.name.value == "SubnetSpace"
        taken = client.virtual_networks.check_ip_address_availability(
            "rg1", "vnet1", ip_address=arm.vms[0].primary_ip)
        assert taken.available is False
        assert taken.available_ip_addresses[:2] == ["198.18.0.6", "198.18.0.7"]
        assert client.virtual_networks.check_ip_address_availability(
            "rg1", "vnet1", ip_address="198.18.0.100").available is True


def test_tags_are_patched_without_an_operation(arm):
    before = arm.nic_body(arm.vms[0])
    with arm.sdk() as client:
        nic = client.network_interfaces.update_tags("rg1", "vm0-nic", {"tags": {"team": "net"}})
    assert nic.tags == {"team": "net"}
    assert nic.etag != before["etag"]
    assert arm.emu.request_count("GET", "*/operations/*") == 0


# -- writing --------------------------------------------------------------------------------------


def test_a_nic_write_is_a_long_running_operation(arm):
    arm.emu.configure(lro_polls=2, poll_retry_after=0.05)
    vm = arm.vms[0]
    before = arm.nic_body(vm)
    body = before
    body["properties"]["ipConfigurations"].append(secondary("azcni-a", arm.subnets["nodes"]))
    status, headers, accepted = arm.call("PUT", vm.nic_id, body)
    assert status == 200
    assert headers["Retry-After"] == "10"
    assert headers["x-ms-ratelimit-remaining-subscription-writes"].isdigit()
    assert accepted["properties"]["provisioningState"] == "Updating"
    assert accepted["etag"] != before["etag"]
    poll_url = headers["Azure-AsyncOperation"]
    assert poll_url.startswith(f"{arm.emu.arm_url}subscriptions/{DEFAULT_SUBSCRIPTION}/"
                               "providers/Microsoft.Network/locations/eastus/operations/")
    poll_path, _, query = poll_url.removeprefix(arm.emu.arm_url.rstrip("/")).partition("?")
    answers = [arm.call("GET", poll_path, query=query) for _ in range(3)]
    assert [a[2]["status"] for a in answers] == ["InProgress", "InProgress", "Succeeded"]
    assert answers[0][1]["Retry-After"] == "0.05"
    assert "Retry-After" not in answers[2][1]
    final = arm.nic_body(vm)
    assert final["properties"]["provisioningState"] == "Succeeded"
    # one fresh etag per successful write: the PUT's answer names the version that succeeded
    assert final["etag"] == accepted["etag"] != before["etag"]
    assert final["properties"]["ipConfigurations"][1]["properties"]["privateIPAddress"] == \
        "198.18.0.6"  # .4 and .5 are the VMs' primaries: lowest free


def test_the_sdk_polls_as_often_as_configured(arm):
    arm.emu.configure(lro_polls=3)
    with arm.sdk() as client:
        nic = client.network_interfaces.get("rg1", "vm0-nic")
        nic.ip_configurations.append(secondary("azcni-a", arm.subnets["nodes"]))
        client.network_interfaces.begin_create_or_update("rg1", "vm0-nic", nic).result()
    assert arm.emu.request_count("GET", "*/operations/*") == 4  # 3 InProgress, 1 Succeeded


def test_a_write_while_an_operation_runs_is_another_operation_in_progress(arm):
    arm.emu.configure(lro_polls=100, conflict_retry_after=1)
    vm = arm.vms[0]
    body = arm.nic_body(vm)
    assert arm.call("PUT", vm.nic_id, body)[0] == 200
    status, headers, refused = arm.call("PUT", vm.nic_id, body)
    assert (status, refused["error"]["code"]) == (409, "AnotherOperationInProgress")
    assert "/operations/" in refused["error"]["message"]
    assert headers["Retry-After"] == "1"


def test_if_match_protects_against_lost_updates(arm):
    vm = arm.vms[0]
    body = arm.nic_body(vm)
    status, _, refused = arm.call("PUT", vm.nic_id, body, headers={"If-Match": 'W/"stale"'})
    assert (status, refused["error"]["code"]) == (412, "PreconditionFailed")
    assert arm.call("PUT", vm.nic_id, body, headers={"If-Match": body["etag"]})[0] == 200


def test_the_256th_ipconfiguration_is_accepted_and_the_257th_refused(arm):
    with arm.sdk() as client:
        nic = client.network_interfaces.get("rg1", "vm0-nic")
        too_many = nic.as_dict()
        too_many["properties"]["ipConfigurations"] += [
            secondary(f"azcni-{i}", arm.subnets["nodes"]) for i in range(MAX_IP_CONFIGURATIONS)]
        with pytest.raises(HttpResponseError) as refused:
            client.network_interfaces.begin_create_or_update("rg1", "vm0-nic", too_many)
        assert refused.value.status_code == 400
        assert error_code(refused) == NIC_LIMIT_CODE
        too_many["properties"]["ipConfigurations"].pop()
        done = client.network_interfaces.begin_create_or_update("rg1", "vm0-nic",
                                                                too_many).result()
    assert len(done.ip_configurations) == MAX_IP_CONFIGURATIONS


@pytest.mark.parametrize("change", ["drop", "rename", "demote"])
def test_the_primary_cannot_be_removed_or_renamed(arm, change):
    with arm.sdk() as client:
        body = client.network_interfaces.get("rg1", "vm0-nic").as_dict()
        configs = body["properties"]["ipConfigurations"]
        configs.append(secondary("azcni-a", arm.subnets["nodes"]))
        if change == "drop":
            configs.pop(0)
            configs[0]["properties"]["primary"] = True
        elif change == "rename":
            configs[0]["name"] = "renamed"
        else:
            configs[0]["properties"]["primary"] = False
            configs[1]["properties"]["primary"] = True
        with pytest.raises(HttpResponseError) as refused:
            client.network_interfaces.begin_create_or_update("rg1", "vm0-nic", body)
    assert error_code(refused) == "IpConfigDeleteNotSupported"
    assert "ipconfig1 cannot be deleted" in str(refused.value)


@pytest.mark.parametrize(("build", "code"), [
    (lambda a: secondary("x", a.subnets["nodes"] + "-gone"), "InvalidResourceReference"),
    (lambda a: secondary("x", a.subnets["other"]), DIFFERENT_SUBNETS_CODE),
    (lambda a: secondary("x", a.subnets["nodes"], privateIPAllocationMethod="Static",
                         privateIPAddress="198.18.0.5"), "PrivateIPAddressIsAllocated"),
    (lambda a: secondary("x", a.subnets["nodes"], privateIPAllocationMethod="Static",
                         privateIPAddress="198.18.0.4"), "PrivateIPAddressInUse"),
    (lambda a: secondary("x", a.subnets["nodes"], privateIPAllocationMethod="Static",
                         privateIPAddress="198.18.3.255"), "PrivateIPAddressInReservedRange"),
    (lambda a: secondary("x", a.subnets["nodes"], privateIPAllocationMethod="Static",
                         privateIPAddress="198.18.200.9"), "PrivateIPAddressNotInSubnet"),
])
def test_invalid_ipconfigurations_are_refused(arm, build, code):
    vm = arm.vms[0]
    body = arm.nic_body(vm)
    body["properties"]["ipConfigurations"].append(build(arm))
    status, _, refused = arm.call("PUT", vm.nic_id, body)
    assert (status, refused["error"]["code"]) == (400, code)
    assert arm.emu.nic_addresses(vm.nic_id) == (vm.primary_ip,)


def test_addresses_are_allocated_lowest_free_and_azures_five_are_never_used(arm):
    vm = arm.emu.add_vm("tiny", arm.subnets["tiny"])  # 198.18.8.0/29: .4 .5 .6 usable
    assert vm.primary_ip == "198.18.8.4"
    with arm.sdk() as client:
        def write(*names: str) -> list[str]:
            body = client.network_interfaces.get("rg1", "tiny-nic").as_dict()
            configs = [c for c in body["properties"]["ipConfigurations"]
                       if c["properties"]["primary"] or c["name"] in names]
            known = {c["name"] for c in configs}
            configs += [secondary(n, arm.subnets["tiny"]) for n in names if n not in known]
            body["properties"]["ipConfigurations"] = configs
            done = client.network_interfaces.begin_create_or_update("rg1", "tiny-nic",
                                                                    body).result()
            return [c.private_ip_address for c in done.ip_configurations]

        assert write("a", "b") == ["198.18.8.4", "198.18.8.5", "198.18.8.6"]
        with pytest.raises(HttpResponseError) as full:
            write("a", "b", "c")
        assert error_code(full) == "SubnetIsFull"
        assert "does not have enough capacity for 1 IP addresses" in str(full.value)
        assert write("b") == ["198.18.8.4", "198.18.8.6"]
        assert write("b", "c") == ["198.18.8.4", "198.18.8.6", "198.18.8.5"]


def test_a_failed_operation_rolls_the_nic_back(arm):
    vm = arm.vms[0]
    arm.emu.fail_next_operation(vm.nic_id, "InternalServerError", "boom")
    with arm.sdk() as client:
        nic = client.network_interfaces.get("rg1", "vm0-nic")
        nic.ip_configurations.append(secondary("azcni-a", arm.subnets["nodes"]))
        poller = client.network_interfaces.begin_create_or_update("rg1", "vm0-nic", nic)
        with pytest.raises(HttpResponseError) as failed:
            poller.result()
    assert failed.value.status_code == 200
    assert error_code(failed) == "InternalServerError"
    assert arm.emu.nic_addresses(vm.nic_id) == (vm.primary_ip,)
    assert arm.nic_body(vm)["properties"]["provisioningState"] == "Failed"
    assert set(arm.emu.subnet_usage(arm.subnets["nodes"])) == {v.primary_ip for v in arm.vms}


# -- throttling and faults ------------------------------------------------------------------------


def test_reads_beyond_the_bucket_are_throttled_per_principal(arm):
    arm.emu.configure(read_burst=2, read_qps=0.01)
    nic_id = arm.vms[0].nic_id
    assert [arm.call("GET", nic_id)[0] for _ in range(2)] == [200, 200]
    status, headers, body = arm.call("GET", nic_id)
    assert (status, body["error"]["code"]) == (429, "SubscriptionRequestsThrottled")
    assert int(headers["Retry-After"]) >= 1
    assert headers["x-ms-ratelimit-remaining-subscription-reads"] == "0"
    # another principal has a bucket of its own
    assert arm.call("GET", nic_id, token=arm.emu.issue_token("someone-else"))[0] == 200


def test_throttling_can_be_switched_off(arm):
    arm.emu.configure(read_burst=1, read_qps=0.01, throttling=False)
    assert {arm.call("GET", arm.vms[0].nic_id)[0] for _ in range(5)} == {200}


def test_faults_are_one_shot_and_match_method_and_path(arm):
    nic_id = arm.vms[0].nic_id
    arm.emu.inject_fault("GET", "*/networkinterfaces/vm0-*", 503, "ServiceUnavailable",
                         headers={"x-test": "1"}, count=2)
    assert arm.call("GET", arm.vms[1].nic_id)[0] == 200
    first, second, third = (arm.call("GET", nic_id) for _ in range(3))
    assert (first[0], first[2]["error"]["code"], first[1]["x-test"]) == \
        (503, "ServiceUnavailable", "1")
    assert second[0] == 503
    assert third[0] == 200
    assert arm.emu.request_count("GET", nic_id) == 3
    assert arm.emu.request_count("GET", nic_id, status=503) == 2


def test_a_second_writer_after_a_read_makes_the_readers_write_stale(arm):
    vm = arm.vms[0]
    arm.emu.race_next_reads(vm.nic_id, count=1)
    body = arm.nic_body(vm)
    status, _, refused = arm.call("PUT", vm.nic_id, body, headers={"If-Match": body["etag"]})
    assert (status, refused["error"]["code"]) == (412, "PreconditionFailed")
    again = arm.nic_body(vm)  # the race was used up: this read stays current
    assert again["tags"] == {"azure-cni-sim-second-writer": "1"}
    assert arm.call("PUT", vm.nic_id, again, headers={"If-Match": again["etag"]})[0] == 200


def test_a_failed_ipconfig_stays_failed_until_the_nic_is_written(arm):
    vm = arm.vms[0]
    with arm.sdk() as client:
        nic = client.network_interfaces.get("rg1", "vm0-nic")
        nic.ip_configurations.append(secondary("azcni-a", arm.subnets["nodes"]))
        client.network_interfaces.begin_create_or_update("rg1", "vm0-nic", nic).result()
    arm.emu.fail_ipconfig(vm.nic_id, "azcni-a")

    def states() -> dict[str, str]:
        body = arm.nic_body(vm)
        return {"nic": body["properties"]["provisioningState"],
                **{c["name"]: c["properties"]["provisioningState"]
                   for c in body["properties"]["ipConfigurations"]}}

    assert states() == {"nic": "Failed", "ipconfig1": "Succeeded", "azcni-a": "Failed"}
    assert states()["azcni-a"] == "Failed"  # reading does not repair it
    with arm.sdk() as client:
        nic = client.network_interfaces.get("rg1", "vm0-nic")
        client.network_interfaces.begin_create_or_update("rg1", "vm0-nic", nic).result()
    assert set(states().values()) == {"Succeeded"}


def test_latency_is_added_per_method(arm):
    arm.emu.set_latency("GET", 0.3)
    started = time.monotonic()
    arm.call("GET", arm.vms[0].nic_id)
    assert time.monotonic() - started >= 0.3


# -- the NIC-change hook --------------------------------------------------------------------------


async def test_nic_changes_are_published_before_the_client_sees_success(arm):
    seen: list[tuple[str, str, tuple[str, ...], tuple[str, ...]]] = []

    async def program_routes(nic_id: str, vm_id: str, old: tuple[str, ...],
                             new: tuple[str, ...]) -> None:
        seen.append((nic_id, vm_id, old, new))

    unsubscribe = arm.emu.on_nic_change(program_routes)
    vm = arm.vms[0]
    async with AzureAdapter(arm.emu.azure_settings(polling_interval=0.01),
                            credential=arm.emu.credential()) as adapter:
        after = await adapter.update_ip_configurations(
            vm.nic_id, add=[NewIPConfiguration("azcni-a"), NewIPConfiguration("azcni-b")])
        assert len(seen) == 1  # in place by the time the write returned
        added = tuple(c.address for c in after.ip_configurations)
        assert seen[0] == (vm.nic_id, vm.vm_id, (vm.primary_ip,), added)
        await adapter.update_ip_configurations(vm.nic_id, remove=["azcni-a"])
        assert seen[1][2] == added
        assert seen[1][3] == (added[0], added[2])
        await adapter.update_ip_configurations(vm.nic_id, add=[NewIPConfiguration("azcni-a")])
        assert len(seen) == 3
        unsubscribe()
        await adapter.update_ip_configurations(vm.nic_id, remove=["azcni-a", "azcni-b"])
    assert len(seen) == 3


def test_an_operation_nobody_polls_still_finishes(arm):
    arm.emu.configure(lro_polls=1000, lro_timeout=0.3)
    done = threading.Event()
    arm.emu.on_nic_change(lambda *change: done.set())
    vm = arm.vms[0]
    body = arm.nic_body(vm)
    body["properties"]["ipConfigurations"].append(secondary("azcni-a", arm.subnets["nodes"]))
    assert arm.call("PUT", vm.nic_id, body)[0] == 200
    assert done.wait(10)
    assert arm.nic_body(vm)["properties"]["provisioningState"] == "Succeeded"


# -- admin API, topology and the command line -----------------------------------------------------


def test_the_admin_api_drives_the_emulator_from_another_process(arm):
    def admin(method: str, what: str, body: Any = None) -> Any:
        status, _, answer = arm.call(method, f"/_sim/{what}", body, query="", token=None)
        assert status in (200, 201), answer
        return answer

    vnet = admin("POST", "vnets", {"name": "vnet2", "addressSpace": ["198.19.0.0/16"],
                                   "subnets": {"pods": "198.19.0.0/24"}})
    vm = admin("POST", "vms", {"name": "remote", "subnetId": vnet["subnet_ids"]["pods"]})
    assert vm["primary_ip"] == "198.19.0.4"
    assert vm["providerID"] == f"azure://{vm['vm_id']}"
    assert vm["vm_id"] in {v["id"] for v in admin("GET", "state")["vms"]}
    admin("POST", "faults", {"method": "GET", "path": vm["nic_id"], "status": 500,
                             "code": "InternalServerError"})
    assert arm.call("GET", vm["nic_id"])[0] == 500
    assert admin("GET", f"requests?method=GET&path={vm['nic_id']}")["count"] == 1
    assert admin("PATCH", "config", {"lro_polls": 0})["lro_polls"] == 0
    token = admin("POST", "tokens", {"principal": "remote-operator"})["token"]
    body = arm.nic_body(arm.vms[0])
    body["properties"]["ipConfigurations"].append(secondary("azcni-a", arm.subnets["nodes"]))
    status, headers, _ = arm.call("PUT", arm.vms[0].nic_id, body, token=token)
    assert status == 200
    poll_path, _, query = headers["Azure-AsyncOperation"].removeprefix(
        arm.emu.arm_url.rstrip("/")).partition("?")
    arm.call("GET", poll_path, query=query)
    events = admin("GET", "events?after=0&timeout=5")
    assert events["events"][-1]["nic_id"] == arm.vms[0].nic_id
    assert len(events["events"][-1]["new"]) == 2


def test_a_topology_document_creates_vnets_and_vms():
    doc = {"vnets": [{"name": "hub", "addressSpace": ["198.18.0.0/16"],
                      "subnets": {"nodes": "198.18.4.0/24"}, "resourceGroup": "net"}],
           "vms": [{"name": "a", "subnet": "hub/nodes"},
                   {"name": "b", "subnet": "hub/nodes", "primaryIP": "198.18.4.100",
                    "scaleSet": "flex"}]}
    with ArmEmulator() as emu:
        vms = Topology.from_mapping(doc).apply(emu)
        assert [v.primary_ip for v in vms] == ["198.18.4.4", "198.18.4.100"]
        assert "/resourceGroups/net/" in vms[0].vm_id
        with pytest.raises(ValueError, match="unknown subnet"):
            Topology.from_mapping({"vms": [{"name": "c", "subnet": "hub/none"}]}).apply(emu)


def test_the_command_line_serves_until_sigterm(tmp_path: Path):
    state = tmp_path / "arm"
    proc = subprocess.Popen(
        [sys.executable, "-m", "azure_cni_sim.cli", "arm", "--vms", "2",
         "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("ready"):
                break
        assert any(line.startswith("CA bundle") for line in lines), lines
        described = json.loads((state / "endpoints.json").read_text())
        assert [vm["primaryIP"] for vm in described["vms"]] == ["198.18.0.4", "198.18.0.5"]
        tls = ssl.create_default_context(cafile=described["ca"])
        with urllib.request.urlopen(f"{described['arm']}_sim/state", context=tls,
                                    timeout=10) as response:
            assert len(json.loads(response.read())["vms"]) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- running on the caller's loop -----------------------------------------------------------------


async def test_the_emulator_runs_on_the_callers_event_loop_too():
    async with ArmEmulator() as emu:
        vnet = emu.add_vnet("v", "198.18.0.0/16", {"s": "198.18.0.0/24"})
        vm = emu.add_vm("inloop", vnet.subnet_ids["s"])
        async with AzureAdapter(emu.azure_settings(polling_interval=0.01),
                                credential=emu.credential()) as adapter:
            nic = await adapter.update_ip_configurations(
                vm.nic_id, add=[NewIPConfiguration("azcni-a")])
    assert len(nic.ip_configurations) == 2
