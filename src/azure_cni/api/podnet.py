"""Azure networking per pod: a public IP and load balancer backend pools on the pod's address.

A pod asks with annotations (read by the agent at ADD, from the runtime's
``io.kubernetes.cri.pod-annotations`` capability; see docs/security.md):

- ``azurecni.io/public-ip``: the name or resource ID of an existing Standard public IP. A bare
  name means that name in the first of the chart's ``podNetworking.resourceGroups``;
- ``azurecni.io/backend-pools``: comma-separated resource IDs of backend pools of Standard
  load balancers.

The flow keeps the NodeIPPool contract. The agent lists each request in
``status.podRequests`` (its own field) under the pod's address, the list's key (one address
is one pod's; in Blocks mode many pods share an ipConfiguration), with the ipConfiguration
and the pod's name and UID; when the pod goes, the entry stays with ``withdrawn: true`` and
the agent does not hand the address out again. The operator, the only part that talks to
Azure, decides with :func:`azure_cni.ipam.podnet.plan_pod_network` what each
ipConfiguration should carry, writes it in its next NIC write, and reports per address in
``status.podNetworking`` (its own field): ``Attached``, ``Refused`` (with the reason, also an
Event on the pod) or ``Detached`` (a withdrawn request whose public IP and pools are off the
NIC: only then does the agent forget it and reuse the address).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from azure_cni.api.wire import decode, encode, wire

PUBLIC_IP_ANNOTATION = "azurecni.io/public-ip"
BACKEND_POOLS_ANNOTATION = "azurecni.io/backend-pools"
#: the CNI capability under which containerd and CRI-O pass a pod's annotations to a plugin
POD_ANNOTATIONS_CAPABILITY = "io.kubernetes.cri.pod-annotations"
#: the reason of a request the chart's policy refuses (Azure's refusals carry Azure's code)
NOT_ALLOWED = "NotAllowed"
#: Azure refused a write attaching several pods' resources without naming which: each is
#: tried again in a write of its own
UNATTRIBUTED = "Unattributed"
#: the reason of a request for a resource whose tag does not name the pod's namespace
NOT_TAGGED = "NotTagged"
#: the Azure tag on a public IP or load balancer naming the namespaces that may use it
#: (comma- or space-separated; ``*``: every namespace the chart allows). Azure compares tag
#: names case-insensitively and allows no ``/`` in them.
NAMESPACES_TAG = "azurecni-namespaces"


def tagged_namespaces(tags: Mapping[str, str]) -> frozenset[str]:
    """The namespaces a resource's tags let use it (``*`` stands for all)."""
    value = next((v for k, v in tags.items() if k.lower() == NAMESPACES_TAG), "")
    return frozenset(n for n in value.replace(",", " ").split() if n)


#: what ``status.podNetworking`` keeps of a message (Events keep 1024 characters too)
MAX_MESSAGE_CHARACTERS = 1024


class AttachmentState(StrEnum):
    ATTACHED = "Attached"
    REFUSED = "Refused"
    DETACHED = "Detached"


#: how both per-pod lists sit in the NodeIPPool's status: keyed by the pod's address (one
#: address is one pod's, while in Blocks mode many pods share an ipConfiguration: keyed by
#: that, two pods' entries collided and the API server refused the whole status write)
POD_LIST: dict[str, Any] = {"list_type": "map", "map_keys": ("address",)}

# the fields both lists' entries have, declared once
_IP_CONFIGURATION = wire(description="the NIC's ipConfiguration holding the address",
                         required=True)
_ADDRESS = wire(description="the pod's address (the key)", required=True)
_POD = wire(description="namespace/name", required=True)
_PUBLIC_IP = wire("publicIP", omit_empty=True)
_BACKEND_POOLS = wire(omit_empty=True)
_POD_UID = wire("podUID", "the pod's metadata.uid", omit_empty=True)


class _Clipped:
    """A message kept to MAX_MESSAGE_CHARACTERS: Azure's messages are not ours to bound,
    and the pool must stay small (see MAX_ANNOTATION_CHARACTERS)."""

    schema: Mapping[str, Any] = {"type": "string"}

    def decode(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise TypeError("expected a string")
        return raw

    def encode(self, value: Any) -> str:
        return str(value)[:MAX_MESSAGE_CHARACTERS]


@dataclass(frozen=True)
class PodNetworkRequest:
    """What a pod asked for, as its node agent recorded it (agent-owned status)."""

    ip_configuration: str = field(metadata=_IP_CONFIGURATION)
    address: str = field(metadata=_ADDRESS)
    #: ``namespace/name``
    pod: str = field(metadata=_POD)
    public_ip: str = field(default="", metadata=_PUBLIC_IP)
    backend_pools: tuple[str, ...] = field(default=(), metadata=_BACKEND_POOLS)
    #: the pod is gone: its address is not handed out until the operator says Detached
    withdrawn: bool = field(default=False, metadata=wire(omit_empty=True))
    #: ``metadata.uid`` (K8S_POD_UID): tells a pod from a later one of the same name
    pod_uid: str = field(default="", metadata=_POD_UID)

    @property
    def namespace(self) -> str:
        return self.pod.partition("/")[0]

    @property
    def pod_name(self) -> str:
        return self.pod.partition("/")[2]

    @property
    def wants(self) -> tuple[str, tuple[str, ...]]:
        """(public IP, backend pools) as asked; nothing once withdrawn."""
        return ("", ()) if self.withdrawn else (self.public_ip, self.backend_pools)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "status.podRequests[]"
                  ) -> PodNetworkRequest:
        return decode(cls, d, path)

    def to_dict(self) -> dict[str, Any]:
        return encode(self)


@dataclass(frozen=True)
class PodAttachment:
    """What the operator did about one request (operator-owned status)."""

    ip_configuration: str = field(metadata=_IP_CONFIGURATION)
    address: str = field(metadata=_ADDRESS)
    pod: str = field(metadata=_POD)
    #: a state this code does not know reads as Refused
    state: AttachmentState = field(metadata=wire(required=True,
                                                 fallback=AttachmentState.REFUSED))
    #: resource IDs as written on the ipConfiguration (Attached) or as refused (Refused)
    public_ip: str = field(default="", metadata=_PUBLIC_IP)
    backend_pools: tuple[str, ...] = field(default=(), metadata=_BACKEND_POOLS)
    #: for Refused: ``NotAllowed`` (the chart's policy) or Azure's error code
    reason: str = field(default="", metadata=wire(
        description="NotAllowed (the chart's policy) or Azure's error code", omit_empty=True))
    message: str = field(default="", metadata=wire(omit_empty=True, codec=_Clipped()))
    #: the UID of the request's pod, when the operator names it (the agent then matches a
    #: Detached answer by it, not by the pod's name alone)
    pod_uid: str = field(default="", metadata=_POD_UID)

    @property
    def refused_by_azure(self) -> bool:
        """Refused by what Azure said (an error, a resource's tag or absence): it stays
        refused while the same pod asks the same; the chart's policy is asked every time."""
        return self.state == AttachmentState.REFUSED and self.reason not in (NOT_ALLOWED,
                                                                              UNATTRIBUTED)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "status.podNetworking[]"
                  ) -> PodAttachment:
        return decode(cls, d, path)

    def to_dict(self) -> dict[str, Any]:
        return encode(self)


class InvalidAnnotation(ValueError):
    """A pod annotation azure-cni cannot read; the message names it."""


#: What azure-cni reads of a pod's two annotations together: a public IP and a few backend
#: pools by full resource ID (each under 400 characters). The agent publishes every request
#: in the node's NodeIPPool and the operator answers each there: unbounded, a few pods' large
#: annotations would push the object past etcd's limit and stop every status write of the
#: node. 255 pods at the limit, and the answers to them, stay under half of it.
MAX_ANNOTATION_CHARACTERS = 1200
MAX_BACKEND_POOLS = 4
#: starts the value of a request whose annotations azure-cni did not read (``<`` is in no
#: Azure resource ID or name, so it is never a real request)
_UNREAD = "<"


def requested_features(annotations: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """(public IP, backend pools) a pod's annotations ask for, as written (pure).

    Annotations beyond the limits above are not read: the public IP is then a short note of
    why (see :func:`unread`), which the operator refuses with an Event on the pod.
    """
    public_ip = str(annotations.get(PUBLIC_IP_ANNOTATION) or "").strip()
    raw_pools = str(annotations.get(BACKEND_POOLS_ANNOTATION) or "")
    pools = tuple(dict.fromkeys(p.strip() for p in raw_pools.split(",") if p.strip()))
    size = len(public_ip) + len(raw_pools.strip())
    if size > MAX_ANNOTATION_CHARACTERS:
        return (f"{_UNREAD}{PUBLIC_IP_ANNOTATION} and {BACKEND_POOLS_ANNOTATION} hold {size} "
                f"characters; azure-cni reads at most {MAX_ANNOTATION_CHARACTERS}>"), ()
    if len(pools) > MAX_BACKEND_POOLS:
        return (f"{_UNREAD}{BACKEND_POOLS_ANNOTATION} names {len(pools)} backend pools; a pod "
                f"joins at most {MAX_BACKEND_POOLS}>"), ()
    return public_ip, pools


def unread(request: PodNetworkRequest) -> str:
    """Why the agent did not read the pod's annotations ("" when it did)."""
    if request.public_ip.startswith(_UNREAD):
        return f"the pod's annotations are too large: {request.public_ip.strip('<>')}"
    return ""


def by_address(entries: Iterable[PodNetworkRequest]) -> dict[str, PodNetworkRequest]:
    """Requests by address, the list's key; a live request wins over a withdrawn one for the
    same address."""
    out: dict[str, PodNetworkRequest] = {}
    for entry in entries:
        seen = out.get(entry.address)
        if seen is None or (seen.withdrawn and not entry.withdrawn):
            out[entry.address] = entry
    return out
