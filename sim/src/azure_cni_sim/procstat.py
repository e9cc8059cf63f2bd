"""A process's memory and CPU time as the kernel reports them in ``/proc``: of a process on
this machine (by PID), or of a pod's main process read from inside the pod (``kubectl exec``),
as an admin would look at it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


class ProcStatError(RuntimeError):
    """The process's status could not be read."""


@dataclass(frozen=True)
class Memory:
    """Resident memory now (VmRSS) and at its peak (VmHWM), in KiB."""

    rss_kib: int
    peak_kib: int

    @property
    def rss_mb(self) -> float:
        return round(self.rss_kib / 1024, 1)

    @property
    def peak_mb(self) -> float:
        return round(self.peak_kib / 1024, 1)


def parse_memory(status: str) -> Memory:
    """VmRSS and VmHWM of a ``/proc/<pid>/status`` text."""
    fields = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    if len(fields) != 2:
        raise ProcStatError(f"no VmRSS/VmHWM in the status (a kernel thread, or not a "
                            f"status file): {status[:200]!r}")
    return Memory(fields["VmRSS"], fields["VmHWM"])


def memory_of(pid: int) -> Memory:
    try:
        return parse_memory(Path(f"/proc/{pid}/status").read_text())
    except (FileNotFoundError, ProcessLookupError) as e:
        raise ProcStatError(f"process {pid} is gone") from e


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pod_memory(kubectl: Kubectl, namespace: str, pod: str, container: str | None = None
               ) -> Memory:
    """The memory of the pod's main process (PID 1 of its container), read inside the pod."""
    args = ["exec", "-n", namespace, pod, *(["-c", container] if container else []), "--",
            "cat", "/proc/1/status"]
    result = kubectl(*args, check=False, timeout=30)
    if result.returncode != 0:
        raise ProcStatError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return parse_memory(result.stdout)


@dataclass(frozen=True)
class MachineCpu:
    """The machine's CPU time since boot (``/proc/stat``), in clock ticks: busy and in all."""

    busy: int
    total: int

    def busy_fraction_since(self, earlier: MachineCpu) -> float:
        """The share of every core's time that was busy between ``earlier`` and this reading."""
        total = self.total - earlier.total
        return (self.busy - earlier.busy) / total if total > 0 else 0.0


def parse_machine_cpu(stat: str) -> MachineCpu:
    """The first line of ``/proc/stat`` (all cores together); idle and iowait count as not
    busy, guest time is already in user and nice."""
    fields = [int(v) for v in stat.splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return MachineCpu(total - idle, total)


def machine_cpu() -> MachineCpu:
    return parse_machine_cpu(Path("/proc/stat").read_text())
