"""An Azure Resource Manager + IMDS emulator that the real azure-mgmt SDK talks to over TLS.

It serves the small ARM surface azure-cni uses (VM GET, NIC GET/PUT/list with etags and
long-running operations, VNet and subnet GET) with Azure's rules and limits
(``azure_cni_sim.armstate``), bearer-token authentication, ARM's own token-bucket throttling
with 429 + Retry-After and the remaining-requests headers (``azure_cni_sim.throttling``),
one-shot fault injection and added latency.

Use it in-process (``with ArmEmulator() as emu:`` runs it on a background thread; ``async
with`` runs it on the caller's loop) or as ``azure-cni-sim arm``. An admin API under
``/_sim/`` on the ARM port lets another process build a topology, read state and request
counts, inject faults and follow NIC changes. Reach it with ``ca_path`` as the CA bundle.

Modules: ``emulator`` (servers, Python API, the request path), ``routes`` (the table of
served operations), ``resources`` (one function per operation), ``admin`` (``/_sim/``),
``faults``, ``interference`` (a second writer, a Failed ipConfiguration), ``topology``,
``config``.
"""

from azure_cni_sim.arm.changes import NicChangeCallback
from azure_cni_sim.arm.config import (
    DEFAULT_STATIC_TOKEN,
    ArmConfig,
    NicRef,
    RequestRecord,
    StaticTokenCredential,
    VmInfo,
    VnetInfo,
)
from azure_cni_sim.arm.emulator import ArmEmulator
from azure_cni_sim.arm.topology import Topology

__all__ = ["DEFAULT_STATIC_TOKEN", "ArmConfig", "ArmEmulator", "NicChangeCallback", "NicRef",
           "RequestRecord", "StaticTokenCredential", "Topology", "VmInfo", "VnetInfo"]
