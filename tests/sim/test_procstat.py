"""Memory and CPU of a process as /proc reports them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from azure_cni_sim.procstat import Memory, ProcStatError, cpu_seconds, memory_of, parse_memory

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
