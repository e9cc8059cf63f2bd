"""Pool sizing: how many addresses to add, which to mark for release, which to remove.

Pure functions, no I/O: the operator observes the NIC and the pool, calls :func:`plan`, and
applies the result in one NIC write. The rules, in the pool's own words:

- ``free = available - used - cooling``: addresses the agent can hand out now. ``available``
  counts only ``Available`` addresses; an address being released is never counted as free,
  every used address is assumed to sit on an ``Available`` one, and ``cooling`` (published by
  the agent) counts ``Available`` addresses freed less than its cooldown ago, which it will
  not hand out yet. So free is never overestimated, and churn (pods deleted and created
  within the cooldown, as in a rolling update) grows the pool instead of failing ADDs.
- **Grow** when ``free < minFreeIPs`` or ``available < minIPs``: add whole batches until the
  warm pool is met, or exactly enough to reach the floor ``minIPs``, whichever is more; never
  beyond ``maxIPs``, the NIC's 255 secondary slots, or the subnet's free addresses.
- **Shrink** when ``free > maxFreeIPs`` (or ``available > maxIPs``) has lasted
  ``releaseDelaySeconds``: mark the highest free addresses ``Releasing``, never going below
  ``minIPs`` and never more than are free. The agent answers with acknowledgements; only
  acknowledged addresses are removed. A ``Releasing`` address never returns to
  ``Available`` (that is what makes an acknowledgement impossible to misread).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from azure_cni.api.nodeippool import MAX_SECONDARY_IPS, IPState, PoolIP, PoolSpec, PoolStatus


@dataclass(frozen=True)
class Plan:
    """What one reconcile should do. Applying it needs at most one NIC write."""

    add: int = 0
    mark: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    excess_since: dt.datetime | None = None
    #: more addresses were wanted than the subnet has left
    subnet_exhausted: bool = False
    #: the pool still lacks addresses it wants (limited by maxIPs, the NIC or the subnet)
    short: int = 0
    reason: str = ""

    @property
    def writes_nic(self) -> bool:
        return self.add > 0 or bool(self.remove)

    @property
    def idle(self) -> bool:
        """Nothing to do now (a pending release delay may still be running)."""
        return not self.writes_nic and not self.mark


def address_key(ip: PoolIP) -> int:
    """Pool addresses sort numerically (the inventory's order, and release's from the top)."""
    return int(ipaddress.ip_address(ip.address))


def plan(
    spec: PoolSpec,
    status: PoolStatus,
    now: dt.datetime,
    *,
    subnet_free: int | None = None,
    nic_capacity: int = MAX_SECONDARY_IPS,
) -> Plan:
    """Decide the next step for one pool.

    ``status.ips`` must already reflect the NIC (see :func:`merge_inventory`);
    ``nic_capacity`` is how many secondary ipConfigurations azure-cni may hold on the NIC
    (255 minus anything else on it); ``subnet_free`` is None when Azure does not say.
    """
    available = [ip for ip in status.ips if ip.state is IPState.AVAILABLE]
    releasing = [ip for ip in status.ips if ip.state is IPState.RELEASING]
    acked = sorted(ip.ip_configuration for ip in releasing
                   if ip.ip_configuration in status.release_acks)
    free = len(available) - status.used - status.cooling
    ceiling = min(spec.max_ips, MAX_SECONDARY_IPS, nic_capacity)
    # Releasing addresses still occupy the NIC until removed, so they count against the ceiling.
    headroom = max(0, ceiling - (len(status.ips) - len(acked)))

    warm_need = spec.min_free_ips - free
    warm_add = -(-warm_need // spec.batch_size) * spec.batch_size if warm_need > 0 else 0
    floor_add = max(0, spec.min_ips - len(available))
    want = max(warm_add, floor_add)
    over_ceiling = len(available) - spec.max_ips
    if want > 0 and (headroom > 0 or over_ceiling <= 0):
        add = min(want, headroom)
        exhausted = subnet_free is not None and subnet_free < add
        if subnet_free is not None:
            add = min(add, max(0, subnet_free))
        limits = []
        if add < want and headroom < want:
            limits.append(f"ceiling {ceiling}")
        if exhausted:
            limits.append(f"subnet has {subnet_free} free")
        reason = (f"free {free} < minFreeIPs {spec.min_free_ips}" if warm_add >= floor_add
                  else f"available {len(available)} < minIPs {spec.min_ips}")
        if limits:
            reason += " (limited by " + ", ".join(limits) + ")"
        return Plan(add=add, remove=tuple(acked), subnet_exhausted=exhausted,
                    short=want - add, reason=reason)

    # Above maxIPs the ceiling wins over the warm pool; otherwise shrink only above maxFreeIPs.
    excess = over_ceiling if want > 0 else max(free - spec.max_free_ips, over_ceiling)
    releasable = min(excess, free, len(available) - spec.min_ips)
    if releasable <= 0:
        return Plan(remove=tuple(acked),
                    reason=f"{len(acked)} acknowledged releases" if acked else "")
    since = status.excess_since or now
    if (now - since).total_seconds() < spec.release_delay_seconds:
        return Plan(remove=tuple(acked), excess_since=since,
                    reason=f"{releasable} excess since {since:%H:%M:%S}, "
                           f"waiting releaseDelaySeconds {spec.release_delay_seconds}")
    candidates = sorted(available, key=address_key, reverse=True)[:releasable]
    reason = (f"available {len(available)} > maxIPs {spec.max_ips}" if over_ceiling > 0
              else f"free {free} > maxFreeIPs {spec.max_free_ips} for "
                   f"{spec.release_delay_seconds}s")
    return Plan(mark=tuple(ip.ip_configuration for ip in candidates), remove=tuple(acked),
                reason=reason)


@dataclass(frozen=True)
class Inventory:
    """The pool's addresses reconciled against the NIC."""

    ips: tuple[PoolIP, ...]
    #: ipConfigurations on the NIC with our prefix that the pool did not know (adopted)
    adopted: tuple[PoolIP, ...] = ()
    #: addresses the pool had, not marked for release, that vanished from the NIC
    vanished: tuple[PoolIP, ...] = ()


def merge_inventory(previous: Iterable[PoolIP], on_nic: Mapping[str, str]) -> Inventory:
    """The pool's inventory after observing the NIC's ``{ipConfiguration name: address}``.

    The NIC is the truth for what exists; the previous inventory is the truth for states.
    Names on the NIC the pool did not know are adopted as ``Available`` (a crash between a NIC
    write and the status write leaves exactly those). Names that vanished are dropped; those
    that were not ``Releasing`` are reported, because somebody removed them behind our back.
    """
    known = {ip.ip_configuration: ip for ip in previous}
    ips, adopted, vanished = [], [], []
    for name, address in on_nic.items():
        old = known.get(name)
        if old is None:
            ip = PoolIP(address, name, IPState.AVAILABLE)
            adopted.append(ip)
        else:
            ip = PoolIP(address, name, old.state)
        ips.append(ip)
    for name, old in known.items():
        if name not in on_nic and old.state is not IPState.RELEASING:
            vanished.append(old)
    ips.sort(key=address_key)
    return Inventory(tuple(ips), tuple(adopted), tuple(vanished))


def apply_marks(ips: Sequence[PoolIP], mark: Iterable[str]) -> tuple[PoolIP, ...]:
    """The inventory with ``mark`` turned ``Releasing`` (never the other way round)."""
    marked = set(mark)
    return tuple(PoolIP(ip.address, ip.ip_configuration, IPState.RELEASING)
                 if ip.ip_configuration in marked else ip for ip in ips)
