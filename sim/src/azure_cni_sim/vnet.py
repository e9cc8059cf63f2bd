"""A VNet fabric made of network namespaces, programmed the way Azure's SDN is.

Layout (every box is a network namespace the simulation creates and deletes)::

        VM netns (eth0: primary/prefix, default via .1)   ... one per simulated VM
              |  veth                       control plane netns (its own subnet, same way)
        fabric netns  -- the SDN: a /32 route per address of each NIC, proxy ARP, rp_filter
           |        |        \\
        onprem    internet    168.63.129.16 / 169.254.169.254 on the fabric's own loopback
     198.19.0.10  203.0.113.10 (+ .20: Azure Resource Manager's public address)

An address reaches a VM only while it is an ipConfiguration of that VM's NIC: the emulator's
NIC-change hook adds or removes the fabric's /32 route, and strict reverse-path filtering drops
traffic a VM sends from an address its NIC does not hold (Azure drops it too). The internet
host accepts packets only from the VMs' primary addresses (Azure gives outbound connectivity
to the primary ipConfiguration only) and from public IPs, so pods reach it through the agent's
SNAT or with a public IP of their own. Public IPs, load balancers and NSGs are ``sdn.py``'s,
programmed from the emulator's policy hook (``on_policy``).

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
class FabricVM:
    name: str
    netns: str
    nic_id: str
    primary_ip: str
    fabric_if: str
    addresses: set[str] = field(default_factory=set)


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
        rules += [f"-A INPUT -s {vm.primary_ip}/32 -m comment --comment \"VM {vm.name} primary\""
                  " -j ACCEPT" for vm in self.vms.values()]
        # a pod with a public IP reaches the internet from it (the fabric's 1:1 NAT)
        rules += [f"-A INPUT -s {a}/32 -m comment --comment \"public IP\" -j ACCEPT"
                  for a in sorted(self.public_addresses)]
        rules.append("COMMIT")
        _run("ip", "netns", "exec", self.internet_ns, "iptables-restore", stdin="\n".join(rules)
             + "\n")

    # -- VMs and their NICs ----------------------------------------------------------------

    def add_vm(self, vm: VmInfo, secondary: Iterable[str] = ()) -> FabricVM:
        """A netns for the VM with ``eth0`` on the fabric; routes for its NIC's addresses."""
        index = len(self.vms)
        fvm = FabricVM(vm.name, f"{self.prefix}-{vm.name}", vm.nic_id, vm.primary_ip,
                       f"fv{index}")
        self._plug(fvm.netns, fvm.fabric_if, f"{vm.primary_ip}/{self.prefixlen}", self.gateway)
        with self._lock:
            self.vms[vm.name] = fvm
        self._program(fvm, {vm.primary_ip, *secondary})
        self._accept_only_primaries()
        return fvm

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

    def _plug(self, netns: str, fabric_if: str, interface: str, gateway: str) -> None:
        """``netns`` with ``eth0`` (``interface``) on a link to the fabric, default via
        ``gateway``; the fabric side answers ARP for the gateway and (proxy ARP) every address
        it routes."""
        self._netns(netns)
        _run("ip", "link", "add", fabric_if, "netns", self.fabric_ns, "type", "veth",
             "peer", "vmeth", "netns", netns)
        _run("ip", "-n", netns, "link", "set", "vmeth", "name", "eth0")
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
            fvm = next((v for v in self.vms.values() if v.nic_id.lower() == nic_id.lower()),
                       None)
        if fvm is None:
            return
        self._program(fvm, set(new))

    def _program(self, fvm: FabricVM, addresses: set[str]) -> None:
        with self._lock:
            gone = fvm.addresses - addresses
            added = addresses - fvm.addresses
            fvm.addresses = set(addresses)
        # The SDN maps an address to the NIC, not to an ARP answer: secondary addresses are
        # sent to the NIC's MAC, i.e. routed via the primary address (which eth0 answers for).
        # A block (``<address>/<length>``, an ipConfiguration with a prefix) is one route.
        def route(a: str) -> str:
            via = "" if a == fvm.primary_ip else f" via {fvm.primary_ip}"
            return f"{_prefix(a)}{via} dev {fvm.fabric_if}"

        batch = [f"route del {_prefix(a)} dev {fvm.fabric_if}" for a in sorted(gone)]
        batch += [f"route replace {route(a)}" for a in sorted(added, key=lambda a: (
            a != fvm.primary_ip, a))]
        if batch:
            _run("ip", "-n", self.fabric_ns, "-force", "-batch", "-", stdin="\n".join(batch) + "\n")
            # forget conntrack state of removed addresses, as the SDN forgets its flows
            for address in gone:
                network = ipaddress.IPv4Network(_prefix(address))
                with contextlib.suppress(FabricError):
                    _run("ip", "netns", "exec", self.fabric_ns, "conntrack", "-D", "-s",
                         str(network.network_address), "--mask-src", str(network.netmask))
            log.info("event=fabric_programmed vm=%s added=%d removed=%d", fvm.name, len(added),
                     len(gone))

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
