"""Containers without Kubernetes on simulated Azure VMs: the standalone agent takes the NIC's
secondary addresses from IMDS; containers started by containerd's ``ctr run --cni`` and by
Docker Engine (``docker run --network azure``) get them. No API server, no operator: an admin
changes the NICs with the raw ``azure-mgmt-network`` client, as the CLI or Terraform would.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.network.models import NetworkInterfaceIPConfiguration

from azure_cni.agent.vm.docker_plugin import DEPARTED_SWEEP_SECONDS, PLUGIN_NAME, DockerRole
from azure_cni.api.settings import AgentSettings
from azure_cni.datapath.names import host_veth_name
from azure_cni_sim.arm import ArmEmulator, VmInfo
from azure_cni_sim.containerd import Containerd
from azure_cni_sim.dockerd import DockerEngine
from azure_cni_sim.procs import wait_for
from azure_cni_sim.standalone import StandaloneNode, StandaloneWorld, ctr_run
from azure_cni_sim.vnet import IMDS, INTERNET_HOST, ONPREM_HOST, WIRESERVER

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REFRESH_SECONDS = 2.0
SECONDARIES = 4


class AdminToken:
    """An admin's own bearer token (``az login``), not any identity of the VMs."""

    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)


class NicAdmin:
    """What an admin does with ``az network nic ip-config create/delete``: GET the NIC, edit
    its ipConfigurations, PUT it back, with the raw SDK."""

    def __init__(self, emulator: ArmEmulator) -> None:
        self.client = NetworkManagementClient(
            AdminToken(emulator.issue_token("admin")),  # type: ignore[arg-type]
            emulator.endpoints()["subscription"], base_url=emulator.arm_url,
            connection_verify=str(emulator.ca_path), polling_interval=0.1)

    @staticmethod
    def _where(vm: VmInfo) -> tuple[str, str]:
        parts = vm.nic_id.split("/")
        return parts[4], parts[8]

    def add(self, vm: VmInfo, address: str | None = None) -> str:
        """Add a secondary ipConfiguration (Dynamic, or Static on ``address``); its address."""
        group, name = self._where(vm)
        nic = self.client.network_interfaces.get(group, name)
        config_name = f"admin-{uuid.uuid4().hex[:6]}"
        nic.ip_configurations.append(NetworkInterfaceIPConfiguration(
            name=config_name, subnet=nic.ip_configurations[0].subnet, primary=False,
            private_ip_allocation_method="Static" if address else "Dynamic",
            private_ip_address=address))
        nic = self.client.network_interfaces.begin_create_or_update(group, name, nic).result()
        (added,) = [c.private_ip_address for c in nic.ip_configurations
                    if c.name == config_name]
        return str(added)

    def remove(self, vm: VmInfo, address: str) -> None:
        group, name = self._where(vm)
        nic = self.client.network_interfaces.get(group, name)
        kept = [c for c in nic.ip_configurations if c.private_ip_address != address]
        assert len(kept) == len(nic.ip_configurations) - 1, f"{address} is not on {name}"
        nic.ip_configurations = kept
        self.client.network_interfaces.begin_create_or_update(group, name, nic).result()


class Vnet:
    """The world, the admin, and one runtime of each kind: containerd on vm0, Docker on vm1."""

    def __init__(self, world: StandaloneWorld) -> None:
        self.world = world
        assert world.emulator is not None
        self.admin = NicAdmin(world.emulator)
        self.vm0, self.vm1 = world.nodes["vm0"], world.nodes["vm1"]
        self.containerd: Containerd = world.containerd("vm0")
        self.docker: DockerEngine = world.docker("vm1")
        self.docker.docker("network", "create", "-d", PLUGIN_NAME, "--ipam-driver", PLUGIN_NAME,
                           "azure")

    def secondaries(self, vm: str) -> list[str]:
        return list(self.world.nic_addresses(vm)[1:])

    def pool(self, node: StandaloneNode) -> list[str]:
        return [a["address"] for a in node.agent_status()["pool"]["addresses"]]

    def assignments(self, node: StandaloneNode) -> dict[str, dict[str, Any]]:
        return {a["address"]: a for a in node.agent_status()["assignments"]}

    def docker_run(self, name: str, *args: str, command: str = "sleep 3600") -> str:
        """``docker run -d --network azure``; the container's address."""
        self.docker.docker("run", "-d", "--name", name, "--network", "azure", *args,
                           self.world.image.name, "-c", command)
        return self.docker.docker("inspect", "-f",
                                  "{{.NetworkSettings.Networks.azure.IPAddress}}",
                                  name).stdout.strip()

    def docker_netns(self, name: str) -> str:
        return f"/proc/{self.docker.pid_of(name)}/ns/net"

    def veths(self, node: StandaloneNode) -> set[str]:
        out = subprocess.run(["ip", "-n", node.netns, "-o", "link"], capture_output=True,
                             text=True, check=True).stdout
        return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
                if ": azv" in line or ": azp" in line}

    def metric(self, node: StandaloneNode, name: str) -> float:
        port = node.agent_settings.get("metricsPort", AgentSettings().metrics_port)
        out = subprocess.run(["ip", "netns", "exec", node.netns, "curl", "-s", "-m", "5",
                              f"http://127.0.0.1:{port}/metrics"], capture_output=True,
                             text=True, check=True).stdout
        values = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines()
                  if line.startswith(name) and not line.startswith("#")]
        return sum(values)


@pytest.fixture(scope="module")
def vnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vnet]:
    world = StandaloneWorld(tmp_path_factory.mktemp("standalone"), vm_count=2,
                            refresh_seconds=REFRESH_SECONDS)
    world.start()
    try:
        admin = NicAdmin(world.emulator)  # type: ignore[arg-type]
        for vm in world.vms.values():
            for _ in range(SECONDARIES):
                admin.add(vm)
        for node in world.nodes.values():
            node.wait_for_status(f"{SECONDARIES} addresses, ready", lambda s: s["ready"] and len(
                s["pool"]["addresses"]) == SECONDARIES)
        yield Vnet(world)
    finally:
        world.stop()


# -- the VNet, from containers of both runtimes ---------------------------------------------------


def test_containers_get_the_nics_addresses_and_reach_the_vnet(vnet: Vnet) -> None:
    world = vnet.world
    ctr = ctr_run(vnet.vm0, vnet.containerd, world.image.name, "web0", "/bin/sh", "-c",
                  "sleep 3600")
    docker_address = vnet.docker_run("web1")
    try:
        ctr_address = vnet.assignments(vnet.vm0)
        assert len(ctr_address) == 1
        (ctr_ip,) = ctr_address
        assert ctr_ip in vnet.secondaries("vm0"), "ctr's container has one of vm0's addresses"
        assert docker_address in vnet.secondaries("vm1"), "Docker's has one of vm1's"
        inside = world.in_netns(ctr.netns, "ip", "-4", "-o", "addr", "show", "eth0").stdout
        assert f"inet {ctr_ip}/32" in inside
        docker_view = vnet.docker.docker("exec", "web1", "ip", "-4", "-o", "addr", "show",
                                         "eth0").stdout
        assert f"inet {docker_address}/32" in docker_view
        # across VMs, both ways, with their own addresses: no NAT, no tunnel on the VNet
        seen = world.capture_on_fabric("vm0", f"icmp and host {docker_address}",
                                       lambda: world.ping(ctr.netns, docker_address))
        assert any(f"IP {ctr_ip} > {docker_address}: ICMP echo request" in line
                   for line in seen), seen
        assert any(f"IP {docker_address} > {ctr_ip}: ICMP echo reply" in line
                   for line in seen), seen
        assert vnet.docker.docker("exec", "web1", "ping", "-c", "1", "-W", "2", ctr_ip,
                                  check=False).returncode == 0
        for netns, own in ((ctr.netns, ctr_ip), (vnet.docker_netns("web1"), docker_address)):
            assert world.http_get(netns, f"http://{ONPREM_HOST}/") == {"seen": own,
                                                                       "host": "onprem"}
        primaries = {vm: info.primary_ip for vm, info in world.vms.items()}
        assert world.http_get(ctr.netns, f"http://{INTERNET_HOST}/") == {
            "seen": primaries["vm0"], "host": "internet"}, "SNAT to vm0's primary address"
        assert world.http_get(vnet.docker_netns("web1"), f"http://{INTERNET_HOST}/") == {
            "seen": primaries["vm1"], "host": "internet"}
        # kept from the wireserver and IMDS, which the VM itself reaches
        for netns in (ctr.netns, vnet.docker_netns("web1")):
            assert world.http_get(netns, f"http://{WIRESERVER}/", timeout=2) is None
            assert world.http_get(netns, f"http://{IMDS}/metadata/instance?api-version="
                                         "2021-02-01", timeout=2) is None
        vm_view = world.http_get(f"/run/netns/{vnet.vm0.netns}", f"http://{WIRESERVER}/")
        assert vm_view is not None and vm_view["host"] == "azure-platform"
        # what an admin sees
        status = subprocess.run([str(Path(sys.executable).with_name("azure-cni")), "status",
                                 "--socket", str(vnet.vm1.socket_path)],
                                capture_output=True, text=True, check=False)
        assert status.returncode == 0, status.stderr
        assert docker_address in status.stdout and "instance metadata" in status.stdout
    finally:
        ctr.remove()
        vnet.docker.docker("rm", "-f", "web1")
    assert vnet.assignments(vnet.vm0) == {} and vnet.assignments(vnet.vm1) == {}, \
        "removing the containers released both addresses"
    assert vnet.veths(vnet.vm0) == set() and vnet.veths(vnet.vm1) == set()


def _detached_ctr(vnet: Vnet, name: str, command: str) -> str:
    """``ctr run -d`` without --cni (nerdctl's way: the network is set up by libcni after);
    the task's network namespace."""
    run = subprocess.run(vnet.vm0.ctr(vnet.containerd, "run", "-d", vnet.world.image.name, name,
                                      "/bin/sh", "-c", command),
                         capture_output=True, text=True, check=False, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    for line in vnet.containerd.ctr("tasks", "ls").stdout.splitlines()[1:]:
        if line.split()[0] == name:
            return f"/proc/{line.split()[1]}/ns/net"
    raise AssertionError(f"no task {name}")


def _remove_detached_ctr(vnet: Vnet, name: str) -> None:
    vnet.containerd.ctr("tasks", "kill", "-s", "SIGKILL", name, check=False)
    wait_for(f"task {name} to stop", lambda: name not in vnet.containerd.ctr(
        "tasks", "ls", check=False).stdout or "STOPPED" in vnet.containerd.ctr(
        "tasks", "ls", check=False).stdout, 30)
    vnet.containerd.ctr("tasks", "rm", name, check=False)
    vnet.containerd.ctr("containers", "rm", name, check=False)


def test_a_published_port_reaches_a_containerd_container_through_portmap(vnet: Vnet) -> None:
    """nerdctl run -p 8080:80 does this: the container by containerd, then libcni with the
    portMappings capability, through our conflist's portmap."""
    world = vnet.world
    primary = world.vms["vm0"].primary_ip
    netns = _detached_ctr(vnet, "published0",
                          "echo hello-from-ctr > /index.html; exec httpd -f -p 80 -h /")
    vnet.docker_run("client0")
    try:
        added = vnet.vm0.cnitool("add", netns, [{"hostPort": 8080, "containerPort": 80,
                                                 "protocol": "tcp"}])
        assert added.returncode == 0, added.stdout + added.stderr
        address = json.loads(added.stdout)["ips"][0]["address"].split("/")[0]
        assert address in vnet.secondaries("vm0")

        def fetch() -> subprocess.CompletedProcess[str]:
            # curl from the machine, in the Docker container's network namespace (busybox's
            # static wget cannot resolve anything and crashes)
            return world.in_netns(vnet.docker_netns("client0"), "curl", "-s", "-m", "3",
                                  f"http://{primary}:8080/")

        assert fetch().stdout.strip() == "hello-from-ctr", "vm0's port 8080 is the container's 80"
        removed = vnet.vm0.cnitool("del", netns)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert address not in vnet.assignments(vnet.vm0), "DEL released the address"
        assert fetch().returncode != 0, "the port is closed again"
    finally:
        vnet.vm0.cnitool("del", netns)
        _remove_detached_ctr(vnet, "published0")
        vnet.docker.docker("rm", "-f", "client0", check=False)


# -- the pool follows the NIC ---------------------------------------------------------------------


def test_an_ipconfig_an_admin_adds_is_used_within_the_refresh_period(vnet: Vnet) -> None:
    added = vnet.admin.add(vnet.world.vms["vm1"])
    vnet.vm1.wait_for_status(f"{added} in the pool", lambda s: added in [
        a["address"] for a in s["pool"]["addresses"]], timeout=3 * REFRESH_SECONDS + 10)
    subnet = vnet.vm1.agent_status()["pool"]["nic"]["subnetCIDR"]
    vnet.docker.docker("network", "create", "-d", PLUGIN_NAME, "--ipam-driver", PLUGIN_NAME,
                       "--subnet", subnet, "fixed")
    try:
        vnet.docker.docker("run", "-d", "--name", "fixed0", "--network", "fixed", "--ip", added,
                           vnet.world.image.name, "-c", "sleep 3600")
        got = vnet.docker.docker("inspect", "-f",
                                 "{{.NetworkSettings.Networks.fixed.IPAddress}}",
                                 "fixed0").stdout.strip()
        assert got == added
        assert vnet.world.ping(f"/run/netns/{vnet.vm0.netns}", added), "the VNet delivers it"
    finally:
        vnet.docker.docker("rm", "-f", "fixed0", check=False)
        vnet.docker.docker("network", "rm", "fixed", check=False)


def test_removing_an_ipconfig_a_container_holds_is_reported_not_silent(vnet: Vnet) -> None:
    world = vnet.world
    vm0_host = f"/run/netns/{vnet.vm0.netns}"
    address = vnet.docker_run("held0")
    try:
        assert world.ping(vm0_host, address)
        vnet.admin.remove(world.vms["vm1"], address)
        status = vnet.vm1.wait_for_status(f"{address} outside the pool", lambda s: s["pool"][
            "outsidePool"] == [address], timeout=3 * REFRESH_SECONDS + 10)
        assert address not in [a["address"] for a in status["pool"]["addresses"]]
        assert status["assignments"][0]["address"] == address, "the container keeps it"
        assert f"event=address_left_pool address={address}" in vnet.vm1.agent_log()
        assert vnet.metric(vnet.vm1, "azure_cni_agent_addresses_outside_pool") == 1
        shown = vnet.docker.docker("exec", "held0", "ip", "-4", "-o", "addr").stdout
        assert f"inet {address}/32" in shown, "its interface is left as it was"
        assert not world.ping(vm0_host, address), "Azure no longer delivers its traffic"
        # the admin puts it back: the container is reachable again and the warning goes
        vnet.admin.add(world.vms["vm1"], address)
        vnet.vm1.wait_for_status("nothing outside the pool",
                                 lambda s: s["pool"]["outsidePool"] == [],
                                 timeout=3 * REFRESH_SECONDS + 10)
        wait_for(f"{address} to answer again", lambda: world.ping(vm0_host, address), 20)
        assert vnet.metric(vnet.vm1, "azure_cni_agent_addresses_outside_pool") == 0
    finally:
        vnet.docker.docker("rm", "-f", "held0", check=False)


# -- the agent's lifecycle ------------------------------------------------------------------------


def test_restarting_the_agents_keeps_every_containers_network(vnet: Vnet) -> None:
    world = vnet.world
    ctr = ctr_run(vnet.vm0, vnet.containerd, world.image.name, "keep0", "/bin/sh", "-c",
                  "sleep 3600")
    docker_address = vnet.docker_run("keep1")
    try:
        before = {n.name: (vnet.assignments(n), vnet.veths(n)) for n in (vnet.vm0, vnet.vm1)}
        for node in (vnet.vm0, vnet.vm1):
            assert node.stop_agent() == 0
        assert world.ping(ctr.netns, docker_address), "the datapath does not need the agent"
        for node in (vnet.vm0, vnet.vm1):
            node.start_agent()
            node.wait_ready()
        after = {n.name: (vnet.assignments(n), vnet.veths(n)) for n in (vnet.vm0, vnet.vm1)}
        assert after == before
        assert world.ping(ctr.netns, docker_address)
        assert vnet.docker.docker("exec", "keep1", "ping", "-c", "1", "-W", "2",
                                  world.vms["vm0"].primary_ip, check=False).returncode == 0
    finally:
        ctr.remove()
        vnet.docker.docker("rm", "-f", "keep1", check=False)
    assert vnet.assignments(vnet.vm0) == {} and vnet.assignments(vnet.vm1) == {}
    assert vnet.veths(vnet.vm0) == set() and vnet.veths(vnet.vm1) == set()


def test_the_agent_down_while_docker_removes_a_container_leaks_nothing(vnet: Vnet) -> None:
    address = vnet.docker_run("gone0")
    assert address in vnet.assignments(vnet.vm1)
    vnet.vm1.stop_agent()
    try:
        # Docker retries the plugin for about 30 s per call, then removes the container anyway
        removed = vnet.docker.docker("rm", "-f", "gone0", timeout=400)
        assert removed.returncode == 0
    finally:
        vnet.vm1.start_agent()
        vnet.vm1.wait_ready()
    vnet.vm1.wait_for_status(f"{address} freed", lambda s: s["assignments"] == [])
    assert "event=docker_departed_endpoint_freed endpoint=" in vnet.vm1.agent_log()
    assert vnet.veths(vnet.vm1) == set(), "the veth pair Docker moved back to the VM is gone"
    again = vnet.docker_run("back0")
    vnet.docker.docker("rm", "-f", "back0")
    assert again in vnet.secondaries("vm1")


def test_what_docker_abandoned_before_join_is_freed_and_running_containers_keep_theirs(
        vnet: Vnet) -> None:
    world = vnet.world
    vm0_host = f"/run/netns/{vnet.vm0.netns}"
    live = vnet.docker_run("live0")
    endpoint = vnet.docker.docker("inspect", "-f",
                                  "{{.NetworkSettings.Networks.azure.EndpointID}}",
                                  "live0").stdout.strip()
    network = vnet.docker.docker("network", "inspect", "-f", "{{.Id}}", "azure").stdout.strip()
    try:
        # what a dockerd killed while starting two containers leaves (these calls reached
        # the agent, the rest never came): an address only the IPAM holds, and an endpoint
        # that never reached Join, with its veth pair
        status, handle = _plugin_call(vnet.vm1, "IpamDriver.RequestAddress",
                                      {"PoolID": "azure-cni"})
        assert status == 200, handle
        status, unjoined = _plugin_call(vnet.vm1, "IpamDriver.RequestAddress",
                                        {"PoolID": "azure-cni"})
        assert status == 200, unjoined
        status, answer = _plugin_call(vnet.vm1, "NetworkDriver.CreateEndpoint", {
            "NetworkID": network, "EndpointID": "f" * 64,
            "Interface": {"Address": unjoined["Address"]}})
        assert status == 200, answer
        leftovers = {handle["Address"].split("/")[0], unjoined["Address"].split("/")[0]}
        assert set(vnet.assignments(vnet.vm1)) == {live, *leftovers}
        live_veth = host_veth_name(endpoint, DockerRole.ENDPOINT)
        assert vnet.veths(vnet.vm1) > {live_veth}, "the abandoned endpoint's pair is there"
        # and an agent outage on top: the restarted agent only notes them at start (Docker
        # could still be retrying its next call), and frees them at its next sweep
        vnet.vm1.stop_agent()
        vnet.vm1.start_agent()
        vnet.vm1.wait_ready()
        vnet.vm1.wait_for_status("only the running container's address held", lambda s: {
            a["address"] for a in s["assignments"]} == {live},
            timeout=2 * DEPARTED_SWEEP_SECONDS + 30)
        log = vnet.vm1.agent_log()
        assert "event=docker_stranded_address_freed" in log
        assert "event=docker_stranded_endpoint_freed" in log
        assert vnet.veths(vnet.vm1) == {live_veth}, "the abandoned pair is gone, not the live"
        assert world.ping(vm0_host, live), "the running container still answers"
        assert vnet.docker.docker("exec", "live0", "ping", "-c", "1", "-W", "2",
                                  world.vms["vm0"].primary_ip, check=False).returncode == 0
    finally:
        vnet.docker.docker("rm", "-f", "live0", check=False)
    vnet.vm1.wait_for_status("nothing held", lambda s: s["assignments"] == [])


# -- bad input: each a clear error, nothing leaked ------------------------------------------------


def _plugin_call(node: StandaloneNode, method: str, body: dict[str, Any]
                 ) -> tuple[int, dict[str, Any]]:
    """One request to the agent's Docker plugin, as dockerd sends it."""
    connection = http.client.HTTPConnection("plugin", timeout=10)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(node.docker_plugin_dir / f"{PLUGIN_NAME}.sock"))
    connection.sock = sock
    try:
        connection.request("POST", f"/{method}", body=json.dumps(body),
                           headers={"Accept": "application/vnd.docker.plugins.v1.2+json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_imds_unreachable_is_a_clear_error_and_nothing_leaks(vnet: Vnet) -> None:
    world = vnet.world
    world.stop_relay()
    try:
        vnet.vm1.stop_agent()
        vnet.vm1.start_agent()
        status = vnet.vm1.wait_for_status("PoolUnavailable",
                                          lambda s: s["reason"] == "PoolUnavailable")
        assert not status["ready"]
        assert f"the instance metadata service at http://{IMDS}/metadata/instance/network is " \
               "unreachable" in status["message"]
        refused = vnet.docker.docker("run", "--rm", "--network", "azure", world.image.name,
                                     "-c", "true", check=False)
        assert refused.returncode != 0
        assert "this VM's addresses are not known yet" in refused.stderr, refused.stderr
        assert "unreachable" in refused.stderr
        # a VM whose agent knew its pool keeps serving it, and says what is wrong
        status = vnet.vm0.wait_for_status("the trouble",
                                          lambda s: "unreachable" in s["poolSourceProblem"])
        assert status["ready"] and len(status["pool"]["addresses"]) == SECONDARIES
        assert vnet.metric(vnet.vm0, 'azure_cni_agent_instance_metadata_requests_total'
                                     '{result="unreachable"}') > 0
        assert vnet.assignments(vnet.vm1) == {} and vnet.veths(vnet.vm1) == set()
    finally:
        world.start_relay()
    vnet.vm1.wait_ready()
    vnet.vm0.wait_for_status("the trouble gone", lambda s: s["poolSourceProblem"] == "")


def test_imds_throttling_is_reported_and_the_pool_kept(vnet: Vnet) -> None:
    emulator = vnet.world.emulator
    assert emulator is not None
    emulator.configure(imds_rps=0.05)  # another program on the VMs uses the 5 requests/s up
    try:
        status = vnet.vm0.wait_for_status("a 429", lambda s: "(429" in s["poolSourceProblem"])
        assert status["ready"] and len(status["pool"]["addresses"]) == SECONDARIES
        assert "keeping the last pool" in status["poolSourceProblem"]
        assert vnet.metric(vnet.vm0, 'azure_cni_agent_instance_metadata_requests_total'
                                     '{result="throttled"}') > 0
        ctr = ctr_run(vnet.vm0, vnet.containerd, vnet.world.image.name, "throttled0",
                      "/bin/sh", "-c", "sleep 3600")
        assert len(vnet.assignments(vnet.vm0)) == 1, "containers still start"
        ctr.remove()
    finally:
        emulator.configure(imds_rps=5.0)
    vnet.vm0.wait_for_status("the trouble gone", lambda s: s["poolSourceProblem"] == "")


def test_a_malformed_imds_document_is_refused_and_changes_nothing(vnet: Vnet) -> None:
    emulator = vnet.world.emulator
    assert emulator is not None
    before = vnet.pool(vnet.vm0)
    emulator.inject_imds_fault("vm0", "instance/network", 200, '{"interface": [{"ipv4": {',
                               count=1000)
    try:
        status = vnet.vm0.wait_for_status("the complaint",
                                          lambda s: "not JSON" in s["poolSourceProblem"])
        assert status["ready"] and vnet.pool(vnet.vm0) == before
        assert vnet.metric(vnet.vm0, 'azure_cni_agent_instance_metadata_requests_total'
                                     '{result="malformed"}') > 0
    finally:
        emulator.clear_faults()
    vnet.vm0.wait_for_status("the trouble gone", lambda s: s["poolSourceProblem"] == "")
    assert vnet.pool(vnet.vm0) == before and vnet.assignments(vnet.vm0) == {}


def test_docker_requests_the_plugin_cannot_serve_are_refused_clearly(vnet: Vnet) -> None:
    docker = vnet.docker
    before = (vnet.assignments(vnet.vm1), vnet.veths(vnet.vm1))
    wrong = docker.docker("network", "create", "-d", PLUGIN_NAME, "default-ipam", check=False)
    assert wrong.returncode != 0 and "needs --ipam-driver azure-cni" in wrong.stderr
    free = next(a for a in vnet.pool(vnet.vm1) if a not in vnet.assignments(vnet.vm1))
    status, answer = _plugin_call(vnet.vm1, "NetworkDriver.CreateEndpoint", {
        "NetworkID": "f" * 64, "EndpointID": "e" * 64, "Interface": {"Address": f"{free}/32"},
        "Options": {}})
    assert status == 400 and answer["Err"].startswith("unknown network ffffffffffff")
    status, answer = _plugin_call(vnet.vm1, "NetworkDriver.Join", {
        "NetworkID": "f" * 64, "EndpointID": "e" * 64, "SandboxKey": "/nonexistent"})
    assert status == 400 and "unknown network" in answer["Err"]
    subnet = vnet.vm1.agent_status()["pool"]["nic"]["subnetCIDR"]
    outside_subnet = docker.docker("network", "create", "-d", PLUGIN_NAME, "--ipam-driver",
                                   PLUGIN_NAME, "--subnet", "203.0.113.0/24", "elsewhere",
                                   check=False)
    assert outside_subnet.returncode != 0
    assert f"is not this VM's subnet {subnet}" in outside_subnet.stderr
    docker.docker("network", "create", "-d", PLUGIN_NAME, "--ipam-driver", PLUGIN_NAME,
                  "--subnet", subnet, "fixed-bad")
    try:
        stranger = str(ipaddress.ip_network(subnet)[-2])  # in the subnet, not on the NIC
        refused = docker.docker("run", "--rm", "--network", "fixed-bad", "--ip", stranger,
                                vnet.world.image.name, "-c", "true", check=False)
        assert refused.returncode != 0
        assert f"{stranger} is not a secondary address of this VM's NIC" in refused.stderr
    finally:
        docker.docker("network", "rm", "fixed-bad", check=False)
    assert (vnet.assignments(vnet.vm1), vnet.veths(vnet.vm1)) == before
