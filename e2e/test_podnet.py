"""Azure networking per pod (issue 15): a public IP and load balancer backend pools asked for
by annotations on real pods, and NSGs on a node's NIC, through kubelet, the chart's agent and
operator, the ARM emulator (real SDK) and the simulated SDN."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from azure_cni.api.nodeippool import ConditionType
from azure_cni.api.podnet import (
    BACKEND_POOLS_ANNOTATION,
    NAMESPACES_TAG,
    PUBLIC_IP_ANNOTATION,
)
from azure_cni_sim import workloads
from azure_cni_sim.procs import wait_for
from azure_cni_sim.vnet import INTERNET_HOST, ONPREM_HOST
from azure_cni_sim.world import NAMESPACE, World

pytestmark = pytest.mark.e2e
RG = "pips"
PORT = workloads.WEB_PORT
WHOAMI = workloads.WHOAMI


def pod_manifest(world: World, name: str, namespace: str, node: str,
                 annotations: dict[str, str] | None = None) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name},
                     "annotations": annotations or {}},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                 "terminationGracePeriodSeconds": 2,
                 "containers": [{"name": "web", "image": world.images["sim-app"].image,
                                 "imagePullPolicy": "IfNotPresent",
                                 "ports": [{"containerPort": PORT}],
                                 "resources": {"requests": {"cpu": "5m", "memory": "8Mi"}}}]}})


def run_pod(world: World, name: str, namespace: str, node: str,
            annotations: dict[str, str] | None = None) -> workloads.RunningPod:
    world.kubectl("apply", "-f", "-",
                  input=pod_manifest(world, name, namespace, node, annotations))
    (pod,) = workloads.running_pods(world, f"app={name}", namespace, 1, timeout=120)
    return pod


def events(world: World, namespace: str, pod: str, reason: str) -> list[str]:
    items = world.get_json("events", "-n", namespace, "--field-selector",
                           f"involvedObject.name={pod},reason={reason}")["items"]
    return [str(e.get("message") or "") for e in items]


def wait_event(world: World, namespace: str, pod: str, reason: str, timeout: float = 60
               ) -> str:
    wait_for(f"Event {reason} on pod {namespace}/{pod}",
             lambda: bool(events(world, namespace, pod, reason)), timeout, interval=1)
    return events(world, namespace, pod, reason)[0]


def answer(world: World, vm: str, pod: str) -> dict[str, Any] | None:
    """The operator's podNetworking entry for ``pod`` on ``vm``'s pool, as JSON."""
    for a in world.pool(vm).status.pod_networking:
        if a.pod == pod:
            return a.to_dict()
    return None


def from_internet(world: World, url: str) -> dict[str, Any] | None:
    assert world.fabric is not None
    out = world.in_netns(world.fabric.internet_ns, "curl", "-s", "-m", "3", url)
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else None


@pytest.fixture(scope="module")
def allowed(world: World, namespace: str) -> Iterator[str]:
    """The chart lets ``namespace`` (only) use public IPs and backend pools from ``pips``."""
    assert world.emulator is not None
    world.emulator.add_resource_group(RG)
    world.upgrade_chart(podNetworking={"resourceGroups": [RG],
                                       "publicIPNamespaces": [namespace],
                                       "loadBalancerNamespaces": [namespace]})
    world.wait_rollout("deployment/azure-cni-operator", NAMESPACE, timeout=240)
    world.wait_rollout("daemonset/azure-cni-agent", NAMESPACE, timeout=300)
    world.wait_nodes_ready()
    yield namespace


@pytest.fixture
def denied(world: World, namespace: str) -> Iterator[str]:
    name = f"{namespace}-denied"
    world.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        world.kubectl("delete", "namespace", name, "--wait=false", check=False)


def public_ip(world: World, name: str, namespace: str = "") -> Any:
    """A Standard public IP in ``pips``, tagged for ``namespace`` (untagged without one)."""
    tags = {NAMESPACES_TAG: namespace} if namespace else {}
    with world.network_client() as client:
        return client.public_ip_addresses.begin_create_or_update(
            RG, name, {"location": "eastus", "sku": {"name": "Standard"}, "tags": tags,
                       "properties": {"publicIPAllocationMethod": "Static"}}).result()


def holder(world: World, name: str) -> str:
    with world.network_client() as client:
        held = client.public_ip_addresses.get(RG, name).ip_configuration
    return str(held.id) if held is not None else ""


def test_a_pod_with_a_public_ip_is_reachable_at_it_and_leaves_with_it(
        world: World, allowed: str) -> None:
    pip = public_ip(world, "web-pip", allowed)
    pod = run_pod(world, "pip-pod", allowed, "vm1", {PUBLIC_IP_ANNOTATION: "web-pip"})
    wait_for("the operator to attach web-pip to the pod's ipConfiguration",
             lambda: (answer(world, "vm1", f"{allowed}/pip-pod") or {}).get("state")
             == "Attached", 60, interval=1)
    assert holder(world, "web-pip").lower().startswith(world.vms["vm1"].nic_id.lower())
    message = wait_event(world, allowed, "pip-pod", "PodNetworkAttached")
    assert pip.id.lower() in message.lower() and pod.ip in message
    # inbound: the internet host reaches the pod at the public IP (1:1 NAT to its address)
    url = f"http://{pip.ip_address}:{PORT}{WHOAMI}"
    wait_for("the internet host to reach the pod at its public IP",
             lambda: from_internet(world, url) is not None, 30, interval=1)
    assert from_internet(world, url) == {"pod": "pip-pod", "seen": INTERNET_HOST}
    # outbound: the pod's own connections leave with the public IP (the agent exempts it
    # from the node's SNAT; the SDN translates it), not the node's primary address
    wait_for("the pod's outbound connections to leave with its public IP",
             lambda: workloads.http_get(world, pod, f"http://{INTERNET_HOST}/")
             == {"seen": pip.ip_address, "host": "internet"}, 30, interval=1)
    # the VNet and on-premises still see its private address
    assert workloads.http_get(world, pod, f"http://{ONPREM_HOST}/") == {
        "seen": pod.ip, "host": "onprem"}
    # what a user sees: kubectl get nip -o wide, azure-cni status
    wide = world.kubectl("get", "nip", "vm1", "-o", "wide").stdout
    assert "PUBLIC-IPS" in wide and "web-pip" in wide, wide
    condition = world.pool("vm1").status.condition(ConditionType.POD_NETWORKING)
    assert condition is not None and condition.status and "web-pip" in condition.message
    status = workloads.agent_status(world, "vm1")
    assert pod.ip in status["snat"]["publicSources"]
    assert any(a["state"] == "Attached" and a["address"] == pod.ip
               for a in status["podNetworking"])


def test_the_public_ip_comes_off_before_the_address_is_handed_out_again(
        world: World, allowed: str) -> None:
    """The operator cannot write the NIC for a while: the pod's address stays out of use
    (even for a pod waiting for an address) until the public IP is off its ipConfiguration."""
    assert world.emulator is not None
    (pod,) = workloads.pods(world, "app=pip-pod", allowed)
    nic = world.vms["vm1"].nic_id
    world.emulator.inject_fault("PUT", nic, 409, "AnotherOperationInProgress",
                                message="Another operation on this or dependent resource is "
                                        "in progress.", count=100000)
    fillers: list[str] = []
    try:
        world.kubectl("delete", "pod", "-n", allowed, "pip-pod", "--wait=true")
        wait_for("the agent to withdraw the request and hold the address",
                 lambda: any(r.get("withdrawn") and r["address"] == pod.ip for r in
                             workloads.agent_status(world, "vm1")["podRequests"]), 60,
                 interval=1)
        assert holder(world, "web-pip"), "the public IP left before the operator could write"
        # take every other address the node could hand out, and one more
        pool = workloads.agent_status(world, "vm1")["pool"]
        count = pool["free"] + pool["coolingDown"]
        for i in range(count):
            fillers.append(f"fill-{i}")
            world.kubectl("apply", "-f", "-", input=pod_manifest(world, f"fill-{i}", allowed,
                                                                   "vm1"))
        wait_for("one filler to wait for an address the agent does not have",
                 lambda: any("exhausted" in m for f in fillers for m in events(
                     world, allowed, f, "FailedCreatePodSandBox")), 120, interval=2)
        addresses = {p.ip for f in fillers for p in workloads.pods(world, f"app={f}", allowed)}
        assert pod.ip not in addresses, "the address was handed out with the public IP on it"
        assert holder(world, "web-pip")
    finally:
        world.emulator.clear_faults()
    wait_for("the operator to detach the public IP", lambda: not holder(world, "web-pip"),
             90, interval=1)
    wait_for("the agent to forget the request once the operator reports it Detached",
             lambda: not workloads.agent_status(world, "vm1")["podRequests"], 60, interval=1)
    wait_for("every filler to run", lambda: all(
        workloads.pods(world, f"app={f}", allowed)[0].phase == "Running" for f in fillers),
             180, interval=2)
    with world.network_client() as client:
        address = client.public_ip_addresses.get(RG, "web-pip").ip_address
    assert from_internet(world, f"http://{address}:{PORT}{WHOAMI}") is None
    for f in fillers:
        world.kubectl("delete", "pod", "-n", allowed, f, "--wait=false")


def test_a_namespace_not_allowed_gets_no_public_ip_and_an_event_saying_why(
        world: World, allowed: str, denied: str) -> None:
    public_ip(world, "tenant-pip")
    pod = run_pod(world, "tenant", denied, "vm0", {PUBLIC_IP_ANNOTATION: "tenant-pip"})
    message = wait_event(world, denied, "tenant", "PodNetworkRefused")
    assert f"namespace '{denied}' may not use public IPs" in message
    assert not holder(world, "tenant-pip")
    # the pod keeps its private networking
    assert workloads.http_get(world, pod, f"http://{ONPREM_HOST}/") == {
        "seen": pod.ip, "host": "onprem"}


def test_a_public_ip_attached_elsewhere_is_the_arm_error_as_an_event(
        world: World, allowed: str) -> None:
    taken = public_ip(world, "taken-pip", allowed)
    with world.network_client() as client:  # an admin gave it to vm2's primary
        nic = client.network_interfaces.get("rg1", "vm2-nic")
        nic.ip_configurations[0].public_ip_address = {"id": taken.id}
        client.network_interfaces.begin_create_or_update("rg1", "vm2-nic", nic).result()
    try:
        pod = run_pod(world, "wants-taken", allowed, "vm0", {PUBLIC_IP_ANNOTATION: taken.id})
        message = wait_event(world, allowed, "wants-taken", "PodNetworkRefused")
        assert "PublicIPAddressInUse" in message or "already allocated" in message, message
        assert "vm2-nic" in message
        entry = answer(world, "vm0", f"{allowed}/wants-taken")
        assert entry is not None and entry["reason"] == "PublicIPAddressInUse"
        condition = world.pool("vm0").status.condition(ConditionType.POD_NETWORKING)
        assert condition is not None and (condition.status, condition.reason) == (
            False, "Refused") and "wants-taken" in condition.message
        assert workloads.http_get(world, pod, f"http://{ONPREM_HOST}/") == {
            "seen": pod.ip, "host": "onprem"}
        # the rest of the node's pool keeps working: another pod starts there
        run_pod(world, "after-refusal", allowed, "vm0")
    finally:
        with world.network_client() as client:
            nic = client.network_interfaces.get("rg1", "vm2-nic")
            nic.ip_configurations[0].public_ip_address = None
            client.network_interfaces.begin_create_or_update("rg1", "vm2-nic", nic).result()


def test_two_pods_on_two_nodes_behind_one_load_balancer_frontend(
        world: World, allowed: str) -> None:
    front = public_ip(world, "lb-front")
    lb_id = front.id.replace("publicIPAddresses/lb-front", "loadBalancers/web-lb")
    with world.network_client() as client:
        lb = client.load_balancers.begin_create_or_update(RG, "web-lb", {
            "location": "eastus", "sku": {"name": "Standard"},
            "tags": {NAMESPACES_TAG: allowed}, "properties": {
                "frontendIPConfigurations": [{"name": "fe", "properties": {
                    "publicIPAddress": {"id": front.id}}}],
                "backendAddressPools": [{"name": "web"}],
                "loadBalancingRules": [{"name": "http", "properties": {
                    "frontendIPConfiguration": {"id": f"{lb_id}/frontendIPConfigurations/fe"},
                    "backendAddressPool": {"id": f"{lb_id}/backendAddressPools/web"},
                    "protocol": "Tcp", "frontendPort": 80, "backendPort": PORT}}]}}).result()
    pool = lb.backend_address_pools[0].id
    for name, vm in (("lb-a", "vm0"), ("lb-b", "vm2")):
        run_pod(world, name, allowed, vm, {BACKEND_POOLS_ANNOTATION: pool})
    for name, vm in (("lb-a", "vm0"), ("lb-b", "vm2")):
        wait_for(f"{name} to join the backend pool",
                 lambda n=name, v=vm: (answer(world, v, f"{allowed}/{n}") or {}).get("state")
                 == "Attached", 60, interval=1)
    seen: set[str] = set()
    for _ in range(60):
        got = from_internet(world, f"http://{front.ip_address}{WHOAMI}")
        if got is not None:
            assert got["seen"] == INTERNET_HOST
            seen.add(got["pod"])
        if seen == {"lb-a", "lb-b"}:
            break
    assert seen == {"lb-a", "lb-b"}


def test_an_nsg_rule_on_a_nic_blocks_one_port_from_on_premises_until_removed(
        world: World, allowed: str) -> None:
    a = run_pod(world, "nsg-a", allowed, "vm0")
    b = run_pod(world, "nsg-b", allowed, "vm2")
    nsg = workloads.nsg_blocking_onprem(world, RG, "vm0-nsg", PORT)
    with world.network_client() as client:
        nic = client.network_interfaces.get("rg1", "vm0-nic")
        nic.network_security_group = {"id": nsg}
        client.network_interfaces.begin_create_or_update("rg1", "vm0-nic", nic).result()
    try:
        assert workloads.onprem_get(world, f"http://{a.ip}:{PORT}{WHOAMI}") is None
        assert workloads.onprem_get(world, f"http://{b.ip}:{PORT}{WHOAMI}") == {
            "pod": "nsg-b", "seen": ONPREM_HOST}
        # other ports of the same pod still answer (ICMP here), and the VNet still reaches it
        assert world.onprem("ping", "-c", "1", "-W", "2", a.ip).returncode == 0
        assert workloads.http_get(world, b, f"http://{a.ip}:{PORT}{WHOAMI}") == {
            "pod": "nsg-a", "seen": b.ip}
        with world.network_client() as client:
            client.security_rules.begin_delete(RG, "vm0-nsg", "no-onprem-web").result()
        assert workloads.onprem_get(world, f"http://{a.ip}:{PORT}{WHOAMI}") == {
            "pod": "nsg-a", "seen": ONPREM_HOST}
    finally:
        with world.network_client() as client:
            nic = client.network_interfaces.get("rg1", "vm0-nic")
            nic.network_security_group = None
            client.network_interfaces.begin_create_or_update("rg1", "vm0-nic", nic).result()


def test_a_malformed_annotation_is_an_event_and_the_nodes_other_pods_go_on(
        world: World, allowed: str) -> None:
    """Issue 22 row 1: a typo in an annotation stalled the whole node's pool (the decision
    raised) and the pod got no Event. Now it is that pod's refusal; on the same node the next
    pods get addresses, and their public IPs."""
    pip = public_ip(world, "after-typo", allowed)
    typo = run_pod(world, "typo", allowed, "vm0", {PUBLIC_IP_ANNOTATION: f"{RG}/after-typo"})
    message = wait_event(world, allowed, "typo", "PodNetworkRefused")
    assert f"'{RG}/after-typo' is not an Azure resource ID" in message, message
    assert workloads.http_get(world, typo, f"http://{ONPREM_HOST}/") == {
        "seen": typo.ip, "host": "onprem"}
    condition = world.pool("vm0").status.condition(ConditionType.POD_NETWORKING)
    assert condition is not None and (condition.status, condition.reason) == (False, "Refused")
    # six more pods on the node get addresses: its pool goes on growing and shrinking
    pods = [run_pod(world, f"next-{i}", allowed, "vm0") for i in range(6)]
    assert len({p.ip for p in pods} | {typo.ip}) == 7
    good = run_pod(world, "good", allowed, "vm0", {PUBLIC_IP_ANNOTATION: "after-typo"})
    wait_for("the operator to attach the public IP of the next pod on the node",
             lambda: (answer(world, "vm0", f"{allowed}/good") or {}).get("state")
             == "Attached", 60, interval=1)
    url = f"http://{pip.ip_address}:{PORT}{WHOAMI}"
    wait_for("the internet host to reach the pod at its public IP",
             lambda: from_internet(world, url) is not None, 30, interval=1)
    assert from_internet(world, url) == {"pod": "good", "seen": INTERNET_HOST}
    assert good.ip not in {p.ip for p in pods}
    for name in ("typo", "good", *(f"next-{i}" for i in range(6))):
        world.kubectl("delete", "pod", "-n", allowed, name, "--wait=false")


def test_a_public_ip_tagged_for_another_namespace_is_refused_saying_so(
        world: World, allowed: str) -> None:
    """Issue 22 row 12: the resource says which namespaces may use it."""
    public_ip(world, "team-b-pip", "team-b")
    pod = run_pod(world, "grabber", allowed, "vm2", {PUBLIC_IP_ANNOTATION: "team-b-pip"})
    message = wait_event(world, allowed, "grabber", "PodNetworkRefused")
    assert NAMESPACES_TAG in message and "team-b" in message and f"'{allowed}'" in message
    assert not holder(world, "team-b-pip")
    entry = answer(world, "vm2", f"{allowed}/grabber")
    assert entry is not None and entry["reason"] == "NotTagged"
    assert workloads.http_get(world, pod, f"http://{ONPREM_HOST}/") == {
        "seen": pod.ip, "host": "onprem"}
    world.kubectl("delete", "pod", "-n", allowed, "grabber", "--wait=false")
