"""Memory and CPU of a process as /proc reports them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from azure_cni_sim.procstat import (
    Memory,
    ProcStatError,
    cpu_seconds,
    machine_cpu,
    memory_of,
    parse_machine_cpu,
    parse_memory,
)

STATUS = """Name:\tpython
VmPeak:\t  500000 kB
VmHWM:\t  160512 kB
VmRSS:\t  153600 kB
Threads:\t4
"""


def test_parse_memory_reads_rss_and_its_peak() -> None:
    memory = parse_memory(STATUS)
    assert memory == Memory(rss_kib=153600, peak_kib=160512)
    assert (memory.rss_mb, memory.peak_mb) == (150.0, 156.8)


def test_a_status_without_them_is_an_error() -> None:
    with pytest.raises(ProcStatError, match="VmRSS"):
        parse_memory("Name:\tkthreadd\nState:\tS (sleeping)\n")


def test_this_process() -> None:
    memory = memory_of(os.getpid())
    assert 0 < memory.rss_kib <= memory.peak_kib
    assert cpu_seconds(os.getpid()) > 0
    assert parse_memory(Path("/proc/self/status").read_text()).rss_kib > 0


def test_a_process_that_is_gone() -> None:
    with pytest.raises(ProcStatError, match="gone"):
        memory_of(2**22 + 1)  # above any pid_max


def test_the_machines_busy_share_between_two_readings() -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    before = parse_machine_cpu("cpu  100 0 50 800 50 0 0 0 30 0\ncpu0 1 2 3\n")
    after = parse_machine_cpu("cpu  250 0 100 900 50 0 0 0 90 0\n")
    # 200 busy ticks (user and system) of 300 in all; guest time is inside user already
    assert after.busy_fraction_since(before) == pytest.approx(200 / 300)
    assert after.busy_fraction_since(after) == 0.0
    assert 0.0 <= machine_cpu().busy_fraction_since(before) <= 1.0
