"""Reading a pod's annotations (api/podnet.py): what a pod may ask, and how much of it."""

from __future__ import annotations

import json
from dataclasses import replace

from tests.ipam.test_decide import NOW, SUBNET, addr, ips, nic, pool

from azure_cni.api.nodeippool import PoolSpec
from azure_cni.api.podnet import (
    BACKEND_POOLS_ANNOTATION,
    PUBLIC_IP_ANNOTATION,
    AttachmentState,
    PodAttachment,
    PodNetworkRequest,
    requested_features,
)
from azure_cni.api.settings import PodNetworkingSettings
from azure_cni.ipam.decide import Observation, decide

#: etcd's default request limit (--max-request-bytes), which bounds a whole NodeIPPool
ETCD_LIMIT = 1_572_864
SUB = "s"
PIP = f"/subscriptions/{SUB}/resourceGroups/pips/providers/Microsoft.Network/publicIPAddresses/"
POOL = f"/subscriptions/{SUB}/resourceGroups/pips/providers/Microsoft.Network/loadBalancers/"
#: a pool that wants no change of its addresses, whatever it holds
FULL = PoolSpec("n1", min_ips=0, max_ips=255, batch_size=1, min_free_ips=0, max_free_ips=255)
POLICY = PodNetworkingSettings(resource_groups=("pips",), public_ip_namespaces=("web",),
                               load_balancer_namespaces=("web",))


def test_annotations_are_read_as_written() -> None:
    assert requested_features({}) == ("", ())
    pools = f"{POOL}lb/backendAddressPools/a, {POOL}lb/backendAddressPools/b,"
    assert requested_features({PUBLIC_IP_ANNOTATION: " web ", BACKEND_POOLS_ANNOTATION: pools}) \
        == ("web", (f"{POOL}lb/backendAddressPools/a", f"{POOL}lb/backendAddressPools/b"))


def huge(kind: str, n: int) -> dict[str, str]:
    """Annotations a pod may write (256 KiB in all, the API server's limit per object)."""
    if kind == "long":
        return {PUBLIC_IP_ANNOTATION: PIP + "x" * 250_000}
    return {BACKEND_POOLS_ANNOTATION: ",".join(f"{POOL}lb{n}/backendAddressPools/p{i}"
                                               for i in range(2000))}


def largest_readable(n: int) -> dict[str, str]:
    """Annotations just inside the limits: a public IP and four pools, long names."""
    name = "n" * 60
    pools = [f"{POOL}{name[:-3]}{n:03d}/backendAddressPools/{name[:-1]}{i}" for i in range(4)]
    pip = f"{PIP}{name}"
    annotations = {PUBLIC_IP_ANNOTATION: pip, BACKEND_POOLS_ANNOTATION: ",".join(pools)}
    assert requested_features(annotations) == (pip, tuple(pools))
    return annotations


def test_the_largest_annotations_keep_a_full_pool_under_etcds_limit() -> None:
    """Issue 22 row 6: nothing bounded what the agent published of an annotation; a few pods
    with 250 KB annotations pushed the NodeIPPool past etcd's object limit, and every status
    write for that node failed. A full node (255 pods, each with the largest annotations) and
    the operator's answers to all of them (Azure's longest messages included) fit."""
    inventory = ips(255)
    requests = tuple(
        PodNetworkRequest(ip.ip_configuration, ip.address, f"web/pod-{i:03d}-" + "n" * 230,
                          *requested_features(huge("long", i) if i % 3 == 0 else
                                              huge("many", i) if i % 3 == 1 else
                                              largest_readable(i)),
                          pod_uid="0" * 36)
        for i, ip in enumerate(inventory))
    the_pool = pool(inventory, used=255, spec=FULL, pod_requests=requests)
    # the worst answers are Azure's refusals of each request, with its longest messages
    answers = tuple(PodAttachment(r.ip_configuration, r.address, r.pod,
                                  AttachmentState.REFUSED, r.public_ip, r.backend_pools,
                                  "PublicIPAddressInUse", "m" * 20_000, r.pod_uid)
                    for r in requests)
    status = replace(the_pool.status, pod_requests=requests, pod_networking=answers)
    body = json.dumps({"apiVersion": "azurecni.io/v1alpha1", "kind": "NodeIPPool",
                       "metadata": {"name": "n1"}, "spec": the_pool.spec.to_dict(),
                       "status": {**status.operator_fields(), **status.agent_fields()}})
    assert len(body) < ETCD_LIMIT // 2, f"{len(body)} bytes"


def test_an_annotation_too_large_is_refused_saying_so() -> None:
    ip = ips(1)[0]
    five = ",".join(f"{POOL}lb/backendAddressPools/p{i}" for i in range(5))
    for asked, why in ((huge("long", 0), "250083 characters"),
                       (huge("many", 0), "216889 characters"),
                       ({BACKEND_POOLS_ANNOTATION: five}, "names 5 backend pools")):
        request = PodNetworkRequest(ip.ip_configuration, addr(0), "web/a",
                                    *requested_features(asked))
        the_pool = pool((ip,), used=1, spec=FULL, pod_requests=(request,))
        decision = decide(Observation(the_pool, NOW,
                                      nic((ip,)), SUBNET, POLICY), lambda: "x")
        assert decision.write is None and decision.outcome is not None
        assert decision.outcome.status is not None
        (answer,) = decision.outcome.status.pod_networking
        assert answer.state == AttachmentState.REFUSED and why in answer.message, answer.message
        (event,) = decision.outcome.pod_events
        assert event.reason == "PodNetworkRefused" and why in event.message
