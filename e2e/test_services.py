"""Services across azure-cni's datapath: kube-proxy's ClusterIP and NodePort, and kube-dns."""

from __future__ import annotations

import json

import pytest

from azure_cni_sim import workloads
from azure_cni_sim.vnet import ONPREM_HOST
from azure_cni_sim.world import CLUSTER_DNS, World

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def web(world: World, namespace: str) -> list[workloads.RunningPod]:
    return workloads.deploy_web(world, namespace, 6)


def answers(get: object, tries: int = 30) -> set[str]:
    """The pods that answered ``tries`` requests through a Service (kube-proxy picks one at
    random each time)."""
    assert callable(get)
    return {a["pod"] for a in (get() for _ in range(tries)) if a is not None}


def test_cluster_ip_answers_from_pods_on_every_node_and_from_a_node(
        world: World, namespace: str, web: list[workloads.RunningPod]) -> None:
    cluster_ip, _ = workloads.service(world, "web", namespace)
    url = f"http://{cluster_ip}{workloads.WHOAMI}"
    names = {p.name for p in web}
    for vm in world.vms:
        client = next(p for p in web if p.node == vm)
        answer = workloads.http_get(world, client, url)
        assert answer is not None and answer["pod"] in names, f"from {client}: {answer}"
        # no NAT inside the VNet: the backend saw the client pod's own address (unless it
        # was the client itself, which kube-proxy hairpins through the node's address)
        if answer["pod"] != client.name:
            assert answer["seen"] == client.ip, answer
    # kube-proxy spreads a client's requests over the backends, on every node
    client = web[0]
    answered = answers(lambda: workloads.http_get(world, client, url))
    nodes = {p.node for p in web if p.name in answered}
    assert nodes == set(world.vms), f"answers only from {nodes}: {answered}"
    # the node's own network namespace (host network) reaches it too
    host = world.nodes["vm1"].exec("curl", "-s", "-m", "3", url, check=False)
    assert host.returncode == 0 and json.loads(host.stdout)["pod"] in names, host.stderr


def test_node_port_answers_from_on_premises(world: World, namespace: str,
                                            web: list[workloads.RunningPod]) -> None:
    _, node_port = workloads.service(world, "web", namespace)
    names = {p.name for p in web}
    for vm, info in world.vms.items():
        url = f"http://{info.primary_ip}:{node_port}{workloads.WHOAMI}"
        answer = workloads.onprem_get(world, url)
        assert answer is not None and answer["pod"] in names, f"{vm}: {answer}"
    # an answer from a pod on another node was masqueraded by kube-proxy to the node it
    # entered, so the reply goes back the same way
    reached = {p.name: p.node for p in web}
    entry = world.vms["vm0"]
    for _ in range(30):
        answer = workloads.onprem_get(
            world, f"http://{entry.primary_ip}:{node_port}{workloads.WHOAMI}")
        assert answer is not None
        if reached[answer["pod"]] != "vm0":
            assert answer["seen"] == entry.primary_ip, answer
            break
    else:
        pytest.fail("30 NodePort requests on vm0 never reached a pod on another node")
    assert workloads.onprem_get(world, f"http://{web[0].ip}:{workloads.WEB_PORT}"
                                f"{workloads.WHOAMI}") == {"pod": web[0].name,
                                                           "seen": ONPREM_HOST}


def test_service_names_resolve_through_kube_dns(world: World, namespace: str,
                                                web: list[workloads.RunningPod]) -> None:
    cluster_ip, _ = workloads.service(world, "web", namespace)
    coredns = workloads.pods(world, "k8s-app=kube-dns", "kube-system")
    assert len(coredns) == 2
    for pod in coredns:  # CoreDNS runs on pool addresses, like any pod
        assert pod.ip in world.nic_addresses(pod.node), pod
    name = f"web.{namespace}.svc.cluster.local"
    for vm in world.vms:
        client = next(p for p in web if p.node == vm)
        resolv = world.exec_in(client.name, "cat", "/etc/resolv.conf", namespace=namespace)
        assert f"nameserver {CLUSTER_DNS}" in resolv.stdout
        assert workloads.resolve(world, client, name) == [cluster_ip], vm
        answer = workloads.http_get(world, client, f"http://{name}{workloads.WHOAMI}")
        assert answer is not None and answer["pod"] in {p.name for p in web}, answer
