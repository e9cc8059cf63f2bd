"""What a restarting agent finds on the node, checked against its store before it serves.

The store says which attachment holds which address; the host's ``azv...`` veths, through
their /32 routes, say which addresses pods really use. If they disagree in a way that could
make the agent hand out an address a running pod still has, the agent refuses to start and
says exactly what it found: an admin has to look, guessing would risk two pods with one IP.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from azure_cni.agent.attachments import Attachments
from azure_cni.datapath.veth import HostVeth
from azure_cni.ipam.store import Assignment

log = logging.getLogger(__name__)


class RefuseToStart(RuntimeError):
    """Serving could hand out a duplicate address; the message lists every conflict."""


@dataclass(frozen=True)
class RecoveryPlan:
    """What to do with what was found (pure result of ``plan_recovery``)."""

    #: host veths with no address and no assignment: leftovers of an interrupted ADD
    orphan_veths: tuple[str, ...] = ()
    #: conflicts that forbid serving
    conflicts: tuple[str, ...] = ()
    #: assignments whose veth is gone (the pod's netns went away); DEL or GC will free them
    without_veth: tuple[Assignment, ...] = field(default_factory=tuple)


def plan_recovery(assignments: Sequence[Assignment], veths: Sequence[HostVeth]) -> RecoveryPlan:
    """Compare the store with the host's pod veths."""
    by_veth = {a.host_veth: a for a in assignments}
    by_address = {a.address: a for a in assignments}
    conflicts = []
    orphans = []
    present = set()
    for veth in veths:
        present.add(veth.name)
        owner = by_veth.get(veth.name)
        if not veth.addresses and owner is None:
            orphans.append(veth.name)
            continue
        for address in veth.addresses:
            holder = by_address.get(address)
            if holder is None:
                conflicts.append(
                    f"host veth {veth.name} routes {address}, which the store does not know: "
                    "a pod may be using it; restore the store or delete the veth")
            elif holder.host_veth != veth.name:
                conflicts.append(
                    f"host veth {veth.name} routes {address}, which the store records for "
                    f"{holder.key} (veth {holder.host_veth}): two pods may share it")
        if owner is not None and veth.addresses and owner.address not in veth.addresses:
            conflicts.append(
                f"host veth {veth.name} of {owner.key} routes {', '.join(veth.addresses)} but "
                f"the store records {owner.address} for it")
    missing = tuple(a for a in assignments if a.host_veth not in present)
    return RecoveryPlan(tuple(orphans), tuple(conflicts), missing)


# -- I/O ----------------------------------------------------------------------------------

async def recover_node(attachments: Attachments) -> None:
    """Check the store against the host's pod veths before serving: remove the veths no
    attachment owns, or raise RefuseToStart when serving could hand out an address twice."""
    veths = await attachments.netlink(attachments.datapath.list_host_veths)
    assignments = await attachments.allocator.assignments()
    plan = plan_recovery(assignments, veths)
    if plan.conflicts:
        raise RefuseToStart(
            f"refusing to start: the store ({attachments.allocator.store_path}) and the host's "
            f"pod veths disagree, serving could hand out an address twice:\n  - "
            + "\n  - ".join(plan.conflicts))
    for name in plan.orphan_veths:
        log.warning("event=orphan_veth_removed veth=%s", name)
        await attachments.teardown(name)
    log.info("event=recovered assignments=%d veths=%d orphans=%d without_veth=%d",
             len(assignments), len(veths), len(plan.orphan_veths), len(plan.without_veth))
