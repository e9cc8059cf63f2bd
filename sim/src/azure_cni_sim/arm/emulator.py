"""The emulator itself: its servers, its Python API, and the path of every ARM request.

A request is delayed (injected latency), authenticated, checked for its api-version,
throttled by ARM's own buckets (``azure_cni_sim.throttling``), answered by an injected fault
if one matches, routed (``routes.ROUTES``) and served (``resources``). ``azure_cni_sim.imds``
serves instance metadata and managed-identity tokens on a second, plain-HTTP port.

Use it in-process (``with ArmEmulator() as emu:`` runs it on a background thread; ``async
with`` runs it on the caller's loop) or as ``azure-cni-sim arm``. An admin API under
``/_sim/`` on the ARM port lets another process build a topology, read state and request
counts, inject faults and follow NIC changes. Reach it with ``ca_path`` as the CA bundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import math
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web
from azure.core.credentials import AccessToken
from azure.mgmt.network import NetworkManagementClient

from azure_cni.api.settings import AzureSettings
from azure_cni_sim import pki
from azure_cni_sim.arm.admin import serve_admin
from azure_cni_sim.arm.auth import authenticate, challenge
from azure_cni_sim.arm.authorization import check_request
from azure_cni_sim.arm.changes import NicChangeCallback, NicChangeFeed
from azure_cni_sim.arm.config import (
    ArmConfig,
    NicRef,
    RequestRecord,
    StaticTokenCredential,
    VmInfo,
    VnetInfo,
)
from azure_cni_sim.arm.faults import FaultBook
from azure_cni_sim.arm.interference import Interference, fail_ipconfig
from azure_cni_sim.arm.netfeatures import PolicyCallback, PolicyFeed, features_of
from azure_cni_sim.arm.resources import Request
from azure_cni_sim.arm.routes import MethodNotAllowed, Route, resolve
from azure_cni_sim.arm.scaleset_resources import scale_sets_of
from azure_cni_sim.arm.scalesets import instance_json
from azure_cni_sim.armstate import (
    DEFAULT_SUBSCRIPTION,
    ArmError,
    ArmState,
    Nic,
    nic_json,
    vm_json,
    vnet_json,
)
from azure_cni_sim.imds import Imds, TokenIssuer
from azure_cni_sim.portal import listen_in_netns
from azure_cni_sim.throttling import ArmThrottle, BucketSize

log = logging.getLogger(__name__)

@dataclass
class _Server:
    runner: web.AppRunner
    port: int


def _error(status: int, code: str, message: str,
           headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, "details": []}},
                             status=status, headers=dict(headers or {}))


def _free_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


def _nic_ref(nic: Nic) -> NicRef:
    subnet = nic.ip_configs[0].subnet
    return NicRef(nic.id, nic.addresses()[0], subnet.id, nic.mac, str(subnet.network))


class ArmEmulator:
    """ARM over HTTPS and IMDS over HTTP on 127.0.0.1, with a Python API to drive both.

    Topology, inspection and fault methods are thread-safe and synchronous, so a test can call
    them while the servers run on the emulator's own thread. NIC-change callbacks run on the
    emulator's event loop (on its thread in ``start()`` mode) and may be coroutines.
    """

    def __init__(
        self,
        config: ArmConfig | None = None,
        *,
        host: str = "127.0.0.1",
        arm_port: int = 0,
        imds_port: int = 0,
        state_dir: Path | None = None,
        tls_addresses: Sequence[str] = (),
    ) -> None:
        self.config = config or ArmConfig()
        self._host = host
        #: more IP addresses the ARM certificate is valid for (see ``serve_arm_in_netns``)
        self._tls_addresses = tuple(tls_addresses)
        self._tls: ssl.SSLContext | None = None
        self._wanted_ports = (arm_port, imds_port)
        self._own_dir = state_dir is None
        self._dir = state_dir
        self._lock = threading.RLock()
        self._state = ArmState()
        self._tokens = TokenIssuer(self.config.static_tokens)
        self._imds = Imds(self)
        self._throttle = self._new_throttle()
        self._faults = FaultBook()
        self._interference = Interference()
        self._requests: list[RequestRecord] = []
        self._changes = NicChangeFeed(self._lock)
        self._policy = PolicyFeed(self._lock)
        self._servers: list[_Server] = []
        self._vm_imds: dict[str, _Server] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._thread_stop: asyncio.Event | None = None
        self.arm_port = 0
        self.imds_port = 0

    # -- the ImdsHost protocol ----------------------------------------------------------------

    @property
    def state(self) -> ArmState:
        return self._state

    @property
    def state_lock(self) -> threading.RLock:
        return self._lock

    @property
    def tokens(self) -> TokenIssuer:
        return self._tokens

    def imds_limits(self) -> tuple[float, float, float]:
        c = self.config
        return c.imds_rps, c.imds_identity_rps, c.token_lifetime

    # -- endpoints ----------------------------------------------------------------------------

    @property
    def arm_url(self) -> str:
        """Base URL for ``AzureSettings.arm_endpoint`` (``https://127.0.0.1:<port>/``)."""
        return f"https://{self._host}:{self.arm_port}/"

    @property
    def imds_url(self) -> str:
        return f"http://{self._host}:{self.imds_port}"

    def imds_url_for(self, vm_name: str) -> str:
        """``AZURE_POD_IDENTITY_AUTHORITY_HOST`` for a VM on the shared IMDS port."""
        return f"{self.imds_url}/vms/{vm_name}"

    @property
    def state_dir(self) -> Path:
        if self._dir is None:
            raise RuntimeError("the emulator has not been started")
        return self._dir

    @property
    def ca_path(self) -> Path:
        """PEM of the CA that signed the ARM certificate: pass it as ``connection_verify``."""
        return self.state_dir / "ca.crt"

    # -- lifecycle ----------------------------------------------------------------------------

    async def start_async(self) -> ArmEmulator:
        """Start both servers on the running loop."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="azcni-arm-"))
        self._dir.mkdir(parents=True, exist_ok=True)
        ca = pki.CertificateAuthority("azure-cni-sim-arm-ca")
        (self._dir / "ca.crt").write_bytes(ca.pair.cert_pem)
        leaf = ca.issue("localhost", dns_names=("localhost",),
                        ip_addresses=("127.0.0.1", *self._tls_addresses), server=True)
        cert, key = leaf.write(self._dir, "arm")
        tls = self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)

        self._loop = asyncio.get_running_loop()
        self._changes.bind()
        arm_app = web.Application(client_max_size=16 * 1024 * 1024)
        arm_app.router.add_route("*", "/{tail:.*}", self._handle)
        arm = await self._serve(arm_app, self._wanted_ports[0], tls)
        imds = await self._serve(self._imds.app(), self._wanted_ports[1], None)
        self._servers = [arm, imds]
        self.arm_port, self.imds_port = arm.port, imds.port
        self._sweeper = asyncio.create_task(self._sweep_operations())
        (self._dir / "endpoints.json").write_text(json.dumps(self.endpoints(), indent=2))
        log.info("event=arm_emulator_started arm=%s imds=%s ca=%s",
                 self.arm_url, self.imds_url, self.ca_path)
        return self

    async def serve_arm_in_netns_async(self, netns: str, address: str,
                                       port: int = 443) -> None:
        """Also serve ARM on ``address:port`` inside a network namespace, as the simulated VMs
        reach it (``address`` must be one of ``tls_addresses``, so the certificate holds)."""
        arm = self._servers[0]
        sock = listen_in_netns(netns, port, address)
        await web.SockSite(arm.runner, sock, ssl_context=self._tls).start()
        log.info("event=arm_emulator_listening netns=%s address=%s:%d", netns, address, port)

    def serve_arm_in_netns(self, netns: str, address: str, port: int = 443) -> None:
        """``serve_arm_in_netns_async`` for a ``start()``-ed emulator, from another thread."""
        self._call_on_loop(self.serve_arm_in_netns_async(netns, address, port))

    async def _serve(self, app: web.Application, port: int,
                     tls: ssl.SSLContext | None) -> _Server:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        sock = _free_socket(self._host, port)
        await web.SockSite(runner, sock, ssl_context=tls).start()
        return _Server(runner, int(sock.getsockname()[1]))

    async def stop_async(self) -> None:
        """Stop the servers; remove the state directory if the emulator made it."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for server in [*self._vm_imds.values(), *self._servers]:
            await server.runner.cleanup()
        self._servers.clear()
        self._vm_imds.clear()
        if self._own_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        log.info("event=arm_emulator_stopped")

    def start(self, timeout: float = 30.0) -> ArmEmulator:
        """Run the emulator on a background thread with its own event loop."""
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._thread_stop = asyncio.Event()
            try:
                await self.start_async()
            except BaseException as e:
                failure.append(e)
                ready.set()
                raise
            ready.set()
            try:
                await self._thread_stop.wait()
            finally:
                await self.stop_async()

        def run() -> None:
            try:
                asyncio.run(main())
            except Exception:
                if not failure:  # a start failure is re-raised by start() instead
                    log.exception("event=arm_emulator_crashed")

        self._thread = threading.Thread(target=run, name="arm-emulator", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"the ARM emulator did not start within {timeout:.0f}s")
        if failure:
            raise failure[0]
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop a ``start()``-ed emulator and wait for its thread."""
        if self._thread is None or self._loop is None or self._thread_stop is None:
            return
        self._loop.call_soon_threadsafe(self._thread_stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the ARM emulator did not stop within {timeout:.0f}s")
        self._thread = None

    def __enter__(self) -> ArmEmulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> ArmEmulator:
        return await self.start_async()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_async()

    def azure_settings(self, **overrides: Any) -> AzureSettings:
        """Settings that point the real adapter at this emulator (override any field)."""
        values: dict[str, Any] = {"arm_endpoint": self.arm_url, "ca_bundle": str(self.ca_path)}
        values.update(overrides)
        return AzureSettings(**values)

    def credential(self, token: str | None = None) -> StaticTokenCredential:
        """A credential presenting the emulator's static token (or ``token``)."""
        return StaticTokenCredential(token or self.config.static_tokens[0])

    def network_client(self, principal: str = "portal-admin") -> NetworkManagementClient:
        """The synchronous azure-mgmt-network client an admin uses for public IPs, load
        balancers and NSGs, with a token of its own (not the operator's identity)."""
        token = self.issue_token(principal)

        class AdminToken:
            def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
                return AccessToken(token, int(time.time()) + 3600)

        return NetworkManagementClient(AdminToken(), DEFAULT_SUBSCRIPTION, base_url=self.arm_url,
                                       polling_interval=0.1, connection_verify=str(self.ca_path))

    def endpoints(self) -> dict[str, Any]:
        """What a client in another process needs: URLs, CA path and the static token."""
        return {"arm": self.arm_url, "imds": self.imds_url, "ca": str(self.ca_path),
                "staticTokens": list(self.config.static_tokens),
                "subscription": DEFAULT_SUBSCRIPTION}

    def _call_on_loop(self, coro: Awaitable[Any]) -> Any:
        """Run ``coro`` on the emulator's loop from any thread (not from that loop itself)."""
        if self._loop is None:
            raise RuntimeError("the emulator has not been started")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise RuntimeError("use the async method from the emulator's own loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)  # type: ignore[arg-type]

    async def open_vm_imds_async(self, vm_name: str, port: int = 0) -> str:
        """Serve one VM's IMDS on a port of its own, answering the bare ``/metadata`` paths."""
        with self._lock:
            if self._state.vm_by_name(vm_name) is None:
                raise ValueError(f"no VM named {vm_name!r}")
        if vm_name not in self._vm_imds:
            self._vm_imds[vm_name] = await self._serve(self._imds.app(vm_name), port, None)
        return f"http://{self._host}:{self._vm_imds[vm_name].port}"

    def open_vm_imds(self, vm_name: str, port: int = 0) -> str:
        """``open_vm_imds_async`` for a ``start()``-ed emulator, from another thread."""
        url: str = self._call_on_loop(self.open_vm_imds_async(vm_name, port))
        return url

    # -- topology -----------------------------------------------------------------------------

    def add_vnet(self, name: str, address_space: str | Sequence[str],
                 subnets: Mapping[str, str] | None = None, *,
                 subscription: str = DEFAULT_SUBSCRIPTION, resource_group: str = "rg1",
                 location: str = "eastus") -> VnetInfo:
        """A virtual network and its subnets (name -> CIDR)."""
        space = [address_space] if isinstance(address_space, str) else list(address_space)
        with self._lock:
            vnet = self._state.add_vnet(subscription, resource_group, name, space, location)
            ids = {sub_name: self._state.add_subnet(vnet.id, sub_name, cidr).id
                   for sub_name, cidr in (subnets or {}).items()}
        return VnetInfo(vnet.id, ids)

    def add_resource_group(self, name: str, *, subscription: str = DEFAULT_SUBSCRIPTION,
                           location: str = "eastus") -> None:
        """An empty resource group (for public IPs, load balancers and NSGs made over ARM)."""
        with self._lock:
            self._state.add_resource_group(subscription, name, location)

    def add_subnet(self, vnet_id: str, name: str, cidr: str) -> str:
        with self._lock:
            return self._state.add_subnet(vnet_id, name, cidr).id

    def add_vm(self, name: str, subnet_id: str, *, resource_group: str | None = None,
               subscription: str | None = None, location: str | None = None,
               primary_ip: str | None = None, nic_name: str | None = None,
               scale_set: str | None = None, identities: Sequence[str] = (),
               more_nics: Mapping[str, str] | None = None) -> VmInfo:
        """A VM with one NIC (``<name>-nic``) whose primary address comes from ``subnet_id``,
        and one more NIC per ``more_nics`` entry (NIC name -> subnet ID), not primary.

        ``scale_set`` makes it a Flexible scale-set VM; ``identities`` are the client IDs of
        user-assigned identities IMDS will issue tokens for (system-assigned always works).
        """
        with self._lock:
            subnet = self._state.subnets.get(subnet_id.lower())
            if subnet is None:
                raise ValueError(f"no subnet {subnet_id}")
            vnet = self._state.vnets[subnet.vnet_id.lower()]
            vm, nic = self._state.add_vm(
                subscription or vnet.subscription, resource_group or vnet.resource_group, name,
                subnet_id, location=location or vnet.location, primary_ip=primary_ip,
                nic_name=nic_name, scale_set=scale_set, identities=identities)
            more = [self._state.attach_nic(vm.id, more_subnet, more_name)
                    for more_name, more_subnet in (more_nics or {}).items()]
        return VmInfo(vm.name, vm.id, nic.id, nic.addresses()[0], subnet.id, nic.mac,
                      tuple(_nic_ref(m) for m in more))

    def add_scale_set(self, name: str, subnet_id: str, *, resource_group: str | None = None,
                      subscription: str | None = None, location: str | None = None,
                      more_nics: Mapping[str, str] | None = None) -> str:
        """A Uniform scale set whose instances get one NIC (``<name>-nic``) in ``subnet_id``
        and one more per ``more_nics`` entry (NIC configuration name -> subnet ID); returns
        its ID. Instances come from ``add_instance``."""
        with self._lock:
            subnet = self._state.subnets.get(subnet_id.lower())
            if subnet is None:
                raise ValueError(f"no subnet {subnet_id}")
            vnet = self._state.vnets[subnet.vnet_id.lower()]
            return scale_sets_of(self._state).add_scale_set(
                subscription or vnet.subscription, resource_group or vnet.resource_group, name,
                subnet_id, location=location or vnet.location,
                more_nics=tuple((more_nics or {}).items())).id

    def add_instance(self, scale_set_id: str, primary_ip: str | None = None) -> VmInfo:
        """Scale a Uniform scale set out by one instance. Its ``VmInfo.name`` is the
        instance's computer name (a valid node name), its ``vm_id`` the instance's ID."""
        with self._lock:
            sets = scale_sets_of(self._state)
            ss = sets.by_id.get(scale_set_id.lower())
            if ss is None:
                raise ValueError(f"no scale set {scale_set_id}")
            instance = sets.add_instance(ss, primary_ip)
            nic, *more = sets.instance_nics(instance)
        return VmInfo(instance.computer_name, instance.id, nic.id, nic.addresses()[0],
                      ss.subnet_id, nic.mac, tuple(_nic_ref(m) for m in more))

    def delete_instance(self, instance_id: str) -> None:
        """Scale a Uniform scale set in: the instance, its NIC and its addresses go."""
        with self._lock:
            sets = scale_sets_of(self._state)
            for ss in sets.by_id.values():
                for instance in list(ss.instances.values()):
                    if instance.id.lower() == instance_id.lower():
                        sets.delete_instance(instance)
                        return
        raise KeyError(instance_id)

    def instance_model(self, instance_id: str) -> dict[str, Any]:
        """A Uniform instance's model as Compute would return it now."""
        with self._lock:
            sets = scale_sets_of(self._state)
            for ss in sets.by_id.values():
                for instance in ss.instances.values():
                    if instance.id.lower() == instance_id.lower():
                        return instance_json(instance, sets.instance_nics(instance))
        raise KeyError(instance_id)

    # -- inspection -----------------------------------------------------------------------------

    def nic(self, nic_id: str) -> dict[str, Any]:
        """The NIC as ARM would return it now."""
        with self._lock:
            found = self._state.nics.get(nic_id.lower())
            if found is None:
                raise KeyError(nic_id)
            return nic_json(found)

    def nic_addresses(self, nic_id: str) -> tuple[str, ...]:
        """The NIC's addresses, primary first (including writes still in progress)."""
        with self._lock:
            return self._state.nics[nic_id.lower()].addresses()

    def subnet_usage(self, subnet_id: str) -> dict[str, str]:
        """Address -> ipConfiguration ID for every address held in the subnet."""
        with self._lock:
            subnet = self._state.subnets[subnet_id.lower()]
            return {str(a): owner for a, owner in sorted(subnet.used.items())}

    def snapshot(self) -> dict[str, Any]:
        """The whole emulated world as JSON (the admin API's ``GET /_sim/state``)."""
        with self._lock:
            return {
                "vnets": [vnet_json(v, self._state) for v in self._state.vnets.values()],
                "vms": [vm_json(v) for v in self._state.vms.values()],
                "nics": [nic_json(n) for n in self._state.nics.values()],
            }

    def requests(self, method: str | None = None, path: str | None = None) -> list[RequestRecord]:
        """ARM requests received, optionally filtered by method and a glob on the path.

        Paths compare lower-cased, so a resource ID is itself a pattern matching its requests.
        """
        with self._lock:
            records = list(self._requests)
        return [r for r in records
                if (method is None or r.method == method.upper())
                and (path is None or fnmatch.fnmatchcase(r.path.lower(), path.lower()))]

    def request_count(self, method: str | None = None, path: str | None = None,
                      status: int | None = None) -> int:
        return sum(1 for r in self.requests(method, path) if status is None or r.status == status)

    def reset_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- faults and knobs ---------------------------------------------------------------------

    def inject_fault(self, method: str, path: str, status: int, code: str = "", *,
                     message: str = "", headers: Mapping[str, str] | None = None,
                     count: int = 1) -> None:
        """Answer the next ``count`` requests matching ``method`` and the ``path`` glob with
        this error instead of serving them (after authentication and throttling)."""
        with self._lock:
            self._faults.add(method, path, status, code, message=message, headers=headers,
                             count=count)

    def fail_next_operation(self, path: str, code: str, message: str = "",
                            outcome: str = "Failed") -> None:
        """Accept the next NIC write matching ``path``, then end its operation ``outcome``
        (Failed or Canceled) with this error; the NIC is rolled back."""
        with self._lock:
            self._faults.fail_operation(path, code, message, outcome)

    def race_next_reads(self, path: str, count: int = 1) -> None:
        """After each of the next ``count`` GETs of a NIC matching ``path``, a second writer
        commits a change to it, so the reader's conditional write gets 412."""
        with self._lock:
            self._interference.race_reads(path, count)

    def deny_join(self, scope: str) -> None:
        """From now on, a NIC write referencing anything under ``scope`` (a public IP, a load
        balancer, a resource group) is refused 403 LinkedAuthorizationFailed, as ARM refuses
        a caller without the join permission on it."""
        with self._lock:
            features_of(self._state).join_denied.add(scope.lower().rstrip("/"))

    def allow_join(self, scope: str) -> None:
        """Undo ``deny_join(scope)``."""
        with self._lock:
            features_of(self._state).join_denied.discard(scope.lower().rstrip("/"))

    def fail_ipconfig(self, nic_id: str, name: str) -> None:
        """Leave ipConfiguration ``name`` (and its NIC) in provisioningState Failed until the
        NIC is written again."""
        with self._lock:
            fail_ipconfig(self._state, nic_id, name)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._interference.clear()
        self._imds.clear_faults()

    def inject_imds_fault(self, vm_name: str, path: str, status: int, body: bytes | str, *,
                          content_type: str = "application/json", count: int = 1) -> None:
        """Answer ``vm_name``'s next ``count`` IMDS metadata requests under ``path`` (e.g.
        ``instance/network``) with this status and body, e.g. a malformed document."""
        self._imds.inject_fault(vm_name, path, status, body, content_type=content_type,
                                count=count)

    def set_latency(self, method: str, seconds: float) -> None:
        """Delay every ARM request of ``method`` (``*`` for all) by ``seconds``."""
        with self._lock:
            self._faults.latency[method.upper()] = seconds

    def configure(self, **changes: Any) -> ArmConfig:
        """Change knobs of ``ArmConfig`` at run time; throttling buckets start over full."""
        with self._lock:
            self.config = replace(self.config, **changes)
            self._tokens.static_tokens = tuple(self.config.static_tokens)
            self._throttle = self._new_throttle()
            return self.config

    def _new_throttle(self) -> ArmThrottle:
        c = self.config
        return ArmThrottle({"reads": BucketSize(c.read_burst, c.read_qps),
                            "writes": BucketSize(c.write_burst, c.write_qps),
                            "deletes": BucketSize(c.delete_burst, c.delete_qps)},
                           enabled=c.throttling)

    def issue_token(self, principal: str = "test") -> str:
        """A bearer token for ARM, as if IMDS had issued it to ``principal``."""
        token, _ = self._tokens.issue(principal, "https://management.azure.com",
                                      self.config.token_lifetime)
        return token

    # -- NIC change subscription -----------------------------------------------------------------

    def on_nic_change(self, callback: NicChangeCallback) -> Callable[[], None]:
        """Call ``callback(nic_id, vm_id, old_addresses, new_addresses)`` whenever a write to a
        NIC commits and changes its addresses; return a function that unsubscribes.

        It runs on the emulator's loop before the operation's final poll is answered, so the
        change is in place (routes programmed, say) by the time a client sees Succeeded.
        Addresses are all of the NIC's, primary first. VMs made by ``add_vm`` are not
        announced: their primary address is in the returned ``VmInfo``.
        """
        return self._changes.subscribe(callback)

    def on_network_policy(self, callback: PolicyCallback) -> Callable[[], None]:
        """Call ``callback(policy)`` whenever what the SDN must enforce besides routes changes
        (public IP NAT, load balancers, NSGs: ``netfeatures.FabricPolicy``); like
        ``on_nic_change``, before the request that changed it is answered."""
        return self._policy.subscribe(callback)

    async def wait_events(self, after: int, timeout: float) -> dict[str, Any]:
        """NIC changes with a sequence number above ``after``, waiting up to ``timeout``."""
        return await self._changes.wait(after, timeout)

    async def _sweep_operations(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            with self._lock:
                expired = self._state.expired_operations(self.config.lro_timeout)
                changes = [c for op in expired if (c := self._state.finish(op)) is not None]
            await self._changes.publish(changes)
            await self._policy.refresh(self._state)

    # -- ARM request handling ---------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/_sim/"):
            return await serve_admin(self, request)
        received = time.time()
        with self._lock:
            delay = self._faults.delay(request.method)
        if delay:
            await asyncio.sleep(delay)
        principal = ""
        try:
            principal = authenticate(request.headers, self._tokens)
            response = await self._serve_arm(request, principal)
        except ArmError as e:
            response = _error(e.status, e.code, e.message, e.headers)
            if e.status == 401:
                response.headers["WWW-Authenticate"] = challenge(e.message)
        response.headers["x-ms-request-id"] = str(uuid.uuid4())
        response.headers["x-ms-correlation-request-id"] = str(uuid.uuid4())
        response.headers["Cache-Control"] = "no-cache"
        with self._lock:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            self._requests.append(RequestRecord(
                request.method, request.path, response.status, principal, time.time(),
                f"{peer[0]}:{peer[1]}" if peer else "", received))
        return response

    def _check_api_version(self, request: web.Request, route: Route | None) -> None:
        version = request.query.get("api-version")
        if not version:
            raise ArmError(400, "MissingApiVersionParameter",
                           "The api-version query parameter (?api-version=) is required for "
                           "all requests.")
        provider = route.provider if route is not None else "network"
        supported = {"compute": self.config.compute_api_versions,
                     "vmss-network": self.config.vmss_network_api_versions,
                     "msi": self.config.msi_api_versions,
                     "authorization": self.config.authorization_api_versions,
                     }.get(provider, self.config.network_api_versions)
        if version not in supported:
            kind = route.segments[-2] if route is not None else "unknown"
            raise ArmError(400, "NoRegisteredProviderFound",
                           f"No registered resource provider found for location 'eastus' and "
                           f"API version '{version}' for type '{kind}'. The supported "
                           f"api-versions are '{', '.join(supported)}'.")

    def _admit(self, subscription: str, principal: str, method: str) -> dict[str, str]:
        """The ratelimit headers for this request, or a 429 if ARM's buckets refuse it."""
        verdict = self._throttle.admit(subscription, principal, method)
        if verdict.refused:
            wait = verdict.retry_after
            retry_after = (f"{wait:.3f}" if self.config.fractional_retry_after
                           else str(math.ceil(wait)))
            kind = next(iter(verdict.headers)).rsplit("-", 1)[-1]
            raise ArmError(429, "SubscriptionRequestsThrottled",
                           f"Number of '{kind[:-1]}' requests for subscription '{subscription}' "
                           f"actor '{principal}' exceeded. Please try again after "
                           f"'{retry_after}' seconds after the last request. Please see "
                           "https://aka.ms/ARMThrottling for more information.",
                           {"Retry-After": retry_after, **verdict.headers})
        return verdict.headers

    async def _serve_arm(self, request: web.Request, principal: str) -> web.StreamResponse:
        method = request.method
        body: Any = None
        if method in ("PUT", "PATCH", "POST"):
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = ArmError(400, "InvalidRequestContent",
                                "The request content was invalid and could not be deserialized.")
        not_allowed: Route | None = None
        try:
            found = resolve(method, request.path)
        except MethodNotAllowed as e:
            found, not_allowed = None, e.route
        route = found.route if found is not None else not_allowed
        with self._lock:
            self._check_api_version(request, route)
            parts = [p for p in request.path.split("/") if p]
            subscription = parts[1] if len(parts) > 1 else ""
            headers = self._admit(subscription, principal, method)
            fault = self._faults.take(method, request.path)
            if fault is not None:
                return _error(fault.status, fault.code, fault.message,
                              {**headers, **fault.headers})
            if not_allowed is not None:
                raise ArmError(405, "MethodNotAllowed",
                               f"The requested resource does not support http method "
                               f"'{method}'.")
            if found is None:
                raise ArmError(404, "InvalidResourceType",
                               f"The resource type for path '{request.path}' is not served by "
                               "the azure-cni ARM emulator.")
            if isinstance(body, ArmError):
                raise body
            routed = Request(method, request.path, request.host, found.params, request.query,
                             request.headers, body, self._state, self.config,
                             self._faults.take_operation_failure, principal)
            try:
                if not found.route.unchecked:
                    check_request(routed, found.route.template)
                reply = found.route.handler(routed)
            except ArmError as e:  # ARM's own headers are on a provider's refusal too
                e.headers = {**headers, **e.headers}
                raise
            self._interference.after_read(method, request.path, self._state)
        await self._changes.publish(reply.changes)
        await self._policy.refresh(self._state)
        return web.json_response(reply.payload, status=reply.status,
                                 headers={**headers, **reply.headers})
