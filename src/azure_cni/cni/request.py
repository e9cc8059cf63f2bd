"""The shim-to-agent protocol, agent side: what a request carries and how it is validated.

The shim POSTs one JSON object to ``/v1/cni`` on the agent's unix socket::

    {"protocol": 1, "command": "ADD", "containerID": "...", "netns": "...",
     "ifname": "eth0", "args": "K8S_POD_NAME=...;...", "path": "...",
     "deadlineSeconds": 15, "sentAt": 1700000000.0, "config": {<the network configuration>}}

The agent answers 200 with the exact bytes to print (a result for ADD, nothing otherwise) or
a non-200 status with a CNI error object ``{"code", "msg", "details"}``; a header
``X-Azure-CNI-Warning`` carries a note for the runtime's log. Everything the shim checks is
checked again here, so a shim written in another language can stay a dumb forwarder.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from azure_cni.api.attachment import AttachmentKey
from azure_cni.api.podnet import POD_ANNOTATIONS_CAPABILITY
from azure_cni.cni.errors import IncompatibleVersion, InvalidConfig, InvalidEnvironment

PROTOCOL = 1
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC")
_MINIMUM_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
VALID_ATTACHMENTS = "cni.dev/valid-attachments"
#: the key spec-v1.1.0 printed by mistake; libcni >= 1.2.3 sends both
LEGACY_ATTACHMENTS = "cni.dev/attachments"


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


@dataclass(frozen=True)
class CniRequest:
    """One validated CNI invocation, as forwarded by the shim."""

    command: str
    cni_version: str
    network: str
    config: Mapping[str, Any]
    container_id: str = ""
    ifname: str = ""
    netns: str = ""
    cni_args: Mapping[str, str] = field(default_factory=dict)
    deadline_seconds: float = 15.0
    sent_at: float = 0.0

    @property
    def key(self) -> AttachmentKey:
        return AttachmentKey(self.container_id, self.ifname)

    @property
    def pod(self) -> str:
        """``namespace/name`` of the Kubernetes pod, when the runtime said so."""
        name = self.cni_args.get("K8S_POD_NAME", "")
        namespace = self.cni_args.get("K8S_POD_NAMESPACE", "")
        return f"{namespace}/{name}" if name else ""

    @property
    def pod_uid(self) -> str:
        """The pod's ``metadata.uid``, when the runtime said so (containerd and CRI-O do)."""
        return self.cni_args.get("K8S_POD_UID", "")

    @property
    def pod_annotations(self) -> Mapping[str, Any]:
        """The pod's annotations, when the runtime passes them (the conflist asks for the
        ``io.kubernetes.cri.pod-annotations`` capability; containerd and CRI-O honour it)."""
        runtime = self.config.get("runtimeConfig")
        annotations = runtime.get(POD_ANNOTATIONS_CAPABILITY) if isinstance(
            runtime, Mapping) else None
        return annotations if isinstance(annotations, Mapping) else {}

    def prev_result_addresses(self) -> set[str] | None:
        """IPv4 addresses prevResult gives this attachment, or None without a prevResult."""
        prev = self.config.get("prevResult")
        if prev is None:
            return None
        if not isinstance(prev, Mapping):
            raise InvalidConfig("prevResult must be an object", f"got {type(prev).__name__}")
        interfaces = prev.get("interfaces") or []
        addresses = set()
        for entry in prev.get("ips") or []:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("address"), str):
                raise InvalidConfig("prevResult.ips has a malformed entry", repr(entry))
            index = entry.get("interface")
            if isinstance(index, int) and 0 <= index < len(interfaces):
                iface = interfaces[index]
                if isinstance(iface, Mapping) and iface.get("name") != self.ifname:
                    continue
            try:
                address = ipaddress.ip_interface(entry["address"]).ip
            except ValueError as e:
                raise InvalidConfig("prevResult.ips has an invalid address", str(e)) from None
            if address.version == 4:
                addresses.add(str(address))
        return addresses

    def valid_attachments(self) -> set[AttachmentKey] | None:
        """GC's list of attachments to keep; None when the runtime sent no list at all.

        ``null`` is what a runtime's empty Go slice encodes to, so it means "nothing is
        valid". A missing key (``cnitool gc``) is not a list: the caller must not free
        anything on its account.
        """
        for key in (VALID_ATTACHMENTS, LEGACY_ATTACHMENTS):
            if key in self.config:
                raw = self.config[key]
                break
        else:
            return None
        if raw is None:
            return set()
        if not isinstance(raw, list):
            raise InvalidConfig(f"{key} must be a list", f"got {type(raw).__name__}")
        keep = set()
        for item in raw:
            if (not isinstance(item, Mapping) or not isinstance(item.get("containerID"), str)
                    or not isinstance(item.get("ifname"), str)):
                raise InvalidConfig(f"{key} entries need containerID and ifname", repr(item))
            keep.add(AttachmentKey(item["containerID"], item["ifname"]))
        return keep


def parse_cni_args(text: str) -> dict[str, str]:
    """``K=V;K2=V2`` as a dict (the order is random with containerd)."""
    out = {}
    for part in text.split(";"):
        key, sep, value = part.partition("=")
        if sep and key:
            out[key.strip()] = value.strip()
    return out


def _valid_container_id(value: str) -> bool:
    return bool(value) and value[0] not in "_.-" and set(value) <= _ID_CHARS


def _valid_ifname(value: str) -> bool:
    return (0 < len(value) <= 15 and value not in (".", "..")
            and not any(c in "/:" or c.isspace() for c in value))


def parse_request(body: Any) -> CniRequest:
    """Validate the shim's request; raise the CniError the runtime should see."""
    if not isinstance(body, Mapping):
        raise InvalidConfig("the request must be a JSON object")
    protocol = body.get("protocol")
    if protocol != PROTOCOL:
        raise IncompatibleVersion(
            "the azure-vnet shim and the agent speak different protocol versions",
            f"shim sent protocol {protocol!r}, agent speaks {PROTOCOL}; the agent reinstalls "
            "the shim when it starts, so restarting the agent pod fixes this")
    command = body.get("command")
    if command not in COMMANDS:
        raise InvalidEnvironment("CNI_COMMAND is missing or unknown",
                                 f"CNI_COMMAND={command!r}; expected one of "
                                 f"{', '.join(COMMANDS)}")
    config = body.get("config")
    if not isinstance(config, Mapping):
        raise InvalidConfig("network configuration must be a JSON object")
    version = config.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise InvalidConfig("network configuration has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise IncompatibleVersion("incompatible CNI versions",
                                  f"config is {version!r}, plugin supports "
                                  f"{', '.join(SUPPORTED_VERSIONS)}")
    minimum = _MINIMUM_VERSION.get(command)
    if minimum and version_tuple(version) < version_tuple(minimum):
        raise IncompatibleVersion("incompatible CNI versions",
                                  f"{command} needs cniVersion {minimum} or later; "
                                  f"config is {version}")
    network = config.get("name")
    if not isinstance(network, str) or not network:
        raise InvalidConfig("network configuration has no name")
    container_id = str(body.get("containerID") or "")
    ifname = str(body.get("ifname") or "")
    netns = str(body.get("netns") or "")
    if command in ("ADD", "DEL", "CHECK"):
        problems = []
        if not _valid_container_id(container_id):
            problems.append(f"CNI_CONTAINERID is invalid ({container_id!r})")
        if not _valid_ifname(ifname):
            problems.append(f"CNI_IFNAME is invalid ({ifname!r})")
        if command != "DEL" and not netns:
            problems.append(f"CNI_NETNS must be set for {command}")
        if problems:
            raise InvalidEnvironment("invalid CNI environment variables", "; ".join(problems))
    deadline = body.get("deadlineSeconds", 15.0)
    sent_at = body.get("sentAt", 0.0)
    return CniRequest(
        command=command,
        cni_version=version,
        network=network,
        config=config,
        container_id=container_id,
        ifname=ifname,
        netns=netns,
        cni_args=parse_cni_args(str(body.get("args") or "")),
        deadline_seconds=float(deadline) if isinstance(deadline, int | float) else 15.0,
        sent_at=float(sent_at) if isinstance(sent_at, int | float) else 0.0,
    )
