"""Docker Engine's network and IPAM plugin ``azure-cni``, served by a standalone agent.

    docker network create -d azure-cni --ipam-driver azure-cni azure
    docker run --network azure IMAGE

Docker's libnetwork talks to "remote" drivers in JSON over HTTP on a unix socket it finds in
``/run/docker/plugins/`` (``POST /Plugin.Activate``, ``/IpamDriver.*``,
``/NetworkDriver.*``). A container's address and datapath are the agent's, as for a pod:

1. ``IpamDriver.RequestAddress``: an address of the pool (or the one ``--ip`` names) is
   recorded for a fresh IPAM handle (ifname ``DockerRole.IPAM``) and answered as a /32.
2. ``NetworkDriver.CreateEndpoint``: the address moves to the endpoint (container id = the
   endpoint ID, ifname ``DockerRole.ENDPOINT``) and the attachment service builds its pair:
   the host side as for every pod, the pod side left on the host under a temporary name.
3. ``NetworkDriver.Join``: the answer names that interface; libnetwork moves it into the
   container, renames it ``eth0`` and gives it the address, a connected route to 169.254.1.1
   and ``default via 169.254.1.1`` (the host side answers ARP for the gateway).
4. ``Leave``; ``DeleteEndpoint`` (the pair goes, the address goes back to an IPAM handle);
   ``ReleaseAddress`` (the address is released, with the usual cooldown).

Neither ":" nor the handles ever appear in a CNI request, so CNI verbs never touch these
attachments. If the agent is down while Docker removes a container, Docker gives up on the
plugin (after ~15 s of retries per call), moves the pod side back to the host and removes the
container; the address stays recorded until the agent finds that (at start and every
minute, ``free_departed_endpoints``) and frees it. The same sweep frees what Docker left
before Join (a dockerd that died in the middle of starting a container, or whose rollback
calls found the agent down): an address only an IPAM handle holds, and an endpoint that never
joined a sandbox. Networks created with the driver, and the addresses each reserves with
``--aux-address``, are remembered in ``<stateDir>/docker-networks.json``, because Docker does
not tell a restarted plugin about networks it already has.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from azure_cni.agent.attachments import Attachments, Datapath
from azure_cni.agent.install import write_atomically
from azure_cni.agent.server import bind_socket
from azure_cni.aio.periodic import every
from azure_cni.api.attachment import AttachmentKey
from azure_cni.datapath.names import POD_GATEWAY, handover_name, host_veth_name
from azure_cni.ipam.store import Assignment

log = logging.getLogger(__name__)

PLUGIN_NAME = "azure-cni"
ADDRESS_SPACE = "azure-cni"
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
#: libnetwork's labels (netlabel) that matter here
GATEWAY_LABEL = "com.docker.network.gateway"
PORTMAP_LABEL = "com.docker.network.portmap"
REQUEST_ADDRESS_TYPE = "RequestAddressType"
#: libnetwork's route types: 0 through a next hop, 1 connected
ROUTE_CONNECTED = 1
DEPARTED_SWEEP_SECONDS = 60.0
NETWORKS_FILE = "docker-networks.json"


class DockerRole(StrEnum):
    """The ifnames of the attachments this plugin records. ":" is not allowed in a Linux
    interface name, so no CNI request carries them and CNI verbs never touch these."""

    #: an address only Docker's IPAM holds (RequestAddress, before CreateEndpoint)
    IPAM = "docker:ipam"
    #: an address a Docker endpoint uses
    ENDPOINT = "docker:endpoint"


def docker_role(key: AttachmentKey) -> DockerRole | None:
    """Which of this plugin's attachments ``key`` is, or None if the plugin did not make it."""
    return DockerRole(key.ifname) if key.ifname in DockerRole.__members__.values() else None


class DockerDatapath(Datapath, Protocol):
    """The datapath, plus what tells the agent that libnetwork moved an interface back."""

    def link_exists(self, name: str) -> bool: ...


class PluginError(Exception):
    """A request Docker should see fail; ``message`` is shown to the user by the CLI."""

    status = 400


class PluginFailure(PluginError):
    """The agent could not do what a valid request asked (datapath, store)."""

    status = 500


@dataclass(frozen=True)
class DockerNetwork:
    network_id: str
    pool: str
    #: addresses libnetwork holds for the network itself (``--aux-address``): IPAM handles
    #: with no endpoint, for as long as the network exists; None when not known (a network
    #: recorded before the agent kept them)
    reserved: frozenset[str] | None = frozenset()


#: the one pool: this VM's NIC
POOL_ID = "azure-cni"
#: the pool Docker is given when it names none; libnetwork skips its check that a local
#: network's pool does not overlap the host's routes for this one, and the NIC's subnet
#: always overlaps the VM's own address
ANY_POOL = "0.0.0.0/0"


def ipam_handle() -> tuple[AttachmentKey, str]:
    """A fresh key (and its never-created veth name) for an address only the IPAM holds."""
    key = AttachmentKey(uuid.uuid4().hex, DockerRole.IPAM)
    return key, host_veth_name(key.container_id, key.ifname)


def _string(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise PluginError(f"the request has no {key}")
    return value


class DockerPlugin:
    """The plugin's state and handlers; ``start`` serves them on ``socket_path``."""

    def __init__(self, *, socket_path: Path, state_dir: Path, attachments: Attachments,
                 datapath: DockerDatapath, add_wait_seconds: float = 10.0,
                 pool_problem: Callable[[], str] = lambda: "",
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.socket_path = socket_path
        self.networks_path = state_dir / NETWORKS_FILE
        self.attachments = attachments
        self.allocator = attachments.allocator
        #: the attachments' datapath, which also tells whether a link is back on the host
        self.datapath = datapath
        self.add_wait_seconds = add_wait_seconds
        self.pool_problem = pool_problem
        self.on_change = on_change
        self.locks = attachments.locks
        self.networks: dict[str, DockerNetwork] = {}
        #: the networks file was unreadable: what networks made before reserve is unknown
        self._reservations_lost = False
        #: what the last sweep found departed or stranded; freed if the next one finds it so
        self._departing: set[Assignment] = set()
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.handlers: dict[str, Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]] = {
            "Plugin.Activate": self.activate,
            "IpamDriver.GetCapabilities": self.ipam_capabilities,
            "IpamDriver.GetDefaultAddressSpaces": self.address_spaces,
            "IpamDriver.RequestPool": self.request_pool,
            "IpamDriver.ReleasePool": self.nothing,
            "IpamDriver.RequestAddress": self.request_address,
            "IpamDriver.ReleaseAddress": self.release_address,
            "NetworkDriver.GetCapabilities": self.network_capabilities,
            "NetworkDriver.CreateNetwork": self.create_network,
            "NetworkDriver.DeleteNetwork": self.delete_network,
            "NetworkDriver.CreateEndpoint": self.create_endpoint,
            "NetworkDriver.EndpointOperInfo": self.endpoint_info,
            "NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "NetworkDriver.Join": self.join,
            "NetworkDriver.Leave": self.nothing,
            "NetworkDriver.DiscoverNew": self.nothing,
            "NetworkDriver.DiscoverDelete": self.nothing,
            "NetworkDriver.ProgramExternalConnectivity": self.program_connectivity,
            "NetworkDriver.RevokeExternalConnectivity": self.nothing,
        }

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Free what departed containers left, then serve (call after the agent started)."""
        self.networks = self._load_networks()
        # Docker cannot be half-way through a Join with a plugin that is not serving yet
        await self.free_departed_endpoints(confirm=False)
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/{method}", self._serve)
        sock = bind_socket(self.socket_path)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self._sweeper = asyncio.create_task(
            every(DEPARTED_SWEEP_SECONDS, self.free_departed_endpoints,
                  name="docker_departed_sweep"), name="docker-sweep")
        log.info("event=docker_plugin_listening path=%s networks=%d", self.socket_path,
                 len(self.networks))

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.socket_path.unlink(missing_ok=True)

    async def _serve(self, http: web.Request) -> web.Response:
        method = http.match_info["method"]
        handler = self.handlers.get(method)
        if handler is None:  # libnetwork reads 404 as "not implemented by this plugin"
            return web.json_response({"Err": f"{method} is not implemented"}, status=404)
        try:
            raw = await http.read()
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, Mapping):
                raise PluginError("the request body must be a JSON object")
            answer = await asyncio.shield(handler(body))
        except ValueError as e:
            answer, status = {"Err": f"the request is not valid JSON: {e}"}, 400
        except PluginError as e:
            log.warning("event=docker_request_refused method=%s error=%s", method, e)
            answer, status = {"Err": str(e)}, e.status
        except Exception as e:
            log.exception("event=docker_request_failed method=%s", method)
            answer, status = {"Err": f"internal error in the azure-cni agent: {e!r}"}, 500
        else:
            status = 200
        return web.json_response(answer, status=status, content_type=CONTENT_TYPE)

    # -- the pool --------------------------------------------------------------------------

    def _subnet(self) -> str:
        pool = self.allocator.pool
        nic = pool.status.nic if pool else None
        if nic is None or not nic.subnet_cidr:
            raise PluginError("this VM's addresses are not known yet: "
                              f"{self.pool_problem() or 'the agent is still reading them'}")
        return nic.subnet_cidr

    @staticmethod
    def _check_pool_id(body: Mapping[str, Any]) -> None:
        given = _string(body, "PoolID")
        if given != POOL_ID:
            raise PluginError(f"unknown pool {given!r}: the azure-cni pool is {POOL_ID!r}")

    # -- handshake -------------------------------------------------------------------------

    async def activate(self, _: Mapping[str, Any]) -> dict[str, Any]:
        return {"Implements": ["NetworkDriver", "IpamDriver"]}

    async def nothing(self, _: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    async def ipam_capabilities(self, _: Mapping[str, Any]) -> dict[str, Any]:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    async def address_spaces(self, _: Mapping[str, Any]) -> dict[str, Any]:
        return {"LocalDefaultAddressSpace": ADDRESS_SPACE,
                "GlobalDefaultAddressSpace": ADDRESS_SPACE}

    async def network_capabilities(self, _: Mapping[str, Any]) -> dict[str, Any]:
        # addresses are the VNet's: they reach every VM, but are handed out on this one
        return {"Scope": "local", "ConnectivityScope": "global"}

    # -- IPAM ------------------------------------------------------------------------------

    async def request_pool(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The NIC's addresses: as ``--subnet`` (it must be the NIC's subnet; needed for
        ``--ip``) or, with none given, as 0.0.0.0/0."""
        if body.get("V6"):
            raise PluginError("IPv6 is not supported by the azure-cni network")
        if body.get("SubPool"):
            raise PluginError("--ip-range is not supported: the pool is the NIC's secondary "
                              "addresses")
        wanted = str(body.get("Pool") or "")
        if wanted:
            subnet = self._subnet()
            try:
                same = ipaddress.ip_network(wanted, strict=False) == ipaddress.ip_network(subnet)
            except ValueError:
                raise PluginError(f"--subnet {wanted!r} is not a CIDR") from None
            if not same:
                raise PluginError(f"--subnet {wanted} is not this VM's subnet {subnet}; leave "
                                  "--subnet out, or give exactly the NIC's subnet")
        return {"PoolID": POOL_ID, "Pool": (wanted and self._subnet()) or ANY_POOL,
                # the veth's host side answers for 169.254.1.1 as for every pod
                "Data": {GATEWAY_LABEL: f"{POD_GATEWAY}/32"}}

    async def request_address(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self._check_pool_id(body)
        self._subnet()  # the pool must be known
        options = body.get("Options") or {}
        if isinstance(options, Mapping) and options.get(REQUEST_ADDRESS_TYPE) == GATEWAY_LABEL:
            raise PluginError(f"the gateway of an azure-cni network is {POD_GATEWAY} (the "
                              "host side of each container's veth); leave --gateway out")
        key, veth = ipam_handle()
        wanted = str(body.get("Address") or "")
        if wanted:
            made = await self.allocator.assign_wanted(key, wanted, "", veth, "docker")
            if made is None:
                raise PluginError(await self._why_not(wanted))
        else:
            # as a CNI ADD does, wait for an address to end its cooldown or for the admin's
            # new addresses to show up
            made, _ = await self.allocator.assign(key, "", veth, "docker",
                                                 wait=self.add_wait_seconds)
            if made is None:
                usage = await self.allocator.usage()
                raise PluginError(
                    f"no free address in this VM's pool after {self.add_wait_seconds:.0f}s "
                    f"({usage.describe()}); add secondary IP configurations to the VM's NIC, "
                    "the agent sees them within standalone.refreshSeconds")
        log.info("event=docker_address_requested address=%s fixed=%s", made.address,
                 bool(wanted))
        self.on_change()
        return {"Address": f"{made.address}/32", "Data": {}}

    async def _why_not(self, address: str) -> str:
        pool = self.allocator.pool
        known = [ip.address for ip in pool.status.ips] if pool else []
        if address not in known:
            listed = ", ".join(known) or "none"
            return (f"{address} is not a secondary address of this VM's NIC, so Azure would "
                    f"not deliver it; the NIC's secondary addresses are: {listed}")
        holder = await self.allocator.holder(address)
        if holder is not None:
            return f"{address} is already used ({holder.pod or holder.key})"
        return f"{address} cannot be handed out now (it is being released from the NIC)"

    async def release_address(self, body: Mapping[str, Any]) -> dict[str, Any]:
        address = _string(body, "Address").split("/")[0]
        holder = await self.allocator.holder(address)
        if holder is None or docker_role(holder.key) is None:
            return {}  # already free (a retry), the gateway, or not Docker's at all
        if holder.key.ifname == DockerRole.ENDPOINT:
            raise PluginError(f"{address} is still used by endpoint "
                              f"{holder.key.container_id[:12]}; delete the endpoint first")
        if await self.allocator.release(holder.key) is not None:
            log.info("event=docker_address_released address=%s", address)
            self.on_change()
        return {}

    # -- networks --------------------------------------------------------------------------

    def _load_networks(self) -> dict[str, DockerNetwork]:
        try:
            document = json.loads(self.networks_path.read_text())
            networks = {n: DockerNetwork(n, str(d["pool"]), frozenset(map(str, d["reserved"]))
                                         if "reserved" in d else None)
                        for n, d in dict(document["networks"]).items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("event=docker_networks_unreadable path=%s error=%r; endpoints of networks "
                      "created before cannot start until they are created again",
                      self.networks_path, e)
            self._reservations_lost = True  # nor which addresses those networks reserve
            return {}
        unknown = [n[:12] for n, d in networks.items() if d.reserved is None]
        if unknown:
            log.warning("event=docker_network_reservations_unknown networks=%s; addresses "
                        "Docker abandons before creating an endpoint are kept until these "
                        "networks are created again", ",".join(unknown))
        return networks

    def _save_networks(self) -> None:
        document = {"networks": {
            n.network_id: {"pool": n.pool} | (
                {"reserved": sorted(n.reserved)} if n.reserved is not None else {})
            for n in self.networks.values()}}
        write_atomically(self.networks_path, json.dumps(document, indent=2).encode(),
                         mode=0o600)

    def _network(self, body: Mapping[str, Any]) -> DockerNetwork:
        network_id = _string(body, "NetworkID")
        network = self.networks.get(network_id)
        if network is None:
            raise PluginError(
                f"unknown network {network_id[:12]}: it was not created with the azure-cni "
                "driver on this VM, or the agent lost its record of it (docker network rm "
                "and create it again)")
        return network

    async def create_network(self, body: Mapping[str, Any]) -> dict[str, Any]:
        network_id = _string(body, "NetworkID")
        if body.get("IPv6Data"):
            raise PluginError("IPv6 is not supported by the azure-cni network")
        pools = [d for d in body.get("IPv4Data") or () if isinstance(d, Mapping)]
        if len(pools) != 1 or pools[0].get("AddressSpace") != ADDRESS_SPACE:
            given = ", ".join(f"{p.get('Pool')} in address space {p.get('AddressSpace')!r}"
                              for p in pools) or "no IPv4 pool"
            raise PluginError(f"an azure-cni network needs --ipam-driver azure-cni (its "
                              f"addresses are the VM NIC's); this one has {given}")
        aux = pools[0].get("AuxAddresses") or {}
        reserved = frozenset(str(a).split("/")[0] for a in aux.values()) if isinstance(
            aux, Mapping) else frozenset()
        self.networks[network_id] = DockerNetwork(network_id, str(pools[0].get("Pool")),
                                                  reserved)
        self._save_networks()
        log.info("event=docker_network_created network=%s pool=%s reserved=%s",
                 network_id[:12], self.networks[network_id].pool,
                 ",".join(sorted(reserved)) or "-")
        return {}

    async def delete_network(self, body: Mapping[str, Any]) -> dict[str, Any]:
        network_id = _string(body, "NetworkID")
        if self.networks.pop(network_id, None) is not None:
            self._save_networks()
            log.info("event=docker_network_deleted network=%s", network_id[:12])
        return {}

    # -- endpoints -------------------------------------------------------------------------

    async def create_endpoint(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self._network(body)
        endpoint = AttachmentKey(_string(body, "EndpointID"), DockerRole.ENDPOINT)
        interface = body.get("Interface") or {}
        if not isinstance(interface, Mapping) or not interface.get("Address"):
            raise PluginError("the endpoint has no IPv4 address: the network must use "
                              "--ipam-driver azure-cni")
        if interface.get("AddressIPv6"):
            raise PluginError("IPv6 is not supported by the azure-cni network")
        address = str(interface["Address"]).split("/")[0]
        given_mac = str(interface.get("MacAddress") or "")
        # the pod side waits on the host, under a temporary name, for libnetwork to move it
        pod = self.attachments.pod_network(
            endpoint, netns="", address=address, mac=given_mac.lower(),
            ifname=handover_name(endpoint.container_id, endpoint.ifname))
        async with self.locks.hold(endpoint):
            holder = await self.allocator.holder(address)
            if holder is None or (holder.key.ifname != DockerRole.IPAM and holder.key != endpoint):
                raise PluginError(f"{address} was not handed out by the azure-cni IPAM "
                                  "driver: the network must use --ipam-driver azure-cni")
            if holder.key != endpoint and await self.allocator.rebind(
                    holder.key, endpoint, netns="", host_veth=pod.host_veth,
                    pod=f"docker/{endpoint.container_id[:12]}") is None:
                # the sweep took it as abandoned a moment ago: never build on an address
                # the store does not hold
                raise PluginError(f"{address} was released before this endpoint was "
                                  "created; start the container again")
            try:
                await self.attachments.build(pod, undo=lambda: self._back_to_ipam(endpoint))
            except Exception as e:
                raise PluginFailure(f"building the veth pair for {address} failed: {e}") from e
        log.info("event=docker_endpoint_created endpoint=%s address=%s veth=%s",
                 endpoint.container_id[:12], address, pod.host_veth)
        self.on_change()
        # libnetwork refuses a MAC address back if it gave one
        return {"Interface": {} if given_mac else {"MacAddress": pod.pod_mac}}

    async def _back_to_ipam(self, endpoint: AttachmentKey) -> None:
        """The endpoint's address goes back to a fresh IPAM handle, never free in between."""
        handle, veth = ipam_handle()
        await self.allocator.rebind(endpoint, handle, netns="", host_veth=veth, pod="docker")

    async def _endpoint(self, body: Mapping[str, Any]) -> Assignment:
        endpoint = AttachmentKey(_string(body, "EndpointID"), DockerRole.ENDPOINT)
        found = await self.allocator.get(endpoint)
        if found is None:
            raise PluginError(f"unknown endpoint {endpoint.container_id[:12]}")
        return found

    async def endpoint_info(self, body: Mapping[str, Any]) -> dict[str, Any]:
        found = await self._endpoint(body)
        return {"Value": {"address": found.address, "hostVeth": found.host_veth}}

    async def join(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self._network(body)
        sandbox = _string(body, "SandboxKey")
        found = await self._endpoint(body)
        async with self.locks.hold(found.key):
            # the sandbox is how the agent later tells whether the container is still there
            await self.allocator.rebind(found.key, found.key, netns=sandbox,
                                        host_veth=found.host_veth, pod=found.pod)
        return {"InterfaceName": {"SrcName": handover_name(found.key.container_id,
                                                           found.key.ifname),
                                  "DstPrefix": "eth"},
                "Gateway": POD_GATEWAY,
                "StaticRoutes": [{"Destination": f"{POD_GATEWAY}/32",
                                  "RouteType": ROUTE_CONNECTED}]}

    async def program_connectivity(self, body: Mapping[str, Any]) -> dict[str, Any]:
        options = body.get("Options") or {}
        if isinstance(options, Mapping) and options.get(PORTMAP_LABEL):
            raise PluginError("publishing ports (-p) is not supported by the azure-cni "
                              "network: the container is reachable on its own VNet address")
        return {}

    async def delete_endpoint(self, body: Mapping[str, Any]) -> dict[str, Any]:
        endpoint = AttachmentKey(_string(body, "EndpointID"), DockerRole.ENDPOINT)
        async with self.locks.hold(endpoint):
            found = await self.allocator.get(endpoint)
            if found is None:
                return {}  # deleted before (a retry, or the sweep got there first)
            await self.attachments.teardown(found.host_veth)
            await self._back_to_ipam(endpoint)
        log.info("event=docker_endpoint_deleted endpoint=%s address=%s",
                 endpoint.container_id[:12], found.address)
        return {}

    # -- the agent's own sweep ---------------------------------------------------------------

    async def free_departed_endpoints(self, confirm: bool = True) -> list[Assignment]:
        """Free what Docker holds no more though it never said so; what was freed.

        Departed: an endpoint that joined a sandbox whose container is gone. That happens
        when Leave and DeleteEndpoint did not reach the agent (it was down): Docker then moves
        the pod side back to the host anyway (under its temporary name) and removes the
        container, keeping the address recorded. It is departed when its pod side is back on
        the host, or when its veth and its sandbox are both gone. A moment after Join, and
        between a Leave and its DeleteEndpoint, an endpoint looks departed too, so with
        ``confirm`` only what two sweeps in a row find departed is freed.

        Stranded: an address only an IPAM handle holds (not one a network reserves), and an
        endpoint that never reached Join, as a dockerd that died while starting a container
        leaves them, or one whose rollback calls found the agent down. Between
        RequestAddress, CreateEndpoint and Join these are normal for a moment, and Docker
        retries a call into a restarted agent, so they are freed only when two sweeps in a
        row (a minute apart) find the same attachment so, even at start.
        """
        host_veths = {v.name for v in await self.attachments.netlink(
            self.datapath.list_host_veths)}
        reserved = self._reserved()
        departed, stranded = set(), set()
        for found in await self.allocator.assignments():
            if found.key.ifname == DockerRole.IPAM:
                if reserved is not None and found.address not in reserved:
                    stranded.add(found)
            elif found.key.ifname != DockerRole.ENDPOINT:
                continue
            elif not found.netns:
                stranded.add(found)
            else:
                peer = handover_name(found.key.container_id, found.key.ifname)
                if await self.attachments.netlink(self.datapath.link_exists, peer) or (
                        found.host_veth not in host_veths and not os.path.exists(found.netns)):
                    departed.add(found)
        ready = (departed if not confirm else departed & self._departing) | (
            stranded & self._departing)
        self._departing = (departed | stranded) - ready
        freed = []
        for found in sorted(ready, key=lambda a: a.address):
            async with self.locks.hold(found.key):
                if await self.allocator.get(found.key) != found:
                    continue
                if found.key.ifname == DockerRole.ENDPOINT:
                    await self.attachments.teardown(found.host_veth)
                await self.allocator.release(found.key)
            freed.append(found)
            kind = "departed_endpoint" if found in departed else (
                "stranded_endpoint" if found.key.ifname == DockerRole.ENDPOINT else
                "stranded_address")
            log.warning("event=docker_%s_freed endpoint=%s address=%s sandbox=%s", kind,
                        found.key.container_id[:12], found.address, found.netns or "-")
        if freed:
            self.on_change()
        return freed

    def _reserved(self) -> frozenset[str] | None:
        """Addresses the known networks reserve; None if a network's are not known."""
        if self._reservations_lost or any(n.reserved is None for n in self.networks.values()):
            return None
        return frozenset(a for n in self.networks.values() for a in n.reserved or ())
