"""The pool of a VM without Kubernetes: its NIC's secondary addresses, as IMDS lists them.

``GET http://169.254.169.254/metadata/instance/network?api-version=...`` with the header
``Metadata: true`` lists every NIC of the VM with its IPv4 addresses (the first of the first
NIC is the VM's primary address) and its subnet. The secondary addresses of the chosen NIC
(the primary NIC unless ``standalone.interfaceMAC`` names another) are the pool; an admin
grows or shrinks it by adding or removing ipConfigurations (portal, CLI, Terraform), and the
agent sees the change within ``standalone.refreshSeconds``. Azure's own CNI did the same with
the wireserver's XML every 10 s.

IMDS allows 5 requests per second per VM, for everything on the VM together: the agent asks
at most once per ``refreshSeconds`` (at least 1 s), backs off exponentially on 429 and on
failures, and keeps the last good pool meanwhile. A document it cannot read changes nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from azure_cni.agent.pool_source import AdoptPool, PoolHints, ReportTrouble
from azure_cni.aio.backoff import Backoff
from azure_cni.api.nodeippool import (
    MAX_SECONDARY_IPS,
    NicInfo,
    NodeIPPool,
    PoolIP,
    PoolSpec,
    PoolStatus,
)
from azure_cni.api.settings import StandaloneSettings

log = logging.getLogger(__name__)

NETWORK_PATH = "/metadata/instance/network"
REQUEST_TIMEOUT_SECONDS = 5.0
#: first wait after a failure; doubles up to refreshSeconds
FIRST_BACKOFF_SECONDS = 1.0


class MalformedMetadata(ValueError):
    """The network document is not what IMDS documents; the message says what is wrong."""


class MetadataUnavailable(RuntimeError):
    """IMDS did not give the document: ``reason`` is unreachable, throttled or error."""

    def __init__(self, reason: str, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True)
class NicAddresses:
    """One NIC as the VM sees it (pure result of ``parse_network_document``)."""

    mac: str
    primary_ip: str
    subnet_cidr: str
    #: the NIC's other IPv4 addresses, in IMDS's order: the pool
    secondary: tuple[str, ...]


def normalize_mac(mac: str) -> str:
    """IMDS writes MACs as 12 upper-case hex digits; accept the usual spellings too."""
    return mac.replace(":", "").replace("-", "").strip().upper()


def _field(node: Any, key: str, where: str) -> Any:
    if not isinstance(node, Mapping) or key not in node:
        raise MalformedMetadata(f"{where} has no {key!r}")
    return node[key]


def _list(node: Any, where: str) -> list[Any]:
    if not isinstance(node, list):
        raise MalformedMetadata(f"{where} is not a list")
    return node


def parse_network_document(document: Any, interface_mac: str = "") -> NicAddresses:
    """The chosen NIC's addresses from ``/metadata/instance/network`` (pure).

    Raises MalformedMetadata for anything IMDS would not send: a missing field, an address
    that is not IPv4 or lies outside the NIC's subnet, a duplicate, no NIC at all.
    """
    interfaces = _list(_field(document, "interface", "the document"), "interface")
    if not interfaces:
        raise MalformedMetadata("the document lists no network interface")
    wanted = normalize_mac(interface_mac)
    chosen = None
    for index, nic in enumerate(interfaces):
        mac = _field(nic, "macAddress", f"interface[{index}]")
        if not isinstance(mac, str):
            raise MalformedMetadata(f"interface[{index}].macAddress is not a string")
        if not wanted or normalize_mac(mac) == wanted:
            chosen = (index, nic, normalize_mac(mac))
            break
    if chosen is None:
        macs = ", ".join(str(n.get("macAddress")) for n in interfaces if isinstance(n, Mapping))
        raise MalformedMetadata(f"no interface has MAC address {wanted} "
                                f"(standalone.interfaceMAC); IMDS lists {macs}")
    index, nic, mac = chosen
    where = f"interface[{index}].ipv4"
    ipv4 = _field(nic, "ipv4", f"interface[{index}]")
    subnets = _list(_field(ipv4, "subnet", where), f"{where}.subnet")
    if not subnets:
        raise MalformedMetadata(f"{where}.subnet is empty")
    try:
        subnet = ipaddress.IPv4Network(f"{_field(subnets[0], 'address', f'{where}.subnet[0]')}/"
                                       f"{_field(subnets[0], 'prefix', f'{where}.subnet[0]')}")
    except (ValueError, TypeError) as e:
        raise MalformedMetadata(f"{where}.subnet[0] is not an IPv4 subnet: {e}") from None
    entries = _list(_field(ipv4, "ipAddress", where), f"{where}.ipAddress")
    if not entries:
        raise MalformedMetadata(f"{where}.ipAddress is empty (a NIC has a primary address)")
    addresses: list[str] = []
    for position, entry in enumerate(entries):
        text = _field(entry, "privateIpAddress", f"{where}.ipAddress[{position}]")
        try:
            address = ipaddress.IPv4Address(text)
        except (ValueError, TypeError):
            raise MalformedMetadata(f"{where}.ipAddress[{position}].privateIpAddress "
                                    f"{text!r} is not an IPv4 address") from None
        if address not in subnet:
            raise MalformedMetadata(f"{where}.ipAddress[{position}] {address} is outside the "
                                    f"NIC's subnet {subnet}")
        if str(address) in addresses:
            raise MalformedMetadata(f"{where}.ipAddress lists {address} twice")
        addresses.append(str(address))
    if len(addresses) > MAX_SECONDARY_IPS + 1:
        raise MalformedMetadata(f"{where}.ipAddress lists {len(addresses)} addresses; a NIC "
                                f"holds at most {MAX_SECONDARY_IPS + 1}")
    return NicAddresses(mac, addresses[0], str(subnet), tuple(addresses[1:]))


def pool_from_nic(node_name: str, nic: NicAddresses) -> NodeIPPool:
    """The agent's pool for a NIC: every secondary address Available (pure).

    IMDS names neither the ipConfigurations nor the VNet's address space: pool entries carry
    the address where a NodeIPPool carries an ipConfiguration name, and the only range known
    to be the VNet's is the NIC's own subnet (traffic to it is not masqueraded); the rest of
    the VNet, peered VNets and on-premises ranges come from ``snat.nonMasqueradeCIDRs``.
    """
    status = PoolStatus(
        nic=NicInfo(id=f"mac:{nic.mac}", primary_ip=nic.primary_ip, subnet_id="",
                    subnet_cidr=nic.subnet_cidr, vnet_address_space=(nic.subnet_cidr,)),
        ips=tuple(PoolIP(address, address) for address in nic.secondary))
    spec = PoolSpec(node_name=node_name, min_ips=0, max_ips=MAX_SECONDARY_IPS,
                    min_free_ips=0, max_free_ips=MAX_SECONDARY_IPS)
    return NodeIPPool(name=node_name, spec=spec, status=status)


# -- I/O ---------------------------------------------------------------------------------


class InstanceMetadataClient:
    """Reads the network document from IMDS (plain HTTP, never through a proxy)."""

    def __init__(self, settings: StandaloneSettings,
                 timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self.url = settings.imds_endpoint.rstrip("/") + NETWORK_PATH
        self.api_version = settings.imds_api_version
        self.timeout = timeout

    async def network_document(self) -> Any:
        """The parsed JSON; MetadataUnavailable or MalformedMetadata otherwise."""
        try:
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self.timeout)) as session, \
                    session.get(self.url, params={"api-version": self.api_version},
                                headers={"Metadata": "true"}, allow_redirects=False) as response:
                body = await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After", "")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise MetadataUnavailable(
                "unreachable", f"the instance metadata service at {self.url} is unreachable: "
                f"{e!r}") from None
        if status == 429:
            raise MetadataUnavailable(
                "throttled", "the instance metadata service throttled the agent (429; it "
                "allows 5 requests per second per VM, shared by every program on the VM)",
                _seconds(retry_after))
        if status != 200:
            raise MetadataUnavailable(
                "error", f"the instance metadata service answered {status}: "
                f"{body[:300].decode(errors='replace')}")
        try:
            return json.loads(body)
        except ValueError as e:
            raise MalformedMetadata(f"the network document is not JSON: {e}") from None


def _seconds(text: str) -> float:
    try:
        return max(0.0, float(text))
    except ValueError:
        return 0.0


def instance_metadata_hints() -> PoolHints:
    return PoolHints(
        name="this VM's NIC addresses (instance metadata service)",
        when_unknown="the agent has not read the instance metadata service yet",
        who_adds="an admin (secondary IP configurations on the VM's NIC)")


class InstanceMetadataSource:
    """``PoolSource`` of a standalone agent: the NIC's secondary addresses, refreshed."""

    def __init__(self, settings: StandaloneSettings, node_name: str, *,
                 client: InstanceMetadataClient | None = None,
                 count: Callable[[str], None] = lambda result: None) -> None:
        self.settings = settings
        self.node_name = node_name
        self.client = client or InstanceMetadataClient(settings)
        self.count = count
        self.hints = instance_metadata_hints()
        #: the last pool handed to the agent
        self.pool: NodeIPPool | None = None

    async def read(self) -> NodeIPPool:
        """One read of the pool; MetadataUnavailable or MalformedMetadata."""
        try:
            document = await self.client.network_document()
            nic = parse_network_document(document, self.settings.interface_mac)
        except MetadataUnavailable as e:
            self.count(e.reason)
            raise
        except MalformedMetadata:
            self.count("malformed")
            raise
        self.count("ok")
        return pool_from_nic(self.node_name, nic)

    async def follow(self, adopt: AdoptPool, trouble: ReportTrouble) -> None:
        refresh = self.settings.refresh_seconds
        # a failure is retried sooner than the next refresh, never later
        backoff = Backoff(first=FIRST_BACKOFF_SECONDS, most=max(refresh, FIRST_BACKOFF_SECONDS))
        while True:
            delay = refresh
            try:
                pool = await self.read()
            except MetadataUnavailable as e:
                delay = max(min(backoff.failed(), refresh), e.retry_after)
                log.warning("event=imds_unavailable reason=%s retry_in=%.1fs error=%s",
                            e.reason, delay, e)
                trouble(f"{e}{'; keeping the last pool' if self.pool else ''}")
            except MalformedMetadata as e:
                log.error("event=imds_malformed error=%s", e)
                trouble(f"the instance metadata service's network document cannot be used: "
                        f"{e}{'; keeping the last pool' if self.pool else ''}")
            else:
                backoff.succeeded()
                trouble("")
                if pool != self.pool:
                    log.info("event=imds_pool addresses=%d primary=%s subnet=%s",
                             len(pool.status.ips), pool.status.nic.primary_ip
                             if pool.status.nic else "-",
                             pool.status.nic.subnet_cidr if pool.status.nic else "-")
                    try:
                        await adopt(pool)
                    except Exception as e:
                        log.exception("event=imds_pool_not_adopted")
                        trouble(f"the agent could not adopt the pool: {e!r}")
                    else:
                        self.pool = pool
            # a little jitter so VMs started together do not ask in lockstep
            await asyncio.sleep(delay * (0.9 + 0.2 * random.random()))

    async def publish(self, fields: Mapping[str, Any]) -> None:
        """Nothing holds a standalone agent's status but the agent (``azure-cni status``)."""

    async def reported(self) -> PoolStatus | None:
        return None
