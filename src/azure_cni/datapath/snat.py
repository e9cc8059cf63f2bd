"""SNAT and pod egress filtering: two chains azure-cni owns, written atomically.

nat ``AZURE-CNI-SNAT``, jumped to from POSTROUTING for traffic whose source is in the node's
subnet but is not one of the host's own addresses (that is: forwarded pod traffic):
RETURN for the VNet's address space and the configured non-masquerade CIDRs, MASQUERADE
(``--random-fully``) for everything else, so internet-bound pod traffic leaves with the VM's
primary IP (Azure gives outbound SNAT to the primary ipConfiguration only).

filter ``AZURE-CNI-FORWARD``, jumped to first from FORWARD for packets arriving on a pod veth:
rejects the Azure wireserver (168.63.129.16 tcp 80 and 32526; DNS on 53 stays open) and the
instance metadata service (169.254.169.254) unless the configuration allows them.

raw ``AZURE-CNI-ANTISPOOF``, jumped to first from PREROUTING for packets arriving on a pod
veth: drops every packet whose source address is not routed back through the veth it came
in on (``-m rpfilter``, a strict reverse-path check). A pod's only route on the host is the
/32 of its own address, so a pod can send with that address and no other: not another
pod's, not the node's, not a foreign one. The ``rp_filter`` sysctl cannot do this: the
kernel applies the larger of ``all`` and the interface's value, and many distributions set
``all`` to 2 (loose), which accepts any source the host can route somewhere. The raw table
also sees the packet before conntrack and before kube-proxy's rules in nat and filter.

The two filter jumps must stay the first rule of their chains (an ACCEPT above the FORWARD
jump would let pods past the block), so a jump anywhere else is drift: it is moved back to
the top.

Rendering is pure (``render_rules``, ``restore_input``); ``ensure_snat`` applies the result
with one ``iptables-restore --noflush`` (each table is replaced in one transaction) and only
touches rules that jump to, or live in, the two chains above.

The legacy backend serialises every writer on the xtables lock (kube-proxy holds it while it
syncs, which at boot can be seconds): the restore waits for it, as kube-proxy does, but only
``LOCK_WAIT_SECONDS``, and fails with iptables' own message after that, so the caller can
retry promptly instead of hanging. The nf_tables backend has no lock and ignores the flags.
"""

from __future__ import annotations

import ipaddress
import shlex
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from azure_cni.datapath.names import HOST_VETH_PREFIX

NAT_CHAIN = "AZURE-CNI-SNAT"
FILTER_CHAIN = "AZURE-CNI-FORWARD"
SPOOF_CHAIN = "AZURE-CNI-ANTISPOOF"
WIRESERVER = "168.63.129.16/32"
WIRESERVER_PORTS = (80, 32526)
INSTANCE_METADATA = "169.254.169.254/32"
#: how long iptables-restore waits for the xtables lock (kube-proxy waits as long)
LOCK_WAIT_SECONDS = 5
_TIMEOUT = 30.0


class IptablesFailed(RuntimeError):
    """iptables-save or iptables-restore failed; the message has its stderr."""


@dataclass(frozen=True)
class SnatPolicy:
    """What the chains should say, from the configuration and the pool's NIC information."""

    #: the NIC's subnet: pod addresses come from it (None: not known yet, no masquerading)
    pod_cidr: str | None
    vnet_cidrs: tuple[str, ...] = ()
    non_masquerade_cidrs: tuple[str, ...] = ()
    masquerade: bool = True
    block_wireserver: bool = True
    block_instance_metadata: bool = True
    #: pod addresses with a public IP of their own: Azure gives them 1:1 NAT, so they leave
    #: the node un-masqueraded
    public_sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class OwnedRules:
    """Rendered rules (iptables-save syntax without the leading ``-A CHAIN``)."""

    nat_jump: str | None
    nat_chain: tuple[str, ...]
    filter_jump: str
    filter_chain: tuple[str, ...]
    spoof_jump: str
    spoof_chain: tuple[str, ...]


def _comment(text: str) -> str:
    return f'-m comment --comment "azure-cni: {text}"'


def _network(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr, strict=False))


def render_rules(policy: SnatPolicy) -> OwnedRules:
    """The rules for ``policy``, in the canonical form iptables-save prints them."""
    nat_jump = None
    nat_chain: list[str] = []
    if policy.masquerade and policy.pod_cidr:
        nat_jump = (f"-s {_network(policy.pod_cidr)} -m addrtype ! --src-type LOCAL "
                    f"{_comment('masquerade pod traffic leaving the VNet')} -j {NAT_CHAIN}")
        nat_chain += [f"-s {_network(a)} {_comment('pod with a public IP of its own')} -j RETURN"
                      for a in sorted(set(policy.public_sources), key=_network)]
        seen: set[str] = set()
        for cidr, why in [*((c, "VNet address space") for c in policy.vnet_cidrs),
                          *((c, "nonMasqueradeCIDRs") for c in policy.non_masquerade_cidrs)]:
            network = _network(cidr)
            if network in seen:
                continue
            seen.add(network)
            nat_chain.append(f"-d {network} {_comment(why)} -j RETURN")
        nat_chain.append(f"{_comment('pods reach the internet with the node primary IP')} "
                         "-j MASQUERADE --random-fully")
    filter_chain: list[str] = []
    if policy.block_wireserver:
        ports = ",".join(str(p) for p in WIRESERVER_PORTS)
        filter_chain.append(f"-d {WIRESERVER} -p tcp -m multiport --dports {ports} "
                            f"{_comment('pods may not reach the Azure wireserver')} "
                            "-j REJECT --reject-with tcp-reset")
    if policy.block_instance_metadata:
        filter_chain.append(f"-d {INSTANCE_METADATA} "
                            f"{_comment('pods may not reach the instance metadata service')} "
                            "-j REJECT --reject-with icmp-admin-prohibited")
    filter_jump = (f"-i {HOST_VETH_PREFIX}+ {_comment('traffic from pods')} "
                   f"-j {FILTER_CHAIN}")
    spoof_jump = f"-i {HOST_VETH_PREFIX}+ {_comment('traffic from pods')} -j {SPOOF_CHAIN}"
    spoof_chain = (f"-m rpfilter --invert "
                   f"{_comment('pods may send only with their own address')} -j DROP",)
    return OwnedRules(nat_jump, tuple(nat_chain), filter_jump, tuple(filter_chain),
                      spoof_jump, spoof_chain)


#: (table, built-in chain, our chain, whether our jump must be the built-in's first rule)
_TABLES = (("nat", "POSTROUTING", NAT_CHAIN, False),
           ("filter", "FORWARD", FILTER_CHAIN, True),
           ("raw", "PREROUTING", SPOOF_CHAIN, True))


def _owned(rules: OwnedRules, table: str) -> tuple[str | None, tuple[str, ...]]:
    """Our jump and chain body in ``table``."""
    return {"nat": (rules.nat_jump, rules.nat_chain),
            "filter": (rules.filter_jump, rules.filter_chain),
            "raw": (rules.spoof_jump, rules.spoof_chain)}[table]


def _table_rules(saved: str, table: str) -> list[str]:
    """The ``-A ...`` lines of one table in iptables-save output."""
    lines: list[str] = []
    current = None
    for line in saved.splitlines():
        if line.startswith("*"):
            current = line[1:].strip()
        elif current == table and line.startswith("-A "):
            lines.append(line[3:])
    return lines


def _jumps_to(rules: Iterable[str], builtin: str, chain: str) -> list[str]:
    target = f"-j {chain}"
    return [r[len(builtin) + 1:] for r in rules
            if r.startswith(builtin + " ") and (r.endswith(" " + target) or f" {target} " in r)]


def _first_rule(saved: str, table: str, builtin: str) -> str | None:
    rules = [r for r in _table_rules(saved, table) if r.startswith(builtin + " ")]
    return rules[0][len(builtin) + 1:] if rules else None


def restore_input(rules: OwnedRules, saved: str) -> str:
    """The iptables-restore --noflush input that makes ``saved`` carry exactly ``rules``.

    Declaring our chains flushes and refills them; jumps are added only when missing (or, for
    a jump that must be first, not first) and any other jump to our chains (stale, e.g. from
    an older subnet) is deleted.
    """
    out: list[str] = []
    for table, builtin, chain, first in _TABLES:
        jump, body = _owned(rules, table)
        existing = _jumps_to(_table_rules(saved, table), builtin, chain)
        out += [f"*{table}", f":{chain} - [0:0]"]
        placed = jump in existing and (not first or _first_rule(saved, table, builtin) == jump)
        keep = jump if placed else None
        out += [f"-D {builtin} {rule}" for rule in existing if rule != keep]
        if jump is not None and keep is None:
            out.append(f"-I {builtin} 1 {jump}" if first else f"-A {builtin} {jump}")
        out += [f"-A {chain} {rule}" for rule in body]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def teardown_input(saved: str) -> str:
    """The iptables-restore --noflush input that removes our jumps and chains."""
    out: list[str] = []
    for table, builtin, chain, _ in _TABLES:
        declared = f":{chain} " in saved
        jumps = _jumps_to(_table_rules(saved, table), builtin, chain)
        if not declared and not jumps:
            continue
        out.append(f"*{table}")
        out += [f"-D {builtin} {rule}" for rule in jumps]
        if declared:
            out += [f"-F {chain}", f"-X {chain}"]
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def owned_state(saved: str) -> dict[str, list[str]]:
    """Our jumps and chain bodies as found in ``saved``, as ``<table>_jumps`` and
    ``<table>_chain`` (for status output and tests)."""
    state = {}
    for table, builtin, chain, _ in _TABLES:
        rules = _table_rules(saved, table)
        state[f"{table}_jumps"] = _jumps_to(rules, builtin, chain)
        state[f"{table}_chain"] = [r[len(chain) + 1:] for r in rules
                                   if r.startswith(chain + " ")]
    return state


def in_sync(rules: OwnedRules, saved: str) -> bool:
    state = owned_state(saved)
    for table, builtin, _, first in _TABLES:
        jump, body = _owned(rules, table)
        if state[f"{table}_jumps"] != ([jump] if jump else []):
            return False
        if first and _first_rule(saved, table, builtin) != jump:
            return False
        if state[f"{table}_chain"] != list(body):
            return False
    return True


# -- I/O ---------------------------------------------------------------------------------


def _run(argv: list[str], payload: str | None = None) -> str:
    try:
        result = subprocess.run(argv, input=payload, capture_output=True, text=True,
                                timeout=_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise IptablesFailed(f"{shlex.join(argv)} did not finish within {_TIMEOUT:.0f}s") from None
    if result.returncode != 0:
        detail = f"\ninput was:\n{payload}" if payload else ""
        errors = "; ".join(line.strip() for line in result.stderr.splitlines() if line.strip())
        raise IptablesFailed(f"{shlex.join(argv)} failed: {errors}{detail}")
    return result.stdout


def iptables_save() -> str:
    """The current tables of this network namespace that hold our chains."""
    return "".join(_run(["iptables-save", "-t", table]) for table, _, _, _ in _TABLES)


def _restore(payload: str) -> None:
    _run(["iptables-restore", "-w", str(LOCK_WAIT_SECONDS), "--noflush"], payload)


def ensure_snat(policy: SnatPolicy) -> bool:
    """Make the chains match ``policy``; return True if anything had to change."""
    rules = render_rules(policy)
    saved = iptables_save()
    if in_sync(rules, saved):
        return False
    _restore(restore_input(rules, saved))
    return True


def teardown_snat() -> None:
    """Remove azure-cni's chains and the jumps to them (uninstall)."""
    payload = teardown_input(iptables_save())
    if payload:
        _restore(payload)


def describe(rules: OwnedRules) -> list[str]:
    """Human-readable rules, for logs and ``azure-cni status``."""
    lines = []
    if rules.nat_jump:
        lines.append(f"-t nat -A POSTROUTING {rules.nat_jump}")
    lines += [f"-t nat -A {NAT_CHAIN} {r}" for r in rules.nat_chain]
    lines.append(f"-t filter -A FORWARD {rules.filter_jump}")
    lines += [f"-t filter -A {FILTER_CHAIN} {r}" for r in rules.filter_chain]
    lines.append(f"-t raw -A PREROUTING {rules.spoof_jump}")
    lines += [f"-t raw -A {SPOOF_CHAIN} {r}" for r in rules.spoof_chain]
    return [shlex.join(shlex.split(line)) for line in lines]
