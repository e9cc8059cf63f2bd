"""Two real operator processes sharing one Lease, against a real API server and the ARM
emulator: one acts, the other stands by and takes over; a SIGTERM drains and hands over."""

from __future__ import annotations

import re
import signal
import time

import pytest
from tests.operator.test_operator import ready

from azure_cni_sim.procs import ManagedProcess, wait_for

pytestmark = pytest.mark.cluster

#: short Lease timings so that a takeover after kill -9 takes seconds
FAST_LEASE = {"leaseDurationSeconds": 4, "renewDeadlineSeconds": 3, "retryPeriodSeconds": 0.5,
              "drainSeconds": 20}


def leader_of(env, replicas: list[ManagedProcess]) -> tuple[ManagedProcess, ManagedProcess]:
    """(leader, standby), from the Lease's holder and each replica's own gauge."""
    def decided() -> bool:
        gauges = [counter_of(env, r, "azure_cni_operator_leader") for r in replicas]
        return sorted(gauges) == [0.0, 1.0] and bool(env.lease_holder())

    wait_for("one leader among the replicas", decided, timeout=30, interval=0.2)
    first, second = replicas
    if counter_of(env, first, "azure_cni_operator_leader") == 1.0:
        return first, second
    return second, first


def counter_of(env, operator: ManagedProcess, name: str, labels: str = "") -> float:
    total = 0.0
    for line in env.metrics(operator).splitlines():
        if re.match(rf"{name}(\{{|\s)", line) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def writes_by(env, operator: ManagedProcess) -> float:
    """Requests other than reads the replica made to the API server (Lease writes aside)."""
    total = 0.0
    for line in env.metrics(operator).splitlines():
        m = re.match(r'azure_cni_operator_kube_requests_total\{resource="([^"]+)",'
                     r'verb="([^"]+)"\} (\S+)', line)
        if m and m.group(1) != "leases" and m.group(2) not in ("get", "list", "watch"):
            total += float(m.group(3))
    return total


def test_one_replica_acts_and_the_standby_takes_over_after_kill_9(env) -> None:
    vm = env.add_node("ha")
    a = env.start_operator(operator=FAST_LEASE)
    b = env.start_operator(operator=FAST_LEASE)
    leader, standby = leader_of(env, [a, b])
    env.wait_pool(vm.name, "initial batch", lambda p: p.status.allocated == 4 and ready(p))
    holder = env.lease_holder()
    assert holder, "nobody holds the Lease"
    # the standby watches nothing and writes nothing: no pool, no status, no Event
    assert writes_by(env, standby) == 0
    assert counter_of(env, standby, "azure_cni_operator_kube_requests_total",
                      'resource="nodeippools"') == 0
    assert counter_of(env, standby, "azure_cni_operator_pools") == 0

    puts = env.emulator.request_count("PUT", vm.nic_id)
    leader.popen.kill()  # type: ignore[union-attr]
    leader.popen.wait(10)  # type: ignore[union-attr]
    killed = time.monotonic()
    env.kube.kubectl("scale", "nodeippool", vm.name, "--replicas=10")
    env.operator = standby  # wait_pool watches the replica that must do the work
    env.wait_pool(vm.name, "10 addresses from the new leader",
                  lambda p: p.status.allocated == 10 and ready(p), timeout=60)
    took = time.monotonic() - killed
    assert env.lease_holder() != holder
    assert env.emulator.request_count("PUT", vm.nic_id) == puts + 1, "more than one NIC write"
    assert len(env.our_ipconfigs(vm)) == 10
    print(f"takeover after kill -9: converged {took:.1f}s after the kill (lease 4 s)")


def test_sigterm_finishes_the_write_under_way_then_hands_over_at_once(env) -> None:
    vm = env.add_node("dr")
    a = env.start_operator(operator=FAST_LEASE)
    b = env.start_operator(operator=FAST_LEASE)
    leader, standby = leader_of(env, [a, b])
    env.wait_pool(vm.name, "initial batch", lambda p: p.status.allocated == 4 and ready(p))
    # the next NIC write's long-running operation takes ~4 s: it is under way at the SIGTERM
    env.emulator.configure(lro_polls=20, poll_retry_after=0.2)
    puts = env.emulator.request_count("PUT", vm.nic_id)
    env.kube.kubectl("scale", "nodeippool", vm.name, "--replicas=12")
    wait_for("the NIC PUT", lambda: env.emulator.request_count("PUT", vm.nic_id) == puts + 1,
             timeout=30)
    holder = env.lease_holder()
    leader.popen.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    # the leader finishes the write it started and records it, then exits 0
    assert leader.popen.wait(30) == 0, leader.log_tail(30)  # type: ignore[union-attr]
    pool = env.pool(vm.name)
    assert pool is not None and pool.status.allocated == 12, \
        "the write under way was not recorded before the leader stopped"
    assert {ip.ip_configuration: ip.address for ip in pool.status.ips} == env.our_ipconfigs(vm)
    log = leader.log_tail(60)
    assert "event=drained finished=" in log and "cut_short=none" in log, log
    assert "event=lease_released" in log, log
    # the Lease was released: the standby takes it within its retry period, not a duration
    released = time.monotonic()
    wait_for("the standby to lead", lambda: env.lease_holder() not in ("", holder),
             timeout=4, interval=0.1)
    print(f"handover after SIGTERM: {time.monotonic() - released:.1f}s")
    env.emulator.configure(lro_polls=1, poll_retry_after=None)
    env.operator = standby
    env.kube.kubectl("scale", "nodeippool", vm.name, "--replicas=16")
    env.wait_pool(vm.name, "16 addresses from the new leader",
                  lambda p: p.status.allocated == 16 and ready(p))
    assert env.emulator.request_count("PUT", vm.nic_id) == puts + 2
