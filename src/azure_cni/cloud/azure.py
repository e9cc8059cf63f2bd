"""``AzureNetwork`` on the async azure-mgmt-network / azure-mgmt-compute clients.

The same code reaches public Azure, a sovereign cloud or the ARM emulator: only the settings'
``armEndpoint``, ``authorityHost`` and ``caBundle`` differ, and TLS is always on. Every HTTP
request (SDK retries and long-running-operation polls included) waits for its subscription's
read or write budget (``ratelimit``: ARM's bucket as ARM reports it, down to a reserve), is
timed in a metric, and its answer corrects the budget; a 429's Retry-After pauses the budget
so that concurrent callers back off together instead of storming ARM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from azure.core import MatchConditions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy, HttpLoggingPolicy
from azure.core.pipeline.transport import AioHttpTransport
from azure.core.rest import HttpRequest
from azure.mgmt.compute.aio import ComputeManagementClient
from azure.mgmt.compute.models import VirtualMachineScaleSetVM
from azure.mgmt.core.exceptions import ARMErrorFormat
from azure.mgmt.network.aio import NetworkManagementClient
from azure.mgmt.network.models import NetworkInterface

from azure_cni.aio.keyed_locks import KeyedLocks
from azure_cni.api.settings import AzureSettings
from azure_cni.cloud.armjson import (
    NETWORK_API_VERSION,
    edit_ip_configurations,
    listed_nic,
    load_collapsed,
    parse_nic,
    parse_subnet,
    parse_vm_nic_ids,
    parse_vm_primary_nic_id,
    parse_vnet_address_space,
    settled_nic,
)
from azure_cni.cloud.credentials import arm_credential_scopes, build_credential
from azure_cni.cloud.errors import (
    DEFAULT_RETRY_AFTER,
    retry_after_seconds,
    taken_addresses,
    to_cloud_error,
)
from azure_cni.cloud.metrics import API_CALLS, API_DURATION, RATE_LIMIT_REMAINING
from azure_cni.cloud.permissions import PERMISSIONS_API_VERSION, PermissionSet
from azure_cni.cloud.port import (
    AddressInUse,
    AttachmentRefused,
    CloudError,
    Conflict,
    FeatureEdit,
    ListedNic,
    NewIPConfiguration,
    NicSnapshot,
    SubnetInfo,
    Throttled,
    VMRef,
)
from azure_cni.cloud.ratelimit import ArmBudgets, Kind, remaining_in
from azure_cni.cloud.resourceid import ResourceID, parse_resource_id
from azure_cni.cloud.scaleset import (
    VMSS_NETWORK_API_VERSION,
    InstanceNic,
    edit_instance_ip_configurations,
    instance_nic,
)
from azure_cni.cloud.vmnics import choose_nic

log = logging.getLogger(__name__)
# The SDK logs every request and response at INFO; _ArmRequestPolicy logs one line per request
# at DEBUG instead. Set this logger to INFO to see the SDK's (redacted) dumps again.
_sdk_http_log = logging.getLogger(f"{__name__}.http")
_sdk_http_log.setLevel(logging.WARNING)

_TYPE_LABELS = {t.lower(): t for t in (
    "networkInterfaces", "virtualMachines", "virtualNetworks", "subnets", "operations",
    "ipConfigurations", "virtualMachineScaleSets", "usages", "resourceGroups")}


_COMPUTE = "/providers/microsoft.compute/"


def api_operation(method: str, url: str) -> str:
    """A metric label: innermost resource type and verb, e.g. ``networkInterfaces.put``."""
    parts = [p for p in urlsplit(url).path.split("/") if p]
    providers = [i for i, p in enumerate(parts) if p.lower() == "providers"]
    types = parts[providers[-1] + 2::2] if providers else parts[-2::-2][:1]
    kind = types[-1].lower() if types else "root"
    return f"{_TYPE_LABELS.get(kind, kind)}.{method.lower()}"


def request_kind(method: str) -> Kind:
    """ARM meters GET/HEAD as reads and everything else as writes."""
    return "read" if method.upper() in ("GET", "HEAD") else "write"


class _ArmRequestPolicy(AsyncHTTPPolicy[Any, Any]):
    """Budget, time and count each request as it is sent (after the SDK's retry policy)."""

    def __init__(self, budgets: ArmBudgets) -> None:
        self._budgets = budgets
        #: (kind, resource path) -> when a resource provider's throttling of it ends
        self._resource_pauses: dict[tuple[Kind, str], float] = {}

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        http = request.http_request
        operation = api_operation(http.method, http.url)
        kind = request_kind(http.method)
        resource = (kind, urlsplit(http.url).path.lower())
        paused = self._resource_pauses.get(resource, 0.0) - time.monotonic()
        if paused > 0:
            raise Throttled(f"{http.method} {urlsplit(http.url).path} is throttled by its "
                            f"resource provider for {paused:.0f} more seconds",
                            retry_after=paused, code="ResourceThrottled")
        self._resource_pauses.pop(resource, None)
        budget, ticket = await self._budgets.wait(http.url, kind, operation)
        start = time.monotonic()
        try:
            response = await self.next.send(request)
        except BaseException as e:
            budget.answered(ticket)  # it may have reached ARM: the token stays spent
            if isinstance(e, AzureError):
                self._observe(operation, "transport_error", start)
            raise
        status = response.http_response.status_code
        self._observe(operation, str(status), start)
        headers = response.http_response.headers
        left = remaining_in(headers, kind)
        if status == 429 and left is not None and left >= 1 and _COMPUTE in resource[1]:
            # ARM had room: Compute refused this resource (its per-VM limits, or the instance
            # is busy). Only this resource waits, and the caller is told at once instead of
            # the SDK sleeping out a Retry-After of up to a minute in an operator worker.
            wait = retry_after_seconds(headers) or DEFAULT_RETRY_AFTER
            budget.answered(ticket, left)
            self._resource_pauses[resource] = time.monotonic() + wait
            log.info("event=azure_resource_throttled operation=%s retry_after=%s", operation,
                     wait)
            raise await _throttled(response, wait)
        if status == 429:
            # every caller sharing this budget waits, not only the one the SDK retries
            wait = retry_after_seconds(headers) or DEFAULT_RETRY_AFTER
            budget.answered(ticket, retry_after=wait)
            log.info("event=azure_throttled operation=%s retry_after=%s", operation, wait)
        else:
            budget.answered(ticket, remaining_in(headers, kind))
        RATE_LIMIT_REMAINING.labels(kind=kind).set(budget.tokens)
        return response

    @staticmethod
    def _observe(operation: str, status: str, start: float) -> None:
        elapsed = time.monotonic() - start
        API_DURATION.labels(operation=operation, status=status).observe(elapsed)
        API_CALLS.labels(operation=operation, status=status).inc()
        log.debug("event=azure_request operation=%s status=%s seconds=%.3f",
                  operation, status, elapsed)


async def _throttled(response: PipelineResponse[Any, Any], wait: float) -> Throttled:
    """The Throttled error a resource provider's 429 stands for, with its code and message."""
    code, message = "", "throttled by the resource provider"
    with contextlib.suppress(Exception):  # the error body is a courtesy: the status decides
        await response.http_response.read()
        error = response.http_response.json().get("error") or {}
        code, message = str(error.get("code") or ""), str(error.get("message") or message)
    return Throttled(message, retry_after=wait, code=code)


@contextlib.contextmanager
def _typed_errors() -> Iterator[None]:
    try:
        yield
    except AzureError as e:
        raise to_cloud_error(e) from e


def _expect(ref: ResourceID, resource_id: str, namespace: str, *types: str) -> None:
    if not ref.is_type(namespace, *types):
        raise CloudError(f"{resource_id!r} is not a {namespace}/{'/'.join(types)} resource ID",
                         code="InvalidResourceId")


class AzureAdapter:
    """The operator's ``AzureNetwork`` on Azure Resource Manager.

    ``credential`` defaults to the one the settings name (and is then closed by ``close``);
    ``client_options`` are extra azure-core pipeline keywords such as ``retry_total``.
    """

    def __init__(
        self,
        settings: AzureSettings,
        *,
        credential: AsyncTokenCredential | None = None,
        budgets: ArmBudgets | None = None,
        max_write_attempts: int = 5,
        vnet_cache_seconds: float = 60.0,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._settings = settings
        self._owns_credential = credential is None
        self._credential = credential if credential is not None else build_credential(settings)
        self.budgets = budgets if budgets is not None else ArmBudgets(settings)
        self._policy = _ArmRequestPolicy(self.budgets)
        self._max_write_attempts = max(1, max_write_attempts)
        self._vnet_cache_seconds = vnet_cache_seconds
        self._client_kwargs: dict[str, Any] = {
            "base_url": settings.arm_endpoint,
            "credential_scopes": arm_credential_scopes(settings.arm_endpoint),
            "polling_interval": settings.polling_interval,
            "per_retry_policies": [self._policy],
            "http_logging_policy": HttpLoggingPolicy(logger=_sdk_http_log),
        }
        self._client_kwargs.update(client_options or {})
        self._session: aiohttp.ClientSession | None = None
        self._network: dict[str, NetworkManagementClient] = {}
        self._compute: dict[str, ComputeManagementClient] = {}
        self._vnet_spaces: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._nic_locks: KeyedLocks[str] = KeyedLocks()

    async def __aenter__(self) -> AzureAdapter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _transport(self) -> AioHttpTransport:
        """One connection pool for every client, with one TLS context.

        azure-core builds a new SSLContext for every request when ``connection_verify`` is a
        CA file, and aiohttp pools connections per context: every request then opened a TLS
        connection of its own and left it idle (about 1 MB each, measured in
        bench/operator_scale.py). The context is therefore made once, in the connector.
        """
        if self._session is None:
            tls = (ssl.create_default_context(cafile=self._settings.ca_bundle)
                   if self._settings.ca_bundle else ssl.create_default_context())
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=tls), trust_env=True,
                cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
        return AioHttpTransport(session=self._session, session_owner=False)

    def _network_client(self, subscription: str) -> NetworkManagementClient:
        key = subscription.lower()
        if key not in self._network:
            self._network[key] = NetworkManagementClient(
                self._credential, subscription, transport=self._transport(),
                **self._client_kwargs)
        return self._network[key]

    def _compute_client(self, subscription: str) -> ComputeManagementClient:
        key = subscription.lower()
        if key not in self._compute:
            self._compute[key] = ComputeManagementClient(
                self._credential, subscription, transport=self._transport(),
                **self._client_kwargs)
        return self._compute[key]

    async def _read_nic(self, ref: ResourceID) -> NicSnapshot:
        client = self._network_client(ref.subscription)
        with _typed_errors():
            model = await client.network_interfaces.get(ref.resource_group, ref.name)
        return parse_nic(model.as_dict())

    async def get_vm_nic(self, vm: VMRef, pod_subnet_id: str = "") -> NicSnapshot:
        """The VM's NIC in ``pod_subnet_id`` (its primary NIC when empty): one VM GET, then
        one NIC GET (the primary) or one per NIC of the VM (a pod subnet); for a Uniform
        scale-set instance, one read of its NICs through the Network provider's scale-set
        NIC API."""
        if vm.scale_set is not None:
            return await self._read_instance_nic_for(vm, *vm.scale_set,
                                                     pod_subnet_id=pod_subnet_id)
        compute = self._compute_client(vm.subscription_id)
        with _typed_errors():
            model = await compute.virtual_machines.get(vm.resource_group, vm.name)
        document = model.as_dict()
        if not pod_subnet_id:
            return await self._read_nic(parse_resource_id(parse_vm_primary_nic_id(document)))
        ids = parse_vm_nic_ids(document)
        # the VM's networkProfile says which NIC is primary; the NIC's own flag may lag
        nics = [replace(await self._read_nic(parse_resource_id(nic_id)), primary_nic=i == 0)
                for i, nic_id in enumerate(ids)]
        return choose_nic(vm.id, nics, pod_subnet_id)

    async def get_nic(self, nic_id: str) -> NicSnapshot:
        """A NIC by resource ID (a Network NIC or a scale-set instance's): one GET."""
        ref = parse_resource_id(nic_id)
        instance = instance_nic(ref)
        if instance is not None:
            return await self._read_instance_nic(instance)
        _expect(ref, nic_id, "Microsoft.Network", "networkInterfaces")
        return await self._read_nic(ref)

    # -- Uniform scale-set instances ---------------------------------------------------------

    async def _read_instance_nic(self, nic: InstanceNic) -> NicSnapshot:
        client = self._network_client(nic.subscription)
        with _typed_errors():
            model = await client.network_interfaces.get_virtual_machine_scale_set_network_interface(
                nic.resource_group, nic.scale_set, nic.instance_id, nic.nic,
                api_version=VMSS_NETWORK_API_VERSION)
        return parse_nic(model.as_dict())

    async def _read_instance_nic_for(self, vm: VMRef, scale_set: str, instance: str, *,
                                     pod_subnet_id: str) -> NicSnapshot:
        client = self._network_client(vm.subscription_id)
        nics = []
        with _typed_errors():
            async for model in client.network_interfaces.\
                    list_virtual_machine_scale_set_vm_network_interfaces(
                        vm.resource_group, scale_set, instance,
                        api_version=VMSS_NETWORK_API_VERSION):
                nics.append(parse_nic(model.as_dict()))
        return choose_nic(vm.id, nics, pod_subnet_id)

    def list_scale_set_nics(self, subscription_id: str, resource_group: str, scale_set: str
                            ) -> AsyncIterator[ListedNic]:
        """Every instance NIC of a Uniform scale set: one GET per page, following nextLink."""
        return self._nic_pages(
            subscription_id,
            f"/subscriptions/{quote(subscription_id)}/resourceGroups/{quote(resource_group)}"
            f"/providers/Microsoft.Compute/virtualMachineScaleSets/{quote(scale_set)}"
            f"/networkInterfaces?api-version={VMSS_NETWORK_API_VERSION}")

    async def _write_instance_once(self, nic: InstanceNic, nic_id: str, *,
                                   known: NicSnapshot | None, add: Sequence[NewIPConfiguration],
                                   remove: Sequence[str], reapply: bool) -> NicSnapshot:
        """GET the instance model, edit its NIC configuration, PUT it If-Match its etag and
        read the NIC back: the one write of a Uniform instance."""
        compute = self._compute_client(nic.subscription)
        with _typed_errors():
            model = await compute.virtual_machine_scale_set_vms.get(
                nic.resource_group, nic.scale_set, nic.instance_id)
        document = model.as_dict()
        edit = edit_instance_ip_configurations(
            document, nic.nic, add, remove, reapply=reapply,
            copy_application_security_groups=self._settings.copy_application_security_groups,
            copy_load_balancer_pools=self._settings.copy_load_balancer_pools)
        if edit is None:
            return known if known is not None else await self._read_instance_nic(nic)
        pinned = [n.name for n in add if n.address is not None and n.name in edit.added]
        if pinned:
            log.info("event=instance_address_not_pinned nic=%s ip_configurations=%s reason=%s",
                     nic_id, ",".join(pinned), "a scale-set model cannot ask for an address")
        etag = str(document.get("etag") or "") or None
        started = time.monotonic()
        poller = await compute.virtual_machine_scale_set_vms.begin_update(
            nic.resource_group, nic.scale_set, nic.instance_id,
            VirtualMachineScaleSetVM(edit.body), etag=etag,
            match_condition=MatchConditions.IfNotModified if etag else None)
        await poller.result()
        snapshot = await self._read_instance_nic(nic)
        log.info("event=instance_updated nic=%s added=%d removed=%d seconds=%.2f "
                 "ip_configurations=%d", nic_id, len(edit.added), len(edit.removed),
                 time.monotonic() - started, len(snapshot.ip_configurations))
        return snapshot

    async def list_nics(self, subscription_id: str, resource_group: str
                        ) -> AsyncIterator[ListedNic]:
        """Every NIC of the resource group: one GET per page of NICs, following nextLink.

        The pages are read as JSON through the client's own pipeline (``send_request``:
        authentication, retries and the budget as for every call), not as SDK models: the
        models of 5,000 NICs took 8 s of CPU per listing, every driftCheckSeconds.
        """
        async for nic in self._nic_pages(
                subscription_id,
                f"/subscriptions/{quote(subscription_id)}/resourceGroups/{quote(resource_group)}"
                f"/providers/Microsoft.Network/networkInterfaces?api-version="
                f"{NETWORK_API_VERSION}"):
            yield nic

    async def _nic_pages(self, subscription_id: str, first: str) -> AsyncIterator[ListedNic]:
        client = self._network_client(subscription_id)
        url: str | None = first
        while url:
            page = json.loads(await self._get_json(client, url))
            for nic in page.get("value") or ():
                yield listed_nic(nic)
            url = page.get("nextLink")

    @staticmethod
    async def _get_json(client: NetworkManagementClient, url: str) -> bytes:
        """GET ``url`` (a path, or a nextLink) through the client's own pipeline
        (authentication, retries, the budget, as for every call); its body as sent."""
        if "api-version=" not in url:
            url += f"{'&' if '?' in url else '?'}api-version={NETWORK_API_VERSION}"
        with _typed_errors():
            # as a stream: the pipeline would otherwise parse the whole body once more itself
            response = await client.send_request(HttpRequest("GET", url), stream=True)
            try:
                body = await response.read()
            finally:
                await response.close()
            if response.status_code != 200:
                raise HttpResponseError(response=response, error_format=ARMErrorFormat)
        return body

    async def update_ip_configurations(
        self,
        nic: str | NicSnapshot,
        add: Sequence[NewIPConfiguration] = (),
        remove: Sequence[str] = (),
        *,
        reapply: bool = False,
        features: Mapping[str, FeatureEdit] | None = None,
    ) -> NicSnapshot:
        """Edit and If-Match PUT of the whole NIC (of a Uniform instance: of its model, through
        Compute); retried from a fresh GET on conflict.

        A snapshot with its document is written without reading the NIC again. Returns the
        NIC once the long-running operation has succeeded, so its ipConfigurations are
        ``Succeeded``; nothing is written when the NIC already matches the request, unless
        ``reapply``.
        """
        nic_id = nic if isinstance(nic, str) else nic.id
        ref = parse_resource_id(nic_id)
        instance = instance_nic(ref)
        if instance is None:
            _expect(ref, nic_id, "Microsoft.Network", "networkInterfaces")
        known = None if isinstance(nic, str) or nic.document is None else nic
        # writers in this process queue here instead of failing on the etag
        async with self._nic_locks.hold(nic_id.lower()):
            if instance is not None:
                wanted = sorted({r for f in (features or {}).values() for r in f.attaches})
                if wanted:
                    # per-pod features go on Network-provider NICs only (standalone VMs and
                    # Flexible instances); the instance model path does not carry them
                    raise AttachmentRefused(
                        f"azure-cni does not put public IPs or backend pools on the "
                        f"ipConfigurations of a Uniform scale-set instance ({nic_id}); use "
                        f"nodes that are standalone VMs or Flexible instances for such pods",
                        resources=wanted, code="UnsupportedOnScaleSetInstance")
                return await self._update_instance_locked(
                    instance, nic_id, known=known, add=add, remove=remove, reapply=reapply)
            return await self._update_locked(ref, nic_id, known=known, add=add, remove=remove,
                                             reapply=reapply, features=features or {})

    async def _update_locked(self, ref: ResourceID, nic_id: str, *, known: NicSnapshot | None,
                             add: Sequence[NewIPConfiguration],
                             remove: Sequence[str], reapply: bool,
                             features: Mapping[str, FeatureEdit]) -> NicSnapshot:
        client = self._network_client(ref.subscription)
        for attempt in range(1, self._max_write_attempts + 1):
            current = known if known is not None and attempt == 1 else await self._read_nic(ref)
            assert current.document is not None
            document = json.loads(current.document)
            edit = edit_ip_configurations(
                document, add, remove,
                copy_application_security_groups=self._settings.copy_application_security_groups,
                copy_load_balancer_pools=self._settings.copy_load_balancer_pools,
                features=features)
            if edit is None and not reapply:
                return current
            body = edit.body if edit is not None else document
            headers = {"If-Match": current.etag} if current.etag else {}
            started = time.monotonic()
            try:
                snapshot = await self._put_nic(client, ref, body, headers)
            except AzureError as e:
                await asyncio.sleep(self._retry_in(e, add, attempt, nic_id))
                continue
            log.info("event=nic_updated nic=%s added=%d removed=%d featured=%d attempt=%d "
                     "seconds=%.2f ip_configurations=%d", nic_id, len(edit.added) if edit else 0,
                     len(edit.removed) if edit else 0, len(edit.featured) if edit else 0,
                     attempt, time.monotonic() - started, len(snapshot.ip_configurations))
            return snapshot
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _put_nic(self, client: NetworkManagementClient, ref: ResourceID,
                       body: Mapping[str, Any], headers: Mapping[str, str]) -> NicSnapshot:
        """PUT the NIC and follow its long-running operation to the end; the NIC as the PUT
        answered it, settled.

        The SDK's poller ends every successful operation with a GET of the NIC. The PUT's
        own answer already holds every ipConfiguration with its address (NRP allocates them
        before it answers), so that read only repeats it: one ARM read per NIC write, a
        third of what the fill of a new node costs, on the read bucket that was the binding
        limit at 5,000 nodes. The NIC is read only if the answer lacks an address.
        """
        poller = await client.network_interfaces.begin_create_or_update(
            ref.resource_group, ref.name, NetworkInterface(body), headers=dict(headers),
            polling=False, cls=lambda response, _model, _headers: response)
        put = (await poller.result()).http_response
        answer = put.json()
        await self._follow_operation(client, put)
        snapshot = settled_nic(answer)
        return snapshot if snapshot is not None else await self._read_nic(ref)

    async def _follow_operation(self, client: NetworkManagementClient, put: Any) -> None:
        """Poll a PUT's ``Azure-AsyncOperation`` until it ends, as azure-core's ARM poller
        does: the first poll at once, then after the last answer's Retry-After or the polling
        interval. A Failed or Canceled operation raises its error (with the poll's 200)."""
        url = put.headers.get("Azure-AsyncOperation")
        if not url:
            # no operation to follow: the PUT's answer is final (200 with Succeeded)
            return
        while True:
            response = await client.send_request(HttpRequest("GET", url))
            if not 200 <= response.status_code <= 204:
                raise HttpResponseError(response=response, error_format=ARMErrorFormat)
            status = str((response.json() or {}).get("status") or "")
            if status.lower() == "succeeded":
                return
            if status.lower() in ("failed", "canceled"):
                raise HttpResponseError(response=response, error_format=ARMErrorFormat)
            if not status:
                raise HttpResponseError(message="the operation's status has no 'status'",
                                        response=response)
            await asyncio.sleep(retry_after_seconds(response.headers)
                                or self._settings.polling_interval)

    async def _update_instance_locked(
            self, nic: InstanceNic, nic_id: str, *, known: NicSnapshot | None,
            add: Sequence[NewIPConfiguration], remove: Sequence[str],
            reapply: bool) -> NicSnapshot:
        for attempt in range(1, self._max_write_attempts + 1):
            try:
                return await self._write_instance_once(
                    nic, nic_id, known=known if attempt == 1 else None, add=add, remove=remove,
                    reapply=reapply)
            except AzureError as e:
                await asyncio.sleep(self._retry_in(e, add, attempt, nic_id))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _retry_in(self, cause: AzureError, add: Sequence[NewIPConfiguration], attempt: int,
                  nic_id: str) -> float:
        """How long to wait before writing again after ``cause``; raises the typed error
        when it is not a conflict or this was the last attempt."""
        error = to_cloud_error(cause)
        if isinstance(error, AddressInUse):
            error = AddressInUse(
                str(error), code=error.code, status=error.status,
                addresses=taken_addresses(str(error), [a.address for a in add
                                                       if a.address is not None]))
        if not isinstance(error, Conflict) or attempt == self._max_write_attempts:
            log.warning("event=nic_update_failed nic=%s code=%s attempt=%d error=%s",
                        nic_id, error.code, attempt, error)
            raise error from cause
        delay = self._conflict_delay(error, cause, attempt)
        log.info("event=nic_update_conflict nic=%s code=%s attempt=%d retry_in=%.2f",
                 nic_id, error.code, attempt, delay)
        return delay

    def _conflict_delay(self, error: CloudError, cause: AzureError, attempt: int) -> float:
        if error.status == 412:
            # the NIC changed between our GET and PUT: re-read at once, with jitter so two
            # writers racing each other do not collide again in lockstep
            return random.uniform(0.0, 0.05 * attempt)
        # another operation holds the NIC: give it the time the server asks, or a poll interval
        response = getattr(cause, "response", None)
        asked = retry_after_seconds(response.headers) if response is not None else None
        return asked if asked else self._settings.polling_interval * attempt

    async def get_subnet(self, subnet_id: str) -> SubnetInfo:
        """The subnet's prefix and free addresses, with its VNet's address space (cached)."""
        ref = parse_resource_id(subnet_id)
        _expect(ref, subnet_id, "Microsoft.Network", "virtualNetworks", "subnets")
        client = self._network_client(ref.subscription)
        vnet = ref.name_of("virtualNetworks")
        # as raw JSON, its references collapsed: a subnet lists every ipConfiguration in it
        # (45,000 at 5,000 nodes), which as SDK models took 40 MB and seconds of CPU a read
        subnet = load_collapsed(await self._get_json(client, quote(subnet_id)))
        return parse_subnet(subnet, await self._vnet_address_space(ref, vnet))

    async def get_tags(self, resource_id: str) -> Mapping[str, str]:
        """One GET of the public IP or load balancer, read as JSON for its tags alone (a load
        balancer lists every member of its pools)."""
        ref = parse_resource_id(resource_id)
        if not (ref.is_type("Microsoft.Network", "publicIPAddresses")
                or ref.is_type("Microsoft.Network", "loadBalancers")):
            raise CloudError(f"{resource_id!r} is not a public IP address or load balancer",
                             code="InvalidResourceId")
        client = self._network_client(ref.subscription)
        tags = json.loads(await self._get_json(client, quote(resource_id))).get("tags") or {}
        return {str(k): str(v) for k, v in tags.items()}

    async def _vnet_address_space(self, ref: ResourceID, vnet: str) -> tuple[str, ...]:
        key = f"{ref.subscription}/{ref.resource_group}/{vnet}".lower()
        cached = self._vnet_spaces.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        client = self._network_client(ref.subscription)
        # the VNet lists every subnet with every ipConfiguration in it: raw and collapsed too
        path = (f"/subscriptions/{quote(ref.subscription)}/resourceGroups/"
                f"{quote(ref.resource_group)}/providers/Microsoft.Network/virtualNetworks/"
                f"{quote(vnet)}")
        space = parse_vnet_address_space(load_collapsed(await self._get_json(client, path)))
        self._vnet_spaces[key] = (now + self._vnet_cache_seconds, space)
        return space

    async def get_permissions(self, scope: str) -> tuple[PermissionSet, ...]:
        """What this identity may do at ``scope`` (a resource ID, a resource group or a
        subscription): the permissions API's permission sets (``cloud.permissions``)."""
        parts = scope.strip("/").split("/")
        if len(parts) < 2 or parts[0].lower() != "subscriptions":
            raise CloudError(f"{scope!r} is not an Azure scope (/subscriptions/<s>/...)",
                             code="InvalidScope")
        client = self._network_client(parts[1])
        path = (f"{quote(scope.rstrip('/'))}/providers/Microsoft.Authorization/permissions"
                f"?api-version={PERMISSIONS_API_VERSION}")
        page = json.loads(await self._get_json(client, path))
        return tuple(PermissionSet.from_json(p) for p in page.get("value") or ())

    async def close(self) -> None:
        """Close every client and, if the adapter made it, the credential."""
        clients: list[NetworkManagementClient | ComputeManagementClient] = [
            *self._network.values(), *self._compute.values()]
        self._network.clear()
        self._compute.clear()
        for client in clients:
            await client.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._owns_credential:
            await self._credential.close()
