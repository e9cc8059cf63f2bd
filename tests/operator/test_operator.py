"""The real operator process against a real API server and the ARM emulator (no kubelet).

Nothing here sleeps and then checks that nothing happened: a test that expects no change
waits for the operator to prove it looked (a reconcile or a NIC sweep counted in its metrics)
and then checks.
"""

from __future__ import annotations

import itertools
import re
import time

import pytest

from azure_cni.api.nodeippool import ConditionType, IPState, NodeIPPool

pytestmark = pytest.mark.cluster


def ready(pool: NodeIPPool) -> bool:
    c = pool.status.condition(ConditionType.READY)
    return c is not None and c.status and pool.status.observed_generation == pool.generation


def releasing(pool: NodeIPPool) -> list[str]:
    return [ip.ip_configuration for ip in pool.status.ips if ip.state is IPState.RELEASING]


def counter(env, name: str) -> float:
    """The sum of a counter over its labels, as the operator's /metrics reports it."""
    total = 0.0
    for line in env.metrics().splitlines():
        if re.match(rf"{name}(\{{|\s)", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_until_looked(env, what: str, name: str, more: float = 1) -> None:
    """Wait until the operator has counted ``more`` of ``name`` since now."""
    start = counter(env, name)
    from azure_cni_sim.procs import wait_for

    wait_for(f"the operator to look again ({what})", lambda: counter(env, name) >= start + more,
             timeout=60, interval=0.25, alive=env.operator.check_running)


def test_five_nodes_converge_with_one_nic_write_each(env) -> None:
    vms = [env.add_node(f"n{i}") for i in range(5)]
    env.start_operator()
    for vm in vms:
        pool = env.wait_pool(vm.name, "4 addresses and Ready", lambda p: (
            p.status.allocated == 4 and ready(p)))
        assert pool.status.nic is not None and pool.status.nic.primary_ip == vm.primary_ip
        assert pool.status.nic.vnet_address_space == ("198.18.0.0/16",)
        on_nic = env.our_ipconfigs(vm)
        assert {ip.ip_configuration: ip.address for ip in pool.status.ips} == on_nic
        assert env.emulator.request_count("PUT", vm.nic_id) == 1
    # all twenty addresses are distinct VNet addresses
    every = [a for vm in vms for a in env.our_ipconfigs(vm).values()]
    assert len(set(every)) == 20
    metrics = env.metrics()
    assert "azure_cni_operator_ip_allocations_total 20.0" in metrics
    assert 'azure_cni_operator_nic_write_duration_seconds_count{kind="allocate",' \
           'outcome="success"} 5.0' in metrics
    assert f'azure_cni_operator_pool_addresses{{nodeippool="{vms[0].name}",' \
           'state="available"} 4.0' in metrics
    assert f'azure_cni_operator_pool_used_addresses{{nodeippool="{vms[0].name}"}} 0.0' \
        in metrics
    # the /20 has 4091 usable addresses; the 5 primaries and our 20 are taken
    assert 'azure_cni_operator_subnet_usable_addresses{subnet="vnet/nodes"} 4091.0' in metrics
    assert 'azure_cni_operator_subnet_free_addresses{subnet="vnet/nodes"} 4066.0' in metrics
    assert 'azure_cni_azure_api_duration_seconds_count{operation="' in metrics
    listing = env.kube.kubectl("get", "nodeippools").stdout.splitlines()
    assert listing[0].split() == ["NAME", "ALLOCATED", "USED", "SCALE-MIN", "MAX", "READY", "AGE"]
    row = next(r.split() for r in listing if r.startswith(vms[0].name))
    assert row[1:5] == ["4", "0", "64", "True"]  # USED stays empty until an agent reports


def test_usage_grows_in_batches_and_shrinks_only_after_delay_and_ack(env) -> None:
    vm = env.add_node("a")
    env.start_operator()
    env.wait_pool(vm.name, "initial batch", lambda p: p.status.allocated == 4 and ready(p))

    env.act_as_agent(vm.name, used=3)  # free 1 < 4: one more batch
    env.wait_pool(vm.name, "8 addresses", lambda p: p.status.allocated == 8)
    env.act_as_agent(vm.name, used=9)  # free -1: two batches in ONE write
    puts = env.emulator.request_count("PUT", vm.nic_id)
    pool = env.wait_pool(vm.name, "16 addresses", lambda p: p.status.allocated == 16)
    assert env.emulator.request_count("PUT", vm.nic_id) == puts + 1
    assert len(env.our_ipconfigs(vm)) == 16

    # usage drops to 0: free 16 > maxFree 8; after releaseDelaySeconds 8 are marked
    env.act_as_agent(vm.name, used=0)
    marked_at = time.monotonic()
    pool = env.wait_pool(vm.name, "8 marked Releasing", lambda p: len(releasing(p)) == 8)
    assert time.monotonic() - marked_at >= 1.5, "marked before releaseDelaySeconds elapsed"
    marked = releasing(pool)
    # the highest addresses are chosen
    by_address = sorted(pool.status.ips, key=lambda ip: tuple(map(int, ip.address.split("."))))
    assert set(marked) == {ip.ip_configuration for ip in by_address[-8:]}

    # without an acknowledgement nothing leaves the NIC: two sweeps look at it and do nothing
    puts = env.emulator.request_count("PUT", vm.nic_id)
    wait_until_looked(env, "two NIC sweeps", "azure_cni_operator_nic_sweeps_total", more=2)
    assert env.emulator.request_count("PUT", vm.nic_id) == puts
    assert set(marked) <= set(env.our_ipconfigs(vm))

    # the agent acks five (say three are still in use): exactly those go, in one write
    env.act_as_agent(vm.name, used=3, acks=marked[:5])
    pool = env.wait_pool(vm.name, "5 removed", lambda p: p.status.allocated == 11)
    assert env.emulator.request_count("PUT", vm.nic_id) == puts + 1
    on_nic = env.our_ipconfigs(vm)
    assert not set(marked[:5]) & set(on_nic)
    assert set(marked[5:]) <= set(on_nic), "an unacknowledged (in use) address was removed"
    assert sorted(releasing(pool)) == sorted(marked[5:])
    reasons = {e["reason"] for e in env.events(vm.name)}
    assert {"Allocated", "Releasing", "Released"} <= reasons


def test_scale_sets_min_ips(env) -> None:
    vm = env.add_node("s")
    env.start_operator()
    env.wait_pool(vm.name, "initial batch", lambda p: p.status.allocated == 4)
    env.kube.kubectl("scale", "nodeippool", vm.name, "--replicas=10")
    pool = env.wait_pool(vm.name, "10 addresses", lambda p: p.status.allocated == 10
                         and ready(p))
    assert pool.spec.min_ips == 10
    assert len(env.our_ipconfigs(vm)) == 10
    refused = env.kube.kubectl("scale", "nodeippool", vm.name, "--replicas=65", check=False)
    assert refused.returncode != 0 and "minIPs must not exceed maxIPs" in refused.stderr


def test_deleting_a_node_gives_back_only_what_no_pod_uses(env) -> None:
    vm = env.add_node("d")
    env.start_operator()
    env.wait_pool(vm.name, "initial batch", lambda p: p.status.allocated == 4)
    before = env.emulator.subnet_usage(env.subnet_id)
    env.kube.kubectl("delete", "node", vm.name)
    # two pods still use addresses (reported after the deletion: before it, the warm pool
    # could grow for them first, and the race would decide how many addresses there are)
    env.act_as_agent(vm.name, used=2)
    pool = env.wait_pool(vm.name, "Deleting, every address Releasing", lambda p: (
        (c := p.status.condition(ConditionType.READY)) is not None and c.reason == "Deleting"
        and len(releasing(p)) == 4))
    assert len(env.our_ipconfigs(vm)) == 4, "addresses pods may use left the NIC"
    assert "DeletionWaiting" in {e["reason"] for e in env.events(vm.name)}
    names = releasing(pool)
    # the agent acknowledges the two its pods do not use: those leave, the pool stays
    env.act_as_agent(vm.name, used=2, acks=names[:2])
    env.wait_pool(vm.name, "two left", lambda p: p.status.allocated == 2)
    assert sorted(env.our_ipconfigs(vm)) == sorted(names[2:])
    # the pods go: the rest leave and so does the pool
    env.act_as_agent(vm.name, used=0, acks=names)
    env.kube.kubectl("wait", "--for=delete", f"nodeippool/{vm.name}", "--timeout=60s")
    assert env.our_ipconfigs(vm) == {}
    after = env.emulator.subnet_usage(env.subnet_id)
    assert len(before) - len(after) == 4, "the four addresses went back to the subnet"


def test_crash_between_nic_write_and_status_write_converges(env) -> None:
    vm = env.add_node("k")
    # the NIC write's long-running operation takes ~6 s: the operator is stuck polling it
    env.emulator.configure(lro_polls=30, poll_retry_after=0.2)
    env.start_operator()
    from azure_cni_sim.procs import wait_for

    wait_for("the NIC PUT", lambda: env.emulator.request_count("PUT", vm.nic_id) == 1,
             timeout=30)
    env.kill_operator()  # kill -9 between the PUT and the status write
    pool = env.pool(vm.name)
    assert pool is not None and pool.status.allocated == 0, "status written before the kill?"
    env.emulator.configure(lro_polls=1, poll_retry_after=None)
    env.start_operator()
    pool = env.wait_pool(vm.name, "4 addresses after restart", lambda p: (
        p.status.allocated == 4 and ready(p)))
    on_nic = env.our_ipconfigs(vm)
    assert len(on_nic) == 4, f"duplicates or orphans on the NIC: {on_nic}"
    assert {ip.ip_configuration: ip.address for ip in pool.status.ips} == on_nic
    assert env.emulator.request_count("PUT", vm.nic_id) == 1, "the restart wrote the NIC again"
    assert "Adopted" in {e["reason"] for e in env.events(vm.name)}


def test_drift_is_repaired_with_the_same_address(env) -> None:
    import asyncio

    from azure_cni.api.settings import AzureSettings
    from azure_cni.cloud.azure import AzureAdapter

    vm = env.add_node("r")
    env.start_operator()
    pool = env.wait_pool(vm.name, "initial batch", lambda p: p.status.allocated == 4)
    victim = pool.status.ips[1]

    async def remove_behind_our_back() -> None:
        token = env.emulator.issue_token("someone-else")

        class Static:
            async def get_token(self, *scopes: str, **kw: object) -> object:
                from azure.core.credentials import AccessToken

                return AccessToken(token, int(time.time()) + 3600)

            async def close(self) -> None:
                pass

        adapter = AzureAdapter(AzureSettings(arm_endpoint=env.emulator.arm_url,
                                             ca_bundle=str(env.emulator.ca_path)),
                               credential=Static())  # type: ignore[arg-type]
        try:
            await adapter.update_ip_configurations(vm.nic_id, remove=[victim.ip_configuration])
        finally:
            await adapter.close()

    asyncio.run(remove_behind_our_back())
    assert victim.ip_configuration not in env.our_ipconfigs(vm)
    env.wait_pool(vm.name, "the drift timer to act", lambda p: any(
        e["reason"] == "DriftRepaired" for e in env.events(vm.name)) or False, timeout=30)
    assert env.our_ipconfigs(vm)[victim.ip_configuration] == victim.address


def test_full_subnet_sets_a_condition_without_a_retry_storm(env) -> None:
    # a /28 has 11 usable addresses; the VM's primary takes one: 10 left
    small = env.emulator.add_subnet(env.emulator.state.subnets[env.subnet_id.lower()].vnet_id,
                                    "small", "198.18.32.0/28")
    vm = env.add_node("f", subnet_id=small)
    env.start_operator(pool={"minIPs": 16, "maxIPs": 32})
    pool = env.wait_pool(vm.name, "SubnetExhausted", lambda p: (
        (c := p.status.condition(ConditionType.SUBNET_EXHAUSTED)) is not None and c.status))
    assert pool.status.allocated == 10
    ready_cond = pool.status.condition(ConditionType.READY)
    assert ready_cond is not None and not ready_cond.status
    assert "SubnetExhausted" in {e["reason"] for e in env.events(vm.name)}
    # what the SubnetFull and PoolNotGrowing alerts read
    metrics = env.metrics()
    assert 'azure_cni_operator_subnet_free_addresses{subnet="vnet/small"} 0.0' in metrics
    assert 'azure_cni_operator_subnet_usable_addresses{subnet="vnet/small"} 11.0' in metrics
    assert f'azure_cni_operator_pool_short_addresses{{nodeippool="{vm.name}"}} 6.0' in metrics
    puts = env.emulator.request_count("PUT", vm.nic_id)
    wait_until_looked(env, "two NIC sweeps", "azure_cni_operator_nic_sweeps_total", more=2)
    assert env.emulator.request_count("PUT", vm.nic_id) == puts, "retried a full subnet"


def test_throttling_waits_for_the_server(env) -> None:
    vm = env.add_node("t")
    # more 429s than the SDK retries (3): the operator must back off for Retry-After itself
    env.emulator.inject_fault("PUT", vm.nic_id, 429, "SubscriptionRequestsThrottled",
                              headers={"Retry-After": "3"}, count=5)
    started = time.monotonic()
    env.start_operator()
    env.wait_pool(vm.name, "allocation after throttling", lambda p: p.status.allocated == 4,
                  timeout=90)
    records = env.emulator.requests("PUT", vm.nic_id)
    assert [r.status for r in records].count(429) == 5
    gaps = [b.at - a.at for a, b in itertools.pairwise(records)]
    assert all(g >= 2.5 for g in gaps), f"retried before Retry-After: {gaps}"
    assert time.monotonic() - started >= 5 * 2.5
    assert "AzureThrottled" in {e["reason"] for e in env.events(vm.name)}
    # what the AzureThrottling alert reads: every 429, and the reconciles they failed
    metrics = env.metrics()
    assert 'azure_cni_azure_api_calls_total{operation="networkInterfaces.put",status="429"} ' \
           '5.0' in metrics
    assert 'azure_cni_operator_azure_errors_total{error="Throttled"}' in metrics


def test_an_operator_whose_class_crd_is_missing_stops_saying_so(env) -> None:
    """An upgrade that skipped the CRDs (helm upgrade never upgrades them) leaves the API
    server without NodeIPPoolClass: the operator must stop and name what is missing, not
    fail on the API server's 404 text as if it were JSON."""
    from azure_cni_sim.node import apply_crd
    from azure_cni_sim.procs import ProcessFailed, wait_for

    env.add_node("nocrd")
    env.kube.kubectl("delete", "crd", "nodeippoolclasses.azurecni.io", "--wait=true")
    try:
        try:
            operator = env.start_operator()
        except ProcessFailed as e:  # it stopped before /healthz ever answered
            log = str(e)
        else:
            wait_for("the operator to stop", lambda: not operator.running(), timeout=60)
            assert operator.popen is not None and operator.popen.returncode == 1
            log = operator.log_tail(200)
    finally:
        apply_crd(env.kube.kubectl)
    assert "nodeippoolclasses" in log and "404" in log, log
    assert "CustomResourceDefinition" in log and "JSONDecodeError" not in log, log
