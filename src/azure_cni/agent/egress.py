"""Keeps the host's forwarding sysctls, the SNAT/filter chains and the pod NIC's policy
routing in line with the settings.

The SNAT policy depends on the pool's NIC information (the subnet pods come from and the
VNet's address space), so it is reconciled whenever that changes, and periodically to repair
drift (someone flushed the nat table, or put a rule above our jump). So is the routing that
sends pods on a second NIC out of that NIC (``datapath.podnic``).

Fail closed: until the chains have been programmed, and whenever a check or a repair fails,
``problem`` says why; the agent then sets up no pod (the wireserver and instance metadata
block could be missing) and does not install its conflist for the first time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import TypeVar

from azure_cni.aio.backoff import Backoff
from azure_cni.aio.threads import on_thread
from azure_cni.api.nodeippool import NicInfo
from azure_cni.api.settings import SnatSettings
from azure_cni.datapath.podnic import PodNicMissing, ensure_pod_nic, routing_for
from azure_cni.datapath.snat import IptablesFailed, SnatPolicy, ensure_snat
from azure_cni.datapath.sysctls import ensure_host_sysctls, proc_sys_net

log = logging.getLogger(__name__)
T = TypeVar("T")


def snat_policy(snat: SnatSettings, nic: NicInfo | None,
                public_sources: tuple[str, ...] = ()) -> SnatPolicy:
    """The chains' content for these settings and this NIC (pure)."""
    return SnatPolicy(
        public_sources=public_sources,
        pod_cidr=(nic.subnet_cidr or None) if nic else None,
        vnet_cidrs=nic.vnet_address_space if nic else (),
        non_masquerade_cidrs=snat.non_masquerade_cidrs,
        masquerade=snat.enabled,
        block_wireserver=snat.block_wireserver,
        block_instance_metadata=snat.block_instance_metadata,
    )


#: check the egress chains (and put them back) this often while they are in place ...
EGRESS_SYNC_SECONDS = 10.0
#: ... and retry this soon after a failure, doubling up to the maximum
EGRESS_RETRY_SECONDS = 1.0
EGRESS_RETRY_MAX_SECONDS = 30.0
NOT_PROGRAMMED = ("the pod egress chains (wireserver and metadata block, SNAT) are not "
                  "programmed yet")


class EgressReconciler:
    """Applies sysctls and the SNAT policy; remembers what failed for ADD, STATUS and health."""

    def __init__(self, snat: SnatSettings, executor: Executor,
                 host_root: Path = Path("/")) -> None:
        self.snat = snat
        self.executor = executor
        self.sysctl_root = proc_sys_net(host_root)
        self.policy = snat_policy(snat, None)
        self.policy_nic: NicInfo | None = None
        self.sysctl_problem = ""
        self.chains_problem = NOT_PROGRAMMED
        self.routes_problem = ""
        self._lock = asyncio.Lock()

    @property
    def problem(self) -> str:
        """Why pods cannot be set up safely on this node now; empty when they can."""
        return "; ".join(p for p in (self.sysctl_problem, self.chains_problem,
                                     self.routes_problem) if p)

    @property
    def in_place(self) -> bool:
        return not self.problem

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await on_thread(self.executor, fn, *args)

    async def ensure_sysctls(self) -> None:
        try:
            changed = await self._run(ensure_host_sysctls, self.sysctl_root)
        except OSError as e:
            self.sysctl_problem = f"enabling IPv4 forwarding failed: {e}"
            log.error("event=sysctl_failed error=%s", e)
            return
        self.sysctl_problem = ""
        for key, before in changed.items():
            log.info("event=sysctl_set key=%s before=%s", key, before)

    async def reconcile(self, nic: NicInfo | None = None, *, keep_nic: bool = False,
                        public_sources: tuple[str, ...] | None = None) -> None:
        """Apply the policy for ``nic`` (or the last one with ``keep_nic``) and the pods with
        a public IP (None: the last ones); ``problem`` says whether that worked."""
        async with self._lock:
            nic = self.policy_nic if keep_nic else nic
            sources = self.policy.public_sources if public_sources is None else public_sources
            policy = snat_policy(self.snat, nic, sources)
            try:
                changed = await self._run(ensure_snat, policy)
            except (IptablesFailed, OSError) as e:
                # the first line: what failed and why (the rest is the restore input)
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                self.chains_problem = f"programming the pod egress chains failed: {first}"
                log.error("event=snat_failed error=%s", e)
                return
            self.policy, self.policy_nic = policy, nic
            if self.chains_problem:
                log.info("event=egress_chains_in_place")
            self.chains_problem = ""
            await self._route_pod_nic(nic)
            if changed:
                log.info("event=snat_applied pod_cidr=%s vnet=%s non_masquerade=%s "
                         "masquerade=%s", policy.pod_cidr or "-",
                         ",".join(policy.vnet_cidrs) or "-",
                         ",".join(policy.non_masquerade_cidrs) or "-", policy.masquerade)

    async def _route_pod_nic(self, nic: NicInfo | None) -> None:
        """Route the pods of a second NIC out of it (or undo that for the primary NIC); a
        failure keeps pods off the node, whose packets would leave the wrong NIC."""
        routing = routing_for(nic)
        try:
            changed = await self._run(ensure_pod_nic, routing)
        except (PodNicMissing, OSError) as e:
            self.routes_problem = f"routing pods out of their NIC failed: {e}"
            log.error("event=pod_nic_routing_failed nic=%s error=%s",
                      nic.name if nic else "-", e)
            return
        if self.routes_problem:
            log.info("event=pod_nic_routing_in_place")
        self.routes_problem = ""
        if changed:
            log.info("event=pod_nic_routed nic=%s subnet=%s changes=%r",
                     nic.name if nic else "-", routing.subnet if routing else "-", changed)

    async def keep_in_place(self, after_each: Callable[[], Awaitable[object]]) -> None:
        """Keep the egress chains in place: check them every EGRESS_SYNC_SECONDS, and after
        a failure (the xtables lock held by kube-proxy at boot) retry within a second, then
        run ``after_each`` (readiness follows whether they are in place)."""
        retry = Backoff(first=EGRESS_RETRY_SECONDS, most=EGRESS_RETRY_MAX_SECONDS)
        while True:
            if self.in_place:
                retry.succeeded()
                await asyncio.sleep(EGRESS_SYNC_SECONDS)
            else:
                await asyncio.sleep(retry.failed())
            try:
                await self.ensure_sysctls()
                await self.reconcile(keep_nic=True)
            except Exception as e:  # noqa: BLE001 - keep checking; the problem stays visible
                log.warning("event=egress_sync_failed error=%r", e)
            await after_each()
