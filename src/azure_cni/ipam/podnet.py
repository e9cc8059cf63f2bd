"""What each pod-requested ipConfiguration should carry, decided without I/O.

The rules (the flow is in :mod:`azure_cni.api.podnet`):

- **Policy first.** A request from a namespace the chart does not allow for the feature, or
  naming a resource outside the allowed resource groups (or not a public IP / backend pool
  resource ID at all), is Refused with the reason; nothing of it reaches Azure.
- **Azure's refusals stick.** A request Azure refused (a public IP attached elsewhere, a
  Basic load balancer, a deleted resource) stays Refused with Azure's message for as long as
  the same pod asks the same thing: retrying would fail every NIC write of the node. A new
  pod on the address (or a changed request) is a new request.
- **Only what we attached is ours.** An ipConfiguration nobody asked for is left as it is.
  For one that is asked for (or was), the public IP slot is the pod's, and of the backend
  pools only those the pod asked for come and go; others on it stay.
- **Withdrawn means off the NIC.** A withdrawn request (the pod is gone) is Detached once the
  NIC carries none of what was attached for it; the agent reuses the address only then.
- Events go to the pod: what was attached, what was refused and why, what was detached.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from azure_cni.api.podnet import (
    NOT_ALLOWED,
    AttachmentState,
    PodAttachment,
    PodNetworkRequest,
    merge_by_ipconfig,
)
from azure_cni.api.settings import PodNetworkingSettings
from azure_cni.cloud.port import IPConfigFeatures, NicSnapshot
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


def _allows(namespaces: Iterable[str], namespace: str) -> bool:
    return any(n in ("*", namespace) for n in namespaces)


def _in_allowed_group(resource_id: str, policy: PodNetworkingSettings, *types: str) -> str:
    """Why ``resource_id`` may not be used ("" when it may)."""
    try:
        ref = parse_resource_id(resource_id)
    except ValueError:
        return f"{resource_id!r} is not an Azure resource ID"
    if not ref.is_type("Microsoft.Network", *types):
        return f"{resource_id!r} is not a Microsoft.Network/{'/'.join(types)} resource ID"
    allowed = {g.lower() for g in policy.resource_groups}
    if ref.resource_group.lower() not in allowed:
        return (f"resource group {ref.resource_group!r} of {resource_id} is not in the chart's "
                f"podNetworking.resourceGroups ({', '.join(policy.resource_groups) or 'none'})")
    return ""


def resolve(request: PodNetworkRequest, policy: PodNetworkingSettings,
            subscription: str) -> Wanted:
    """The resource IDs ``request`` names, or why it is refused (pure)."""
    problems = []
    public_ip = request.public_ip
    if public_ip:
        if not _allows(policy.public_ip_namespaces, request.namespace):
            problems.append(f"namespace {request.namespace!r} may not use public IPs (the "
                            "chart's podNetworking.publicIPNamespaces)")
        else:
            if "/" not in public_ip:
                group = policy.resource_groups[0] if policy.resource_groups else ""
                public_ip = (f"/subscriptions/{subscription}/resourceGroups/{group}/providers/"
                             f"Microsoft.Network/publicIPAddresses/{public_ip}")
            problem = _in_allowed_group(public_ip, policy, "publicIPAddresses")
            if problem:
                problems.append(problem)
    pools = request.backend_pools
    if pools:
        if not _allows(policy.load_balancer_namespaces, request.namespace):
            problems.append(f"namespace {request.namespace!r} may not join load balancer "
                            "backend pools (the chart's podNetworking.loadBalancerNamespaces)")
        else:
            problems += [p for p in (_in_allowed_group(pool, policy, "loadBalancers",
                                                       "backendAddressPools")
                                     for pool in pools) if p]
    if problems:
        return Wanted(request, refused="; ".join(problems))
    return Wanted(request, IPConfigFeatures(public_ip, pools))


#: the operator's ``podNetworking`` list and the Events on pods that go with it
Reported = tuple[tuple[PodAttachment, ...], tuple[PodEvent, ...]]


@dataclass(frozen=True)
class PodNetworkPlan:
    """The features to write, and how to report them once the NIC reads ``written``."""

    requests: Mapping[str, PodNetworkRequest]
    previous: Mapping[str, PodAttachment]
    wanted: Mapping[str, Wanted]
    #: ipConfiguration -> exactly what it must carry after the write (only those that change)
    features: Mapping[str, IPConfigFeatures]

    @property
    def writes_nic(self) -> bool:
        return bool(self.features)

    def settle(self, written: NicSnapshot) -> Reported:
        """The operator's ``podNetworking`` and the pod Events once the NIC reads ``written``."""
        on_nic = {c.name: c for c in written.secondary()}
        out: list[PodAttachment] = []
        events: list[PodEvent] = []
        for name, request in sorted(self.requests.items()):
            before = self.previous.get(name)
            config = on_nic.get(name)
            carried = config.features if config is not None else IPConfigFeatures()
            wanted = self.wanted.get(name)
            if request.withdrawn:
                ours = _ours(before)
                left = (ours.public_ip and carried.public_ip.lower() == ours.public_ip.lower()
                        ) or bool(_lower(ours.backend_pools) & _lower(carried.backend_pools))
                if left:
                    out.extend([before] if before is not None else [])
                    continue
                entry = PodAttachment(name, request.address, request.pod,
                                      AttachmentState.DETACHED)
                if before is not None and before.state == AttachmentState.ATTACHED:
                    events.append(_event(request, "Normal", "PodNetworkDetached",
                                         f"detached {_describe(ours)} from {request.address} "
                                         f"({name}) on NIC {written.name}; the address may be "
                                         "handed out again"))
                out.append(entry)
                continue
            if wanted is None:
                continue
            if wanted.refused:
                entry = PodAttachment(name, request.address, request.pod,
                                      AttachmentState.REFUSED, request.public_ip,
                                      request.backend_pools, wanted.reason, wanted.refused)
                if before != entry:
                    events.append(_event(request, "Warning", "PodNetworkRefused",
                                         wanted.refused))
                out.append(entry)
                continue
            entry = PodAttachment(name, request.address, request.pod, AttachmentState.ATTACHED,
                                  carried.public_ip if wanted.features.public_ip else "",
                                  tuple(p for p in carried.backend_pools
                                        if p.lower() in _lower(wanted.features.backend_pools)))
            if before != entry:
                events.append(_event(request, "Normal", "PodNetworkAttached",
                                     f"attached {_describe(entry)} to {request.address} "
                                     f"({name}) on NIC {written.name}"))
            out.append(entry)
        return tuple(out), tuple(events)

    def refuse(self, resources: Iterable[str], message: str, code: str) -> Reported:
        """``podNetworking`` after Azure refused ``resources`` (Refused for every request that
        named one; the rest as before), and the pods' Events."""
        named = _lower(resources)
        out = dict(self.previous)
        events = []
        for name, wanted in sorted(self.wanted.items()):
            f = wanted.features
            if wanted.refused or not (_lower((f.public_ip, *f.backend_pools)) & named):
                continue
            request = wanted.request
            why = f"Azure refused {_describe(f)} for {request.address} ({name}): {message}"
            out[name] = PodAttachment(name, request.address, request.pod,
                                      AttachmentState.REFUSED, request.public_ip,
                                      request.backend_pools, code or "AzureRefused", why)
            events.append(_event(request, "Warning", "PodNetworkRefused", why))
        return tuple(out[n] for n in sorted(out)), tuple(events)


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


def _same_request(attachment: PodAttachment, request: PodNetworkRequest) -> bool:
    return (attachment.pod == request.pod and attachment.address == request.address
            and attachment.public_ip == request.public_ip
            and attachment.backend_pools == request.backend_pools)


def plan_pod_network(requests: Iterable[PodNetworkRequest],
                     previous: Iterable[PodAttachment], nic: NicSnapshot,
                     policy: PodNetworkingSettings, inventory: Iterable[str]
                     ) -> PodNetworkPlan:
    """What the pool's requested ipConfigurations must carry (the rules are above).

    ``inventory`` are the pool's ipConfiguration names: requests for others are ignored.
    """
    names = set(inventory)
    by_name = {n: r for n, r in merge_by_ipconfig(requests).items() if n in names}
    before = {a.ip_configuration: a for a in previous if a.ip_configuration in by_name}
    subscription = parse_resource_id(nic.id).subscription if nic.id else ""
    on_nic = {c.name: c for c in nic.secondary()}
    wanted: dict[str, Wanted] = {}
    features: dict[str, IPConfigFeatures] = {}
    for name, request in by_name.items():
        config = on_nic.get(name)
        if config is None:
            continue
        prior = before.get(name)
        if request.withdrawn:
            target = IPConfigFeatures()
        else:
            if prior is not None and prior.refused_by_azure and _same_request(prior, request):
                wanted[name] = Wanted(request, refused=prior.message, reason=prior.reason)
            elif config.prefix_length is not None:
                wanted[name] = Wanted(request, refused=(
                    f"{config.private_ip} is a block ipConfiguration that up to "
                    f"{2 ** (32 - config.prefix_length)} pods share: a public IP or backend "
                    "pool on it would be every one of theirs; per-pod features need a pool "
                    "in Addresses mode"))
            else:
                wanted[name] = resolve(request, policy, subscription)
            target = wanted[name].features
        ours = _ours(prior)
        carried = config.features
        public_ip = target.public_ip or ("" if ours.public_ip else carried.public_ip)
        kept = [p for p in carried.backend_pools if p.lower() not in _lower(ours.backend_pools)]
        pools = tuple(dict.fromkeys([*kept, *target.backend_pools]))
        desired = IPConfigFeatures(public_ip, pools)
        if not desired.same(carried):
            features[name] = desired
    return PodNetworkPlan(by_name, before, wanted, features)


def pending(requests: Iterable[PodNetworkRequest], previous: Iterable[PodAttachment]) -> bool:
    """Whether a request has no answer yet in ``podNetworking`` (then read the NIC)."""
    answered = {a.ip_configuration: a for a in previous}
    asked = merge_by_ipconfig(requests)
    for name, request in asked.items():
        prior = answered.get(name)
        if request.withdrawn:
            if prior is None or prior.state != AttachmentState.DETACHED:
                return True
        elif prior is None or prior.pod != request.pod or prior.address != request.address \
                or prior.state == AttachmentState.DETACHED or (
                    prior.state == AttachmentState.REFUSED and not _same_request(prior, request)):
            return True
    # Detached entries whose request is gone are dropped by the next write of the status
    return any(name not in asked for name in answered)

