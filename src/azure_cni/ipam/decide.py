"""One reconcile of one NodeIPPool, decided without I/O.

The operator observes a pool (its object from the watch, the node's NIC, the subnet, the time)
and calls :func:`decide`. The :class:`Decision` says everything the reconcile will do: whether
the NIC must be read first, the one NIC write (or none), and then, through
:meth:`Decision.settle` or :meth:`Decision.failed`, the status to apply with every condition,
the Events, and when to look again. :func:`observation_failed` does the same for an error
while observing. The operator only carries decisions out, once per kind of write.

The rules, beyond :func:`azure_cni.ipam.plan.plan`'s sizing:

- **Inventory.** The NIC is the truth for what exists, the pool's status for states
  (:func:`merge_inventory`). Unknown ``azcni-`` names on the NIC are adopted (a crash between
  a NIC write and the status write leaves exactly those).
- **Drift.** An address that vanished from the NIC behind our back goes back under its own
  name at its own address (Static), in the same write as the rest. If Azure says an address
  is now someone else's (AddressInUse), only the addresses it names are given up (Event
  ``AddressLost``); the others stay in the pool and are restored by the next write. When the
  node has another NIC now and the one the pool recorded still exists on another VM, the
  addresses on it went with it: they leave the pool at once (Event ``NicMoved``).
- **Provisioning.** An ipConfiguration of ours (or the NIC) in ``Failed`` gets a new write of
  the NIC, which is the only thing that clears Failed in Azure, and condition Ready=False
  ``ProvisioningFailed`` until it is clean. One ``Updating`` means a write is in flight: look
  again shortly.
- **Full subnet.** Acknowledged removals never wait for room: when the subnet cannot supply
  the adds (its free count says so, or the last write said SubnetIsFull), the removals go in
  a write of their own and the adds follow.
- **Deletion.** A pool being deleted hands back only what its node agent acknowledged as
  unused: every address is marked ``Releasing`` (the agent stops handing it out and acks it
  once no pod uses it), acked ones leave the NIC, and the finalizer goes once none is left.
  Until then Ready=False ``Deleting`` says how many wait for which pods. A NIC or VM that is
  gone has nothing left to hand back.
- **Errors.** Each ``CloudError`` type maps to a condition, an Event and a delay in one table,
  :data:`ERRORS`.
- **Per-pod Azure networking.** What pods asked for (a public IP, backend pools) rides on the
  same NIC write, decided by :func:`azure_cni.ipam.podnet.plan_pod_network`; a request not
  answered yet in ``status.podNetworking`` makes the reconcile read the NIC. When Azure
  refuses one of them, only the requests naming what it refused become Refused (an Event on
  each pod) and the write is made again without them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from azure_cni.api.nodeippool import (
    IPCONFIG_PREFIX,
    MAX_SECONDARY_IPS,
    Condition,
    ConditionType,
    InvalidPool,
    IPState,
    NicInfo,
    NodeIPPool,
    PoolIP,
    PoolStatus,
    block_size,
    set_condition,
)
from azure_cni.api.podnet import PodAttachment
from azure_cni.api.settings import PodNetworkingSettings
from azure_cni.cloud.port import (
    AddressInUse,
    AttachmentRefused,
    AuthFailed,
    CloudError,
    Conflict,
    FeatureEdit,
    InvalidProviderID,
    MissingProviderID,
    NewIPConfiguration,
    NicLimitExceeded,
    NicSnapshot,
    NotFound,
    SubnetFull,
    SubnetInfo,
    Throttled,
    Unsupported,
    VnetLimitReached,
)
from azure_cni.ipam.plan import Plan, address_key, apply_marks, merge_inventory, plan
from azure_cni.ipam.podnet import (
    Looked,
    PodEvent,
    PodNetworkPlan,
    pending,
    plan_pod_network,
    summarize,
)

NameSource = Callable[[], str]

#: an ipConfiguration write of ours is still running: look again after this long
UPDATING_RECHECK_SECONDS = 5.0
#: the adds that a removal-only write held back follow this soon
SPLIT_WRITE_RECHECK_SECONDS = 0.5
#: a pool short of addresses because of the subnet looks again this often
SUBNET_RECHECK_SECONDS = 60.0
#: a NIC still Failed after it was written again is written again after this long
FAILED_RECHECK_SECONDS = 30.0
#: Ready reasons under which a reconcile may trust the recorded inventory without the NIC
_HEALTHY = frozenset({"WarmPoolReady", "Scaled", "Limited"})


class Severity(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event on the pool."""

    type: Severity
    reason: str
    message: str


@dataclass(frozen=True)
class Observation:
    """What the operator saw of one pool; ``nic`` and ``subnet`` are None when not read."""

    pool: NodeIPPool
    now: dt.datetime
    nic: NicSnapshot | None = None
    subnet: SubnetInfo | None = None
    #: who may use per-pod public IPs and backend pools (default: nobody)
    pod_networking: PodNetworkingSettings = field(default_factory=PodNetworkingSettings)
    #: the NIC the pool recorded, when the node has another one now and that one still exists
    #: (moved to another VM): the addresses on it went with it
    moved: NicSnapshot | None = None
    #: the tags of public IPs and load balancers pods ask for, as read (or the error reading
    #: them), by lower-cased resource ID: every attach checks them
    tags: Looked = field(default_factory=dict)


@dataclass(frozen=True)
class NicWrite:
    """The one write of the NIC a reconcile makes (the adapter's update_ip_configurations)."""

    add: tuple[NewIPConfiguration, ...] = ()
    remove: tuple[str, ...] = ()
    #: write even if nothing changes: clears a Failed provisioning state
    reapply: bool = False
    #: (ipConfiguration, the change to its public IP and backend pools)
    features: tuple[tuple[str, FeatureEdit], ...] = ()


@dataclass(frozen=True)
class Outcome:
    """What the reconcile records, and when the pool is looked at again."""

    #: the operator's status to apply; None when it would change nothing
    status: PoolStatus | None = None
    events: tuple[Event, ...] = ()
    #: look again after this many seconds; None: only when something changes
    requeue_after: float | None = None
    #: the pool is being deleted and nothing of it is left on the NIC: drop the finalizer
    release_finalizer: bool = False
    #: the reconcile failed (a retry is scheduled by requeue_after)
    failed: bool = False
    message: str = ""
    #: the inventory after the reconcile (for metrics)
    ips: tuple[PoolIP, ...] = ()
    added: int = 0
    removed: int = 0
    #: addresses the pool lacks to reach its warm target and cannot get now (for metrics)
    short: int = 0
    #: Events on pods (per-pod Azure networking)
    pod_events: tuple[PodEvent, ...] = ()


# -- conditions: built here and nowhere else -------------------------------------------------


def _conditions(pool: NodeIPPool, *changes: Condition | None) -> tuple[Condition, ...]:
    conditions = pool.status.conditions
    for change in changes:
        if change is not None:
            conditions = set_condition(conditions, change)
    return conditions


def _condition(pool: NodeIPPool, ctype: ConditionType, status: bool, reason: str,
               message: str) -> Condition:
    generation = pool.generation if ctype != ConditionType.SUBNET_EXHAUSTED else None
    return Condition(ctype, status, reason, message, observed_generation=generation)


def _is_true(pool: NodeIPPool, ctype: ConditionType) -> bool:
    c = pool.status.condition(ctype)
    return c is not None and c.status


def _reason(pool: NodeIPPool, ctype: ConditionType) -> str:
    c = pool.status.condition(ctype)
    return c.reason if c is not None else ""


def _changed(pool: NodeIPPool, status: PoolStatus) -> PoolStatus | None:
    """``status`` if applying it changes the operator's fields, else None."""
    if status.operator_fields() == pool.status.operator_fields() and (
            pool.status.observed_generation == pool.generation):
        return None
    return status


def _summary(items: Iterable[str], limit: int = 8) -> str:
    listed = list(items)
    text = ", ".join(listed[:limit])
    return text + (f" and {len(listed) - limit} more" if len(listed) > limit else "")


def ours(nic: NicSnapshot) -> dict[str, str]:
    """azure-cni's ipConfigurations on the NIC that hold an address: name -> address
    (``<address>/<length>`` for a block)."""
    return {c.name: c.private_ip for c in nic.secondary(IPCONFIG_PREFIX) if c.private_ip}


def _nic_info(nic: NicSnapshot, subnet: SubnetInfo | None, known: NicInfo | None) -> NicInfo:
    cidr = subnet.cidr if subnet is not None else (known.subnet_cidr if known else "")
    space = subnet.vnet_address_space if subnet is not None else (
        known.vnet_address_space if known else ())
    return NicInfo(nic.id, nic.primary.address or "", nic.primary.subnet_id, cidr, space,
                   name=nic.name, mac_address=nic.mac_address or (known.mac_address if known
                                                                  else ""),
                   primary_nic=nic.primary_nic)


def _pod_condition(pool: NodeIPPool, networking: Iterable[PodAttachment]) -> Condition | None:
    """``PodNetworking`` for the pool's answers; none on a pool that never had a request."""
    listed = tuple(networking)
    if not listed and pool.status.condition(ConditionType.POD_NETWORKING) is None:
        return None
    status, reason, message = summarize(listed)
    return _condition(pool, ConditionType.POD_NETWORKING, status, reason, message)


def _subnet_condition(pool: NodeIPPool, subnet: SubnetInfo | None, exhausted: bool
                      ) -> Condition | None:
    if subnet is None:
        return None
    free = (f"subnet {subnet.cidr}: {subnet.free_addresses} addresses free"
            if subnet.free_addresses is not None else f"subnet {subnet.cidr}")
    if subnet.free_addresses is not None and pool.spec.unit > 1:
        free += (f", room for at most {subnet.free_addresses // pool.spec.unit} "
                 f"/{pool.spec.prefix_length} blocks")
    return _condition(pool, ConditionType.SUBNET_EXHAUSTED, exhausted,
                      "SubnetFull" if exhausted else "SubnetHasSpace", free)


# -- errors: one table ------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorPolicy:
    """What an Azure error means for the pool: its Ready reason, whether the pool counts as
    not provisioned, whether it is worth an Event, and when to try again (None: on change)."""

    reason: str
    delay: float | None
    not_provisioned: bool = False
    event: bool = True
    #: the error is transient and changes no condition (throttling, a racing writer)
    transient: bool = False


ERRORS: Mapping[type[CloudError], ErrorPolicy] = {
    Throttled: ErrorPolicy("AzureThrottled", None, transient=True),  # delay: its Retry-After
    Conflict: ErrorPolicy("Conflict", 5.0, event=False, transient=True),
    SubnetFull: ErrorPolicy("SubnetFull", SUBNET_RECHECK_SECONDS),
    VnetLimitReached: ErrorPolicy("VnetLimit", SUBNET_RECHECK_SECONDS),
    AddressInUse: ErrorPolicy("AddressInUse", 1.0),
    AttachmentRefused: ErrorPolicy("PodNetworkRefused", 30.0),
    NicLimitExceeded: ErrorPolicy("NicLimit", 300.0),
    NotFound: ErrorPolicy("NotFound", 60.0, not_provisioned=True),
    AuthFailed: ErrorPolicy("AzureAuthFailed", 120.0, not_provisioned=True),
    Unsupported: ErrorPolicy("Unsupported", None, not_provisioned=True),
    MissingProviderID: ErrorPolicy("NoProviderID", None, not_provisioned=True, event=False),
    InvalidProviderID: ErrorPolicy("InvalidProviderID", None, not_provisioned=True),
    CloudError: ErrorPolicy("AzureError", 30.0),
}


def error_policy(error: CloudError) -> ErrorPolicy:
    """The table's row for ``error``: its own type's, else its nearest base class's."""
    for cls in type(error).__mro__:
        if cls in ERRORS:
            return ERRORS[cls]
    return ERRORS[CloudError]


def _failure(pool: NodeIPPool, error: CloudError, doing: str, *, reason: str = "",
             exhausted: Condition | None = None) -> Outcome:
    """The outcome of ``error`` while ``doing``, by the table (``reason`` overrides its;
    ``exhausted`` is the SubnetExhausted condition a SubnetFull sets, if not the plain one)."""
    policy = error_policy(error)
    if reason:
        policy = replace(policy, reason=reason)
    detail = f"Azure refused {doing}: {error}" if doing else str(error)
    delay = policy.delay
    if isinstance(error, Throttled):
        delay = max(1.0, error.retry_after)
        detail += f"; retrying in {delay:.0f}s"
    events = []
    if policy.transient:
        if policy.event:
            events.append(Event(Severity.WARNING, policy.reason, detail))
        return Outcome(events=tuple(events), requeue_after=delay, failed=True, message=detail)
    ready = _condition(pool, ConditionType.READY, False, policy.reason, detail)
    provisioned = _condition(pool, ConditionType.PROVISIONED, False, policy.reason, detail) \
        if policy.not_provisioned else None
    if exhausted is None and isinstance(error, SubnetFull):
        exhausted = _condition(pool, ConditionType.SUBNET_EXHAUSTED, True, "SubnetFull",
                               str(error))
    if policy.event and (_reason(pool, ConditionType.READY) != policy.reason
                         or _is_true(pool, ConditionType.READY)):
        reason = "SubnetExhausted" if isinstance(error, SubnetFull) else policy.reason
        events.append(Event(Severity.WARNING, reason, detail))
    status = replace(pool.status, observed_generation=pool.generation,
                     conditions=_conditions(pool, provisioned, ready, exhausted))
    return Outcome(status=_changed(pool, status), events=tuple(events), requeue_after=delay,
                   failed=True, message=detail)


def observation_failed(obs: Observation, error: CloudError) -> Outcome:
    """The outcome of an error while observing the pool (reading its VM, NIC or subnet)."""
    pool = obs.pool
    if pool.deleting and isinstance(error, NotFound | InvalidProviderID):
        # the VM or NIC is gone (or never known): nothing of ours is left to hand back
        return Outcome(release_finalizer=True,
                       events=(Event(Severity.NORMAL, "Deleted",
                                     f"the node's NIC is gone ({error}); nothing to release"),),
                       message=str(error))
    doing = "" if isinstance(error, InvalidProviderID) else "reading the NIC"
    return _failure(pool, error, doing)


# -- the decision -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What to do for one pool. One of four shapes:

    - ``read_nic``: observe the NIC (and the subnet), then decide again;
    - ``look_up``: read the tags of these public IPs and load balancers, then decide again;
    - ``write``: write the NIC once, then take ``settle(written)`` or ``failed(error)``;
    - otherwise ``outcome`` is the whole result.
    """

    obs: Observation
    read_nic: bool = False
    look_up: tuple[str, ...] = ()
    write: NicWrite | None = None
    outcome: Outcome | None = None
    #: the inventory the write starts from (restored addresses included, marks pending)
    planned: PoolStatus | None = None
    plan: Plan = field(default_factory=Plan)
    restore: tuple[PoolIP, ...] = ()
    adopted: tuple[PoolIP, ...] = ()
    #: additions held back so that removals could go alone (a full subnet)
    held_back: int = 0
    #: recorded addresses that left with the NIC the pool recorded (now another VM's)
    moved_away: tuple[PoolIP, ...] = ()
    deleting: bool = False
    pod_network: PodNetworkPlan | None = None

    @property
    def address_delta(self) -> int:
        """Subnet addresses the write takes (positive) or gives back (negative)."""
        if self.write is None:
            return 0
        sizes = {ip.ip_configuration: ip.size
                 for ip in (self.planned.ips if self.planned is not None else ())}
        taken = sum(block_size(a.prefix_length) for a in self.write.add)
        return taken - sum(sizes.get(name, 1) for name in self.write.remove)

    def settle(self, written: NicSnapshot) -> Outcome:
        """The outcome once ``write`` succeeded and the NIC reads ``written``."""
        if self.deleting:
            return _record_deletion(self, written)
        return _record(self, written)

    def failed(self, error: CloudError) -> Outcome:
        """The outcome when ``write`` failed with ``error``."""
        pool = self.obs.pool
        if self.deleting and isinstance(error, NotFound):
            return observation_failed(self.obs, error)
        if isinstance(error, AddressInUse) and self.restore:
            return self._addresses_lost(error)
        if isinstance(error, AttachmentRefused) and self.pod_network is not None:
            return self._attachments_refused(error)
        if self.write is not None and self.write.reapply and not error_policy(error).transient:
            return _failure(pool, error, "writing the NIC again to clear its Failed "
                            "provisioning state", reason="ProvisioningFailed")
        if isinstance(error, SubnetFull):
            return _failure(pool, error, "writing the NIC", exhausted=self._exhaustion(error))
        return _failure(pool, error, "writing the NIC")

    def _exhaustion(self, error: SubnetFull) -> Condition:
        """SubnetExhausted for a refused write: the VNet's limit, a fragmented subnet (free
        addresses, but no free aligned block), or a full one."""
        pool, subnet = self.obs.pool, self.obs.subnet
        unit, length = pool.spec.unit, pool.spec.prefix_length
        wants_blocks = self.write is not None and any(
            a.prefix_length is not None and a.address is None for a in self.write.add)
        if isinstance(error, VnetLimitReached):
            hint = ("" if unit > 1 else "; Blocks mode counts one address per block against "
                    "this limit")
            reason, message = "VnetLimit", (
                f"the virtual network holds as many private addresses as Azure allows "
                f"(65,536; a block counts once){hint}: {error}")
        elif wants_blocks and subnet is not None and subnet.free_addresses is not None \
                and subnet.free_addresses >= unit:
            reason, message = "NoFreeBlock", (
                f"subnet {subnet.cidr} reports {subnet.free_addresses} unassigned addresses "
                f"but Azure found no free aligned /{length} block: its free space is in "
                f"pieces smaller than {unit} aligned addresses: {error}")
        else:
            reason, message = "SubnetFull", str(error)
        return _condition(pool, ConditionType.SUBNET_EXHAUSTED, True, reason, message)

    def _attachments_refused(self, error: AttachmentRefused) -> Outcome:
        """Record Azure's refusal on the requests that named what it refused; the next write
        goes without them."""
        assert self.pod_network is not None
        pool = self.obs.pool
        refused = self.pod_network.refuse(error)
        if refused is None:
            return _failure(pool, error, "writing the NIC")
        networking, pod_events = refused
        status = replace(pool.status, pod_networking=networking,
                         observed_generation=pool.generation,
                         conditions=_conditions(pool, _pod_condition(pool, networking)))
        return Outcome(status=_changed(pool, status), pod_events=pod_events,
                       requeue_after=SPLIT_WRITE_RECHECK_SECONDS, failed=True,
                       message=str(error))

    def _addresses_lost(self, error: AddressInUse) -> Outcome:
        """Give up the restored addresses Azure says are taken; keep the rest for next time."""
        pool = self.obs.pool
        nic_name = self.obs.nic.name if self.obs.nic is not None else "?"
        named = set(error.addresses)
        lost = [ip for ip in self.restore if ip.address in named]
        note = ""
        if not lost:
            # Azure named none of them: without knowing which, keeping them all would retry
            # the same refused write forever
            lost, note = list(self.restore), " (Azure did not say which address is taken)"
        gone = {ip.ip_configuration for ip in lost}
        events = tuple(Event(
            Severity.WARNING, "AddressLost",
            f"{ip.address} ({ip.ip_configuration}) was removed from NIC {nic_name} outside "
            f"azure-cni and is now used elsewhere; pods using it lost their address{note}: "
            f"{error}") for ip in lost)
        ips = tuple(ip for ip in pool.status.ips if ip.ip_configuration not in gone)
        status = replace(pool.status, ips=ips, observed_generation=pool.generation)
        return Outcome(status=_changed(pool, status), events=events, requeue_after=1.0,
                       failed=True, message=str(error), ips=ips)


def decide(obs: Observation, new_name: NameSource) -> Decision:
    """Decide the next step for one pool (the rules are in the module docstring).

    ``new_name`` gives a fresh ipConfiguration name for each address to add.
    """
    pool = obs.pool
    if pool.deleting:
        return _decide_deletion(obs)
    try:
        pool.spec.validate()
    except InvalidPool as e:
        return Decision(obs, outcome=_invalid_spec(pool, str(e)))
    nic = obs.nic
    if nic is None:
        ready = pool.status.condition(ConditionType.READY)
        if pool.status.nic is None or ready is None or ready.reason not in _HEALTHY:
            return Decision(obs, read_nic=True)
        # Usage changes usually need no NIC at all: decide on the recorded inventory, and
        # read the NIC only if that wants a write.
        p = plan(pool.spec, pool.status, obs.now)
        if p.writes_nic or pending(pool.status.pod_requests, pool.status.pod_networking):
            return Decision(obs, read_nic=True)
        return Decision(obs, outcome=_record_without_nic(obs, p))

    if any(c.provisioning_state.lower() in ("updating", "creating", "deleting")
           for c in nic.secondary(IPCONFIG_PREFIX)):
        return Decision(obs, outcome=Outcome(
            requeue_after=UPDATING_RECHECK_SECONDS,
            message=f"a write of NIC {nic.name} is still being provisioned; looking again"))

    inventory = merge_inventory(pool.status.ips, ours(nic))
    # Addresses that vanished behind our back go back on the NIC, same name and same address
    # (Static), so the pods using them keep working.
    # Those that left on a NIC now attached to another VM are that VM's (Azure would refuse
    # each one, one write at a time).
    went = ours(obs.moved) if obs.moved is not None else {}
    moved_away = tuple(ip for ip in inventory.vanished
                       if went.get(ip.ip_configuration) == ip.address)
    restore = tuple(replace(ip, state=IPState.AVAILABLE)
                    for ip in inventory.vanished if ip not in moved_away)
    planned = replace(pool.status, ips=tuple(sorted(inventory.ips + restore, key=address_key)))
    others = len(nic.secondary()) - len(nic.secondary(IPCONFIG_PREFIX))
    subnet_free = obs.subnet.free_addresses if obs.subnet is not None else None
    p = plan(pool.spec, planned, obs.now, subnet_free=subnet_free,
             nic_capacity=MAX_SECONDARY_IPS - others)
    adds = tuple(NewIPConfiguration(ip.ip_configuration, ip.address, ip.prefix_length)
                 for ip in restore) + \
        tuple(NewIPConfiguration(new_name(), prefix_length=pool.spec.prefix_length)
              for _ in range(p.add))
    held_back = 0
    if adds and p.remove and _subnet_tight(pool, subnet_free, len(adds) * pool.spec.unit):
        # removals free room: they must not wait inside a write the subnet refuses
        held_back, adds = len(adds), ()
    reapply = nic.failed or any(c.failed for c in nic.secondary(IPCONFIG_PREFIX))
    pods = plan_pod_network(pool.status.pod_requests, pool.status.pod_networking, nic,
                            obs.pod_networking, (ip.ip_configuration for ip in planned.ips),
                            looked=obs.tags)
    if pods.look_up:
        return Decision(obs, look_up=pods.look_up)
    decision = Decision(obs, planned=planned, plan=p, restore=restore if adds else (),
                        adopted=inventory.adopted, held_back=held_back, pod_network=pods,
                        moved_away=moved_away)
    if adds or p.remove or reapply or pods.writes_nic:
        return replace(decision, write=NicWrite(adds, p.remove, reapply,
                                                tuple(sorted(pods.features.items()))))
    return replace(decision, outcome=_record(decision, nic))


def _invalid_spec(pool: NodeIPPool, message: str) -> Outcome:
    conditions = _conditions(
        pool, _condition(pool, ConditionType.PROVISIONED, False, "InvalidSpec", message),
        _condition(pool, ConditionType.READY, False, "InvalidSpec", message))
    events = () if _reason(pool, ConditionType.READY) == "InvalidSpec" else (
        Event(Severity.WARNING, "InvalidSpec", message),)
    status = replace(pool.status, conditions=conditions, observed_generation=pool.generation)
    return Outcome(status=_changed(pool, status), events=events, failed=True, message=message)


def _subnet_tight(pool: NodeIPPool, subnet_free: int | None, adds: int) -> bool:
    """The subnet is known not to have room for ``adds`` (its count, or the last write)."""
    if subnet_free is not None:
        return subnet_free < adds
    return _is_true(pool, ConditionType.SUBNET_EXHAUSTED)


def _ready(pool: NodeIPPool, p: Plan) -> Condition:
    if p.short > 0:
        return _condition(pool, ConditionType.READY, False, "Limited",
                          f"{p.short} addresses short of the warm target: {p.reason}")
    if p.add > 0:
        return _condition(pool, ConditionType.READY, True, "Scaled", p.reason)
    return _condition(pool, ConditionType.READY, True, "WarmPoolReady",
                      p.reason or "the pool holds its warm target")


def _requeue(obs: Observation, p: Plan, held_back: int) -> float | None:
    if held_back:
        return SPLIT_WRITE_RECHECK_SECONDS
    delays = []
    if p.excess_since is not None:
        elapsed = (obs.now - p.excess_since).total_seconds()
        delays.append(max(1.0, obs.pool.spec.release_delay_seconds - elapsed))
    if p.subnet_exhausted:
        delays.append(SUBNET_RECHECK_SECONDS)
    return min(delays) if delays else None


def _plan_events(pool: NodeIPPool, p: Plan) -> list[Event]:
    events = []
    if p.mark:
        events.append(Event(Severity.NORMAL, "Releasing",
                            f"marked {len(p.mark)} free addresses for release ({p.reason}); they "
                            "leave the NIC once the node agent confirms they are unused"))
    if p.subnet_exhausted and not _is_true(pool, ConditionType.SUBNET_EXHAUSTED):
        events.append(Event(Severity.WARNING, "SubnetExhausted",
                            f"the subnet cannot supply more addresses: {p.reason}"))
    return events


def _record_without_nic(obs: Observation, p: Plan) -> Outcome:
    """A reconcile that needs no NIC: marks, the release delay, Ready from the plan."""
    pool = obs.pool
    ips = apply_marks(pool.status.ips, p.mark)
    status = replace(pool.status, ips=ips, excess_since=p.excess_since,
                     observed_generation=pool.generation,
                     conditions=_conditions(pool, _ready(pool, p)))
    return Outcome(status=_changed(pool, status), events=tuple(_plan_events(pool, p)),
                   requeue_after=_requeue(obs, p, 0), message=p.reason, ips=ips,
                   short=p.short)


def _record(d: Decision, nic: NicSnapshot) -> Outcome:
    """The outcome of a reconcile whose NIC now reads ``nic`` (written, or as observed)."""
    obs, pool, p = d.obs, d.obs.pool, d.plan
    assert d.planned is not None
    on_nic = ours(nic)
    ips = apply_marks(merge_inventory(d.planned.ips, on_nic).ips, p.mark)
    write = d.write or NicWrite()
    added = sorted((on_nic[a.name] for a in write.add
                    if a.address is None and a.name in on_nic), key=ip_key)
    events: list[Event] = []
    if d.moved_away and d.obs.moved is not None:
        events.append(Event(
            Severity.WARNING, "NicMoved",
            f"NIC {d.obs.moved.name} now belongs to another VM and took {len(d.moved_away)} "
            f"addresses of this pool along; pods using them lost their address; the pool "
            f"continues on NIC {nic.name}: "
            f"{_summary(f'{ip.address} ({ip.ip_configuration})' for ip in d.moved_away)}"))
    if d.adopted:
        events.append(Event(
            Severity.NORMAL, "Adopted",
            f"found {len(d.adopted)} azure-cni ipConfigurations on NIC {nic.name} not yet in "
            f"the pool (an interrupted earlier write): "
            f"{_summary(a.address for a in d.adopted)}"))
    if d.restore:
        events.append(Event(
            Severity.WARNING, "DriftRepaired",
            f"re-added {len(d.restore)} ipConfigurations removed from NIC {nic.name} outside "
            f"azure-cni: "
            f"{_summary(f'{r.address} ({r.ip_configuration})' for r in d.restore)}"))
    if added:
        events.append(Event(Severity.NORMAL, "Allocated",
                            f"added {len(added)} addresses to NIC {nic.name} in one write "
                            f"({p.reason}): {_summary(added)}"))
    if write.remove:
        note = (f"; {d.held_back} additions follow in a write of their own, the subnet is "
                "full" if d.held_back else "")
        events.append(Event(Severity.NORMAL, "Released",
                            f"removed {len(write.remove)} acknowledged addresses from NIC "
                            f"{nic.name}{note}"))
    if write.reapply and obs.nic is not None:
        events.append(Event(Severity.WARNING, "ProvisioningFailed",
                            f"Azure reported provisioningState Failed for "
                            f"{_summary(_failed_parts(obs.nic))}; wrote the NIC again, which is "
                            "what clears it"))
    events.extend(_plan_events(pool, p))
    failed = _failed_parts(nic)
    requeue = _requeue(obs, p, d.held_back)
    later = d.pod_network.requeue_after if d.pod_network is not None else None
    if later is not None:
        # attachments wait for writes of their own, or for a tag to be read again
        requeue = min(requeue or later, later)
    if failed:
        message = (f"Azure still reports provisioningState Failed for {_summary(failed)} after "
                   f"the NIC was written again; writing it again in "
                   f"{FAILED_RECHECK_SECONDS:.0f}s")
        ready = _condition(pool, ConditionType.READY, False, "ProvisioningFailed", message)
        requeue = FAILED_RECHECK_SECONDS
    else:
        ready = _ready(pool, p)
    info = _nic_info(nic, obs.subnet, pool.status.nic)
    provisioned = _condition(pool, ConditionType.PROVISIONED, True, "NicFound",
                             f"NIC {nic.name}, primary {info.primary_ip}, subnet "
                             f"{info.subnet_cidr}")
    exhausted = _subnet_condition(pool, obs.subnet, p.subnet_exhausted or d.held_back > 0)
    networking, pod_events = (d.pod_network.settle(nic) if d.pod_network is not None
                              else (pool.status.pod_networking, ()))
    status = replace(pool.status, nic=info, ips=ips, excess_since=p.excess_since,
                     observed_generation=pool.generation, pod_networking=networking,
                     conditions=_conditions(pool, provisioned, ready, exhausted,
                                            _pod_condition(pool, networking)))
    return Outcome(status=_changed(pool, status), events=tuple(events), requeue_after=requeue,
                   message=p.reason, ips=ips, added=len(added), removed=len(write.remove),
                   short=p.short, pod_events=pod_events)


def _failed_parts(nic: NicSnapshot) -> list[str]:
    """The NIC (by name) and our ipConfigurations that Azure reports Failed."""
    return ([nic.name] if nic.failed else []) + [
        c.name for c in nic.secondary(IPCONFIG_PREFIX) if c.failed]


def ip_key(address: str) -> int:
    """Sort key of an address as Azure writes it (``<address>/<length>`` for a block)."""
    return address_key(PoolIP.from_azure(address, ""))


# -- deletion ---------------------------------------------------------------------------------


def _decide_deletion(obs: Observation) -> Decision:
    pool, nic = obs.pool, obs.nic
    if nic is None:
        if pool.status.nic is None and not pool.status.ips:
            return Decision(obs, deleting=True, outcome=Outcome(
                release_finalizer=True, message="never provisioned: nothing to release"))
        return Decision(obs, read_nic=True, deleting=True)
    # Every address becomes Releasing, adopted ones too: the agent stops handing them out and
    # acknowledges each once no pod uses it. Only acknowledged ones leave the NIC.
    inventory = merge_inventory(pool.status.ips, ours(nic))
    releasing = tuple(replace(ip, state=IPState.RELEASING) for ip in inventory.ips)
    acked = tuple(sorted(ip.ip_configuration for ip in releasing
                         if ip.ip_configuration in pool.status.release_acks))
    planned = replace(pool.status, ips=releasing, excess_since=None)
    decision = Decision(obs, planned=planned, deleting=True,
                        plan=Plan(remove=acked, reason="the pool is being deleted"))
    if acked:
        return replace(decision, write=NicWrite(remove=acked))
    return replace(decision, outcome=_record_deletion(decision, nic))


def _record_deletion(d: Decision, nic: NicSnapshot) -> Outcome:
    pool = d.obs.pool
    assert d.planned is not None
    on_nic = ours(nic)
    left = tuple(ip for ip in d.planned.ips if ip.ip_configuration in on_nic)
    removed = len(d.write.remove) if d.write is not None else 0
    events = []
    if removed:
        events.append(Event(Severity.NORMAL, "Released",
                            f"removed {removed} acknowledged addresses from NIC {nic.name} "
                            "(the pool is being deleted)"))
    if not left:
        return Outcome(release_finalizer=True, events=tuple(events), removed=removed,
                       message=f"every address of the pool has left NIC {nic.name}")
    message = (f"the pool is being deleted: {len(left)} addresses stay on NIC {nic.name} until "
               "the node agent confirms no pod uses them (it acknowledges each once its pod is "
               f"gone and its cooldown is over): {_summary(ip.address for ip in left)}")
    if _reason(pool, ConditionType.READY) != "Deleting":
        events.append(Event(Severity.WARNING, "DeletionWaiting", message))
    ready = _condition(pool, ConditionType.READY, False, "Deleting", message)
    status = replace(pool.status, ips=left, excess_since=None,
                     observed_generation=pool.generation, conditions=_conditions(pool, ready))
    return Outcome(status=_changed(pool, status), events=tuple(events), message=message,
                   ips=left, removed=removed)
