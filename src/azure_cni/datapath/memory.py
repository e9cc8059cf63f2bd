"""An in-memory datapath with the real one's observable behaviour, for tests without root.

It keeps the same promises as ``VethDatapath``: ``ensure_pod_veth`` fails for a namespace
that does not exist and for an interface name the pod already uses, replaces a stale pair,
and ``teardown_pod_veth`` of something absent succeeds. Namespaces are plain names that a
test creates and deletes; faults can be injected per operation.
"""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass, field

from azure_cni.datapath.rtnl import NetlinkRequestFailed
from azure_cni.datapath.veth import HostVeth, InterfaceTaken, NetnsMissing, PodNetwork


@dataclass
class InMemoryDatapath:
    """Pods' veth pairs as dictionary entries."""

    namespaces: set[str] = field(default_factory=set)
    #: netns -> interface names that exist there but are not ours
    foreign_interfaces: dict[str, set[str]] = field(default_factory=dict)
    pairs: dict[str, PodNetwork] = field(default_factory=dict)
    #: pod sides left on the host for the runtime to move (``PodNetwork.netns`` empty)
    on_host: set[str] = field(default_factory=set)
    #: operation name -> errno to fail with, once
    faults: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _fault(self, operation: str) -> None:
        number = self.faults.pop(operation, 0)
        if number:
            raise NetlinkRequestFailed(number, f"{operation} (injected)")

    def delete_namespace(self, netns: str) -> None:
        """What the runtime does after DEL: the pod side of every pair in it goes away."""
        with self._lock:
            self.namespaces.discard(netns)
            for name in [n for n, p in self.pairs.items() if p.netns == netns]:
                del self.pairs[name]

    def ensure_pod_veth(self, pod: PodNetwork) -> None:
        with self._lock:
            self.calls.append(("ensure", pod.host_veth))
            if pod.netns and pod.netns not in self.namespaces:
                raise NetnsMissing(errno.ENOENT, f"network namespace {pod.netns} does not exist")
            if pod.ifname in self.foreign_interfaces.get(pod.netns, set()):
                raise InterfaceTaken(errno.EEXIST, f"{pod.netns} already has an interface "
                                                   f"named {pod.ifname}")
            self._fault("ensure")
            self.pairs[pod.host_veth] = pod
            if not pod.netns:
                self.on_host.add(pod.ifname)

    def move_pod_side(self, name: str, *, to_host: bool) -> None:
        """What Docker's libnetwork does with a handed-over pod side: into the container at
        Join, back to the host when the container leaves."""
        with self._lock:
            (self.on_host.add if to_host else self.on_host.discard)(name)

    def link_exists(self, name: str) -> bool:
        with self._lock:
            return name in self.pairs or name in self.on_host

    def teardown_pod_veth(self, host_veth: str) -> None:
        with self._lock:
            self.calls.append(("teardown", host_veth))
            self._fault("teardown")
            pod = self.pairs.pop(host_veth, None)
            if pod is not None:
                self.on_host.discard(pod.ifname)

    def check_pod_veth(self, pod: PodNetwork) -> list[str]:
        with self._lock:
            found = self.pairs.get(pod.host_veth)
            if found is None:
                return [f"host veth {pod.host_veth} does not exist"]
            if found != pod:
                return [f"{pod.host_veth} was built as {found}, expected {pod}"]
            return []

    def list_host_veths(self) -> list[HostVeth]:
        with self._lock:
            return [HostVeth(name, index, (pod.address,))
                    for index, (name, pod) in enumerate(sorted(self.pairs.items()), start=2)]
