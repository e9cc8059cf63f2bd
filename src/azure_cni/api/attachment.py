"""What identifies one attachment of a pool address on a node, whichever front-end made it.

The CNI spec names an attachment by (container id, ifname); the Docker plugin names its own
the same way, with ifnames no CNI request can carry (see ``agent.vm.docker_plugin``). The store
keeps attachments by this key and knows nothing of who made them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttachmentKey:
    """One attachment: a container (or endpoint, or IPAM handle) and its interface name."""

    container_id: str
    ifname: str

    def __str__(self) -> str:
        return f"{self.container_id}/{self.ifname}"
