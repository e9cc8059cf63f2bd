"""azure-cni's configuration: one file (the chart's ConfigMap), defaults defined here once.

The operator reads ``pool`` and ``azure`` and ``operator``; the node agent reads ``agent`` and
``snat``, and ``standalone`` on a VM without Kubernetes. The chart's ``values.yaml`` documents
the same keys with the same defaults (all but ``standalone``, which the chart never turns on),
and a test keeps the two equal. Keys are camelCase, as in the chart.

Each setting is declared once, as a dataclass field: its key (``wire("minIPs")`` where camelCase
would not spell it as the chart does), its type (the annotation), its default and its bounds.
The one codec of ``api/wire.py`` reads the file with them, refusing unknown keys and naming the
key of any bad value; ``pool`` is a NodeIPPool spec without its node, declared on ``PoolSpec``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from azure_cni.api.nodeippool import PoolDefaults as PoolDefaults  # noqa: PLC0414 (re-exported)
from azure_cni.api.wire import WireError, at_least, decode, encode, slots, wire
from azure_cni.api.wire import problems as wire_problems

DEFAULT_CONFIG_PATH = Path("/etc/azure-cni/config.yaml")


class InvalidSettings(ValueError):
    """The configuration file is unusable; the message names the key."""


#: a plugin binary's name, as CNI runtimes look it up in their bin directory
_PLUGIN_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: what the conflist already chains (api settings cannot import the agent's install module)
_BUILT_IN_PLUGINS = ("azure-vnet", "portmap")


class _PluginConfigs:
    """CNI plugin configurations to chain: mappings with a plain ``type``, each once."""

    schema: Mapping[str, Any] = {}

    def decode(self, raw: Any) -> tuple[Mapping[str, Any], ...]:
        if not isinstance(raw, list | tuple):
            raise TypeError("expected a list of plugin configurations")
        configs: list[dict[str, Any]] = []
        for config in raw:
            if not isinstance(config, Mapping) or not isinstance(config.get("type"), str):
                raise TypeError(f"{config!r} is not a plugin configuration with a type")
            kind = config["type"]
            if not _PLUGIN_TYPE.fullmatch(kind):
                raise ValueError(f"type {kind!r} is not a plugin binary's name")
            if kind in _BUILT_IN_PLUGINS or kind in {c["type"] for c in configs}:
                raise ValueError(f"{kind} is chained already")
            configs.append(dict(config))
        return tuple(configs)

    def encode(self, value: Any) -> list[dict[str, Any]]:
        return [dict(c) for c in value]


class _SubscriptionOverrides:
    """``{<subscription ID>: {readReserve: 50, writeQPS: 5, ...}}``, checked key by key."""

    schema: Mapping[str, Any] = {}

    def decode(self, raw: Any) -> dict[str, dict[str, float]]:
        if not isinstance(raw, Mapping):
            raise TypeError("must be a mapping of subscription IDs")
        known = sorted(_budget_keys())
        out: dict[str, dict[str, float]] = {}
        for subscription, overrides in raw.items():
            if not isinstance(overrides, Mapping):
                raise TypeError(f"{subscription} must be a mapping")
            unknown = sorted(set(overrides) - set(known))
            if unknown:
                raise ValueError(f"{subscription}: unknown keys {', '.join(unknown)} "
                                 f"(known: {', '.join(known)})")
            if not all(isinstance(v, int | float) and not isinstance(v, bool)
                       for v in overrides.values()):
                raise TypeError(f"{subscription}: every value must be a number")
            out[str(subscription)] = {str(k): float(v) for k, v in overrides.items()}
        return out

    def encode(self, value: Any) -> dict[str, dict[str, float]]:
        return {k: dict(v) for k, v in value.items()}


class _NamespaceGroups:
    """``{<namespace>: [<resource group>, ...]}``."""

    schema: Mapping[str, Any] = {}

    def decode(self, raw: Any) -> dict[str, tuple[str, ...]]:
        if not isinstance(raw, Mapping):
            raise TypeError("must be a mapping of namespaces to resource groups")
        out: dict[str, tuple[str, ...]] = {}
        for namespace, groups in raw.items():
            if not isinstance(groups, list | tuple) or not all(
                    isinstance(g, str) and g for g in groups):
                raise TypeError(f"{namespace} must be a list of resource group names")
            out[str(namespace)] = tuple(groups)
        return out

    def encode(self, value: Any) -> dict[str, list[str]]:
        return {k: list(v) for k, v in value.items()}


@dataclass(frozen=True)
class AzureSettings:
    """How the operator reaches Azure (or the emulator)."""

    #: Resource Manager endpoint: public Azure, a sovereign cloud, or the emulator.
    arm_endpoint: str = "https://management.azure.com/"
    #: Entra ID authority for service principals and workload identity.
    authority_host: str = "https://login.microsoftonline.com/"
    #: default | managedIdentity | workloadIdentity | servicePrincipal
    credential: str = "default"
    managed_identity_client_id: str = field(default="",
                                            metadata=wire("managedIdentityClientID"))
    #: CA bundle to trust for arm_endpoint (empty: the system's)
    ca_bundle: str = ""
    # ARM's token buckets for one subscription and principal, as Microsoft documents them
    # (reads 250 + 25/s, writes 200 + 10/s). The operator models them, corrects the model
    # with every x-ms-ratelimit-remaining-subscription-* header, and spends what is there
    # down to the reserve, which it leaves to other clients using the same identity.
    read_qps: float = field(default=25.0, metadata=wire("readQPS"))
    read_burst: int = 250
    write_qps: float = field(default=10.0, metadata=wire("writeQPS"))
    write_burst: int = 200
    read_reserve: int = 25
    write_reserve: int = 20
    #: per subscription ID: any of the six keys above, overriding them for that subscription
    subscriptions: Mapping[str, Mapping[str, float]] = field(
        default_factory=dict, metadata=wire(codec=_SubscriptionOverrides()))
    copy_application_security_groups: bool = True
    copy_load_balancer_pools: bool = False
    #: seconds between long-running-operation polls when Azure gives no Retry-After
    polling_interval: float = 1.0

    def budget(self, subscription: str) -> Budget:
        """The budget for ``subscription``: the defaults above with its overrides."""
        values = {"read_qps": self.read_qps, "read_burst": self.read_burst,
                  "write_qps": self.write_qps, "write_burst": self.write_burst,
                  "read_reserve": self.read_reserve, "write_reserve": self.write_reserve}
        overrides = {k.lower(): v for k, v in self.subscriptions.items()}.get(
            subscription.lower(), {})
        attributes = {key.lower(): attribute for key, attribute in _budget_keys().items()}
        for key, value in overrides.items():
            values[attributes[key.lower()]] = value
        return Budget(float(values["read_qps"]), int(values["read_burst"]),
                      float(values["write_qps"]), int(values["write_burst"]),
                      int(values["read_reserve"]), int(values["write_reserve"]))


@dataclass(frozen=True)
class Budget:
    """ARM's read and write buckets for one subscription, and what the operator leaves."""

    read_qps: float
    read_burst: int
    write_qps: float
    write_burst: int
    read_reserve: int
    write_reserve: int

    def problems(self) -> list[str]:
        out = []
        for kind in ("read", "write"):
            qps, burst = getattr(self, f"{kind}_qps"), getattr(self, f"{kind}_burst")
            reserve = getattr(self, f"{kind}_reserve")
            if qps <= 0 or burst < 1:
                out.append(f"{kind}QPS must be > 0 and {kind}Burst >= 1")
            if not 0 <= reserve < burst:
                out.append(f"{kind}Reserve ({reserve}) must be at least 0 and below "
                           f"{kind}Burst ({burst})")
        return out


def _budget_keys() -> dict[str, str]:
    """The file's keys of the six budget settings (the ones a subscription may override),
    and their attributes."""
    budget = {f.name for f in dataclasses.fields(Budget)}
    return {s.key: s.attribute for s in slots(AzureSettings) if s.attribute in budget}


@dataclass(frozen=True)
class OperatorSettings:
    max_concurrent_nodes: int = 20
    drift_check_seconds: float = 60.0
    #: wait this long after the agent's usage changes before acting (coalesces bursts)
    usage_debounce_seconds: float = 1.0
    metrics_port: int = 9090
    health_port: int = 8080
    #: one replica acts, the holder of a coordination.k8s.io Lease; the others stand by
    leader_election: bool = True
    lease_name: str = "azure-cni-operator"
    #: a standby takes over a Lease not renewed for this long (a leader killed outright)
    lease_duration_seconds: float = 15.0
    #: a leader that could not renew for this long stops writing (below the duration)
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0
    #: on SIGTERM, reconciles under way get this long to finish their writes; then the Lease
    #: is released (keep it below the pod's terminationGracePeriodSeconds)
    drain_seconds: float = field(default=20.0, metadata=wire(minimum=0))


@dataclass(frozen=True)
class AgentSettings:
    socket_path: str = "/run/azure-cni/agent.sock"
    state_dir: str = "/var/lib/azure-cni"
    cni_bin_dir: str = "/opt/cni/bin"
    cni_conf_dir: str = "/etc/cni/net.d"
    #: the host interface whose MTU pods get; empty: the one holding the default route
    host_interface: str = ""
    #: 0: copy the host interface's MTU
    mtu: int = 0
    #: how long ADD waits for the operator when the pool has no free address
    add_wait_seconds: float = 10.0
    #: a released address is not handed out again for this long (stale ARP and endpoints)
    cooldown_seconds: float = 30.0
    metrics_port: int = 9091
    #: python3 on the host that runs the CNI shim
    host_python: str = "/usr/bin/python3"
    #: more CNI plugins chained after ours and portmap, each a plugin configuration with
    #: its ``type`` (a binary in cniBinDir), e.g. {type: bandwidth, capabilities:
    #: {bandwidth: true}} for the kubernetes.io/ingress-bandwidth annotations
    extra_plugins: tuple[Mapping[str, Any], ...] = field(default=(), metadata=wire(
        codec=_PluginConfigs()))


@dataclass(frozen=True)
class SnatSettings:
    enabled: bool = True
    #: destinations left un-masqueraded besides the VNet's own address space
    non_masquerade_cidrs: tuple[str, ...] = field(default=(),
                                                  metadata=wire("nonMasqueradeCIDRs"))
    #: keep pods away from the Azure wireserver (168.63.129.16, tcp 80 and 32526)
    block_wireserver: bool = True
    #: keep pods away from the instance metadata service (169.254.169.254)
    block_instance_metadata: bool = True


@dataclass(frozen=True)
class PodNetworkingSettings:
    """Who may give pods a public IP or put them in load balancer backend pools (operator)."""

    #: resource groups whose public IPs and load balancers pods may use, each only from the
    #: namespaces its Azure tag ``azurecni-namespaces`` names; a bare public IP name in an
    #: annotation means that name in the first of them
    resource_groups: tuple[str, ...] = ()
    #: namespaces whose pods may ask for a public IP ("*": every namespace)
    public_ip_namespaces: tuple[str, ...] = field(default=(),
                                                  metadata=wire("publicIPNamespaces"))
    #: namespaces whose pods may join load balancer backend pools ("*": every namespace)
    load_balancer_namespaces: tuple[str, ...] = ()
    #: namespace -> resource groups whose every public IP and load balancer it may use, tag or
    #: not (an admin's grant of a whole group to one namespace)
    namespace_resource_groups: Mapping[str, tuple[str, ...]] = field(
        default_factory=dict, metadata=wire(codec=_NamespaceGroups()))

    def groups_for(self, namespace: str) -> tuple[str, ...]:
        """The resource groups ``namespace``'s pods may take resources from."""
        return tuple(dict.fromkeys((*self.resource_groups,
                                    *self.namespace_resource_groups.get(namespace, ()))))

    def trusts(self, namespace: str, resource_group: str) -> bool:
        """Whether the chart grants ``namespace`` all of ``resource_group`` (no tag needed)."""
        return resource_group.lower() in {
            g.lower() for g in self.namespace_resource_groups.get(namespace, ())}


@dataclass(frozen=True)
class StandaloneSettings:
    """A VM without Kubernetes: the pool is the NIC's secondary addresses as IMDS lists them."""

    #: take the pool from the instance metadata service instead of a NodeIPPool
    enabled: bool = False
    imds_endpoint: str = "http://169.254.169.254"
    imds_api_version: str = "2021-02-01"
    #: how often to read the NIC's addresses (IMDS allows 5 requests/s per VM, shared by all)
    refresh_seconds: float = field(default=10.0, metadata=wire(limits=(at_least(
        1, "IMDS allows 5 requests per second per VM for everything on it"),)))
    #: the NIC whose addresses are the pool, by MAC address; empty: the VM's primary NIC
    interface_mac: str = field(default="", metadata=wire("interfaceMAC"))
    #: the Docker network and IPAM plugin's socket (empty: no Docker plugin)
    docker_plugin_socket: str = "/run/docker/plugins/azure-cni.sock"


@dataclass(frozen=True)
class Settings:
    pool: PoolDefaults = field(default_factory=PoolDefaults)
    azure: AzureSettings = field(default_factory=AzureSettings)
    operator: OperatorSettings = field(default_factory=OperatorSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    snat: SnatSettings = field(default_factory=SnatSettings)
    standalone: StandaloneSettings = field(default_factory=StandaloneSettings)
    pod_networking: PodNetworkingSettings = field(default_factory=PodNetworkingSettings)

    def validate(self) -> None:
        problems = [p for section in slots(Settings)
                    for p in wire_problems(getattr(self, section.attribute), section.key)]
        if problems:
            raise InvalidSettings("; ".join(problems))
        for cidr in self.snat.non_masquerade_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as e:
                raise InvalidSettings(f"snat.nonMasqueradeCIDRs: {cidr!r} is not a CIDR") from e
        for where, budget in [("azure", self.azure.budget("")),
                              *((f"azure.subscriptions.{sub}", self.azure.budget(sub))
                                for sub in self.azure.subscriptions)]:
            problems = budget.problems()
            if problems:
                raise InvalidSettings(f"{where}: {'; '.join(problems)}")
        if self.azure.credential not in {"default", "managedIdentity", "workloadIdentity",
                                         "servicePrincipal"}:
            raise InvalidSettings(
                f"azure.credential: {self.azure.credential!r} is not one of default, "
                "managedIdentity, workloadIdentity, servicePrincipal")
        operator = self.operator
        if not (0 < operator.retry_period_seconds < operator.renew_deadline_seconds
                < operator.lease_duration_seconds):
            raise InvalidSettings(
                "operator: leader election needs 0 < retryPeriodSeconds < "
                "renewDeadlineSeconds < leaseDurationSeconds (got "
                f"{operator.retry_period_seconds:g}, {operator.renew_deadline_seconds:g}, "
                f"{operator.lease_duration_seconds:g})")
        networking = self.pod_networking
        for key, namespaces in (("publicIPNamespaces", networking.public_ip_namespaces),
                                ("loadBalancerNamespaces", networking.load_balancer_namespaces)):
            if namespaces and not (networking.resource_groups
                                   or networking.namespace_resource_groups):
                raise InvalidSettings(
                    f"podNetworking.{key} lets pods use Azure resources, but neither "
                    "podNetworking.resourceGroups nor namespaceResourceGroups names a resource "
                    "group they may come from")
        if not self.standalone.imds_endpoint.startswith("http://"):
            raise InvalidSettings(
                f"standalone.imdsEndpoint: {self.standalone.imds_endpoint!r} must be an "
                "http:// URL (IMDS does not speak TLS)")


def settings_from_mapping(data: Mapping[str, Any] | None) -> Settings:
    """Settings from an already parsed document; raise InvalidSettings on any bad key (a
    typo is not a default: unknown keys are refused)."""
    try:
        settings = decode(Settings, data, unknown="refuse")
    except WireError as e:
        raise InvalidSettings(str(e)) from e
    settings.validate()
    return settings


def load_settings(path: Path | None = None) -> Settings:
    """Read the configuration file; a missing default file means all defaults."""
    target = path or DEFAULT_CONFIG_PATH
    try:
        text = target.read_text()
    except FileNotFoundError:
        if path is not None:
            raise InvalidSettings(f"configuration file {path} does not exist") from None
        return Settings()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InvalidSettings(f"{target} is not valid YAML: {e}") from e
    return settings_from_mapping(data)


def settings_to_mapping(settings: Settings) -> dict[str, Any]:
    """The inverse of settings_from_mapping (used to render the chart's defaults)."""
    return encode(settings)
