"""A standalone agent's pool: the NIC's secondary addresses as IMDS lists them, read from the
IMDS emulator over HTTP; throttling, unreachable endpoints and malformed documents."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest

from azure_cni.agent.vm.imds_source import (
    InstanceMetadataSource,
    MalformedMetadata,
    NicAddresses,
    parse_network_document,
    pool_from_nic,
)
from azure_cni.api.nodeippool import IPState, NodeIPPool
from azure_cni.api.settings import StandaloneSettings
from azure_cni.cloud.azure import AzureAdapter
from azure_cni.cloud.port import NewIPConfiguration
from azure_cni_sim.arm import ArmConfig, ArmEmulator, VmInfo

pytestmark = pytest.mark.timeout(60)

#: the example in the reference (azure-features.md §5), with two secondary addresses
DOCUMENT: dict[str, Any] = {"interface": [{
    "ipv4": {"ipAddress": [{"privateIpAddress": "10.0.0.4", "publicIpAddress": ""},
                           {"privateIpAddress": "10.0.0.5", "publicIpAddress": ""},
                           {"privateIpAddress": "10.0.0.6", "publicIpAddress": "20.1.2.3"}],
             "subnet": [{"address": "10.0.0.0", "prefix": "24"}]},
    "ipv6": {"ipAddress": []},
    "macAddress": "000D3AF806EC"}]}


def test_the_first_address_is_the_primary_and_the_rest_are_the_pool() -> None:
    nic = parse_network_document(DOCUMENT)
    assert nic == NicAddresses("000D3AF806EC", "10.0.0.4", "10.0.0.0/24",
                               ("10.0.0.5", "10.0.0.6"))
    pool = pool_from_nic("vm0", nic)
    assert [(ip.address, ip.state) for ip in pool.status.ips] == [
        ("10.0.0.5", IPState.AVAILABLE), ("10.0.0.6", IPState.AVAILABLE)]
    assert pool.status.nic is not None
    assert (pool.status.nic.primary_ip, pool.status.nic.subnet_cidr) == ("10.0.0.4",
                                                                         "10.0.0.0/24")
    pool.spec.validate()


def test_another_nic_is_chosen_by_its_mac_in_any_spelling() -> None:
    document = copy.deepcopy(DOCUMENT)
    second = copy.deepcopy(document["interface"][0])
    second["macAddress"] = "000D3AF806ED"
    second["ipv4"]["ipAddress"] = [{"privateIpAddress": "10.0.1.4", "publicIpAddress": ""},
                                   {"privateIpAddress": "10.0.1.9", "publicIpAddress": ""}]
    second["ipv4"]["subnet"] = [{"address": "10.0.1.0", "prefix": "24"}]
    document["interface"].append(second)
    nic = parse_network_document(document, "00:0d:3a:f8:06:ed")
    assert (nic.primary_ip, nic.secondary) == ("10.0.1.4", ("10.0.1.9",))
    with pytest.raises(MalformedMetadata, match="no interface has MAC address 000D3AF806EF"):
        parse_network_document(document, "00-0D-3A-F8-06-EF")


def _broken(path: list[Any], value: Any) -> dict[str, Any]:
    document = copy.deepcopy(DOCUMENT)
    node: Any = document
    for step in path[:-1]:
        node = node[step]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return document


IPV4 = ["interface", 0, "ipv4"]


@pytest.mark.parametrize(("document", "message"), [
    ([], "the document has no 'interface'"),
    ({"interface": []}, "lists no network interface"),
    ({"interface": "eth0"}, "interface is not a list"),
    (_broken(["interface", 0, "macAddress"], KeyError), "interface\\[0\\] has no 'macAddress'"),
    (_broken([*IPV4, "ipAddress"], []), "ipAddress is empty"),
    (_broken([*IPV4, "ipAddress", 1, "privateIpAddress"], "10.0.0.300"),
     "'10.0.0.300' is not an IPv4 address"),
    (_broken([*IPV4, "ipAddress", 1, "privateIpAddress"], "fd00::5"), "not an IPv4 address"),
    (_broken([*IPV4, "ipAddress", 1, "privateIpAddress"], "10.0.9.5"),
     "10.0.9.5 is outside the NIC's subnet 10.0.0.0/24"),
    (_broken([*IPV4, "ipAddress", 2, "privateIpAddress"], "10.0.0.5"), "lists 10.0.0.5 twice"),
    (_broken([*IPV4, "subnet"], []), "subnet is empty"),
    (_broken([*IPV4, "subnet", 0, "prefix"], "33"), "is not an IPv4 subnet"),
    (_broken([*IPV4, "ipAddress", 0], "10.0.0.4"), "has no 'privateIpAddress'"),
])
def test_a_document_imds_would_not_send_is_refused_with_the_reason(document, message) -> None:
    with pytest.raises(MalformedMetadata, match=message):
        parse_network_document(document)


# -- against the IMDS emulator, over HTTP ----------------------------------------------------------


class Vm:
    """One emulated VM whose IMDS answers on a port of its own (as 169.254.169.254 would)."""

    def __init__(self, emu: ArmEmulator) -> None:
        self.emu = emu
        vnet = emu.add_vnet("vnet", "198.18.0.0/16", {"nodes": "198.18.0.0/24"})
        self.info: VmInfo = emu.add_vm("vm0", vnet.subnet_ids["nodes"])
        self.imds = emu.open_vm_imds("vm0")

    def settings(self, **changes: Any) -> StandaloneSettings:
        return StandaloneSettings(enabled=True, imds_endpoint=self.imds, **changes)

    async def add(self, *names: str) -> list[str]:
        async with AzureAdapter(self.emu.azure_settings(polling_interval=0.01),
                                credential=self.emu.credential()) as adapter:
            nic = await adapter.update_ip_configurations(
                self.info.nic_id, add=[NewIPConfiguration(n) for n in names])
        return [c.address for c in nic.ip_configurations if c.name in names]


@pytest.fixture
def vm() -> Iterator[Vm]:
    with ArmEmulator(ArmConfig(lro_polls=0)) as emu:
        yield Vm(emu)


class Follower:
    """Runs ``source.follow`` and records what it adopts and the troubles it reports."""

    def __init__(self, source: InstanceMetadataSource) -> None:
        self.source = source
        self.pools: list[NodeIPPool | None] = []
        self.troubles: list[str] = []
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _adopt(self, pool: NodeIPPool | None) -> None:
        self.pools.append(pool)
        self._changed.set()

    def _trouble(self, problem: str) -> None:
        self.troubles.append(problem)
        self._changed.set()

    def start(self) -> Follower:
        self.task = asyncio.create_task(self.source.follow(self._adopt, self._trouble))
        return self

    async def until(self, what: str, condition: Any, timeout: float = 20) -> None:
        async def wait() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"gave up waiting for {what}; pools "
                                 f"{[_addresses(p) for p in self.pools]}, troubles "
                                 f"{self.troubles}") from None

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def _addresses(pool: NodeIPPool | None) -> list[str] | None:
    return None if pool is None else [ip.address for ip in pool.status.ips]


async def test_the_pool_follows_the_nic_within_the_refresh_period(vm: Vm) -> None:
    first = await vm.add("extra-a", "extra-b")
    counted: list[str] = []
    source = InstanceMetadataSource(vm.settings(refresh_seconds=1), "vm0", count=counted.append)
    follower = Follower(source).start()
    try:
        await follower.until("the two addresses", lambda: _addresses(
            follower.pools[-1] if follower.pools else None) == first)
        nic = follower.pools[-1].status.nic  # type: ignore[union-attr]
        assert nic is not None and nic.primary_ip == vm.info.primary_ip
        assert nic.subnet_cidr == "198.18.0.0/24"
        added = await vm.add("extra-c")
        await follower.until("the third address", lambda: _addresses(follower.pools[-1])
                             == first + added)
        assert counted and set(counted) == {"ok"}
        assert all(p is not None for p in follower.pools)
        assert len(follower.pools) == 2, "an unchanged document is not adopted again"
    finally:
        await follower.stop()


async def test_throttling_is_reported_and_the_last_pool_kept(vm: Vm) -> None:
    await vm.add("extra-a")
    counted: list[str] = []
    source = InstanceMetadataSource(vm.settings(refresh_seconds=1), "vm0", count=counted.append)
    follower = Follower(source).start()
    try:
        await follower.until("a pool", lambda: bool(follower.pools))
        # another program on the VM uses up the 5 requests per second
        vm.emu.configure(imds_rps=0.05)
        await follower.until("a 429", lambda: "throttled" in counted)
        assert any("throttled the agent (429" in t and "keeping the last pool" in t
                   for t in follower.troubles)
        assert len(follower.pools) == 1, "throttling does not change the pool"
        vm.emu.configure(imds_rps=5.0)
        await follower.until("recovery", lambda: follower.troubles[-1] == "")
    finally:
        await follower.stop()


async def test_a_malformed_document_changes_nothing(vm: Vm) -> None:
    await vm.add("extra-a")
    source = InstanceMetadataSource(vm.settings(refresh_seconds=1), "vm0")
    follower = Follower(source).start()
    try:
        await follower.until("a pool", lambda: bool(follower.pools))
        vm.emu.inject_imds_fault("vm0", "instance/network", 200, '{"interface": [{"ipv4": ',
                                 count=1)
        await follower.until("the complaint", lambda: any(
            "network document cannot be used: the network document is not JSON" in t
            for t in follower.troubles))
        vm.emu.inject_imds_fault("vm0", "instance/network", 200,
                                 json.dumps({"interface": [{"macAddress": "00"}]}), count=1)
        await follower.until("the second complaint", lambda: any(
            "interface[0] has no 'ipv4'" in t for t in follower.troubles))
        await follower.until("recovery", lambda: follower.troubles[-1] == "")
        assert len(follower.pools) == 1
    finally:
        await follower.stop()


async def test_an_unreachable_endpoint_is_reported_with_its_address() -> None:
    settings = StandaloneSettings(enabled=True, imds_endpoint="http://127.0.0.1:9",
                                  refresh_seconds=1)
    counted: list[str] = []
    follower = Follower(InstanceMetadataSource(settings, "vm0", count=counted.append)).start()
    try:
        await follower.until("a complaint", lambda: bool(follower.troubles))
        assert "the instance metadata service at http://127.0.0.1:9/metadata/instance/network" \
               " is unreachable" in follower.troubles[0]
        assert counted[0] == "unreachable"
        assert follower.pools == []
    finally:
        await follower.stop()


async def test_a_pool_the_agent_failed_to_adopt_is_offered_again(vm: Vm) -> None:
    await vm.add("extra-a")
    source = InstanceMetadataSource(vm.settings(refresh_seconds=1), "vm0")
    offered: list[NodeIPPool | None] = []
    troubles: list[str] = []
    adopted = asyncio.Event()

    async def adopt(pool: NodeIPPool | None) -> None:
        offered.append(pool)
        if len(offered) == 1:
            raise OSError("the store is busy")
        adopted.set()

    task = asyncio.create_task(source.follow(adopt, troubles.append))
    try:
        await asyncio.wait_for(adopted.wait(), 20)
    finally:
        task.cancel()
    assert offered[0] == offered[1], "the same pool, offered again"
    assert "the agent could not adopt the pool: OSError('the store is busy')" in troubles
    assert troubles[-1] == ""
