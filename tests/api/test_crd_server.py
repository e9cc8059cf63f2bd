"""The real API server refuses bad NodeIPPools with messages an admin understands."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest
from tests.api.test_wire import SELECTOR, SPEC, STATUS

from azure_cni.agent.allocator import stray_requests
from azure_cni.api.crd import nodeippool_crd
from azure_cni.api.nodeippool import (
    AGENT_FIELD_MANAGER,
    API_VERSION,
    KIND,
    OPERATOR_FIELD_MANAGER,
    PLURAL,
    VERSION,
    NodeIPPool,
    PoolDefaults,
    PoolMode,
    PoolSpec,
    PoolStatus,
    status_apply_body,
)
from azure_cni.api.podnet import AttachmentState, PodNetworkRequest
from azure_cni.api.poolclass import CLASS_FIELDS, CLASS_KIND, PoolClass
from azure_cni.api.wire import encode
from azure_cni_sim.node import wait_crd_established
from azure_cni_sim.procs import wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture
def pools(kube, nodeippool_crd):
    return kube


def _create(kube, name: str, spec: dict) -> tuple[int, str]:
    body = {"apiVersion": "azurecni.io/v1alpha1", "kind": "NodeIPPool",
            "metadata": {"name": name}, "spec": {"nodeName": name, **spec}}
    out = kube.kubectl("create", "-f", "-", input=json.dumps(body), check=False)
    if out.returncode == 0:
        kube.kubectl("delete", "nodeippool", name, "--wait=false")
    return out.returncode, out.stderr


@pytest.mark.parametrize(("spec", "message"), [
    ({"minIPs": 40, "maxIPs": 30}, "spec.minIPs: Invalid value: minIPs must not exceed maxIPs"),
    ({"maxIPs": 256}, "maxIPs must be at most 255: a NIC holds 256 ipConfigurations and one "
                      "of them is the primary"),
    ({"maxIPs": 0, "minIPs": 0}, "spec.maxIPs: Invalid value: maxIPs must be at least 1"),
    ({"batchSize": 0}, "spec.batchSize: Invalid value: batchSize must be at least 1"),
    ({"minFreeIPs": 30, "maxFreeIPs": 10},
     "spec.minFreeIPs: Invalid value: minFreeIPs must not exceed maxFreeIPs"),
    ({"minIPs": -1}, "spec.minIPs: Invalid value: -1: spec.minIPs in body should be greater "
                     "than or equal to 0"),
    ({"batchSize": "eight"}, 'spec.batchSize: Invalid value: "string": spec.batchSize in body '
                             'must be of type integer'),
    ({"releaseDelaySeconds": 100000}, "should be less than or equal to 86400"),
    ({"mode": "Prefixes"}, 'spec.mode: Unsupported value: "Prefixes"'),
    ({"mode": "Blocks", "blockPrefixLength": 24}, "should be greater than or equal to 26"),
])
def test_invalid_specs_are_refused(pools, spec, message) -> None:
    rc, stderr = _create(pools, f"bad-{uuid.uuid4().hex[:6]}", spec)
    assert rc != 0
    assert message in stderr, stderr


def test_node_name_must_match_and_is_immutable(pools) -> None:
    name = f"pool-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": "azurecni.io/v1alpha1", "kind": "NodeIPPool",
            "metadata": {"name": name}, "spec": {"nodeName": "somebody-else"}}
    out = pools.kubectl("create", "-f", "-", input=json.dumps(body), check=False)
    assert "spec.nodeName must equal metadata.name" in out.stderr
    rc, _ = _create(pools, name, {})
    assert rc == 0
    body["spec"]["nodeName"] = name
    pools.kubectl("create", "-f", "-", input=json.dumps(body))
    patched = pools.kubectl("patch", "nodeippool", name, "--type=merge", "-p",
                            '{"spec":{"nodeName":"other"}}', check=False)
    assert "nodeName is immutable" in patched.stderr
    pools.kubectl("delete", "nodeippool", name)


def test_defaults_columns_and_scale(pools) -> None:
    name = f"pool-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": "azurecni.io/v1alpha1", "kind": "NodeIPPool",
            "metadata": {"name": name}, "spec": {"nodeName": name}}
    pools.kubectl("create", "-f", "-", input=json.dumps(body))
    spec = json.loads(pools.kubectl("get", "nip", name, "-o", "json").stdout)["spec"]
    assert spec == {"nodeName": name, "minIPs": 0, "maxIPs": 250, "batchSize": 8,
                    "minFreeIPs": 8, "maxFreeIPs": 24, "releaseDelaySeconds": 180,
                    "mode": "Addresses", "blockPrefixLength": 28, "podSubnetID": ""}
    pools.kubectl("scale", "nodeippool", name, "--replicas=12")
    wide = pools.kubectl("get", "nodeippools", name, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "ALLOCATED", "USED", "SCALE-MIN", "MAX", "READY",
                               "AGE",
                               "COOLING", "PRIMARY-IP", "NIC", "SUBNET", "AGENT", "MODE",
                               "BLOCKS", "PUBLIC-IPS", "CLASS"]
    assert wide[1].split()[1:3] == ["12", "250"]
    assert wide[1].split()[-1] == "Addresses"  # no blocks: the BLOCKS cell is empty
    by_category = pools.kubectl("get", "azure-cni").stdout
    assert name in by_category
    pools.kubectl("delete", "nip", name)


def _patch_status(kube, name: str, status: dict) -> None:
    kube.kubectl("patch", "nodeippool", name, "--subresource=status", "--type=merge", "-p",
                 json.dumps({"status": status}))


def test_mode_cannot_change_while_pods_use_the_pool(pools) -> None:
    """A spec update sees the stored status: with pods on the pool (status.used > 0) the
    mode and the block length are refused; once it is idle they may change."""
    name = f"pool-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": "azurecni.io/v1alpha1", "kind": "NodeIPPool",
            "metadata": {"name": name}, "spec": {"nodeName": name, "mode": "Blocks"}}
    pools.kubectl("create", "-f", "-", input=json.dumps(body))
    _patch_status(pools, name, {"used": 3, "allocated": 32, "blocks": 2, "ips": [
        {"address": "198.18.0.16", "prefixLength": 28, "ipConfiguration": "azcni-a",
         "state": "Available"},
        {"address": "198.18.0.32", "prefixLength": 28, "ipConfiguration": "azcni-b",
         "state": "Available"}]})
    wide = pools.kubectl("get", "nip", name, "-o", "wide").stdout.splitlines()
    assert wide[1].split()[1] == "32" and wide[1].split()[-2:] == ["Blocks", "2"]

    for change in ({"mode": "Addresses"}, {"blockPrefixLength": 27}):
        refused = pools.kubectl("patch", "nip", name, "--type=merge", "-p",
                                json.dumps({"spec": change}), check=False)
        assert refused.returncode != 0
        assert "spec.mode and spec.blockPrefixLength cannot change while pods use the pool" \
            in refused.stderr, refused.stderr
    # other fields still change while pods run
    pools.kubectl("patch", "nip", name, "--type=merge", "-p", '{"spec":{"minIPs":20}}')

    _patch_status(pools, name, {"used": 0})
    pools.kubectl("patch", "nip", name, "--type=merge", "-p", '{"spec":{"mode":"Addresses"}}')
    spec = json.loads(pools.kubectl("get", "nip", name, "-o", "json").stdout)["spec"]
    assert spec["mode"] == "Addresses" and spec["minIPs"] == 20
    pools.kubectl("delete", "nip", name)


def _crd_keyed_by_ipconfiguration(group: str) -> dict:
    """The CRD as it was before the per-pod lists were keyed by address, in ``group``."""
    crd = nodeippool_crd()
    crd["metadata"]["name"] = f"{PLURAL}.{group}"
    crd["spec"]["group"] = group
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    for field in ("podRequests", "podNetworking"):
        listed = status["properties"][field]
        listed["x-kubernetes-list-map-keys"] = ["ipConfiguration"]
        listed["items"]["required"].remove("address")
        del listed["items"]["properties"]["podUID"]
    return crd


def test_pod_requests_written_before_the_key_change_stay_readable_and_replaceable(
        kube) -> None:
    """``kubectl apply --server-side -f charts/azure-cni/crds/`` on a cluster whose pools
    hold per-pod lists keyed by ipConfiguration: they read as before; an entry the agent
    dropped meanwhile is owned by nobody, and the agent's first write takes it over to drop
    it (the operator's list needs the same)."""
    group = f"upgrade-{uuid.uuid4().hex[:6]}.azurecni.io"
    crd_name = f"{PLURAL}.{group}"
    api = f"{group}/{VERSION}"

    def apply(manager: str, body: dict, *, status: bool) -> None:
        extra = ["--subresource=status"] if status else []
        kube.kubectl("apply", "--server-side", f"--field-manager={manager}", *extra, "-f",
                     "-", input=json.dumps(body))

    def read() -> dict:
        return json.loads(kube.kubectl("get", crd_name, "n1", "-o", "json").stdout)["status"]

    old = _crd_keyed_by_ipconfiguration(group)
    kube.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(old))
    try:
        wait_crd_established(kube.kubectl, crd_name)
        apply("admin", {"apiVersion": api, "kind": KIND, "metadata": {"name": "n1"},
                        "spec": {"nodeName": "n1"}}, status=False)
        before = [{"ipConfiguration": "azcni-a", "address": "198.18.0.10", "pod": "web/a",
                   "publicIP": "web"},
                  {"ipConfiguration": "azcni-b", "address": "198.18.0.11", "pod": "web/b",
                   "withdrawn": True}]
        apply(AGENT_FIELD_MANAGER, {"apiVersion": api, "kind": KIND,
                                    "metadata": {"name": "n1"},
                                    "status": {"podRequests": before}}, status=True)
        apply(OPERATOR_FIELD_MANAGER, {"apiVersion": api, "kind": KIND,
                                       "metadata": {"name": "n1"}, "status": {
                                           "podNetworking": [{
                                               "ipConfiguration": "azcni-b",
                                               "address": "198.18.0.11", "pod": "web/b",
                                               "state": "Detached"}]}},
              status=True)

        new = nodeippool_crd()
        new["metadata"]["name"], new["spec"]["group"] = crd_name, group
        kube.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(new))
        wait_crd_established(kube.kubectl, crd_name)
        stored = PoolStatus.from_dict(read())
        assert [(r.address, r.pod, r.withdrawn) for r in stored.pod_requests] == [
            ("198.18.0.10", "web/a", False), ("198.18.0.11", "web/b", True)]
        assert [(a.address, a.state) for a in stored.pod_networking] == [
            ("198.18.0.11", AttachmentState.DETACHED)]

        # the new agent forgot web/b (Detached) and has two pods in one block
        after = [PodNetworkRequest("azcni-a", "198.18.0.10", "web/a", "web", pod_uid="u-a"),
                 PodNetworkRequest("azcni-c", "198.18.0.32", "web/c", "web", pod_uid="u-c"),
                 PodNetworkRequest("azcni-c", "198.18.0.33", "web/d", "web", pod_uid="u-d")]
        body = {"apiVersion": api, "kind": KIND, "metadata": {"name": "n1"},
                "status": {"podRequests": [r.to_dict() for r in after]}}

        def accepted() -> bool:  # the new schema reaches the API server's handlers shortly
            extra = ["--subresource=status", "--field-manager", AGENT_FIELD_MANAGER]
            return kube.kubectl("apply", "--server-side", *extra, "-f", "-",
                                input=json.dumps(body), check=False).returncode == 0

        wait_for("the API server to take the new CRD", accepted, 30, interval=0.5)
        # web/b's entry stays: its ownership names it by the old key, which matches it no more
        left = PoolStatus.from_dict(read()).pod_requests
        assert [r.pod for r in left] == ["web/a", "web/b", "web/c", "web/d"]
        # what the agent's first write to a pool does: own the strays, then drop them
        strays = stray_requests(NodeIPPool("n1", PoolSpec("n1"), PoolStatus.from_dict(read())),
                                after)
        assert [r.pod for r in strays] == ["web/b"]
        apply(AGENT_FIELD_MANAGER, {**body, "status": {"podRequests": [
            r.to_dict() for r in (*after, *strays)]}}, status=True)
        apply(AGENT_FIELD_MANAGER, body, status=True)
        assert PoolStatus.from_dict(read()).pod_requests == tuple(after)
        # the operator's list alike: its Detached answer for web/b stays after a plain apply,
        # and goes when its first write owns it first (operator/ does not do that yet)
        answers = {"apiVersion": api, "kind": KIND, "metadata": {"name": "n1"},
                   "status": {"podNetworking": [{
                       "address": "198.18.0.32", "ipConfiguration": "azcni-c", "pod": "web/c",
                       "state": "Refused", "reason": "NotAllowed"}]}}
        apply(OPERATOR_FIELD_MANAGER, answers, status=True)
        left_answers = read()["podNetworking"]
        assert [a["pod"] for a in left_answers] == ["web/b", "web/c"]
        apply(OPERATOR_FIELD_MANAGER, {**answers, "status": {"podNetworking": left_answers}},
              status=True)
        apply(OPERATOR_FIELD_MANAGER, answers, status=True)
        assert read()["podNetworking"] == answers["status"]["podNetworking"]
    finally:
        kube.kubectl("delete", "crd", crd_name, "--wait=false", check=False)


POD_SUBNET = ("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/"
              "virtualNetworks/vnet/subnets/pods")


def test_the_pod_subnet_is_a_subnet_id_and_cannot_change(pools) -> None:
    rc, stderr = _create(pools, f"bad-{uuid.uuid4().hex[:6]}", {"podSubnetID": "pods"})
    assert rc != 0 and "podSubnetID must be a subnet's resource ID" in stderr, stderr
    name = f"pool-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": "azurecni.io/v1alpha1", "kind": "NodeIPPool",
            "metadata": {"name": name}, "spec": {"nodeName": name, "podSubnetID": POD_SUBNET}}
    pools.kubectl("create", "-f", "-", input=json.dumps(body))
    try:
        moved = pools.kubectl("patch", "nodeippool", name, "--type=merge", "-p",
                              json.dumps({"spec": {"podSubnetID": ""}}), check=False)
        assert moved.returncode != 0 and "podSubnetID is immutable" in moved.stderr
        # the other fields still change
        pools.kubectl("patch", "nodeippool", name, "--type=merge", "-p",
                      '{"spec":{"maxIPs":40}}')
    finally:
        pools.kubectl("delete", "nodeippool", name, "--wait=false")


def _create_class(kube, spec: dict) -> tuple[int, str]:
    name = f"class-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": "azurecni.io/v1alpha1", "kind": "NodeIPPoolClass",
            "metadata": {"name": name}, "spec": spec}
    out = kube.kubectl("create", "-f", "-", input=json.dumps(body), check=False)
    if out.returncode == 0:
        kube.kubectl("delete", "nodeippoolclass", name, "--wait=false")
    return out.returncode, out.stderr


@pytest.mark.parametrize(("spec", "message"), [
    ({}, "spec.nodeSelector: Required value"),
    ({"nodeSelector": {}, "pool": {"nodeName": "x"}}, 'unknown field "spec.pool.nodeName"'),
    ({"nodeSelector": {}, "pool": {"minIPs": 40, "maxIPs": 30}},
     "minIPs must not exceed maxIPs"),
    ({"nodeSelector": {}, "pool": {"mode": "Prefixes"}}, 'Unsupported value: "Prefixes"'),
    ({"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
     "In and NotIn need values"),
    ({"nodeSelector": {}, "pool": {"podSubnetID": "pods"}},
     "podSubnetID must be a subnet's resource ID"),
])
def test_invalid_classes_are_refused(pools, spec, message) -> None:
    rc, stderr = _create_class(pools, spec)
    assert rc != 0
    assert message in stderr, stderr


def test_a_class_holds_only_the_fields_it_sets(pools) -> None:
    name = f"class-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": "azurecni.io/v1alpha1", "kind": "NodeIPPoolClass",
            "metadata": {"name": name},
            "spec": {"nodeSelector": {"matchLabels": {"pool": "gpu"}},
                     "pool": {"podSubnetID": POD_SUBNET, "maxIPs": 64}}}
    pools.kubectl("create", "-f", "-", input=json.dumps(body))
    try:
        stored = json.loads(pools.kubectl("get", "nipc", name, "-o", "json").stdout)
        assert stored["spec"]["pool"] == {"podSubnetID": POD_SUBNET, "maxIPs": 64}
        table = pools.kubectl("get", "nipc", name).stdout
        assert POD_SUBNET in table and "64" in table
    finally:
        pools.kubectl("delete", "nodeippoolclass", name, "--wait=false")


def test_every_field_the_code_writes_the_api_server_keeps(pools) -> None:
    """The schema comes from the same declarations as the codec: a pool with every spec and
    status field set, written as the operator and the agent write it, reads back equal (a
    field missing from the schema would be pruned without a word)."""
    name = f"full-{uuid.uuid4().hex[:6]}"
    spec = replace(SPEC, node_name=name)
    body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name},
            "spec": spec.to_dict()}
    pools.kubectl("create", "-f", "-", input=json.dumps(body))
    try:
        for manager, fields in ((OPERATOR_FIELD_MANAGER, STATUS.operator_fields()),
                                (AGENT_FIELD_MANAGER, STATUS.agent_fields())):
            pools.kubectl("apply", "--server-side", f"--field-manager={manager}",
                          "--subresource=status", "-f", "-",
                          input=json.dumps(status_apply_body(name, fields)))
        stored = NodeIPPool.from_object(
            json.loads(pools.kubectl("get", "nip", name, "-o", "json").stdout))
        assert stored.spec == spec
        assert set(stored.status.conditions) == set(STATUS.conditions)
        assert replace(stored.status, conditions=()) == replace(STATUS, conditions=())
    finally:
        pools.kubectl("delete", "nodeippool", name, "--wait=false")


def test_every_field_of_a_class_the_api_server_keeps(pools) -> None:
    name = f"class-{uuid.uuid4().hex[:6]}"
    pool = encode(PoolDefaults(min_ips=3, max_ips=40, batch_size=4, min_free_ips=2,
                               max_free_ips=9, release_delay_seconds=60, mode=PoolMode.BLOCKS,
                               block_prefix_length=27, pod_subnet_id=SPEC.pod_subnet_id))
    body = {"apiVersion": API_VERSION, "kind": CLASS_KIND, "metadata": {"name": name},
            "spec": {"nodeSelector": encode(SELECTOR), "pool": pool}}
    pools.kubectl("create", "-f", "-", input=json.dumps(body))
    try:
        stored = PoolClass.from_object(
            json.loads(pools.kubectl("get", "nipc", name, "-o", "json").stdout))
        assert (stored.selector, dict(stored.pool)) == (SELECTOR, pool)
        assert set(pool) == set(CLASS_FIELDS)
    finally:
        pools.kubectl("delete", "nodeippoolclass", name, "--wait=false")
