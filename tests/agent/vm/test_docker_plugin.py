"""Docker's network and IPAM plugin over its unix socket, as dockerd calls it, against the
real store and allocator and the in-memory datapath (the real one is in e2e/)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from azure_cni.agent.allocator import Allocator
from azure_cni.agent.attachments import Attachments
from azure_cni.agent.vm.docker_plugin import ANY_POOL, POOL_ID, DockerPlugin, DockerRole
from azure_cni.agent.vm.imds_source import NicAddresses, pool_from_nic
from azure_cni.datapath.memory import InMemoryDatapath
from azure_cni.datapath.names import handover_name, host_veth_name

ADDRESSES = ("198.18.0.5", "198.18.0.6", "198.18.0.7")
SUBNET = "198.18.0.0/22"
NETWORK = "n" * 64
ENDPOINT = "e" * 64


class Docker:
    """dockerd's side: POSTs to the plugin's socket."""

    def __init__(self, plugin: DockerPlugin, allocator: Allocator,
                 datapath: InMemoryDatapath) -> None:
        self.plugin, self.allocator, self.datapath = plugin, allocator, datapath

    async def call(self, method: str, body: Any = None, raw: bytes | None = None
                   ) -> tuple[int, dict[str, Any]]:
        connector = aiohttp.UnixConnector(path=str(self.plugin.socket_path))
        async with aiohttp.ClientSession(connector=connector) as session, session.post(
                f"http://plugin/{method}",
                data=raw if raw is not None else json.dumps(body or {})) as response:
            return response.status, await response.json(content_type=None)

    async def ok(self, method: str, body: Any = None) -> dict[str, Any]:
        status, answer = await self.call(method, body)
        assert status == 200, answer
        return answer

    async def held(self) -> dict[str, str]:
        return {a.address: a.key.ifname for a in await self.allocator.assignments()}

    async def container(self, endpoint: str = ENDPOINT) -> str:
        """RequestAddress, CreateEndpoint and Join for one container; its address."""
        address = (await self.ok("IpamDriver.RequestAddress", {"PoolID": POOL_ID}))["Address"]
        await self.ok("NetworkDriver.CreateEndpoint", {
            "NetworkID": NETWORK, "EndpointID": endpoint, "Interface": {"Address": address}})
        await self.ok("NetworkDriver.Join", {"NetworkID": NETWORK, "EndpointID": endpoint,
                                             "SandboxKey": f"/var/run/docker/netns/{endpoint}"})
        self.datapath.move_pod_side(handover_name(endpoint, DockerRole.ENDPOINT), to_host=False)
        return str(address).split("/")[0]


@pytest.fixture
async def docker(tmp_path: Path) -> AsyncIterator[Docker]:
    allocator = Allocator(tmp_path / "state" / "ipam.db", cooldown_seconds=30)
    await allocator.open()
    await allocator.set_pool(pool_from_nic("vm0", NicAddresses("000D3A000001", "198.18.0.4",
                                                               SUBNET, ADDRESSES)))
    datapath = InMemoryDatapath()
    netlink = ThreadPoolExecutor(2)

    def plugin() -> DockerPlugin:
        return DockerPlugin(socket_path=tmp_path / "plugins" / "azure-cni.sock",
                            state_dir=tmp_path / "state", attachments=Attachments(
                                allocator=allocator, datapath=datapath, netlink=netlink,
                                mtu=1400), datapath=datapath, add_wait_seconds=0)

    d = Docker(plugin(), allocator, datapath)
    d.new_plugin = plugin  # type: ignore[attr-defined]
    await d.plugin.start()
    try:
        await d.ok("NetworkDriver.CreateNetwork", {
            "NetworkID": NETWORK, "Options": {},
            "IPv4Data": [{"AddressSpace": "azure-cni", "Pool": ANY_POOL,
                          "Gateway": "169.254.1.1/32"}]})
        yield d
    finally:
        await d.plugin.stop()
        await allocator.close()
        netlink.shutdown()


async def test_the_handshake_names_both_drivers(docker: Docker) -> None:
    assert await docker.ok("Plugin.Activate") == {"Implements": ["NetworkDriver",
                                                                 "IpamDriver"]}
    pool = await docker.ok("IpamDriver.RequestPool", {"AddressSpace": "azure-cni",
                                                      "Pool": "", "V6": False})
    assert pool == {"PoolID": POOL_ID, "Pool": ANY_POOL,
                    "Data": {"com.docker.network.gateway": "169.254.1.1/32"}}
    given = await docker.ok("IpamDriver.RequestPool", {"AddressSpace": "azure-cni",
                                                       "Pool": SUBNET})
    assert given["Pool"] == SUBNET
    status, _ = await docker.call("NetworkDriver.AllocateNetwork", {})
    assert status == 404, "libnetwork reads 404 as not implemented"


async def test_a_container_from_request_address_to_release(docker: Docker) -> None:
    address = (await docker.ok("IpamDriver.RequestAddress", {"PoolID": POOL_ID}))["Address"]
    assert address == "198.18.0.5/32"
    created = await docker.ok("NetworkDriver.CreateEndpoint", {
        "NetworkID": NETWORK, "EndpointID": ENDPOINT, "Interface": {"Address": address}})
    mac = created["Interface"]["MacAddress"]
    veth = host_veth_name(ENDPOINT, DockerRole.ENDPOINT)
    pod = docker.datapath.pairs[veth]
    peer = handover_name(ENDPOINT, DockerRole.ENDPOINT)
    assert (pod.netns, pod.ifname, pod.address, pod.pod_mac, pod.mtu) == (
        "", peer, "198.18.0.5", mac, 1400), "the pod side waits on the host for libnetwork"
    joined = await docker.ok("NetworkDriver.Join", {
        "NetworkID": NETWORK, "EndpointID": ENDPOINT, "SandboxKey": "/var/run/docker/netns/x"})
    assert joined == {"InterfaceName": {"SrcName": peer, "DstPrefix": "eth"},
                      "Gateway": "169.254.1.1",
                      "StaticRoutes": [{"Destination": "169.254.1.1/32", "RouteType": 1}]}
    assert await docker.held() == {"198.18.0.5": DockerRole.ENDPOINT}
    await docker.ok("NetworkDriver.Leave", {"NetworkID": NETWORK, "EndpointID": ENDPOINT})
    await docker.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NETWORK,
                                                     "EndpointID": ENDPOINT})
    assert veth not in docker.datapath.pairs and peer not in docker.datapath.on_host
    await docker.ok("IpamDriver.ReleaseAddress", {"PoolID": POOL_ID, "Address": "198.18.0.5"})
    assert await docker.held() == {}
    # the freed address cools down; the next container gets another one
    assert (await docker.ok("IpamDriver.RequestAddress", {"PoolID": POOL_ID}))["Address"] \
        == "198.18.0.6/32"
    # retries are harmless
    await docker.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NETWORK,
                                                     "EndpointID": ENDPOINT})
    await docker.ok("IpamDriver.ReleaseAddress", {"PoolID": POOL_ID, "Address": "198.18.0.5"})


async def test_networks_survive_a_restarted_plugin(docker: Docker) -> None:
    await docker.plugin.stop()
    docker.plugin = docker.new_plugin()  # type: ignore[attr-defined]
    await docker.plugin.start()
    assert await docker.container() == "198.18.0.5"


async def test_a_fixed_address_must_be_on_the_nic(docker: Docker) -> None:
    status, answer = await docker.call("IpamDriver.RequestAddress",
                                       {"PoolID": POOL_ID, "Address": "198.18.1.200"})
    assert status == 400
    assert answer["Err"] == ("198.18.1.200 is not a secondary address of this VM's NIC, so "
                             "Azure would not deliver it; the NIC's secondary addresses are: "
                             "198.18.0.5, 198.18.0.6, 198.18.0.7")
    fixed = await docker.ok("IpamDriver.RequestAddress",
                            {"PoolID": POOL_ID, "Address": "198.18.0.7"})
    assert fixed["Address"] == "198.18.0.7/32"
    status, answer = await docker.call("IpamDriver.RequestAddress",
                                       {"PoolID": POOL_ID, "Address": "198.18.0.7"})
    assert status == 400 and answer["Err"] == "198.18.0.7 is already used (docker)"
    assert await docker.held() == {"198.18.0.7": "docker:ipam"}


@pytest.mark.parametrize(("method", "body", "message"), [
    ("NetworkDriver.CreateEndpoint",
     {"NetworkID": "x" * 64, "EndpointID": ENDPOINT, "Interface": {"Address": "198.18.0.5/32"}},
     "unknown network xxxxxxxxxxxx"),
    ("NetworkDriver.Join", {"NetworkID": "x" * 64, "EndpointID": ENDPOINT, "SandboxKey": "/s"},
     "unknown network xxxxxxxxxxxx"),
    ("NetworkDriver.Join", {"NetworkID": NETWORK, "EndpointID": "y" * 64, "SandboxKey": "/s"},
     "unknown endpoint yyyyyyyyyyyy"),
    ("NetworkDriver.CreateEndpoint",
     {"NetworkID": NETWORK, "EndpointID": ENDPOINT, "Interface": {"Address": "198.18.0.5/32"}},
     "198.18.0.5 was not handed out by the azure-cni IPAM driver"),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": NETWORK, "EndpointID": ENDPOINT},
     "the endpoint has no IPv4 address"),
    ("NetworkDriver.CreateNetwork",
     {"NetworkID": "z" * 64, "IPv4Data": [{"AddressSpace": "LocalDefault",
                                           "Pool": "172.18.0.0/16"}]},
     "an azure-cni network needs --ipam-driver azure-cni"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": "z" * 64, "IPv6Data": [{"Pool": "fd00::/64"}]},
     "IPv6 is not supported"),
    ("IpamDriver.RequestPool", {"AddressSpace": "azure-cni", "Pool": "10.0.0.0/16"},
     "--subnet 10.0.0.0/16 is not this VM's subnet 198.18.0.0/22"),
    ("IpamDriver.RequestPool", {"AddressSpace": "azure-cni", "V6": True},
     "IPv6 is not supported"),
    ("IpamDriver.RequestAddress", {"PoolID": "default/172.17.0.0/16"}, "unknown pool"),
    ("IpamDriver.RequestAddress",
     {"PoolID": POOL_ID, "Options": {"RequestAddressType": "com.docker.network.gateway"}},
     "the gateway of an azure-cni network is 169.254.1.1"),
    ("NetworkDriver.ProgramExternalConnectivity",
     {"NetworkID": NETWORK, "EndpointID": ENDPOINT,
      "Options": {"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 8080}]}},
     "publishing ports (-p) is not supported"),
])
async def test_requests_it_cannot_serve_are_refused_and_change_nothing(
        docker: Docker, method: str, body: dict[str, Any], message: str) -> None:
    status, answer = await docker.call(method, body)
    assert status == 400
    assert message in answer["Err"]
    assert await docker.held() == {} and docker.datapath.pairs == {}


async def test_an_undecodable_request_is_a_400(docker: Docker) -> None:
    status, answer = await docker.call("IpamDriver.RequestAddress", raw=b"{not json")
    assert status == 400 and "not valid JSON" in answer["Err"]


async def test_the_address_of_a_live_endpoint_is_not_released(docker: Docker) -> None:
    address = await docker.container()
    status, answer = await docker.call("IpamDriver.ReleaseAddress",
                                       {"PoolID": POOL_ID, "Address": address})
    assert status == 400 and "still used by endpoint eeeeeeeeeeee" in answer["Err"]
    assert await docker.held() == {address: DockerRole.ENDPOINT}


async def test_an_endpoint_docker_gave_up_on_is_freed_after_two_sweeps(docker: Docker) -> None:
    address = await docker.container()
    assert await docker.plugin.free_departed_endpoints() == []
    # the agent was down: Leave and DeleteEndpoint never came, the pod side is back
    docker.datapath.move_pod_side(handover_name(ENDPOINT, DockerRole.ENDPOINT), to_host=True)
    assert await docker.plugin.free_departed_endpoints() == [], "first sighting: wait"
    (freed,) = await docker.plugin.free_departed_endpoints()
    assert freed.address == address
    assert await docker.held() == {} and docker.datapath.pairs == {}


async def test_at_start_a_departed_endpoint_is_freed_at_once(docker: Docker) -> None:
    await docker.container()
    await docker.plugin.stop()
    docker.datapath.move_pod_side(handover_name(ENDPOINT, DockerRole.ENDPOINT), to_host=True)
    docker.plugin = docker.new_plugin()  # type: ignore[attr-defined]
    await docker.plugin.start()
    assert await docker.held() == {}


async def test_an_endpoint_whose_join_comes_before_the_next_sweep_is_kept(
        docker: Docker) -> None:
    address = (await docker.ok("IpamDriver.RequestAddress", {"PoolID": POOL_ID}))["Address"]
    await docker.ok("NetworkDriver.CreateEndpoint", {
        "NetworkID": NETWORK, "EndpointID": ENDPOINT, "Interface": {"Address": address}})
    assert await docker.plugin.free_departed_endpoints() == []
    await docker.ok("NetworkDriver.Join", {"NetworkID": NETWORK, "EndpointID": ENDPOINT,
                                           "SandboxKey": f"/var/run/docker/netns/{ENDPOINT}"})
    docker.datapath.move_pod_side(handover_name(ENDPOINT, DockerRole.ENDPOINT), to_host=False)
    for _ in range(2):
        assert await docker.plugin.free_departed_endpoints() == []
    assert await docker.held() == {"198.18.0.5": DockerRole.ENDPOINT}


async def stranded(docker: Docker) -> tuple[str, str]:
    """What a dockerd killed in the middle of two ``docker run`` leaves behind (or one whose
    rollback calls found the agent down): an address only an IPAM handle holds, and an
    endpoint that never reached Join, with its veth pair. Their addresses."""
    handle = (await docker.ok("IpamDriver.RequestAddress", {"PoolID": POOL_ID}))["Address"]
    address = (await docker.ok("IpamDriver.RequestAddress", {"PoolID": POOL_ID}))["Address"]
    await docker.ok("NetworkDriver.CreateEndpoint", {
        "NetworkID": NETWORK, "EndpointID": "f" * 64, "Interface": {"Address": address}})
    return handle.split("/")[0], address.split("/")[0]


async def test_addresses_docker_abandoned_before_join_are_freed_after_two_sweeps(
        docker: Docker) -> None:
    live = await docker.container()
    handle, unjoined = await stranded(docker)
    veth = host_veth_name("f" * 64, DockerRole.ENDPOINT)
    assert veth in docker.datapath.pairs
    # the agent restarts (an outage): at start it only notes them, Docker may still be
    # retrying its next call for them into the new agent
    await docker.plugin.stop()
    docker.plugin = docker.new_plugin()  # type: ignore[attr-defined]
    await docker.plugin.start()
    assert await docker.held() == {live: DockerRole.ENDPOINT, handle: DockerRole.IPAM,
                                   unjoined: DockerRole.ENDPOINT}
    freed = await docker.plugin.free_departed_endpoints()
    assert sorted(a.address for a in freed) == sorted([handle, unjoined])
    assert await docker.held() == {live: DockerRole.ENDPOINT}, "the live container keeps its own"
    assert list(docker.datapath.pairs) == [host_veth_name(ENDPOINT, DockerRole.ENDPOINT)]
    # Docker's late calls for them are harmless, and their addresses serve again
    await docker.ok("IpamDriver.ReleaseAddress", {"PoolID": POOL_ID, "Address": handle})
    status, answer = await docker.call("NetworkDriver.Join", {
        "NetworkID": NETWORK, "EndpointID": "f" * 64, "SandboxKey": "/var/run/docker/netns/f"})
    assert status == 400 and "unknown endpoint" in answer["Err"]
    usage = await docker.allocator.usage()
    assert (usage.used, usage.cooling) == (1, 2), "freed, with the usual cooldown"


async def test_an_address_docker_reserves_for_a_network_is_never_swept(
        docker: Docker) -> None:
    """``docker network create --aux-address``: libnetwork requests it before the network
    and holds it, with no endpoint, for as long as the network exists."""
    aux = (await docker.ok("IpamDriver.RequestAddress",
                           {"PoolID": POOL_ID, "Address": "198.18.0.7"}))["Address"]
    await docker.ok("NetworkDriver.CreateNetwork", {
        "NetworkID": "a" * 64, "Options": {},
        "IPv4Data": [{"AddressSpace": "azure-cni", "Pool": ANY_POOL,
                      "Gateway": "169.254.1.1/32", "AuxAddresses": {"router": aux}}]})
    await docker.plugin.stop()
    docker.plugin = docker.new_plugin()  # type: ignore[attr-defined]
    await docker.plugin.start()
    for _ in range(3):
        assert await docker.plugin.free_departed_endpoints() == []
    assert await docker.held() == {"198.18.0.7": DockerRole.IPAM}
    # the network goes (libnetwork releases it then); a handle left after that is swept
    await docker.ok("NetworkDriver.DeleteNetwork", {"NetworkID": "a" * 64})
    await docker.plugin.free_departed_endpoints()
    assert [a.address for a in await docker.plugin.free_departed_endpoints()] == ["198.18.0.7"]


async def test_handles_are_kept_while_a_network_may_have_unrecorded_reservations(
        docker: Docker, tmp_path: Path) -> None:
    """A network recorded before the agent kept its reserved addresses: a handle may be one
    of them, so only endpoints are swept until that network is created again."""
    await docker.plugin.stop()
    (tmp_path / "state" / "docker-networks.json").write_text(json.dumps(
        {"networks": {NETWORK: {"pool": ANY_POOL}}}))
    docker.plugin = docker.new_plugin()  # type: ignore[attr-defined]
    await docker.plugin.start()
    handle, unjoined = await stranded(docker)
    await docker.plugin.free_departed_endpoints()
    assert [a.address for a in await docker.plugin.free_departed_endpoints()] == [unjoined]
    assert await docker.held() == {handle: DockerRole.IPAM}
