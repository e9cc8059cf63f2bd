"""ARM resource IDs: parse them into their parts, case-insensitively, as ARM itself does."""

from __future__ import annotations

from dataclasses import dataclass

from azure_cni.cloud.port import CloudError


@dataclass(frozen=True)
class ResourceID:
    """``/subscriptions/<s>/resourceGroups/<g>/providers/<namespace>/<type>/<name>[/<type>/<name>]``."""

    subscription: str
    resource_group: str
    namespace: str
    #: (type, name) pairs from the outermost resource inwards
    chain: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return self.chain[-1][1]

    def name_of(self, resource_type: str) -> str:
        """The name given to ``resource_type`` in the chain (matched case-insensitively)."""
        for kind, name in self.chain:
            if kind.lower() == resource_type.lower():
                return name
        raise KeyError(resource_type)

    def is_type(self, namespace: str, *types: str) -> bool:
        """Whether this ID is of exactly ``namespace/types[0]/.../types[-1]``."""
        return (self.namespace.lower() == namespace.lower()
                and tuple(k.lower() for k, _ in self.chain) == tuple(t.lower() for t in types))


def parse_resource_id(resource_id: str) -> ResourceID:
    """Split an ARM resource ID; raise CloudError naming the ID if it is not one."""
    parts = resource_id.strip().strip("/").split("/")
    bad = CloudError(f"{resource_id!r} is not an ARM resource ID "
                     "(/subscriptions/<s>/resourceGroups/<g>/providers/<namespace>/<type>/<name>)",
                     code="InvalidResourceId")
    if (len(parts) < 8 or len(parts) % 2 != 0 or parts[0].lower() != "subscriptions"
            or parts[2].lower() != "resourcegroups" or parts[4].lower() != "providers"
            or not all(parts)):
        raise bad
    rest = parts[6:]
    chain = tuple((rest[i], rest[i + 1]) for i in range(0, len(rest), 2))
    return ResourceID(parts[1], parts[3], parts[5], chain)
