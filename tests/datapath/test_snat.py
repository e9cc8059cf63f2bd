"""SNAT and egress filtering: rendered rules (pure) and real traffic in namespaces."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from azure_cni.datapath.names import host_veth_mac, host_veth_name, pod_mac
from azure_cni.datapath.snat import (
    FILTER_CHAIN,
    LOCK_WAIT_SECONDS,
    NAT_CHAIN,
    SPOOF_CHAIN,
    SnatPolicy,
    in_sync,
    owned_state,
    render_rules,
    restore_input,
    teardown_input,
)
from azure_cni.datapath.veth import PodNetwork, VethDatapath
from azure_cni_sim.node import setup_host_nic

POLICY = SnatPolicy(pod_cidr="198.18.0.0/24", vnet_cidrs=("198.18.0.0/16",),
                    non_masquerade_cidrs=("10.0.0.0/8", "198.18.0.0/16"))


def test_rendered_rules() -> None:
    rules = render_rules(POLICY)
    assert rules.nat_jump == (
        '-s 198.18.0.0/24 -m addrtype ! --src-type LOCAL -m comment --comment '
        '"azure-cni: masquerade pod traffic leaving the VNet" -j AZURE-CNI-SNAT')
    assert rules.nat_chain == (
        '-d 198.18.0.0/16 -m comment --comment "azure-cni: VNet address space" -j RETURN',
        '-d 10.0.0.0/8 -m comment --comment "azure-cni: nonMasqueradeCIDRs" -j RETURN',
        '-m comment --comment "azure-cni: pods reach the internet with the node primary IP" '
        '-j MASQUERADE --random-fully')
    assert rules.filter_jump == ('-i azv+ -m comment --comment "azure-cni: traffic from pods" '
                                 '-j AZURE-CNI-FORWARD')
    assert [r.split(" -m comment")[0] for r in rules.filter_chain] == [
        "-d 168.63.129.16/32 -p tcp -m multiport --dports 80,32526",
        "-d 169.254.169.254/32"]


@pytest.mark.parametrize(("policy", "nat_jump", "nat_rules", "filter_rules"), [
    (SnatPolicy(pod_cidr=None), False, 0, 2),  # the NIC is not known yet
    (SnatPolicy(pod_cidr="198.18.0.0/24", masquerade=False), False, 0, 2),
    (SnatPolicy(pod_cidr="198.18.0.7/24"), True, 1, 2),  # host bits are normalised
    (SnatPolicy(pod_cidr="198.18.0.0/24", block_wireserver=False), True, 1, 1),
    (SnatPolicy(pod_cidr="198.18.0.0/24", block_wireserver=False,
                block_instance_metadata=False), True, 1, 0),
])
def test_policy_variants(policy: SnatPolicy, nat_jump: bool, nat_rules: int,
                         filter_rules: int) -> None:
    rules = render_rules(policy)
    assert (rules.nat_jump is not None) == nat_jump
    assert len(rules.nat_chain) == nat_rules
    assert len(rules.filter_chain) == filter_rules
    if policy.pod_cidr and nat_jump:
        assert "-s 198.18.0.0/24 " in str(rules.nat_jump)


SAVED_WITH_STALE = """*nat
:POSTROUTING ACCEPT [0:0]
:AZURE-CNI-SNAT - [0:0]
-A POSTROUTING -j KUBE-POSTROUTING
-A POSTROUTING -s 10.1.0.0/24 -m addrtype ! --src-type LOCAL -j AZURE-CNI-SNAT
COMMIT
*filter
:FORWARD ACCEPT [0:0]
-A FORWARD -j ACCEPT
COMMIT
"""


def test_restore_input_replaces_stale_jumps_and_leaves_others_alone() -> None:
    payload = restore_input(render_rules(POLICY), SAVED_WITH_STALE)
    lines = payload.splitlines()
    assert "-D POSTROUTING -s 10.1.0.0/24 -m addrtype ! --src-type LOCAL -j AZURE-CNI-SNAT" \
        in lines
    assert not any("KUBE-POSTROUTING" in line for line in lines)
    assert f":{NAT_CHAIN} - [0:0]" in lines and f":{FILTER_CHAIN} - [0:0]" in lines
    assert any(line.startswith("-I FORWARD 1 -i azv+") for line in lines), \
        "our filter jump goes first, before any ACCEPT"
    assert any(line.startswith("-A POSTROUTING -s 198.18.0.0/24") for line in lines)
    assert not in_sync(render_rules(POLICY), SAVED_WITH_STALE)


def saved_with_forward(*forward: str) -> str:
    """iptables-save output with the chains in sync except for FORWARD's rules."""
    rules = render_rules(POLICY)
    return "\n".join([
        "*nat", ":POSTROUTING ACCEPT [0:0]", f":{NAT_CHAIN} - [0:0]",
        f"-A POSTROUTING {rules.nat_jump}", *(f"-A {NAT_CHAIN} {r}" for r in rules.nat_chain),
        "COMMIT", "*filter", ":FORWARD ACCEPT [0:0]", f":{FILTER_CHAIN} - [0:0]",
        *(f"-A FORWARD {r}" for r in forward),
        *(f"-A {FILTER_CHAIN} {r}" for r in rules.filter_chain), "COMMIT",
        "*raw", ":PREROUTING ACCEPT [0:0]", f":{SPOOF_CHAIN} - [0:0]",
        f"-A PREROUTING {rules.spoof_jump}", *(f"-A {SPOOF_CHAIN} {r}" for r in rules.spoof_chain),
        "COMMIT", ""])


def test_our_forward_jump_must_be_first() -> None:
    """An ACCEPT above the jump lets pods past the wireserver/IMDS block."""
    rules = render_rules(POLICY)
    assert in_sync(rules, saved_with_forward(rules.filter_jump, "-j ACCEPT"))
    behind = saved_with_forward("-i azv+ -j ACCEPT", rules.filter_jump)
    assert not in_sync(rules, behind)
    lines = restore_input(rules, behind).splitlines()
    assert f"-D FORWARD {rules.filter_jump}" in lines
    assert f"-I FORWARD 1 {rules.filter_jump}" in lines
    assert not any("-D FORWARD -i azv+ -j ACCEPT" in line for line in lines), \
        "the other rule stays, below ours"


def test_the_antispoof_jump_must_be_first_in_raw_prerouting() -> None:
    rules = render_rules(POLICY)
    behind = saved_with_forward(rules.filter_jump).replace(
        f"-A PREROUTING {rules.spoof_jump}", f"-A PREROUTING -j ACCEPT\n"
                                             f"-A PREROUTING {rules.spoof_jump}")
    assert not in_sync(rules, behind)
    assert f"-I PREROUTING 1 {rules.spoof_jump}" in restore_input(rules, behind).splitlines()


def test_teardown_input() -> None:
    payload = teardown_input(SAVED_WITH_STALE)
    assert payload.splitlines() == [
        "*nat", "-D POSTROUTING -s 10.1.0.0/24 -m addrtype ! --src-type LOCAL "
        "-j AZURE-CNI-SNAT", f"-F {NAT_CHAIN}", f"-X {NAT_CHAIN}", "COMMIT"]
    assert teardown_input("*nat\nCOMMIT\n") == ""


# -- real namespaces ------------------------------------------------------------------------


def run_in(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *args], capture_output=True, text=True,
                          check=check, timeout=60)


def apply_in(netns: str, policy: SnatPolicy) -> bool:
    """ensure_snat inside ``netns`` (iptables acts on the caller's namespace)."""
    code = ("import sys; from azure_cni.datapath.snat import SnatPolicy, ensure_snat; "
            f"print(ensure_snat({policy!r}))")
    return run_in(netns, sys.executable, "-c", code).stdout.strip() == "True"


def ensure_snat_in(netns: str, policy: SnatPolicy,
                   env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """ensure_snat inside ``netns`` with ``env`` (for example another iptables backend)."""
    code = ("from azure_cni.datapath.snat import SnatPolicy, ensure_snat; "
            f"print(ensure_snat({policy!r}))")
    return run_in(netns, "env", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-c",
                  code, check=False)


def saved(netns: str) -> str:
    return run_in(netns, "iptables-save").stdout


class Listener:
    """A TCP server inside a namespace that reports the source address of each client."""

    def __init__(self, netns: str, address: str, port: int) -> None:
        code = (
            "import socket,sys\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('{address}', {port})); s.listen(); print('ready', flush=True)\n"
            "while True:\n"
            "    c,a=s.accept(); c.sendall(a[0].encode()); c.close()\n")
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", code],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def source_seen(netns: str, address: str, port: int, bind: str | None = None) -> str:
    """The client address ``address:port`` sees when ``netns`` connects (or the error)."""
    binding = f"c.bind(('{bind}', 0)); " if bind else ""
    code = ("import socket; c=socket.socket(); c.settimeout(3); " + binding +
            f"c.connect(('{address}', {port})); print(c.recv(64).decode())")
    result = run_in(netns, sys.executable, "-c", code, check=False)
    if result.returncode != 0:
        return "error: " + result.stderr.strip().splitlines()[-1]
    return result.stdout.strip()


@pytest.fixture
def vm(netns_factory) -> Iterator[dict[str, str]]:
    """host (198.18.0.4/24, plus 198.18.0.5 as a second local address) with one pod
    (198.18.0.10) and a fabric namespace that is the gateway (198.18.0.1), an 'internet'
    host (203.0.113.10), the wireserver and the metadata service."""
    host, fabric, pod = (netns_factory.create("host"), netns_factory.create("fabric"),
                         netns_factory.create("pod"))
    setup_host_nic(host, primary_cidr="198.18.0.4/24", gateway="198.18.0.1",
                   fabric_netns=fabric)
    subprocess.run(["ip", "-n", host, "addr", "add", "198.18.0.5/32", "dev", "eth0"],
                   check=True)
    for address in ("203.0.113.10/32", "168.63.129.16/32", "169.254.169.254/32"):
        subprocess.run(["ip", "-n", fabric, "addr", "add", address, "dev", "lo"], check=True)
    # Azure's network knows the pod address is the VM's: deliver it to the VM
    subprocess.run(["ip", "-n", fabric, "route", "add", "198.18.0.10/32", "via", "198.18.0.4"],
                   check=True)
    run_in(host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    datapath = VethDatapath(host_netns=f"/run/netns/{host}")
    datapath.ensure_pod_veth(PodNetwork(
        netns=f"/run/netns/{pod}", ifname="eth0", address="198.18.0.10",
        host_veth=host_veth_name("p", "eth0"), host_mac=host_veth_mac("p", "eth0"),
        pod_mac=pod_mac("p", "eth0"), mtu=1500))
    listeners = [Listener(fabric, "0.0.0.0", 80), Listener(fabric, "0.0.0.0", 53),
                 Listener(fabric, "0.0.0.0", 32526)]
    try:
        yield {"host": host, "fabric": fabric, "pod": pod}
    finally:
        for listener in listeners:
            listener.stop()
        datapath.close()


@pytest.mark.netns
def test_pod_traffic_is_masqueraded_only_outside_the_vnet(vm: dict[str, str]) -> None:
    host, pod = vm["host"], vm["pod"]
    assert source_seen(pod, "203.0.113.10", 80) == "198.18.0.10", "no SNAT before the chains"
    assert apply_in(host, POLICY)
    assert source_seen(pod, "203.0.113.10", 80) == "198.18.0.4", \
        "internet-bound pod traffic leaves with the VM's primary IP"
    assert source_seen(pod, "198.18.0.1", 80) == "198.18.0.10", "VNet traffic keeps its source"
    assert source_seen(host, "203.0.113.10", 80, bind="198.18.0.5") == "198.18.0.5", \
        "the host's own traffic is not ours to rewrite"
    state = owned_state(saved(host))
    assert len(state["nat_jumps"]) == 1 and "--random-fully" in state["nat_chain"][-1]


#: one UDP datagram with any source address, through a raw socket (NET_RAW, which pods have
SEND_UDP = """
import socket, struct, sys
src, dst, port, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).sendto(ip + udp, (dst, 0))
"""


class UdpListener:
    """A UDP server inside a namespace that prints the source and payload of each datagram."""

    def __init__(self, netns: str, address: str, port: int) -> None:
        code = ("import socket\n"
                "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"s.bind(('{address}', {port})); print('ready', flush=True)\n"
                "while True:\n"
                "    data, (src, _) = s.recvfrom(2048); print(src, data.decode(), flush=True)\n")
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", code],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def until(self, line: str) -> list[str]:
        """Every datagram received up to and including ``line``."""
        assert self.proc.stdout is not None
        seen: list[str] = []
        while not seen or seen[-1] != line:
            seen.append(self.proc.stdout.readline().strip())
            assert seen[-1], f"the listener ended before {line!r}"
        return seen

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.mark.netns
def test_a_pod_can_only_send_with_its_own_address(vm: dict[str, str], netns_factory) -> None:
    """Anti-spoofing: another pod's address, the node's own or any foreign one is dropped on
    the pod's veth; the pod's own traffic goes through."""
    host, fabric, pod = vm["host"], vm["fabric"], vm["pod"]
    other = netns_factory.create("other")
    datapath = VethDatapath(host_netns=f"/run/netns/{host}")
    try:
        datapath.ensure_pod_veth(PodNetwork(
            netns=f"/run/netns/{other}", ifname="eth0", address="198.18.0.11",
            host_veth=host_veth_name("o", "eth0"), host_mac=host_veth_mac("o", "eth0"),
            pod_mac=pod_mac("o", "eth0"), mtu=1500))
    finally:
        datapath.close()
    assert apply_in(host, POLICY)
    listener = UdpListener(fabric, "198.18.0.1", 9999)
    try:
        def send(source: str, payload: str) -> None:
            run_in(pod, sys.executable, "-c", SEND_UDP, source, "198.18.0.1", "9999", payload)

        for spoofed in ("198.18.0.11", "198.18.0.4", "203.0.113.99"):
            send(spoofed, f"spoofed-{spoofed}")
        send("198.18.0.10", "genuine")
        # one path, in order: had a spoofed datagram passed, it would have come first
        assert listener.until("198.18.0.10 genuine") == ["198.18.0.10 genuine"]
    finally:
        listener.stop()
    counters = run_in(host, "iptables", "-t", "raw", "-L", SPOOF_CHAIN, "-v", "-x", "-n").stdout
    drop = next(line for line in counters.splitlines() if "DROP" in line)
    assert int(drop.split()[0]) == 3, counters
    assert source_seen(pod, "198.18.0.1", 80) == "198.18.0.10", "TCP from the pod still works"


@pytest.mark.netns
def test_wireserver_and_metadata_are_blocked_unless_allowed(vm: dict[str, str]) -> None:
    host, pod = vm["host"], vm["pod"]
    assert apply_in(host, POLICY)
    assert source_seen(pod, "168.63.129.16", 80).startswith("error")
    assert source_seen(pod, "168.63.129.16", 32526).startswith("error")
    assert source_seen(pod, "168.63.129.16", 53) == "198.18.0.4", "DNS stays open"
    assert source_seen(pod, "169.254.169.254", 80).startswith("error")
    assert source_seen(host, "168.63.129.16", 80) == "198.18.0.4", "the host itself may"
    allowed = SnatPolicy(pod_cidr="198.18.0.0/24", vnet_cidrs=("198.18.0.0/16",),
                         block_wireserver=False, block_instance_metadata=False)
    assert apply_in(host, allowed)
    assert source_seen(pod, "168.63.129.16", 80) == "198.18.0.4"
    assert source_seen(pod, "169.254.169.254", 80) == "198.18.0.4"


@pytest.mark.netns
def test_a_rule_inserted_above_the_filter_is_moved_below_it(vm: dict[str, str]) -> None:
    host, pod = vm["host"], vm["pod"]
    assert apply_in(host, POLICY)
    run_in(host, "iptables", "-I", "FORWARD", "1", "-j", "ACCEPT")
    assert source_seen(pod, "168.63.129.16", 80) == "198.18.0.4", "the ACCEPT bypasses it"
    assert apply_in(host, POLICY), "a rule above our jump is drift to repair"
    forward = [r for r in saved(host).splitlines() if r.startswith("-A FORWARD ")]
    assert forward == [f"-A FORWARD {render_rules(POLICY).filter_jump}",
                       "-A FORWARD -j ACCEPT"]
    assert source_seen(pod, "168.63.129.16", 80).startswith("error")
    assert not apply_in(host, POLICY)


@pytest.mark.netns
def test_reconcile_is_idempotent_repairs_drift_and_tears_down(netns_factory) -> None:
    host = netns_factory.create("host")
    assert apply_in(host, POLICY)
    assert not apply_in(host, POLICY), "nothing to change the second time"
    before = saved(host)
    run_in(host, "iptables", "-t", "nat", "-F", NAT_CHAIN)
    assert apply_in(host, POLICY), "a flushed chain is drift to repair"
    assert owned_state(saved(host)) == owned_state(before)
    moved = SnatPolicy(pod_cidr="198.18.1.0/24", vnet_cidrs=("198.18.0.0/16",))
    assert apply_in(host, moved)
    assert owned_state(saved(host))["nat_jumps"][0].startswith("-s 198.18.1.0/24"), \
        "the old jump is replaced, not duplicated"
    code = "from azure_cni.datapath.snat import teardown_snat; teardown_snat()"
    run_in(host, sys.executable, "-c", code)
    assert "AZURE-CNI" not in saved(host)


@pytest.mark.netns
def test_the_xtables_lock_is_waited_for_but_not_forever(netns_factory, legacy_iptables) -> None:
    """kube-proxy holds the xtables lock while it syncs (legacy backend): the restore waits
    for it a bounded time, then fails with iptables' reason so the agent retries promptly."""
    host = netns_factory.create("host")
    legacy_iptables.hold()
    blocked = ensure_snat_in(host, POLICY, legacy_iptables.env)
    assert blocked.returncode != 0
    assert "IptablesFailed" in blocked.stderr, blocked.stderr
    assert "holding the xtables lock" in blocked.stderr
    assert f"Stopped waiting after {LOCK_WAIT_SECONDS}s" in blocked.stderr
    assert FILTER_CHAIN not in legacy_iptables.run(host, "iptables-save").stdout
    legacy_iptables.release()
    applied = ensure_snat_in(host, POLICY, legacy_iptables.env)
    assert applied.stdout.strip() == "True", applied.stderr
    state = owned_state(legacy_iptables.run(host, "iptables-save").stdout)
    assert state["filter_jumps"] == [render_rules(POLICY).filter_jump]
