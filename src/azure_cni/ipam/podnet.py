"""What each pod-requested ipConfiguration should carry, decided without I/O.

The rules (the flow is in :mod:`azure_cni.api.podnet`):

- **Policy first.** A request from a namespace the chart does not allow for the feature, or
  naming a resource outside the node's subscription or the allowed resource groups (or not a
  public IP / backend pool resource ID at all), is Refused with the reason; nothing of it
  reaches Azure.
- **The resource says who may use it.** A public IP, or the load balancer of a backend pool,
  in an allowed resource group is the namespace's only if its Azure tag
  ``azurecni-namespaces`` names it (or the chart grants the namespace the whole group). The
  tag is read on every attach, and only then (the plan's ``look_up``).
- **Azure's refusals stick.** A request Azure refused (a public IP attached elsewhere, a
  Basic load balancer, a deleted resource, one the operator may not join, a tag not naming
  the namespace) stays Refused with the reason for as long as the same pod (name and UID)
  asks the same thing: retrying would fail every NIC write of the node. A new pod on the
  address is a new request. A refusal that names none of the write's resources is the
  write's only attachment's, or with several, each is tried in a write of its own.
- **Only what we attached is ours.** An ipConfiguration nobody asked for is left as it is.
  While its pod lives, the public IP slot of a requested one is the pod's, and of the backend
  pools only those the pod asked for come and go; others on it stay. The node's own pools
  (those of the NIC's primary) are nobody's to ask for.
- **Withdrawn means off the NIC.** A withdrawn request (the pod is gone) takes everything off
  its ipConfiguration but the node's own backend pools (those of the NIC's primary), whether
  or not ``podNetworking`` recorded attaching it: the operator may have been killed between
  the NIC write and the status write. It is Detached once the NIC carries nothing else; the
  agent reuses the address only then.
- **Drift is repaired.** A public IP or pool ``podNetworking`` says is attached but the NIC
  lacks (taken off outside azure-cni) goes back on in the next write, with an Event; the
  operator's NIC sweep looks for it (:func:`drifted`), as it looks for vanished addresses.
- Events go to the pod: what was attached, what was refused and why, what was detached.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from azure_cni.api.podnet import (
    NAMESPACES_TAG,
    NOT_ALLOWED,
    NOT_TAGGED,
    UNATTRIBUTED,
    AttachmentState,
    PodAttachment,
    PodNetworkRequest,
    by_address,
    tagged_namespaces,
    unread,
)
from azure_cni.api.settings import PodNetworkingSettings
from azure_cni.cloud.port import (
    AttachmentRefused,
    AuthFailed,
    CloudError,
    FeatureEdit,
    IPConfigFeatures,
    IPConfiguration,
    NicSnapshot,
    NotFound,
)
from azure_cni.cloud.resourceid import parse_resource_id


@dataclass(frozen=True)
class PodEvent:
    """A Kubernetes Event on a pod."""

    namespace: str
    pod: str
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Wanted:
    """A live request resolved against the policy: resource IDs, or why it is refused."""

    request: PodNetworkRequest
    features: IPConfigFeatures = field(default_factory=IPConfigFeatures)
    refused: str = ""
    #: NOT_ALLOWED, or the Azure error code of an earlier refusal
    reason: str = NOT_ALLOWED
    #: the resource IDs the pod asked for, as far as they are resource IDs (also when
    #: refused: a refused resource found on the pod's ipConfiguration comes off)
    asked: IPConfigFeatures = field(default_factory=IPConfigFeatures)
    #: the public IPs and load balancers whose tag must name the pod's namespace (those of
    #: resource groups the chart does not grant the namespace whole)
    tagged: tuple[str, ...] = ()

    def refusal(self, why: str, reason: str) -> Wanted:
        """This request refused ``why`` (``reason``: NOT_ALLOWED or Azure's code)."""
        return replace(self, features=IPConfigFeatures(), refused=why, reason=reason)


def _allows(namespaces: Iterable[str], namespace: str) -> bool:
    return any(n in ("*", namespace) for n in namespaces)


def _in_allowed_group(resource_id: str, policy: PodNetworkingSettings, subscription: str,
                      namespace: str, *types: str) -> str:
    """Why ``resource_id`` may not be used ("" when it may): it must be of ``types``, in the
    node's own subscription and in a resource group allowed for ``namespace``."""
    try:
        ref = parse_resource_id(resource_id)
    except CloudError:
        # a typo in a pod's annotation: a refusal of that request, never an error of the
        # reconcile (which would stall the whole node's pool)
        return (f"{resource_id!r} is not an Azure resource ID "
                f"(/subscriptions/<s>/resourceGroups/<g>/providers/Microsoft.Network/"
                f"{'/<name>/'.join(types)}/<name>)")
    if not ref.is_type("Microsoft.Network", *types):
        return f"{resource_id!r} is not a Microsoft.Network/{'/'.join(types)} resource ID"
    if not subscription or ref.subscription.lower() != subscription.lower():
        # the resource group names below are only unique within a subscription
        return (f"subscription {ref.subscription!r} of {resource_id} is not the node's "
                f"({subscription or 'unknown'}): pods use resources of their node's "
                "subscription only")
    allowed = policy.groups_for(namespace)
    if ref.resource_group.lower() not in {g.lower() for g in allowed}:
        return (f"resource group {ref.resource_group!r} of {resource_id} is not one the chart "
                f"lets namespace {namespace!r} use (podNetworking.resourceGroups and "
                f"namespaceResourceGroups: {', '.join(allowed) or 'none'})")
    return ""


def resolve(request: PodNetworkRequest, policy: PodNetworkingSettings,
            subscription: str) -> Wanted:
    """The resource IDs ``request`` names, or why it is refused (pure)."""
    too_large = unread(request)
    if too_large:
        return Wanted(request, refused=too_large)
    problems = []
    public_ip = request.public_ip
    if public_ip:
        if not _allows(policy.public_ip_namespaces, request.namespace):
            problems.append(f"namespace {request.namespace!r} may not use public IPs (the "
                            "chart's podNetworking.publicIPNamespaces)")
        else:
            if "/" not in public_ip:
                groups = policy.groups_for(request.namespace)
                public_ip = (f"/subscriptions/{subscription}/resourceGroups/"
                             f"{groups[0] if groups else ''}/providers/"
                             f"Microsoft.Network/publicIPAddresses/{public_ip}")
            problem = _in_allowed_group(public_ip, policy, subscription, request.namespace,
                                        "publicIPAddresses")
            if problem:
                problems.append(problem)
    pools = request.backend_pools
    if pools:
        if not _allows(policy.load_balancer_namespaces, request.namespace):
            problems.append(f"namespace {request.namespace!r} may not join load balancer "
                            "backend pools (the chart's podNetworking.loadBalancerNamespaces)")
        else:
            problems += [p for p in (_in_allowed_group(pool, policy, subscription,
                                                       request.namespace, "loadBalancers",
                                                       "backendAddressPools")
                                     for pool in pools) if p]
    asked = IPConfigFeatures(public_ip if _is_resource_id(public_ip) else "",
                             tuple(p for p in pools if _is_resource_id(p)))
    if problems:
        return Wanted(request, refused="; ".join(problems), asked=asked)
    holders = [public_ip] if public_ip else []
    holders += [p.rsplit("/backendAddressPools/", 1)[0] for p in pools]
    tagged = tuple(dict.fromkeys(
        h for h in holders
        if not policy.trusts(request.namespace, parse_resource_id(h).resource_group)))
    return Wanted(request, IPConfigFeatures(public_ip, pools), asked=asked, tagged=tagged)


#: what the operator read of each public IP and load balancer (by lower-cased resource ID):
#: its tags, or the error reading it
Looked = Mapping[str, Mapping[str, str] | CloudError]


def _check_tags(wanted: Wanted, looked: Looked) -> tuple[Wanted, tuple[str, ...], bool]:
    """``wanted`` after its resources' tags: (the verdict, resources still to read, whether to
    wait for a read that failed for now)."""
    namespace = wanted.request.namespace
    missing = tuple(r for r in wanted.tagged if r.lower() not in looked)
    if missing:
        return wanted, missing, False
    for resource in wanted.tagged:
        kind = "public IP" if "/publicipaddresses/" in resource.lower() else "load balancer"
        found = looked[resource.lower()]
        if isinstance(found, NotFound):
            return wanted.refusal(f"{kind} {resource} does not exist: {found}",
                                  found.code or "ResourceNotFound"), (), False
        if isinstance(found, AuthFailed):
            return wanted.refusal(f"the operator may not read {kind} {resource} to see whom "
                                  f"its tag {NAMESPACES_TAG} names: {found}",
                                  found.code or "AuthorizationFailed"), (), False
        if isinstance(found, CloudError):
            return wanted, (), True
        names = tagged_namespaces(found)
        if namespace not in names and "*" not in names:
            return wanted.refusal(
                f"{kind} {resource} is not for namespace {namespace!r}: its tag "
                f"{NAMESPACES_TAG} names {', '.join(sorted(names)) or 'no namespace'} (an admin "
                "of the resource adds the namespace to the tag; the chart's "
                "podNetworking.namespaceResourceGroups grants a whole resource group)",
                NOT_TAGGED), (), False
    return wanted, (), False


def _is_resource_id(value: str) -> bool:
    try:
        parse_resource_id(value)
    except CloudError:
        return False
    return True


#: the operator's ``podNetworking`` list and the Events on pods that go with it
Reported = tuple[tuple[PodAttachment, ...], tuple[PodEvent, ...]]


@dataclass(frozen=True)
class PodNetworkPlan:
    """The features to write, and how to report them once the NIC reads ``written``.

    Requests, answers and ``wanted`` are by pod address (the lists' key); ``features`` by
    ipConfiguration, which in Blocks mode several pods share.
    """

    requests: Mapping[str, PodNetworkRequest]
    previous: Mapping[str, PodAttachment]
    wanted: Mapping[str, Wanted]
    #: ipConfiguration -> the change the write makes to it (only those that change something)
    features: Mapping[str, FeatureEdit]
    #: requests whose attachment waits for a later write (one is tried alone first)
    held_back: frozenset[str] = frozenset()
    #: Attached requests whose resources someone took off the NIC: the write puts them back
    repaired: frozenset[str] = frozenset()
    #: public IPs and load balancers whose tags must be read before anything is decided
    look_up: tuple[str, ...] = ()
    #: look again after this long (attachments held back for later writes)
    requeue_after: float | None = None

    @property
    def writes_nic(self) -> bool:
        return bool(self.features)

    @property
    def attaching(self) -> tuple[str, ...]:
        """The addresses of the live requests whose ipConfiguration this write puts a
        resource on."""
        return tuple(sorted(a for a, w in self.wanted.items()
                            if not w.refused and (edit := self.features.get(
                                w.request.ip_configuration)) is not None and edit.attaches))

    def settle(self, written: NicSnapshot) -> Reported:
        """The operator's ``podNetworking`` and the pod Events once the NIC reads ``written``."""
        on_nic = {c.name: c for c in written.secondary()}
        shared = {w.request.ip_configuration for w in self.wanted.values()}
        out: list[PodAttachment] = []
        events: list[PodEvent] = []
        for address, request in sorted(self.requests.items()):
            name = request.ip_configuration
            before = self.previous.get(address)
            config = on_nic.get(name)
            carried = config.features if config is not None else IPConfigFeatures()
            wanted = self.wanted.get(address)
            if request.withdrawn:
                ours = _ours(before)
                if config is not None and (
                        not at_rest(config, written) if name not in shared
                        # a block's live pods share it: only what was recorded ours must go
                        else not IPConfigFeatures().same(_common(ours, carried))):
                    out.extend([before] if before is not None else [])
                    continue
                entry = PodAttachment(name, request.address, request.pod,
                                      AttachmentState.DETACHED, pod_uid=request.pod_uid)
                if before is not None and before.state == AttachmentState.ATTACHED:
                    events.append(_event(request, "Normal", "PodNetworkDetached",
                                         f"detached {_describe(ours)} from {request.address} "
                                         f"({name}) on NIC {written.name}; the address may be "
                                         "handed out again"))
                out.append(entry)
                continue
            if wanted is None or address in self.held_back:
                out.extend([before] if before is not None else [])
                continue
            if wanted.refused:
                entry = PodAttachment(name, request.address, request.pod,
                                      AttachmentState.REFUSED, request.public_ip,
                                      request.backend_pools, wanted.reason, wanted.refused,
                                      request.pod_uid)
                if before != entry:
                    events.append(_event(request, "Warning", "PodNetworkRefused",
                                         wanted.refused))
                out.append(entry)
                continue
            entry = PodAttachment(name, request.address, request.pod, AttachmentState.ATTACHED,
                                  carried.public_ip if wanted.features.public_ip else "",
                                  tuple(p for p in carried.backend_pools
                                        if p.lower() in _lower(wanted.features.backend_pools)),
                                  pod_uid=request.pod_uid)
            if address in self.repaired:
                events.append(_event(request, "Warning", "PodNetworkDriftRepaired",
                                     f"{_describe(_ours(before))} had been taken off "
                                     f"{request.address} ({name}) outside azure-cni; attached "
                                     f"{_describe(entry)} again on NIC {written.name}"))
            elif before != entry:
                events.append(_event(request, "Normal", "PodNetworkAttached",
                                     f"attached {_describe(entry)} to {request.address} "
                                     f"({name}) on NIC {written.name}"))
            out.append(entry)
        return tuple(out), tuple(events)

    def refuse(self, error: AttachmentRefused) -> Reported | None:
        """``podNetworking`` after Azure refused the write with ``error``, and the pods'
        Events; None when the refusal is none of the pods' doing (then it is the node's).

        Requests whose resources Azure named are Refused with its code. When it named none:
        the write's only attachment is the one refused; of several, each is marked
        ``Unattributed`` and tried again in a write of its own.
        """
        named = [n for n, w in sorted(self.wanted.items()) if not w.refused and any(
            error.concerns(r) for r in (w.asked.public_ip, *w.asked.backend_pools) if r)]
        note = ""
        reason = error.code or "AzureRefused"
        if not named:
            named = list(self.attaching)
            if len(named) > 1:
                reason = UNATTRIBUTED
                note = (f"; Azure did not say which of the {len(named)} pods' resources it "
                        "refused: azure-cni tries each alone")
            elif named:
                note = "; Azure named no resource, and this was the write's only attachment"
        if not named:
            return None
        out = dict(self.previous)
        events = []
        for address in named:
            wanted = self.wanted[address]
            request = wanted.request
            name = request.ip_configuration
            why = (f"Azure refused {_describe(wanted.asked)} for {address} ({name}): "
                   f"{error}{note}")
            out[address] = PodAttachment(name, address, request.pod, AttachmentState.REFUSED,
                                         request.public_ip, request.backend_pools, reason, why,
                                         request.pod_uid)
            events.append(_event(request, "Warning", "PodNetworkRefused", why))
        return tuple(out[a] for a in sorted(out)), tuple(events)


def summarize(attachments: Iterable[PodAttachment]) -> tuple[bool, str, str]:
    """The ``PodNetworking`` condition for these answers: (status, reason, message)."""
    listed = list(attachments)
    by_state = {s: [a for a in listed if a.state == s] for s in AttachmentState}
    attached, refused = by_state[AttachmentState.ATTACHED], by_state[AttachmentState.REFUSED]
    counts = ", ".join(f"{len(by_state[s])} {str(s).lower()}" for s in AttachmentState)
    details = [f"{a.pod}: {a.message}" for a in refused[:3]] + \
        [f"{a.pod}: {_describe(a)}" for a in attached[:5]]
    message = counts + (f"; {'; '.join(details)}" if details else "")
    if refused:
        return False, "Refused", message
    return True, "Attached" if attached else "NothingAttached", message


def _lower(items: Iterable[str]) -> set[str]:
    return {i.lower() for i in items if i}


def _common(a: IPConfigFeatures, b: IPConfigFeatures) -> IPConfigFeatures:
    """What ``a`` and ``b`` both carry."""
    return IPConfigFeatures(a.public_ip if a.public_ip.lower() == b.public_ip.lower() else "",
                            tuple(p for p in a.backend_pools
                                  if p.lower() in _lower(b.backend_pools)))


def _ours(attachment: PodAttachment | None) -> IPConfigFeatures:
    """What azure-cni attached to an ipConfiguration, per its own record."""
    if attachment is None or attachment.state != AttachmentState.ATTACHED:
        return IPConfigFeatures()
    return IPConfigFeatures(attachment.public_ip, attachment.backend_pools)


def _describe(f: IPConfigFeatures | PodAttachment) -> str:
    parts = ([f"public IP {f.public_ip}"] if f.public_ip else []) + \
        [f"backend pool {p}" for p in f.backend_pools]
    return ", ".join(parts) or "nothing"


def _event(request: PodNetworkRequest, kind: str, reason: str, message: str) -> PodEvent:
    return PodEvent(request.namespace, request.pod_name, kind, reason, message)


def _same_pod(attachment: PodAttachment, request: PodNetworkRequest) -> bool:
    """Whether ``attachment`` answers ``request``'s pod: same address and name, and the same
    UID when both name one (a StatefulSet pod recreated on its address keeps its name)."""
    return (attachment.pod == request.pod and attachment.address == request.address
            and (not attachment.pod_uid or not request.pod_uid
                 or attachment.pod_uid == request.pod_uid))


def _same_request(attachment: PodAttachment, request: PodNetworkRequest) -> bool:
    return (_same_pod(attachment, request) and attachment.public_ip == request.public_ip
            and attachment.backend_pools == request.backend_pools)


def plan_pod_network(requests: Iterable[PodNetworkRequest],
                     previous: Iterable[PodAttachment], nic: NicSnapshot,
                     policy: PodNetworkingSettings, inventory: Iterable[str], *,
                     looked: Looked | None = None) -> PodNetworkPlan:
    """What the pool's requested ipConfigurations must carry (the rules are above).

    ``inventory`` are the pool's ipConfiguration names: requests for others are ignored.
    Each request (one per pod address) gets its own answer; an ipConfiguration carries what
    its live requests want, which is at most one pod's in Addresses mode and nothing in a
    block. ``looked`` holds the tags read so far; a plan whose ``look_up`` is not empty
    needs more before it may be carried out.
    """
    names = set(inventory)
    looked = looked or {}
    asked = {a: r for a, r in by_address(requests).items() if r.ip_configuration in names}
    before = {a.address: a for a in previous if a.address in asked}
    subscription = parse_resource_id(nic.id).subscription if nic.id else ""
    on_nic = {c.name: c for c in nic.secondary()}
    node_pools = _node_pools(nic)
    wanted: dict[str, Wanted] = {}
    sharing: dict[str, list[str]] = {}
    look_up: list[str] = []
    waiting: set[str] = set()
    for address, request in asked.items():
        config = on_nic.get(request.ip_configuration)
        if config is None:
            continue
        sharing.setdefault(config.name, []).append(address)
        if request.withdrawn:
            continue
        prior = before.get(address)
        w = _wanted(request, prior, config, policy, subscription=subscription,
                    node_pools=node_pools)
        if not w.refused and _attaches(w, prior, config):
            # every attach asks the resources whether the namespace may use them
            w, missing, wait = _check_tags(w, looked)
            look_up += missing
            if wait:
                waiting.add(address)
        wanted[address] = w
    if look_up:
        return PodNetworkPlan(asked, before, wanted, {}, look_up=tuple(dict.fromkeys(look_up)))
    features: dict[str, FeatureEdit] = {}
    for name, addresses in sharing.items():
        config = on_nic[name]
        live = [wanted[a] for a in addresses if a in wanted]
        if waiting & set(addresses):
            continue  # a tag that could not be read yet: this address waits
        if not live:
            # only withdrawn requests: whatever is on it now, recorded or not (the operator
            # may have been killed between attaching and recording), is its last pod's
            if not at_rest(config, nic):
                features[name] = FeatureEdit(reset=True)
            continue
        edit = _edit(live, [_ours(before.get(a)) for a in addresses], config.features)
        if not edit.applied(config.features, node_pools).same(config.features):
            features[name] = edit
    repaired = frozenset(a for a, w in wanted.items() if not w.refused and (
        prior := before.get(a)) is not None and _same_pod(prior, w.request)
        and prior.state == AttachmentState.ATTACHED and drifted((prior,), nic))
    return _isolate(PodNetworkPlan(asked, before, wanted, features, frozenset(waiting),
                                   repaired, requeue_after=TAG_RETRY_SECONDS if waiting else None))


#: a tag that could not be read (throttled, a server error) is read again this soon
TAG_RETRY_SECONDS = 5.0
#: the attachments held back after an unattributed refusal follow this soon
ISOLATED_WRITE_SECONDS = 0.5


def _attaches(wanted: Wanted, prior: PodAttachment | None, config: IPConfiguration) -> bool:
    """Whether carrying out ``wanted`` attaches something: a request not Attached yet, or
    one whose resources are not (all) on the NIC any more."""
    # an Attached answer holds the resource IDs as attached (a bare name resolved): the same
    # pod is the same request, as a pod's annotations cannot change under a sandbox
    if prior is None or prior.state != AttachmentState.ATTACHED or not _same_pod(
            prior, wanted.request):
        return True
    return not _common(wanted.features, config.features).same(wanted.features)


def _edit(live: Sequence[Wanted], ours: Sequence[IPConfigFeatures],
          carried: IPConfigFeatures) -> FeatureEdit:
    """The change to an ipConfiguration its live requests ask for. The public IP slot is the
    pod's; of the pools, only those it asked for come and go (and what it asked for and was
    refused, or what earlier answers recorded as attached, must not stay on)."""
    targets = [w.features for w in live]
    target_pools = _lower(p for t in targets for p in t.backend_pools)
    off = [*ours, *(w.asked for w in live)]
    drop = next((o.public_ip for o in off
                 if o.public_ip and o.public_ip.lower() == carried.public_ip.lower()), "")
    return FeatureEdit(
        public_ip=next((t.public_ip for t in targets if t.public_ip), ""), drop_public_ip=drop,
        add_pools=tuple(dict.fromkeys(p for t in targets for p in t.backend_pools)),
        remove_pools=tuple(dict.fromkeys(p for o in off for p in o.backend_pools
                                         if p.lower() not in target_pools)))


def at_rest(config: IPConfiguration, nic: NicSnapshot) -> bool:
    """Whether ``config`` carries nothing a pod could have asked for: no public IP, no backend
    pool but those of the NIC's primary ipConfiguration (the node's own, which new
    ipConfigurations copy with ``copyLoadBalancerPools``)."""
    return not config.public_ip_id and _lower(config.backend_pool_ids) <= _lower(
        _node_pools(nic))


def _node_pools(nic: NicSnapshot) -> tuple[str, ...]:
    """The backend pools of the NIC's primary ipConfiguration: the node's own."""
    return next((c.backend_pool_ids for c in nic.ip_configurations if c.primary), ())


def _wanted(request: PodNetworkRequest, prior: PodAttachment | None, config: IPConfiguration,
            policy: PodNetworkingSettings, *, subscription: str, node_pools: Iterable[str]
            ) -> Wanted:
    """A live request resolved: the policy's verdict, an earlier refusal by Azure that sticks,
    or a block's refusal."""
    resolved = resolve(request, policy, subscription)
    if prior is not None and prior.refused_by_azure and _same_request(prior, request):
        return resolved.refusal(prior.message, prior.reason)
    nodes = [p for p in resolved.features.backend_pools if p.lower() in _lower(node_pools)]
    if nodes:
        return resolved.refusal(
            f"backend pool {nodes[0]} is the node's own (its primary ipConfiguration is "
            "in it): it stays on every address of the node, so no pod joins or leaves it",
            NOT_ALLOWED)
    if config.prefix_length is not None:
        return resolved.refusal(
            f"{config.private_ip} is a block ipConfiguration that up to "
            f"{2 ** (32 - config.prefix_length)} pods share: a public IP or backend pool on it "
            "would be every one of theirs; per-pod features need a pool in Addresses mode",
            NOT_ALLOWED)
    return resolved


def _isolate(plan: PodNetworkPlan) -> PodNetworkPlan:
    """After Azure refused attachments without naming which (``Unattributed``), the first of
    them is tried in a write of its own: the other attachments wait for later writes."""
    retried = [a for a in plan.attaching
               if (prior := plan.previous.get(a)) is not None and prior.reason == UNATTRIBUTED
               and _same_request(prior, plan.requests[a])]
    if not retried:
        return plan
    waiting = frozenset(plan.attaching) - {retried[0]}
    configs = {plan.requests[a].ip_configuration for a in waiting}
    return replace(plan, features={n: e for n, e in plan.features.items() if n not in configs},
                   held_back=plan.held_back | waiting, requeue_after=ISOLATED_WRITE_SECONDS)


def drifted(attachments: Iterable[PodAttachment], nic: NicSnapshot) -> bool:
    """Whether the NIC lacks a public IP or backend pool ``podNetworking`` says is attached
    (someone took it off outside azure-cni: the next reconcile puts it back)."""
    on_nic = {c.name: c.features for c in nic.secondary()}
    for a in attachments:
        carried = on_nic.get(a.ip_configuration)
        if a.state == AttachmentState.ATTACHED and carried is not None and not _common(
                _ours(a), carried).same(_ours(a)):
            return True
    return False


def pending(requests: Iterable[PodNetworkRequest], previous: Iterable[PodAttachment]) -> bool:
    """Whether a request has no answer yet in ``podNetworking`` (then read the NIC)."""
    answered = {a.address: a for a in previous}
    asked = by_address(requests)
    for address, request in asked.items():
        prior = answered.get(address)
        if prior is None or not _same_pod(prior, request):
            return True
        if request.withdrawn:
            if prior.state != AttachmentState.DETACHED:
                return True
        elif prior.state == AttachmentState.DETACHED or prior.reason == UNATTRIBUTED or (
                prior.state == AttachmentState.REFUSED and not _same_request(prior, request)):
            return True
    # Detached entries whose request is gone are dropped by the next write of the status
    return any(address not in asked for address in answered)

