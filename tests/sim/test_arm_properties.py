"""Property tests: random add/remove sequences never break Azure's invariants in the emulator.

The first drives the real adapter over HTTPS; the second throws raw (often invalid) NIC
bodies at the emulator's state directly, many more of them, to check its validation.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from azure_cni.cloud.azure import AzureAdapter
from azure_cni.cloud.port import NewIPConfiguration, NicLimitExceeded, SubnetFull
from azure_cni_sim.arm import ArmConfig, ArmEmulator
from azure_cni_sim.armstate import MAX_IP_CONFIGURATIONS, ArmError, ArmState

pytestmark = pytest.mark.timeout(300)
SUB = "00000000-0000-0000-0000-000000000001"


def check_invariants(emu: ArmEmulator, subnet_id: str, primaries: dict[str, tuple[str, str]]):
    """No address twice in the subnet, <= 256 per NIC, primaries untouched, nothing leaked."""
    nics = emu.snapshot()["nics"]
    held = []
    for nic in nics:
        configs = nic["properties"]["ipConfigurations"]
        assert len(configs) <= MAX_IP_CONFIGURATIONS
        primary = [c for c in configs if c["properties"]["primary"]]
        assert len(primary) == 1
        assert (primary[0]["name"], primary[0]["properties"]["privateIPAddress"]) == \
            primaries[nic["id"]]
        held += [c["properties"]["privateIPAddress"] for c in configs]
    assert not [a for a, n in Counter(held).items() if n > 1]
    assert sorted(held) == sorted(emu.subnet_usage(subnet_id))


# one step: which NIC, how many names to add, which existing secondaries to drop (by index)
steps = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 90),
                           st.lists(st.integers(0, 300), max_size=40)),
                 min_size=1, max_size=6)


def test_random_adapter_writes_keep_the_invariants():
    with ArmEmulator(ArmConfig(lro_polls=0)) as emu:
        vnet = emu.add_vnet("v", "198.18.0.0/16", {"s": "198.18.0.0/23"})  # 507 usable
        subnet_id = vnet.subnet_ids["s"]
        vms = [emu.add_vm(f"vm{i}", subnet_id) for i in range(3)]
        primaries = {vm.nic_id: ("ipconfig1", vm.primary_ip) for vm in vms}
        loop = asyncio.new_event_loop()
        # client-side buckets wide open: this test is about state, not pacing
        adapter = AzureAdapter(emu.azure_settings(polling_interval=0.01, read_qps=1e4,
                                                  read_burst=10**4, write_qps=1e4,
                                                  write_burst=10**4),
                               credential=emu.credential())
        serial = iter(range(10**9))

        async def apply(step: tuple[int, int, list[int]]) -> None:
            which, adds, drop_at = step
            nic_id = vms[which].nic_id
            before = await adapter.get_nic(nic_id)
            mine = [c.name for c in before.secondary()]
            remove = sorted({mine[i % len(mine)] for i in drop_at} if mine else set())
            add = [NewIPConfiguration(f"azcni-{next(serial)}") for _ in range(adds)]
            expected = (set(mine) - set(remove)) | {a.name for a in add}
            free = 507 - len(emu.subnet_usage(subnet_id))
            puts = emu.request_count("PUT", nic_id)
            try:
                after = await adapter.update_ip_configurations(nic_id, add, remove)
            except NicLimitExceeded:
                assert len(expected) + 1 > MAX_IP_CONFIGURATIONS
                after = None
            except SubnetFull:
                assert adds > free
                after = None
            if after is None:  # refused: nothing changed
                assert (await adapter.get_nic(nic_id)).etag == before.etag
                return
            assert {c.name for c in after.secondary()} == expected
            assert all(c.succeeded for c in after.ip_configurations)
            if add or remove:
                assert after.etag != before.etag
                assert emu.request_count("PUT", nic_id) == puts + 1
            else:
                assert after.etag == before.etag
                assert emu.request_count("PUT", nic_id) == puts
            check_invariants(emu, subnet_id, primaries)

        @settings(max_examples=15, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(steps)
        def run(sequence: list[tuple[int, int, list[int]]]) -> None:
            for step in sequence:
                loop.run_until_complete(apply(step))

        try:
            run()
        finally:
            loop.run_until_complete(adapter.close())
            loop.close()


# -- the emulator's own validation, without HTTP --------------------------------------------------


class NicWrites(RuleBasedStateMachine):
    """Raw PUT bodies against ArmState: valid ones commit, invalid ones change nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.state = ArmState()
        vnet = self.state.add_vnet(SUB, "rg", "v", ["198.18.0.0/16"], "eastus")
        self.subnet = self.state.add_subnet(vnet.id, "s", "198.18.0.0/27")  # 27 usable
        self.other = self.state.add_subnet(vnet.id, "o", "198.18.1.0/29")
        self.nics = [self.state.add_vm(SUB, "rg", f"vm{i}", self.subnet.id,
                                       location="eastus")[1] for i in range(3)]
        self.primaries = {n.id: (n.ip_configs[0].name, n.ip_configs[0].address)
                          for n in self.nics}
        self.serial = 0

    def body(self, nic_index: int) -> tuple[str, dict[str, Any]]:
        nic = self.nics[nic_index]
        configs = [{"name": c.name, "properties": {
            "subnet": {"id": c.subnet.id}, "primary": c.primary,
            "privateIPAllocationMethod": c.method, "privateIPAddress": str(c.address)}}
            for c in nic.ip_configs]
        return nic.name, {"location": "eastus", "properties": {"ipConfigurations": configs}}

    def put(self, name: str, body: dict[str, Any]) -> None:
        nic = next(n for n in self.nics if n.name == name)
        etag, addresses = nic.etag, nic.addresses()
        try:
            self.state.put_nic(SUB, "rg", name, body, if_match=None, if_none_match=None,
                               polls=0)
        except ArmError as e:
            assert 400 <= e.status < 500
            assert (nic.etag, nic.addresses()) == (etag, addresses)  # all or nothing
            return
        assert nic.etag != etag
        assert nic.operation is not None
        self.state.finish(nic.operation)

    @rule(nic=st.integers(0, 2), count=st.integers(1, 12))
    def add_dynamic(self, nic: int, count: int) -> None:
        name, body = self.body(nic)
        for _ in range(count):
            self.serial += 1
            body["properties"]["ipConfigurations"].append({
                "name": f"d{self.serial}",
                "properties": {"subnet": {"id": self.subnet.id},
                               "privateIPAllocationMethod": "Dynamic"}})
        self.put(name, body)

    @rule(nic=st.integers(0, 2), host=st.integers(0, 40), subnet=st.sampled_from(["s", "o"]))
    def add_static(self, nic: int, host: int, subnet: str) -> None:
        name, body = self.body(nic)
        self.serial += 1
        target = self.subnet if subnet == "s" else self.other
        address = str(ipaddress.IPv4Address(int(self.subnet.network.network_address) + host))
        body["properties"]["ipConfigurations"].append({"name": f"s{self.serial}", "properties": {
            "subnet": {"id": target.id}, "privateIPAllocationMethod": "Static",
            "privateIPAddress": address}})
        self.put(name, body)

    @precondition(lambda self: any(len(n.ip_configs) > 1 for n in self.nics))
    @rule(nic=st.integers(0, 2), keep=st.lists(st.booleans(), min_size=1, max_size=30))
    def remove_some(self, nic: int, keep: list[bool]) -> None:
        name, body = self.body(nic)
        configs = body["properties"]["ipConfigurations"]
        body["properties"]["ipConfigurations"] = [configs[0]] + [
            c for i, c in enumerate(configs[1:]) if keep[i % len(keep)]]
        self.put(name, body)

    @rule(nic=st.integers(0, 2), how=st.sampled_from(["drop", "rename", "two"]))
    def tamper_with_the_primary(self, nic: int, how: str) -> None:
        name, body = self.body(nic)
        configs = body["properties"]["ipConfigurations"]
        if how == "drop":
            configs.pop(0)
        elif how == "rename":
            configs[0]["name"] = "moved"
        else:
            configs.append({"name": "second-primary", "properties": {
                "subnet": {"id": self.subnet.id}, "primary": True}})
        self.put(name, body)

    @invariant()
    def azure_invariants_hold(self) -> None:
        held = []
        for nic in self.nics:
            assert len(nic.ip_configs) <= MAX_IP_CONFIGURATIONS
            primary = [c for c in nic.ip_configs if c.primary]
            assert [(c.name, c.address) for c in primary] == [self.primaries[nic.id]]
            for c in nic.ip_configs:
                assert c.address in c.subnet.network and not c.subnet.reserved(c.address)
                assert c.subnet is self.subnet
                held.append(c.address)
        assert len(held) == len(set(held))
        assert set(held) == set(self.subnet.used)
        assert not self.other.used


NicWrites.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
test_raw_nic_writes_keep_the_invariants = NicWrites.TestCase
