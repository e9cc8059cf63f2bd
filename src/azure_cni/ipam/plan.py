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
- **Blocks.** In ``Blocks`` mode each ipConfiguration holds an aligned block of ``unit``
  addresses (16 for a /28). Every size above still counts addresses; adds, ``maxIPs`` and
  releases are rounded to whole blocks (up for what the pool needs, down for what it gives
  back), and the subnet's free addresses bound the blocks it may supply. A block is marked as
  a whole and the agent acks it only when none of its addresses is used or cooling; blocks
  the agent reports idle (``idleBlocks``) are marked before the others.
- **Mode change.** Entries of the other kind (single addresses in a Blocks pool or the other
  way round) are marked ``Releasing`` at once and leave through the same handshake; the CRD
  refuses the change while pods use the pool, so this runs on an idle pool.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

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
    unit = spec.unit
    wanted_length = spec.prefix_length
    # Entries of the other kind (the pool's mode changed while it was idle) are released
    # through the handshake like any excess: the agent acks each once no pod uses it.
    misfit = [ip for ip in status.ips
              if ip.state is IPState.AVAILABLE and ip.prefix_length != wanted_length]
    available = [ip for ip in status.ips
                 if ip.state is IPState.AVAILABLE and ip.prefix_length == wanted_length]
    releasing = [ip for ip in status.ips if ip.state is IPState.RELEASING]
    acked = sorted(ip.ip_configuration for ip in releasing
                   if ip.ip_configuration in status.release_acks)
    held = sum(ip.size for ip in available)
    free = held - status.used - status.cooling
    # sizes count addresses; in Blocks mode they round up to whole blocks
    max_ips = _round_up(spec.max_ips, unit)
    ceiling = min(max_ips // unit, MAX_SECONDARY_IPS, nic_capacity)
    # Releasing entries still occupy the NIC until removed, so they count against the
    # ceiling: against maxIPs those of the pool's kind, against the NIC's slots all of them.
    gone = set(acked)
    occupied = [ip for ip in status.ips if ip.ip_configuration not in gone]
    same_kind = sum(ip.size for ip in occupied if ip.prefix_length == wanted_length)
    slots = min(MAX_SECONDARY_IPS, nic_capacity) - len(occupied)
    headroom = max(0, min((max_ips - same_kind) // unit, slots))
    mark_misfits = tuple(ip.ip_configuration for ip in misfit)

    warm_need = spec.min_free_ips - free
    warm_add = _round_up(warm_need, spec.batch_size) if warm_need > 0 else 0
    floor_add = max(0, spec.min_ips - held)
    want = max(warm_add, floor_add)
    over_ceiling = held - max_ips
    if want > 0 and (headroom > 0 or over_ceiling <= 0):
        want_entries = _round_up(want, unit) // unit
        add = min(want_entries, headroom)
        supply = None if subnet_free is None else max(0, subnet_free) // unit
        exhausted = supply is not None and supply < add
        if supply is not None:
            add = min(add, supply)
        limits = []
        if add < want_entries and headroom < want_entries:
            limits.append(f"ceiling {ceiling * unit}")
        if exhausted:
            limits.append(f"subnet has {subnet_free} free" if unit == 1 else
                          f"subnet has {subnet_free} free addresses, room for at most "
                          f"{supply} /{wanted_length} blocks")
        reason = (f"free {free} < minFreeIPs {spec.min_free_ips}" if warm_add >= floor_add
                  else f"available {held} < minIPs {spec.min_ips}")
        if unit > 1:
            reason += f": {add} /{wanted_length} blocks"
        if limits:
            reason += " (limited by " + ", ".join(limits) + ")"
        return Plan(add=add, mark=mark_misfits, remove=tuple(acked), subnet_exhausted=exhausted,
                    short=max(0, want - add * unit), reason=reason)

    # Above maxIPs the ceiling wins over the warm pool; otherwise shrink only above maxFreeIPs.
    excess = over_ceiling if want > 0 else max(free - spec.max_free_ips, over_ceiling)
    releasable = min(excess, free, held - spec.min_ips) // unit
    if releasable <= 0:
        reason = f"{len(acked)} acknowledged releases" if acked else ""
        if misfit:
            reason = (f"releasing {len(misfit)} ipConfigurations of the pool's former mode "
                      f"(now {spec.mode})")
        return Plan(mark=mark_misfits, remove=tuple(acked), reason=reason)
    since = status.excess_since or now
    if (now - since).total_seconds() < spec.release_delay_seconds:
        return Plan(mark=mark_misfits, remove=tuple(acked), excess_since=since,
                    reason=f"{releasable * unit} excess since {since:%H:%M:%S}, "
                           f"waiting releaseDelaySeconds {spec.release_delay_seconds}")
    # blocks the agent reports idle first (only a wholly unused block is acked), then the
    # highest: the agent hands out the lowest addresses first
    candidates = sorted(available, reverse=True, key=lambda ip: (
        ip.ip_configuration in status.idle_blocks, address_key(ip)))[:releasable]
    reason = (f"available {held} > maxIPs {spec.max_ips}" if over_ceiling > 0
              else f"free {free} > maxFreeIPs {spec.max_free_ips} for "
                   f"{spec.release_delay_seconds}s")
    return Plan(mark=mark_misfits + tuple(ip.ip_configuration for ip in candidates),
                remove=tuple(acked), reason=reason)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class Inventory:
    """The pool's addresses reconciled against the NIC."""

    ips: tuple[PoolIP, ...]
    #: ipConfigurations on the NIC with our prefix that the pool did not know (adopted)
    adopted: tuple[PoolIP, ...] = ()
    #: addresses the pool had, not marked for release, that vanished from the NIC
    vanished: tuple[PoolIP, ...] = ()


def merge_inventory(previous: Iterable[PoolIP], on_nic: Mapping[str, str]) -> Inventory:
    """The pool's inventory after observing the NIC's ``{ipConfiguration name: address}``
    (``privateIPAddress`` as Azure writes it: ``<address>/<length>`` for a block).

    The NIC is the truth for what exists; the previous inventory is the truth for states.
    Names on the NIC the pool did not know are adopted as ``Available`` (a crash between a NIC
    write and the status write leaves exactly those). Names that vanished are dropped; those
    that were not ``Releasing`` are reported, because somebody removed them behind our back.
    """
    known = {ip.ip_configuration: ip for ip in previous}
    ips, adopted, vanished = [], [], []
    for name, address in on_nic.items():
        old = known.get(name)
        ip = PoolIP.from_azure(address, name, IPState.AVAILABLE if old is None else old.state)
        if old is None:
            adopted.append(ip)
        ips.append(ip)
    for name, old in known.items():
        if name not in on_nic and old.state is not IPState.RELEASING:
            vanished.append(old)
    ips.sort(key=address_key)
    return Inventory(tuple(ips), tuple(adopted), tuple(vanished))


def apply_marks(ips: Sequence[PoolIP], mark: Iterable[str]) -> tuple[PoolIP, ...]:
    """The inventory with ``mark`` turned ``Releasing`` (never the other way round)."""
    marked = set(mark)
    return tuple(replace(ip, state=IPState.RELEASING)
                 if ip.ip_configuration in marked else ip for ip in ips)
