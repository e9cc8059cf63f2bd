"""The emulator's knobs and the small values it hands to tests and other processes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from azure.core.credentials import AccessToken

#: the token every emulator accepts unless configured otherwise
DEFAULT_STATIC_TOKEN = "azure-cni-sim-token"  # noqa: S105 - a test token, not a secret


@dataclass
class ArmConfig:
    """Behaviour knobs; change them at run time with ``ArmEmulator.configure``."""

    #: InProgress answers an operation gives before its outcome
    lro_polls: int = 1
    #: an operation nobody polls still finishes after this many seconds
    lro_timeout: float = 10.0
    #: Retry-After on operation polls, fractions allowed (None: no header, the SDK's interval)
    poll_retry_after: float | None = None
    #: Retry-After on the NIC PUT response, as NRP sends it (the SDK does not sleep on it)
    put_retry_after: int = 10
    #: Retry-After on 409 AnotherOperationInProgress (None: none, so the SDK surfaces the 409)
    conflict_retry_after: int | None = None
    throttling: bool = True
    #: ARM's regional token buckets per subscription and principal (arm-api.md §2.3)
    read_burst: int = 250
    read_qps: float = 25.0
    write_burst: int = 200
    write_qps: float = 10.0
    delete_burst: int = 200
    delete_qps: float = 10.0
    #: send Retry-After with fractions of a second (ARM sends whole seconds)
    fractional_retry_after: bool = False
    #: bearer tokens accepted besides those the emulated IMDS issued
    static_tokens: tuple[str, ...] = (DEFAULT_STATIC_TOKEN,)
    token_lifetime: float = 3600.0
    imds_rps: float = 5.0
    imds_identity_rps: float = 20.0
    #: leave a subnet's ipConfigurations list out above this many entries (None: never)
    subnet_list_limit: int | None = None
    #: NICs per page of a NIC list; the rest follow through nextLink. UNVERIFIED: ARM does
    #: not document its page size, so the emulator pages small rather than flatter a client.
    list_page_size: int = 100
    #: IPv4 lengths of privateIPAddressPrefixLength the emulator allocates (Azure documents
    #: none; AKS uses /28)
    block_prefix_lengths: tuple[int, ...] = (28,)
    #: "Private IP addresses per virtual network: 65,536" (a block counts once)
    vnet_private_ip_limit: int = 65_536
    network_api_versions: tuple[str, ...] = (
        "2026-03-01", "2026-01-01", "2025-09-01", "2025-07-01", "2025-05-01")
    compute_api_versions: tuple[str, ...] = (
        "2026-04-01", "2025-11-01", "2025-04-01", "2024-11-01", "2024-07-01")
    #: NRP serves scale-set NICs only with this old version (arm-api.md §0)
    vmss_network_api_versions: tuple[str, ...] = ("2018-10-01",)
    msi_api_versions: tuple[str, ...] = ("2024-11-30", "2023-07-31-preview", "2023-01-31",
                                         "2018-11-30")
    authorization_api_versions: tuple[str, ...] = (
        "2022-04-01", "2022-05-01-preview", "2020-04-01-preview", "2018-01-01-preview",
        "2015-07-01")
    #: refuse what the caller's role assignments do not grant (``arm.authorization``); off,
    #: every authenticated principal may do everything
    enforce_rbac: bool = False
    #: principals that act as Owner everywhere when RBAC is enforced: the admin's own
    #: (``ArmEmulator.issue_token("portal-admin")``) and static tokens
    rbac_owners: tuple[str, ...] = ("portal-admin", "static")
    #: Compute's own limits on scale-set instance updates (``arm.compute_throttling``)
    compute_vm_updates_per_minute: int = 12
    compute_subscription_vm_updates_per_minute: int = 1500


@dataclass(frozen=True)
class VnetInfo:
    id: str
    subnet_ids: dict[str, str]


@dataclass(frozen=True)
class NicRef:
    """One NIC of a VM the emulator created: what the fabric needs to plug it in."""

    nic_id: str
    primary_ip: str
    subnet_id: str
    #: ARM's form, ``00-0D-3A-..``; the VM's interface for the NIC carries it
    mac: str
    #: the subnet's prefix
    cidr: str = ""


@dataclass(frozen=True)
class VmInfo:
    """A VM the emulator created: what a node and the operator need to know about it."""

    name: str
    vm_id: str
    nic_id: str
    primary_ip: str
    subnet_id: str
    #: the primary NIC's MAC (ARM's form)
    mac: str = ""
    #: the VM's further NICs (e.g. in a pod subnet), in the order the VM has them
    more_nics: tuple[NicRef, ...] = ()

    @property
    def nics(self) -> tuple[NicRef, ...]:
        """Every NIC of the VM, the primary first."""
        return (NicRef(self.nic_id, self.primary_ip, self.subnet_id, self.mac), *self.more_nics)

    @property
    def provider_id(self) -> str:
        """The Node ``spec.providerID`` kubelet would report for this VM."""
        return f"azure://{self.vm_id}"


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    status: int
    principal: str
    at: float
    #: the client's address and port: requests on one connection share it
    peer: str = ""
    #: when the request arrived (``at`` is when it was answered)
    received: float = 0.0


class StaticTokenCredential:
    """An async credential that always presents one bearer token (e.g. the emulator's static
    token, or one a test fetched from IMDS itself)."""

    def __init__(self, token: str = DEFAULT_STATIC_TOKEN) -> None:
        self._token = token

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        # a far expiry makes the SDK's bearer policy cache it, as it would a real token
        return AccessToken(self._token, int(time.time()) + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> StaticTokenCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None
