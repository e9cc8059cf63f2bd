"""A VNet fabric made of network namespaces, programmed the way Azure's SDN is.

Layout (every box is a network namespace the simulation creates and deletes)::

        VM netns (eth0: primary/prefix, default via .1)   ... one per simulated VM
              |  veth                       control plane netns (its own subnet, same way)
        fabric netns  -- the SDN: a /32 route per address of each NIC, proxy ARP, rp_filter
           |        |        \\
        onprem    internet    168.63.129.16 / 169.254.169.254 on the fabric's own loopback
     198.19.0.10  203.0.113.10 (+ .20: Azure Resource Manager's public address)

An address reaches a VM only while it is an ipConfiguration of that VM's NIC: the emulator's
NIC-change hook adds or removes the fabric's /32 route. A VM has a link per NIC (``eth0`` for
the primary, ``eth1``... in other subnets), and Azure's source check is a chain per NIC link
(``AZ-SRC-<link>`` in the raw table, counted): a packet a NIC sends from an address that is
not one of its ipConfigurations is dropped, so a pod whose traffic leaves the wrong NIC
cannot pass silently (strict reverse-path filtering on every link stays as a second line).
The internet host accepts packets only from the primary address of a VM's NIC (Azure gives
outbound connectivity to primary ipConfigurations only) and from public IPs, so pods reach
it through the agent's SNAT or with a public IP of their own. Public IPs, load balancers and
NSGs are ``sdn.py``'s, programmed from the emulator's policy hook (``on_policy``).

Only 198.18.0.0/15 and 203.0.113.0/24 are used, only inside these namespaces; nothing is
routed to the machine's own namespace or uplink.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from azure_cni_sim import sdn
from azure_cni_sim.arm import VmInfo
from azure_cni_sim.arm.netfeatures import FabricPolicy
from azure_cni_sim.procs import ManagedProcess, wait_for

log = logging.getLogger(__name__)

ONPREM_CIDR = "198.19.0.0/16"
ONPREM_HOST = "198.19.0.10"
INTERNET_CIDR = "203.0.113.0/24"
INTERNET_HOST = "203.0.113.10"
WIRESERVER = "168.63.129.16"
IMDS = "169.254.169.254"
#: where the simulated VMs reach Azure Resource Manager: a public address, like
#: management.azure.com's (the emulator listens there as well as on the host's loopback)
ARM_ADDRESS = "203.0.113.20"
#: the "public" side of the fabric towards the internet host (stands for Azure's SNAT edge)
_EDGE = "203.0.113.1"
_ONPREM_EDGE = "198.19.0.1"
#: the fabric's raw chain that jumps to each NIC's source check
SOURCE_CHECK = "AZ-SOURCE-CHECK"


def capture_packets(netns: str, iface: str, bpf: str, action: Callable[[], object], *,
                    packets: int = 2, timeout: float = 10) -> list[str]:
    """Run ``action()`` while tcpdump watches ``iface`` in ``netns``; return the packets seen
    (one line each, addresses numeric)."""
    dump = subprocess.Popen(
        ["ip", "netns", "exec", netns, "tcpdump", "-n", "-l", "-q", "-i", iface, "-c",
         str(packets), bpf], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert dump.stderr is not None
    for line in dump.stderr:  # ends at EOF if tcpdump fails
        if "listening on" in line:
            break
    try:
        action()
        out, _ = dump.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        dump.kill()
        out, _ = dump.communicate()
    return [line for line in out.splitlines() if line.strip()]


def _linux_mac(arm_mac: str) -> str:
    """``00-0D-3A-AA-BB-CC`` (ARM) as ``00:0d:3a:aa:bb:cc`` (ip link)."""
    return arm_mac.replace("-", ":").lower()


class FabricError(RuntimeError):
    """A namespace, link or route of the fabric could not be set up."""


def _prefix(address: str) -> str:
    """A NIC address as a route's destination: a single address is a /32."""
    return address if "/" in address else f"{address}/32"


def _run(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(list(args), input=stdin, capture_output=True, text=True,
                            check=False, timeout=30)
    if result.returncode != 0:
        raise FabricError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _sysctl(netns: str, *settings: str) -> None:
    _run("ip", "netns", "exec", netns, "sysctl", "-q", "-w", *settings)


@dataclass
class FabricNic:
    """One NIC of a VM: its link into the fabric and the addresses the fabric delivers to it."""

    nic_id: str
    primary_ip: str
    #: the fabric's end of the link, and the VM's (eth0 for the primary NIC, eth1, ...)
    fabric_if: str
    vm_if: str
    addresses: set[str] = field(default_factory=set)

    @property
    def source_check(self) -> str:
        """The fabric's chain that drops what this NIC sends from an address not its own."""
        return f"AZ-SRC-{self.fabric_if}"


@dataclass
class FabricVM:
    name: str
    netns: str
    #: the VM's NICs, the primary first
    nics: list[FabricNic]

    @property
    def nic_id(self) -> str:
        return self.nics[0].nic_id

    @property
    def primary_ip(self) -> str:
        return self.nics[0].primary_ip

    @property
    def fabric_if(self) -> str:
        return self.nics[0].fabric_if

    @property
    def addresses(self) -> set[str]:
        return self.nics[0].addresses


@dataclass
class Fabric:
    """The simulated SDN for one VNet subnet; ``prefix`` names every namespace it owns."""

    prefix: str
    subnet_cidr: str
    workdir: Path
    owner: str
    vms: dict[str, FabricVM] = field(default_factory=dict)
    procs: list[ManagedProcess] = field(default_factory=list)
    #: addresses public IPs and load balancer frontends answer on (sdn.py)
    public_addresses: set[str] = field(default_factory=set)
    _sdn_ready: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _source_lock: threading.Lock = field(default_factory=threading.Lock)
    #: fabric links whose source check is jumped to
    _source_jumps: set[str] = field(default_factory=set)
    _namespaces: list[str] = field(default_factory=list)

    @property
    def fabric_ns(self) -> str:
        return f"{self.prefix}-fabric"

    @property
    def onprem_ns(self) -> str:
        return f"{self.prefix}-onprem"

    @property
    def internet_ns(self) -> str:
        return f"{self.prefix}-inet"

    @property
    def gateway(self) -> str:
        return str(ipaddress.ip_network(self.subnet_cidr).network_address + 1)

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet_cidr).prefixlen

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def arm_ns(self) -> str:
        """The namespace holding ``ARM_ADDRESS`` (the internet side of the fabric)."""
        return self.internet_ns

    def create(self) -> Fabric:
        """The fabric namespace, the on-premises and internet hosts, and their servers."""
        try:
            self._netns(self.fabric_ns)
            _sysctl(self.fabric_ns, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=1",
                    "net.ipv4.conf.default.rp_filter=1")
            for address in (WIRESERVER, IMDS):
                _run("ip", "-n", self.fabric_ns, "addr", "add", f"{address}/32", "dev", "lo")
            self._host(self.onprem_ns, "fo", "on", address=ONPREM_HOST, prefixlen=16,
                       edge=_ONPREM_EDGE)
            self._host(self.internet_ns, "fi", "in", address=INTERNET_HOST, prefixlen=24,
                       edge=_EDGE)
            _run("ip", "-n", self.internet_ns, "addr", "add", f"{ARM_ADDRESS}/32", "dev", "eth0")
            self._accept_only_primaries()
            self._echo(self.onprem_ns, "onprem", [80])
            self._echo(self.internet_ns, "internet", [80])
            # the wireserver only: 169.254.169.254:80 is the IMDS relay's (imds_relay.py)
            self._echo(self.fabric_ns, "azure-platform", [80, 32526], bind=WIRESERVER)
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        """Stop the servers and delete every namespace (and with them, every rule)."""
        for proc in reversed(self.procs):
            proc.stop(timeout=5)
        self.procs.clear()
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self._namespaces.clear()
        self.vms.clear()
        self._source_jumps.clear()

    def _netns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self._namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _host(self, netns: str, fabric_if: str, host_if: str, *, address: str, prefixlen: int,
              edge: str) -> None:
        """A host behind the fabric; the edge address's connected route covers its range."""
        self._netns(netns)
        _run("ip", "link", "add", fabric_if, "netns", self.fabric_ns, "type", "veth",
             "peer", host_if, "netns", netns)
        _run("ip", "-n", netns, "link", "set", host_if, "name", "eth0")
        _run("ip", "-n", netns, "addr", "add", f"{address}/{prefixlen}", "dev", "eth0")
        _run("ip", "-n", netns, "link", "set", "eth0", "up")
        _run("ip", "-n", netns, "route", "add", "default", "via", edge)
        _run("ip", "-n", self.fabric_ns, "addr", "add", f"{edge}/{prefixlen}", "dev", fabric_if)
        _run("ip", "-n", self.fabric_ns, "link", "set", fabric_if, "up")

    def _echo(self, netns: str, name: str, ports: Sequence[int], bind: str = "") -> None:
        argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "azure_cni_sim.echo",
                "--name", name, *(a for p in ports for a in ("--port", str(p))),
                *(("--bind", bind) if bind else ())]
        proc = ManagedProcess(f"echo-{name}", argv, self.workdir / f"echo-{name}.log",
                              self.owner).start()
        self.procs.append(proc)
        wait_for(f"the {name} echo server", lambda: "echo_listening" in proc.log_path.read_text(),
                 timeout=20, alive=proc.check_running)

    def _accept_only_primaries(self) -> None:
        rules = ["*filter", ":INPUT DROP [0:0]",
                 "-A INPUT -i lo -j ACCEPT",
                 "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                 "-A INPUT -p icmp -s 203.0.113.0/24 -j ACCEPT"]
        # Azure's default outbound access: each NIC's primary ipConfiguration
        rules += [f"-A INPUT -s {nic.primary_ip}/32 -m comment --comment \"VM {vm.name} "
                  f"{nic.vm_if} primary\" -j ACCEPT" for vm in self.vms.values() for nic in vm.nics]
        # a pod with a public IP reaches the internet from it (the fabric's 1:1 NAT)
        rules += [f"-A INPUT -s {a}/32 -m comment --comment \"public IP\" -j ACCEPT"
                  for a in sorted(self.public_addresses)]
        rules.append("COMMIT")
        _run("ip", "netns", "exec", self.internet_ns, "iptables-restore", stdin="\n".join(rules)
             + "\n")

    # -- VMs and their NICs ----------------------------------------------------------------

    def add_vm(self, vm: VmInfo, secondary: Iterable[str] = ()) -> FabricVM:
        """A netns for the VM with ``eth0`` on the fabric (and ``eth1``... for its further
        NICs, left down and unconfigured as on an image that configures only the primary
        NIC); routes for its NICs' addresses and the source check of each NIC."""
        index = len(self.vms)
        primary = FabricNic(vm.nic_id, vm.primary_ip, f"fv{index}", "eth0")
        fvm = FabricVM(vm.name, f"{self.prefix}-{vm.name}", [primary])
        self._plug(fvm.netns, primary.fabric_if, f"{vm.primary_ip}/{self.prefixlen}",
                   self.gateway, mac=vm.mac)
        for k, more in enumerate(vm.more_nics, start=1):
            nic = FabricNic(more.nic_id, more.primary_ip, f"fv{index}n{k}", f"eth{k}")
            self._attach(fvm.netns, nic, more.cidr, more.mac)
            fvm.nics.append(nic)
        with self._lock:
            self.vms[vm.name] = fvm
        self._program(primary, {vm.primary_ip, *secondary})
        for nic in fvm.nics[1:]:
            self._program(nic, {nic.primary_ip})
        self._accept_only_primaries()
        return fvm

    def _attach(self, netns: str, nic: FabricNic, cidr: str, mac: str) -> None:
        """A further NIC of the VM in ``netns``: a link to the fabric whose fabric side answers
        for the subnet's gateway (and, by proxy ARP, what it routes)."""
        gateway = str(ipaddress.ip_network(cidr).network_address + 1)
        _run("ip", "link", "add", nic.fabric_if, "netns", self.fabric_ns, "type", "veth",
             "peer", "vmeth", "netns", netns)
        _run("ip", "-n", netns, "link", "set", "vmeth", "name", nic.vm_if)
        if mac:
            _run("ip", "-n", netns, "link", "set", nic.vm_if, "address", _linux_mac(mac))
        _run("ip", "-n", self.fabric_ns, "addr", "add", f"{gateway}/32", "dev", nic.fabric_if)
        _run("ip", "-n", self.fabric_ns, "link", "set", nic.fabric_if, "up")
        _sysctl(self.fabric_ns, f"net.ipv4.conf.{nic.fabric_if}.proxy_arp=1",
                f"net.ipv4.conf.{nic.fabric_if}.rp_filter=1",
                f"net.ipv4.neigh.{nic.fabric_if}.proxy_delay=0")

    def add_appliance(self, name: str, interface: str) -> str:
        """A namespace on a subnet of its own (``interface`` is ``address/prefix``), not a VM of
        the emulator: the control plane, as with API server VNet integration. Returns its name.
        """
        network = ipaddress.ip_interface(interface).network
        netns = f"{self.prefix}-{name}"
        fabric_if = f"fa{name}"[:15]
        self._plug(netns, fabric_if, interface, str(network.network_address + 1))
        address = str(ipaddress.ip_interface(interface).ip)
        _run("ip", "-n", self.fabric_ns, "route", "replace", f"{address}/32", "dev", fabric_if)
        return netns

    def _plug(self, netns: str, fabric_if: str, interface: str, gateway: str, *,
              mac: str = "") -> None:
        """``netns`` with ``eth0`` (``interface``, with the NIC's ``mac`` if given) on a link
        to the fabric, default via ``gateway``; the fabric side answers ARP for the gateway
        and (proxy ARP) every address it routes."""
        self._netns(netns)
        _run("ip", "link", "add", fabric_if, "netns", self.fabric_ns, "type", "veth",
             "peer", "vmeth", "netns", netns)
        _run("ip", "-n", netns, "link", "set", "vmeth", "name", "eth0")
        if mac:
            _run("ip", "-n", netns, "link", "set", "eth0", "address", _linux_mac(mac))
        _run("ip", "-n", netns, "addr", "add", interface, "dev", "eth0")
        _run("ip", "-n", netns, "link", "set", "eth0", "up")
        _run("ip", "-n", netns, "route", "add", "default", "via", gateway)
        _run("ip", "-n", self.fabric_ns, "addr", "add", f"{gateway}/32", "dev", fabric_if)
        _run("ip", "-n", self.fabric_ns, "link", "set", fabric_if, "up")
        _sysctl(self.fabric_ns, f"net.ipv4.conf.{fabric_if}.proxy_arp=1",
                f"net.ipv4.conf.{fabric_if}.rp_filter=1",
                f"net.ipv4.neigh.{fabric_if}.proxy_delay=0")

    def on_nic_change(self, nic_id: str, vm_id: str, old: tuple[str, ...],
                      new: tuple[str, ...]) -> None:
        """The emulator's hook: make the fabric deliver exactly the NIC's current addresses."""
        with self._lock:
            nic = next((n for v in self.vms.values() for n in v.nics
                        if n.nic_id.lower() == nic_id.lower()), None)
        if nic is None:
            return
        self._program(nic, set(new))

    def _program(self, nic: FabricNic, addresses: set[str]) -> None:
        with self._lock:
            gone = nic.addresses - addresses
            added = addresses - nic.addresses
            nic.addresses = set(addresses)
        # The SDN maps an address to the NIC, not to an ARP answer: secondary addresses are
        # sent to the NIC's MAC, i.e. routed via the primary address (which its link answers
        # for). A block (``<address>/<length>``, an ipConfiguration with a prefix) is one route.
        def route(a: str) -> str:
            via = "" if a == nic.primary_ip else f" via {nic.primary_ip}"
            return f"{_prefix(a)}{via} dev {nic.fabric_if}"

        batch = [f"route del {_prefix(a)} dev {nic.fabric_if}" for a in sorted(gone)]
        batch += [f"route replace {route(a)}" for a in sorted(added, key=lambda a: (
            a != nic.primary_ip, a))]
        if batch:
            # the source check first when addresses come (never drop a new address's first
            # packet), last when they go
            if added:
                self._source_check(nic)
            _run("ip", "-n", self.fabric_ns, "-force", "-batch", "-", stdin="\n".join(batch) + "\n")
            if gone and not added:
                self._source_check(nic)
            # forget conntrack state of removed addresses, as the SDN forgets its flows
            for address in gone:
                network = ipaddress.IPv4Network(_prefix(address))
                with contextlib.suppress(FabricError):
                    _run("ip", "netns", "exec", self.fabric_ns, "conntrack", "-D", "-s",
                         str(network.network_address), "--mask-src", str(network.netmask))
            log.info("event=fabric_programmed nic=%s added=%d removed=%d",
                     nic.nic_id.rsplit("/", 1)[-1], len(added), len(gone))

    def _source_check(self, nic: FabricNic) -> None:
        """Azure's source check for one NIC: what it sends from an address that is not one of
        its ipConfigurations is dropped (and counted) before it is routed anywhere."""
        with self._lock:
            held = sorted(nic.addresses)
        lines = ["*raw", f":{nic.source_check} - [0:0]"]
        lines += [f"-A {nic.source_check} -s {_prefix(a)} -j RETURN" for a in held]
        lines.append(f"-A {nic.source_check} -m comment --comment \"not an ipConfiguration of "
                     f"{nic.nic_id.rsplit('/', 1)[-1]}\" -j DROP")
        with self._source_lock:
            if nic.fabric_if not in self._source_jumps:
                lines.insert(1, f":{SOURCE_CHECK} - [0:0]" if not self._source_jumps else "")
                lines.append(f"-A {SOURCE_CHECK} -i {nic.fabric_if} -j {nic.source_check}")
                if not self._source_jumps:
                    lines.append(f"-I PREROUTING -j {SOURCE_CHECK}")
                self._source_jumps.add(nic.fabric_if)
            _run("ip", "netns", "exec", self.fabric_ns, "iptables-restore", "--noflush",
                 stdin="\n".join(line for line in lines if line) + "\nCOMMIT\n")

    def source_check_drops(self, vm_name: str, nic_index: int = 0) -> int:
        """Packets the source check of a VM's NIC has dropped so far (for tests)."""
        nic = self.vms[vm_name].nics[nic_index]
        out = _run("ip", "netns", "exec", self.fabric_ns, "iptables", "-t", "raw", "-L",
                   nic.source_check, "-v", "-x", "-n")
        drops = [line.split() for line in out.splitlines() if " DROP " in f" {line} "]
        return int(drops[-1][0]) if drops else 0

    def on_policy(self, policy: FabricPolicy) -> None:
        """The emulator's hook: enforce its public IP NAT, load balancers and NSGs (sdn.py)."""
        with self._lock:
            if not self._sdn_ready:
                _run("ip", "netns", "exec", self.fabric_ns, "iptables-restore", "--noflush",
                     stdin=sdn.jump_rules())
                self._sdn_ready = True
            _run("ip", "netns", "exec", self.fabric_ns, "iptables-restore", "--noflush",
                 stdin=sdn.render(policy, internet_if="fi", connected=[ONPREM_CIDR]))
            wanted = set(policy.public_addresses)
            batch = [f"address del {a}/32 dev lo" for a in sorted(self.public_addresses - wanted)]
            batch += [f"address add {a}/32 dev lo" for a in sorted(wanted - self.public_addresses)]
            if batch:
                _run("ip", "-n", self.fabric_ns, "-force", "-batch", "-",
                     stdin="\n".join(batch) + "\n")
            changed = wanted != self.public_addresses
            self.public_addresses = wanted
        if changed:
            self._accept_only_primaries()
        log.info("event=fabric_policy nat=%d balancers=%d guarded=%d", len(policy.nat),
                 len(policy.balancers), len(policy.guarded))

    def routes(self, vm_name: str) -> set[str]:
        """Addresses the fabric currently delivers to a VM (for tests)."""
        fvm = self.vms[vm_name]
        out = _run("ip", "-n", self.fabric_ns, "-4", "route", "show", "dev", fvm.fabric_if)
        return {line.split()[0].removesuffix("/32") for line in out.splitlines()
                if line and not line.startswith("default")}
