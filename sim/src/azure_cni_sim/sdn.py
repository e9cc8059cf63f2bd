"""What Azure's SDN does besides routing, rendered as iptables rules for the fabric namespace.

From the emulator's ``FabricPolicy`` (``arm/netfeatures.py``):

- **1:1 NAT for public IPs**: traffic to a public IP is sent to the private address of the
  ipConfiguration holding it (DNAT), and what that address sends towards the internet leaves
  with the public IP (SNAT on the internet side only; the VNet and on-premises see the
  private address, as in Azure).
- **Load balancers**: a connection to a frontend's port goes to one member of the backend pool,
  chosen at random per connection (conntrack keeps the rest of it on that member).
- **Network security groups**: for each address of a NIC with an NSG (its own or its
  subnet's), inbound traffic passes the subnet's NSG then the NIC's, outbound the NIC's then
  the subnet's; in each, the rules in priority order, first match wins, default rules last.
  Flows are stateful (replies of an allowed flow pass). Service tags: ``VirtualNetwork`` is the
  VNet's space plus the networks connected to it (on-premises), ``Internet`` everything else,
  ``AzureLoadBalancer`` 168.63.129.16.

Everything above ``# -- I/O --`` is pure. The chains are ours (``AZ-``), rewritten as a whole
by one ``iptables-restore --noflush``; the jumps to them are added once.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence

from azure_cni_sim.arm.netfeatures import FabricPolicy, SecurityRule

PUBLIC_IN = "AZ-PUBLIC-IN"
PUBLIC_OUT = "AZ-PUBLIC-OUT"
NSG_CHAIN = "AZ-NSG"
JUMPS = (("nat", "PREROUTING", PUBLIC_IN), ("nat", "POSTROUTING", PUBLIC_OUT),
         ("filter", "FORWARD", NSG_CHAIN))
#: packet marks for "source / destination is in VirtualNetwork" (only inside AZ-NSG)
SRC_VNET, DST_VNET = 0x100000, 0x200000
AZURE_LOAD_BALANCER = "168.63.129.16/32"


def _prefix(prefix: str, side: str) -> str:
    """The match for an NSG address prefix or service tag on ``side`` ("s" or "d")."""
    mark = SRC_VNET if side == "s" else DST_VNET
    if prefix == "*":
        return ""
    if prefix == "VirtualNetwork":
        return f"-m mark --mark {mark:#x}/{mark:#x}"
    if prefix == "Internet":
        return f"-m mark --mark 0x0/{mark:#x}"
    if prefix == "AzureLoadBalancer":
        return f"-{side} {AZURE_LOAD_BALANCER}"
    return f"-{side} {ipaddress.ip_network(prefix, strict=False)}"


def _ports(ranges: Sequence[str], flag: str) -> str:
    if "*" in ranges:
        return ""
    spans = [r.replace("-", ":") for r in ranges]
    if len(spans) == 1:
        return f"--{flag} {spans[0]}"
    return f"-m multiport --{flag}s {','.join(spans)}"


def rule_lines(rule: SecurityRule) -> list[str]:
    """One NSG rule as iptables rule bodies (all with the rule's verdict)."""
    verdict = "RETURN" if rule.access == "Allow" else "DROP"
    ported = "*" not in rule.destination_ports or "*" not in rule.source_ports
    protocols = {"Tcp": ["tcp"], "Udp": ["udp"], "Icmp": ["icmp"]}.get(
        rule.protocol, ["tcp", "udp"] if ported else [""])
    comment = f'-m comment --comment "{rule.name} ({rule.priority})"'
    out = []
    for protocol in protocols:
        proto = f"-p {protocol}" if protocol else ""
        ports = " ".join(p for p in (_ports(rule.source_ports, "sport"),
                                     _ports(rule.destination_ports, "dport")) if p) \
            if protocol in ("tcp", "udp") else ""
        for source in rule.sources:
            for destination in rule.destinations:
                match = " ".join(m for m in (proto, _prefix(source, "s"),
                                             _prefix(destination, "d"), ports, comment) if m)
                out.append(f"{match} -j {verdict}")
    return out


def _nsg_chain(rules: Sequence[SecurityRule], direction: str) -> str:
    digest = hashlib.sha256(repr((direction, tuple(rules))).encode()).hexdigest()[:8]
    return f"AZ-NSG-{digest}-{'IN' if direction == 'Inbound' else 'OUT'}"


def _networks(cidrs: Iterable[str]) -> list[str]:
    return [str(n) for n in ipaddress.collapse_addresses(
        ipaddress.IPv4Network(c, strict=False) for c in cidrs)]


def render(policy: FabricPolicy, *, internet_if: str, connected: Sequence[str]) -> str:
    """The ``iptables-restore --noflush`` input that makes the fabric enforce ``policy``."""
    nat: list[str] = [f":{PUBLIC_IN} - [0:0]", f":{PUBLIC_OUT} - [0:0]"]
    rules: list[str] = []
    for public, private in policy.nat:
        rules.append(f"-A {PUBLIC_IN} -d {public}/32 -j DNAT --to-destination {private}")
        rules.append(f"-A {PUBLIC_OUT} -s {private}/32 -o {internet_if} "
                     f"-j SNAT --to-source {public}")
    for i, lb in enumerate(policy.balancers):
        chain = f"AZ-LB-{i}"
        nat.append(f":{chain} - [0:0]")
        protocol = lb.protocol.lower()
        rules.append(f"-A {PUBLIC_IN} -d {lb.frontend}/32 -p {protocol} --dport {lb.port} "
                     f"-j {chain}")
        for k, member in enumerate(lb.members):
            left = len(lb.members) - k
            pick = f"-m statistic --mode random --probability {1 / left:.5f} " if left > 1 else ""
            rules.append(f"-A {chain} -p {protocol} {pick}-j DNAT "
                         f"--to-destination {member}:{lb.backend_port}")
    out = ["*nat", *nat, *rules, "COMMIT"]

    chains: dict[str, list[str]] = {}
    jumps: list[str] = []
    for guarded in policy.guarded:
        for direction, flag, order in (("Inbound", "-d", guarded.nsgs),
                                       ("Outbound", "-s", tuple(reversed(guarded.nsgs)))):
            for nsg in order:
                wanted = [r for r in nsg if r.direction == direction]
                chain = _nsg_chain(wanted, direction)
                chains.setdefault(chain, [line for r in wanted for line in rule_lines(r)])
                jumps.append(f"-A {NSG_CHAIN} {flag} {guarded.address}/32 -j {chain}")
    vnet = _networks([*policy.vnet_space, *connected])
    filter_rules = [f":{NSG_CHAIN} - [0:0]", *(f":{c} - [0:0]" for c in chains)]
    if jumps:
        filter_rules += [
            f"-A {NSG_CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
            f"-A {NSG_CHAIN} -j MARK --set-xmark 0x0/{SRC_VNET | DST_VNET:#x}",
            *(f"-A {NSG_CHAIN} -s {n} -j MARK --or-mark {SRC_VNET:#x}" for n in vnet),
            *(f"-A {NSG_CHAIN} -d {n} -j MARK --or-mark {DST_VNET:#x}" for n in vnet),
            *jumps,
            *(f"-A {chain} {line}" for chain, lines in chains.items() for line in lines)]
    out += ["*filter", *filter_rules, "COMMIT"]
    return "\n".join(out) + "\n"


def jump_rules() -> str:
    """The jumps from the built-in chains to ours (added once)."""
    by_table: dict[str, list[str]] = {}
    for table, builtin, chain in JUMPS:
        by_table.setdefault(table, []).append(f":{chain} - [0:0]")
        by_table[table].append(f"-A {builtin} -j {chain}")
    return "".join(f"*{t}\n" + "\n".join(lines) + "\nCOMMIT\n" for t, lines in by_table.items())
