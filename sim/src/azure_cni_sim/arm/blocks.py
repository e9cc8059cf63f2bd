"""ipConfigurations that hold a CIDR block, and the VNet's limit on private addresses.

Azure facts (azure-features.md §1): a request carries only ``privateIPAddressPrefixLength``
with Dynamic allocation and the service allocates a block; the response's
``privateIPAddress`` reads ``<address>/<length>``; the primary ipConfiguration cannot carry a
prefix; a block counts once against the VNet's limit of 65,536 private addresses. Which IPv4
lengths the service accepts is not documented (AKS uses /28): the emulator accepts those in
``ArmConfig.block_prefix_lengths``.

The emulator allocates the lowest aligned block whose every address is inside the subnet's
usable range (Azure keeps the network address, .1-.3 and the broadcast address, so in a /24
the first /28 it can give is .16/28) and held by nobody: never overlapping a single address
or another block. Every address of a block is the NIC's: the SDN routes the whole prefix to
it, so none inside the block is reserved.

Pure functions over the state's values; ``azure_cni_sim.armstate.ArmState.put_nic`` calls
them. Error codes marked UNVERIFIED are descriptive guesses, as in armstate.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping
from typing import Any

#: "Private IP addresses per virtual network: 65,536" (Azure networking limits)
VNET_PRIVATE_IP_LIMIT = 65_536
#: the only length Azure is known to use for pods (AKS static block allocation)
DEFAULT_PREFIX_LENGTHS = (28,)
# UNVERIFIED codes: Microsoft documents the rules, not these errors
PREFIX_ON_PRIMARY_CODE = "PrivateIPAddressPrefixLengthNotAllowedOnPrimaryIpConfiguration"
UNSUPPORTED_LENGTH_CODE = "InvalidPrivateIPAddressPrefixLength"
STATIC_BLOCK_MISALIGNED_CODE = "InvalidPrivateIPAddressPrefix"
VNET_LIMIT_CODE = "PrivateIPAddressesPerVirtualNetworkLimitReached"


class BlockRequestError(Exception):
    """A block request Azure refuses with 400 and ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_request(name: str, props: Mapping[str, Any]
                  ) -> tuple[ipaddress.IPv4Address | None, int | None]:
    """The address (if any) and the prefix length (None: one address) an ipConfiguration
    asks for; ``privateIPAddress`` may be in the ``<address>/<length>`` form a GET returns,
    which a client writes back as it read it."""
    raw_address = str(props.get("privateIPAddress") or "")
    raw_length = props.get("privateIPAddressPrefixLength")
    address_part, slash, cidr_length = raw_address.partition("/")
    try:
        address = ipaddress.IPv4Address(address_part) if address_part else None
        length = int(raw_length) if raw_length is not None else (
            int(cidr_length) if slash else None)
    except ValueError:
        raise BlockRequestError(
            "InvalidPrivateIPAddressFormat",  # UNVERIFIED code
            f"IP configuration {name}: {raw_address!r} / prefix length {raw_length!r} is not "
            "an IPv4 address and prefix length.") from None
    if slash and length is not None and int(cidr_length) != length:
        raise BlockRequestError(
            UNSUPPORTED_LENGTH_CODE,
            f"IP configuration {name}: privateIPAddress {raw_address} does not match "
            f"privateIPAddressPrefixLength {length}.")
    return address, length


def check_lengths(nic_id: str, configs: Iterable[Mapping[str, Any]],
                  supported: Collection[int]) -> None:
    """Refuse a prefix on the primary and lengths the service does not allocate."""
    for cfg in configs:
        length = cfg.get("prefix")
        if length is None:
            continue
        ipc_id = f"{nic_id}/ipConfigurations/{cfg['name']}"
        if cfg["primary"]:
            raise BlockRequestError(
                PREFIX_ON_PRIMARY_CODE,
                f"IP configuration {ipc_id} is the primary IP configuration of the network "
                "interface; a primary IP configuration cannot have "
                "privateIPAddressPrefixLength.")
        if length not in supported:
            raise BlockRequestError(
                UNSUPPORTED_LENGTH_CODE,
                f"IP configuration {ipc_id} has privateIPAddressPrefixLength {length}; "
                f"supported lengths for IPv4 are {', '.join(f'/{n}' for n in sorted(supported))}.")


def check_static_block(ipc_id: str, address: ipaddress.IPv4Address, length: int) -> None:
    network = ipaddress.IPv4Network(f"{address}/{length}", strict=False)
    if network.network_address != address:
        raise BlockRequestError(
            STATIC_BLOCK_MISALIGNED_CODE,
            f"IP configuration {ipc_id}: {address}/{length} is not an aligned block; did you "
            f"mean {network}?")


def lowest_free_block(network: ipaddress.IPv4Network, *, first_usable: ipaddress.IPv4Address,
                      last_usable: ipaddress.IPv4Address,
                      held: Mapping[ipaddress.IPv4Address, str],
                      exclude: Collection[ipaddress.IPv4Address], length: int,
                      ) -> ipaddress.IPv4Network | None:
    """The lowest aligned /``length`` of ``network`` inside ``first_usable..last_usable``
    whose addresses nobody holds (``held``) or is about to take (``exclude``); the caller
    may raise ``first_usable`` to the lowest address it knows to be free."""
    if length < network.prefixlen:
        return None
    size = 2 ** (32 - length)
    # the first aligned block that starts at or above first_usable
    start = -(-int(first_usable) // size) * size
    for first in range(start, int(last_usable) - size + 2, size):
        block = ipaddress.IPv4Network((first, length))
        if not any(a in held or a in exclude for a in block):
            return block
    return None


def private_ips(subnets_held: Iterable[Mapping[ipaddress.IPv4Address, str]]) -> int:
    """Private addresses a VNet holds as Azure counts them: one per ipConfiguration (a block
    once), from each subnet's ``address -> holder`` map."""
    return sum(len(set(held.values())) for held in subnets_held)


def check_vnet_limit(vnet_id: str, before: int, after: int, limit: int) -> None:
    """Refuse a write that grows the VNet's count past ``limit`` (shrinking is always fine)."""
    if after > limit and after > before:
        raise BlockRequestError(
            VNET_LIMIT_CODE,
            f"Virtual network {vnet_id} cannot have more than {limit} private IP addresses "
            f"(IP configurations; an IP configuration with a prefix counts once); the "
            f"request would make it {after}.")
