"""An Azure Resource Manager + IMDS emulator that the real azure-mgmt SDK talks to over TLS.

It serves the small ARM surface azure-cni uses (VM GET, NIC GET/PUT with etags and
long-running operations, VNet and subnet GET) with Azure's rules and limits
(``sim.armstate``), bearer-token authentication, per-principal token-bucket throttling with
429 + Retry-After, one-shot fault injection and added latency. ``sim.imds`` serves instance
metadata and managed-identity tokens on a second, plain-HTTP port.

Use it in-process (``with ArmEmulator() as emu:`` runs it on a background thread; ``async
with`` runs it on the caller's loop) or as ``azure-cni-sim arm``. An admin API under
``/_sim/`` on the ARM port lets another process build a topology, read state and request
counts, inject faults and follow NIC changes. Reach it with ``ca_path`` as the CA bundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import inspect
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
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web
from azure.core.credentials import AccessToken

from azure_cni.api.settings import AzureSettings
from azure_cni.cloud.ratelimit import TokenBucket
from azure_cni_sim import pki
from azure_cni_sim.armstate import (
    DEFAULT_SUBSCRIPTION,
    NETWORK_API_VERSION,
    ArmError,
    ArmState,
    NicChange,
    Operation,
    check_ip_json,
    new_etag,
    nic_json,
    subnet_json,
    usages_json,
    vm_json,
    vnet_json,
)
from azure_cni_sim.imds import ARM_AUDIENCES, Imds, TokenIssuer
from azure_cni_sim.portal import listen_in_netns

log = logging.getLogger(__name__)

#: the token every emulator accepts unless configured otherwise
DEFAULT_STATIC_TOKEN = "azure-cni-sim-token"  # noqa: S105 - a test token, not a secret

NicChangeCallback = Callable[[str, str, tuple[str, ...], tuple[str, ...]], Awaitable[None] | None]


class StaticTokenCredential:
    """An async credential that always presents one bearer token (e.g. the emulator's static
    token, or one a test fetched from IMDS itself)."""

    def __init__(self, token: str = DEFAULT_STATIC_TOKEN) -> None:
        self._token = token

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        # a far expiry makes the SDK's bearer policy cache it, as it would a real token
        return AccessToken(self._token, int(time.time()) + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> StaticTokenCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


@dataclass
class ArmConfig:
    """Behaviour knobs; change them at run time with ``ArmEmulator.configure``."""

    #: InProgress answers an operation gives before its outcome
    lro_polls: int = 1
    #: an operation nobody polls still finishes after this many seconds
    lro_timeout: float = 10.0
    #: Retry-After on operation polls, fractions allowed (None: no header, the SDK's interval)
    poll_retry_after: float | None = None
    #: Retry-After on the NIC PUT response, as NRP sends it (the SDK does not sleep on it)
    put_retry_after: int = 10
    #: Retry-After on 409 AnotherOperationInProgress (None: none, so the SDK surfaces the 409)
    conflict_retry_after: int | None = None
    throttling: bool = True
    #: ARM's regional token buckets per subscription and principal (arm-api.md §2.3)
    read_burst: int = 250
    read_qps: float = 25.0
    write_burst: int = 200
    write_qps: float = 10.0
    #: send Retry-After with fractions of a second (ARM sends whole seconds)
    fractional_retry_after: bool = False
    #: bearer tokens accepted besides those the emulated IMDS issued
    static_tokens: tuple[str, ...] = (DEFAULT_STATIC_TOKEN,)
    token_lifetime: float = 3600.0
    imds_rps: float = 5.0
    imds_identity_rps: float = 20.0
    #: leave a subnet's ipConfigurations list out above this many entries (None: never)
    subnet_list_limit: int | None = None
    network_api_versions: tuple[str, ...] = (
        "2026-03-01", "2026-01-01", "2025-09-01", "2025-07-01", "2025-05-01")
    compute_api_versions: tuple[str, ...] = (
        "2026-04-01", "2025-11-01", "2025-04-01", "2024-11-01", "2024-07-01")


@dataclass(frozen=True)
class VnetInfo:
    id: str
    subnet_ids: dict[str, str]


@dataclass(frozen=True)
class VmInfo:
    """A VM the emulator created: what a node and the operator need to know about it."""

    name: str
    vm_id: str
    nic_id: str
    primary_ip: str
    subnet_id: str

    @property
    def provider_id(self) -> str:
        """The Node ``spec.providerID`` kubelet would report for this VM."""
        return f"azure://{self.vm_id}"


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    status: int
    principal: str
    at: float


@dataclass
class _Fault:
    method: str
    pattern: str
    status: int
    code: str
    message: str
    headers: dict[str, str]
    remaining: int


@dataclass
class _OperationFailure:
    pattern: str
    outcome: str
    code: str
    message: str


@dataclass
class _Route:
    kind: str  # vm | nic | nics | vnet | subnet | ipconfig | ipconfigs | operation
    subscription: str
    resource_group: str = ""
    names: tuple[str, ...] = ()


@dataclass
class _Server:
    runner: web.AppRunner
    port: int


def _route(path: str) -> _Route | None:
    parts = [p for p in path.split("/") if p]
    low = [p.lower() for p in parts]
    if len(parts) < 2 or low[0] != "subscriptions":
        return None
    sub = parts[1]
    if len(parts) == 8 and low[2:4] == ["providers", "microsoft.network"] \
            and low[4] == "locations" and low[6] == "operations":
        return _Route("operation", sub, names=(parts[7],))
    if len(parts) < 7 or low[2] != "resourcegroups" or low[4] != "providers":
        return None
    rg, namespace, rest, low_rest = parts[3], low[5], parts[6:], low[6:]
    if namespace == "microsoft.compute":
        if len(rest) == 2 and low_rest[0] == "virtualmachines":
            return _Route("vm", sub, rg, (rest[1],))
        return None
    if namespace != "microsoft.network":
        return None
    shapes = {
        ("networkinterfaces",): "nics",
        ("networkinterfaces", None): "nic",
        ("networkinterfaces", None, "ipconfigurations"): "ipconfigs",
        ("networkinterfaces", None, "ipconfigurations", None): "ipconfig",
        ("virtualnetworks", None): "vnet",
        ("virtualnetworks", None, "subnets", None): "subnet",
        ("virtualnetworks", None, "usages"): "usages",
        ("virtualnetworks", None, "checkipaddressavailability"): "check_ip",
    }
    for shape, kind in shapes.items():
        if len(shape) == len(rest) and all(s is None or s == low_rest[i]
                                           for i, s in enumerate(shape)):
            return _Route(kind, sub, rg, tuple(rest[i] for i, s in enumerate(shape) if s is None))
    return None


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
        self._buckets: dict[tuple[str, str, str], TokenBucket] = {}
        self._faults: list[_Fault] = []
        self._operation_failures: list[_OperationFailure] = []
        self._latency: dict[str, float] = {}
        self._requests: list[RequestRecord] = []
        self._callbacks: list[NicChangeCallback] = []
        self._events: list[dict[str, Any]] = []
        self._event_seq = 0
        self._event_signal: asyncio.Condition | None = None
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
        self._event_signal = asyncio.Condition()
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

    def add_subnet(self, vnet_id: str, name: str, cidr: str) -> str:
        with self._lock:
            return self._state.add_subnet(vnet_id, name, cidr).id

    def add_vm(self, name: str, subnet_id: str, *, resource_group: str | None = None,
               subscription: str | None = None, location: str | None = None,
               primary_ip: str | None = None, nic_name: str | None = None,
               scale_set: str | None = None, identities: Sequence[str] = ()) -> VmInfo:
        """A VM with one NIC (``<name>-nic``) whose primary address comes from ``subnet_id``.

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
        return VmInfo(vm.name, vm.id, nic.id, nic.addresses()[0], subnet.id)

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
            self._faults.append(_Fault(method.upper(), path.lower(), status, code,
                                       message or code, dict(headers or {}), count))

    def fail_next_operation(self, path: str, code: str, message: str = "",
                            outcome: str = "Failed") -> None:
        """Accept the next NIC write matching ``path``, then end its operation ``outcome``
        (Failed or Canceled) with this error; the NIC is rolled back."""
        if outcome not in ("Failed", "Canceled"):
            raise ValueError("outcome must be Failed or Canceled")
        with self._lock:
            self._operation_failures.append(
                _OperationFailure(path.lower(), outcome, code, message or code))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._operation_failures.clear()
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
            self._latency[method.upper()] = seconds

    def configure(self, **changes: Any) -> ArmConfig:
        """Change knobs of ``ArmConfig`` at run time; throttling buckets start over full."""
        with self._lock:
            self.config = replace(self.config, **changes)
            self._tokens.static_tokens = tuple(self.config.static_tokens)
            self._buckets.clear()
            return self.config

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
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    async def _publish(self, changes: Sequence[NicChange]) -> None:
        if not changes:
            return
        with self._lock:
            callbacks = list(self._callbacks)
            for change in changes:
                self._event_seq += 1
                self._events.append({"seq": self._event_seq, **asdict(change)})
            del self._events[:-10000]
        for change in changes:
            log.info("event=nic_addresses_changed nic=%s added=%d removed=%d addresses=%d",
                     change.nic_id, len(set(change.new) - set(change.old)),
                     len(set(change.old) - set(change.new)), len(change.new))
            for callback in callbacks:
                try:
                    result = callback(change.nic_id, change.vm_id, change.old, change.new)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("event=nic_change_callback_failed nic=%s", change.nic_id)
        if self._event_signal is not None:
            async with self._event_signal:
                self._event_signal.notify_all()

    async def _sweep_operations(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            with self._lock:
                expired = self._state.expired_operations(self.config.lro_timeout)
                changes = [c for op in expired if (c := self._state.finish(op)) is not None]
            await self._publish(changes)

    # -- ARM request handling ---------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/_sim/"):
            return await self._admin(request)
        with self._lock:
            delay = self._latency.get(request.method, self._latency.get("*", 0.0))
        if delay:
            await asyncio.sleep(delay)
        principal = ""
        try:
            principal = self._authenticate(request)
            response = await self._serve_arm(request, principal)
        except ArmError as e:
            response = _error(e.status, e.code, e.message, e.headers)
            if e.status == 401:
                response.headers["WWW-Authenticate"] = (
                    'Bearer authorization_uri="https://login.microsoftonline.com/common", '
                    f'error="invalid_token", error_description="{e.message}"')
        response.headers["x-ms-request-id"] = str(uuid.uuid4())
        response.headers["x-ms-correlation-request-id"] = str(uuid.uuid4())
        response.headers["Cache-Control"] = "no-cache"
        with self._lock:
            self._requests.append(RequestRecord(request.method, request.path, response.status,
                                                principal, time.time()))
        return response

    def _authenticate(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        if not header:
            raise ArmError(401, "AuthenticationFailed",
                           "Authentication failed. The 'Authorization' header is missing.")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ArmError(401, "AuthenticationFailedInvalidHeader",
                           "Authentication failed. The 'Authorization' header is provided in "
                           "an invalid format.")
        issued = self._tokens.lookup(token.strip())
        if issued is None:
            raise ArmError(401, "InvalidAuthenticationToken", "The access token is invalid.")
        if issued.expires_on < time.time():
            raise ArmError(401, "ExpiredAuthenticationToken",
                           "The access token expiry UTC time is earlier than current UTC time.")
        if issued.audience not in ARM_AUDIENCES:
            raise ArmError(401, "InvalidAuthenticationTokenAudience",
                           f"The access token has been obtained for wrong audience or resource "
                           f"'{issued.audience}'. It should exactly match one of the allowed "
                           f"audiences {sorted(ARM_AUDIENCES)}.")
        return issued.principal

    def _check_api_version(self, request: web.Request, route: _Route | None) -> None:
        version = request.query.get("api-version")
        if not version:
            raise ArmError(400, "MissingApiVersionParameter",
                           "The api-version query parameter (?api-version=) is required for "
                           "all requests.")
        compute = route is not None and route.kind == "vm"
        supported = (self.config.compute_api_versions if compute
                     else self.config.network_api_versions)
        if version not in supported:
            kind = "virtualMachines" if compute else (route.kind if route else "unknown")
            raise ArmError(400, "NoRegisteredProviderFound",
                           f"No registered resource provider found for location 'eastus' and "
                           f"API version '{version}' for type '{kind}'. The supported "
                           f"api-versions are '{', '.join(supported)}'.")

    def _throttle(self, subscription: str, principal: str, method: str) -> dict[str, str]:
        kind = "reads" if method in ("GET", "HEAD") else "writes"
        config = self.config
        key = (subscription.lower(), principal, kind)
        bucket = self._buckets.get(key)
        if bucket is None:
            qps, burst = ((config.read_qps, config.read_burst) if kind == "reads"
                          else (config.write_qps, config.write_burst))
            bucket = self._buckets[key] = TokenBucket(qps, burst)
        wait = bucket.try_take() if config.throttling else 0.0
        remaining = {f"x-ms-ratelimit-remaining-subscription-{kind}":
                     str(max(0, math.floor(bucket.available)))}
        if wait > 0:
            retry_after = f"{wait:.3f}" if config.fractional_retry_after else str(math.ceil(wait))
            raise ArmError(429, "SubscriptionRequestsThrottled",
                           f"Number of '{kind[:-1]}' requests for subscription '{subscription}' "
                           f"actor '{principal}' exceeded. Please try again after "
                           f"'{retry_after}' seconds after the last request. Please see "
                           "https://aka.ms/ARMThrottling for more information.",
                           {"Retry-After": retry_after, **remaining})
        return remaining

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.method in (method, "*") and fnmatch.fnmatchcase(path.lower(), fault.pattern):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    async def _serve_arm(self, request: web.Request, principal: str) -> web.StreamResponse:
        route = _route(request.path)
        method = request.method
        body: Any = None
        if method in ("PUT", "PATCH", "POST"):
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = ArmError(400, "InvalidRequestContent",
                                "The request content was invalid and could not be deserialized.")
        changes: list[NicChange] = []
        with self._lock:
            self._check_api_version(request, route)
            parts = request.path.split("/")
            subscription = route.subscription if route else (parts[2] if len(parts) > 2 else "")
            headers = self._throttle(subscription, principal, method)
            fault = self._take_fault(method, request.path)
            if fault is not None:
                return _error(fault.status, fault.code, fault.message,
                              {**headers, **fault.headers})
            if route is None:
                raise ArmError(404, "InvalidResourceType",
                               f"The resource type for path '{request.path}' is not served by "
                               "the azure-cni ARM emulator.")
            if isinstance(body, ArmError):
                raise body
            status, payload, extra, changes = self._dispatch(request, route, body)
        await self._publish(changes)
        return web.json_response(payload, status=status, headers={**headers, **extra})

    def _dispatch(self, request: web.Request, route: _Route, body: Any
                  ) -> tuple[int, Any, dict[str, str], list[NicChange]]:
        """Serve a routed request under the state lock: (status, JSON, headers, NIC changes)."""
        state, method = self._state, request.method
        allowed = {"vm": "GET", "nics": "GET", "nic": "GET PUT PATCH", "ipconfigs": "GET",
                   "ipconfig": "GET", "vnet": "GET", "subnet": "GET", "operation": "GET",
                   "usages": "GET", "check_ip": "GET"}
        if method not in allowed[route.kind].split():
            raise ArmError(405, "MethodNotAllowed",
                           f"The requested resource does not support http method '{method}'.")
        sub, rg, names = route.subscription, route.resource_group, route.names
        limit = self.config.subnet_list_limit
        if route.kind == "vm":
            return 200, vm_json(state.vm(sub, rg, names[0])), {}, []
        if route.kind == "vnet":
            return 200, vnet_json(state.vnet(sub, rg, names[0]), state, limit), {}, []
        if route.kind == "subnet":
            return 200, subnet_json(state.subnet(sub, rg, names[0], names[1]), state, limit), \
                {}, []
        if route.kind == "usages":
            return 200, {"value": usages_json(state.vnet(sub, rg, names[0]))}, {}, []
        if route.kind == "check_ip":
            vnet = state.vnet(sub, rg, names[0])
            return 200, check_ip_json(vnet, request.query.get("ipAddress", "")), {}, []
        if route.kind == "nics":
            state.require_group(sub, rg)
            prefix = f"/subscriptions/{sub}/resourcegroups/{rg}/".lower()
            value = [nic_json(n) for key, n in state.nics.items() if key.startswith(prefix)]
            return 200, {"value": value}, {}, []
        if route.kind in ("ipconfigs", "ipconfig"):
            configs = nic_json(state.nic(sub, rg, names[0]))["properties"]["ipConfigurations"]
            if route.kind == "ipconfigs":
                return 200, {"value": configs}, {}, []
            found = next((c for c in configs if c["name"].lower() == names[1].lower()), None)
            if found is None:
                raise ArmError(404, "NotFound", f"Resource {request.path} not found.")
            return 200, found, {}, []
        if route.kind == "operation":
            op, change = state.poll(names[0])
            return 200, self._operation_body(op), self._poll_headers(op), \
                [change] if change else []
        if method == "GET":
            return 200, nic_json(state.nic(sub, rg, names[0])), {}, []
        if method == "PATCH":  # updateTags: synchronous, touches nothing but tags
            nic = state.nic(sub, rg, names[0])
            tags = body.get("tags") if isinstance(body, Mapping) else None
            if not isinstance(tags, Mapping):
                raise ArmError(400, "InvalidRequestContent", "The body must be {\"tags\": {...}}.")
            nic.tags = {str(k): str(v) for k, v in tags.items()}
            nic.etag = new_etag()
            return 200, nic_json(nic), {}, []
        return self._put_nic(request, route, body)

    def _operation_url(self, request: web.Request, op: Operation) -> str:
        return (f"https://{request.host}/subscriptions/{op.subscription}/providers/"
                f"Microsoft.Network/locations/{op.location}/operations/{op.id}"
                f"?api-version={NETWORK_API_VERSION}")

    def _put_nic(self, request: web.Request, route: _Route, body: Any
                 ) -> tuple[int, Any, dict[str, str], list[NicChange]]:
        failure = None
        for planned in self._operation_failures:
            if fnmatch.fnmatchcase(request.path.lower(), planned.pattern):
                self._operation_failures.remove(planned)
                failure = (planned.outcome, planned.code, planned.message)
                break
        nic, created = self._state.put_nic(
            route.subscription, route.resource_group, route.names[0], body,
            if_match=request.headers.get("If-Match"),
            if_none_match=request.headers.get("If-None-Match"),
            polls=self.config.lro_polls, failure=failure,
            conflict_retry_after=self.config.conflict_retry_after,
            operation_url=lambda op: self._operation_url(request, op))
        assert nic.operation is not None
        headers = {"Azure-AsyncOperation": self._operation_url(request, nic.operation),
                   "Retry-After": str(self.config.put_retry_after)}
        log.debug("event=nic_write_accepted nic=%s operation=%s", nic.id, nic.operation.id)
        return (201 if created else 200), nic_json(nic), headers, []

    def _operation_body(self, op: Operation) -> dict[str, Any]:
        body: dict[str, Any] = {"id": op.id, "name": op.id, "status": op.status}
        if op.status in ("Failed", "Canceled") and op.error is not None:
            body["error"] = {"code": op.error[0], "message": op.error[1]}
        return body

    def _poll_headers(self, op: Operation) -> dict[str, str]:
        after = self.config.poll_retry_after
        if op.status != "InProgress" or after is None:
            return {}
        return {"Retry-After": f"{after:g}"}

    # -- admin API (another process drives the emulator through it) -----------------------------

    async def _admin(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._admin_inner(request)
        except (ValueError, KeyError, TypeError) as e:
            return web.json_response({"error": f"{type(e).__name__}: {e}"}, status=400)

    async def _admin_inner(self, request: web.Request) -> web.StreamResponse:
        what = request.path.removeprefix("/_sim/").strip("/")
        method = request.method
        body: Any = await request.json() if request.can_read_body else {}
        if (method, what) == ("GET", "state"):
            return web.json_response(self.snapshot())
        if (method, what) == ("GET", "endpoints"):
            return web.json_response(self.endpoints())
        if what == "requests":
            if method == "DELETE":
                self.reset_requests()
                return web.json_response({})
            found = self.requests(request.query.get("method"), request.query.get("path"))
            return web.json_response({"count": len(found),
                                      "requests": [asdict(r) for r in found]})
        if (method, what) == ("POST", "faults"):
            self.inject_fault(body["method"], body["path"], int(body["status"]),
                              body.get("code", ""), message=body.get("message", ""),
                              headers=body.get("headers"), count=int(body.get("count", 1)))
            return web.json_response({}, status=201)
        if (method, what) == ("DELETE", "faults"):
            self.clear_faults()
            return web.json_response({})
        if (method, what) == ("POST", "operation-failures"):
            self.fail_next_operation(body["path"], body["code"], body.get("message", ""),
                                     body.get("outcome", "Failed"))
            return web.json_response({}, status=201)
        if (method, what) == ("POST", "latency"):
            self.set_latency(body["method"], float(body["seconds"]))
            return web.json_response({})
        if what == "config":
            if method == "PATCH":
                known = {f.name for f in fields(ArmConfig)}
                self.configure(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in body.items() if k in known})
            return web.json_response(asdict(self.config))
        if (method, what) == ("POST", "vnets"):
            vnet = self.add_vnet(body["name"], body["addressSpace"], body.get("subnets"),
                                 **_placement(body))
            return web.json_response(asdict(vnet), status=201)
        if (method, what) == ("POST", "vms"):
            vm = self.add_vm(body["name"], body["subnetId"], primary_ip=body.get("primaryIP"),
                             scale_set=body.get("scaleSet"),
                             identities=tuple(body.get("identities") or ()),
                             **_placement(body, location_default=None))
            return web.json_response({**asdict(vm), "providerID": vm.provider_id}, status=201)
        if (method, what) == ("POST", "tokens"):
            return web.json_response({"token": self.issue_token(body.get("principal", "admin"))})
        if (method, what) == ("GET", "events"):
            return web.json_response(await self._wait_events(
                int(request.query.get("after", "0")), float(request.query.get("timeout", "0"))))
        return web.json_response({"error": f"no admin endpoint {method} /_sim/{what}"},
                                 status=404)

    async def _wait_events(self, after: int, timeout: float) -> dict[str, Any]:
        """NIC changes with a sequence number above ``after``, waiting up to ``timeout``."""
        def newer() -> list[dict[str, Any]]:
            with self._lock:
                return [e for e in self._events if e["seq"] > after]

        found = newer()
        if not found and timeout > 0 and self._event_signal is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout), self._event_signal:
                    await self._event_signal.wait_for(lambda: bool(newer()))
            found = newer()
        with self._lock:
            last = self._event_seq
        return {"events": found, "last": last}


def _placement(body: Mapping[str, Any], location_default: str | None = "eastus"
               ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if body.get("subscription"):
        out["subscription"] = body["subscription"]
    if body.get("resourceGroup"):
        out["resource_group"] = body["resourceGroup"]
    location = body.get("location") or location_default
    if location:
        out["location"] = location
    return out


@dataclass
class Topology:
    """A VNet and VMs to create, read from ``azure-cni-sim arm`` flags or a YAML file."""

    vnets: list[dict[str, Any]] = field(default_factory=list)
    vms: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any]) -> Topology:
        """``{vnets: [{name, addressSpace, subnets: {name: cidr}, resourceGroup?, location?}],
        vms: [{name, subnet: "<vnet>/<subnet>", primaryIP?, scaleSet?, identities?}]}``."""
        vnets = list(doc.get("vnets") or [])
        vms = list(doc.get("vms") or [])
        for vnet in vnets:
            for key in ("name", "addressSpace"):
                if key not in vnet:
                    raise ValueError(f"topology: a vnet needs {key!r}: {vnet}")
        for vm in vms:
            if "name" not in vm or "subnet" not in vm:
                raise ValueError(f"topology: a vm needs 'name' and 'subnet': {vm}")
        return cls(vnets, vms)

    def apply(self, emulator: ArmEmulator) -> list[VmInfo]:
        """Create the VNets, then the VMs; return the VMs created."""
        subnets: dict[str, str] = {}
        for vnet in self.vnets:
            info = emulator.add_vnet(vnet["name"], vnet["addressSpace"], vnet.get("subnets"),
                                     **_placement(vnet))
            for name, subnet_id in info.subnet_ids.items():
                subnets[f"{vnet['name']}/{name}".lower()] = subnet_id
        created = []
        for vm in self.vms:
            vm_subnet = subnets.get(str(vm["subnet"]).lower())
            if vm_subnet is None:
                raise ValueError(f"topology: VM {vm['name']} names unknown subnet "
                                 f"{vm['subnet']!r} (known: {', '.join(sorted(subnets))})")
            created.append(emulator.add_vm(
                vm["name"], vm_subnet, primary_ip=vm.get("primaryIP"),
                scale_set=vm.get("scaleSet"), identities=tuple(vm.get("identities") or ())))
        return created
