"""The chart's service accounts, with real tokens: what they may do, and what is refused."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.chart.conftest import Release, agent_kubeconfig
from tests.chart.helm import ROOT
from tests.chart.tokens import (
    NODE_NAME_EXTRA,
    service_account_kubeconfig,
    whoami,
)

from azure_cni.api.nodeippool import AGENT_FIELD_MANAGER, OPERATOR_FIELD_MANAGER
from azure_cni.kubeclient import KubeClient
from azure_cni.kubeevents import EventRecorder, ObjectRef
from azure_cni_sim.cluster import run_kubectl

pytestmark = pytest.mark.cluster

RBAC_DOC = ROOT / "docs" / "rbac.md"


# -- helpers ------------------------------------------------------------------------------------

def operator_kubeconfig(release: Release, tmp_path: Path) -> Path:
    return service_account_kubeconfig(release.kube.kubeconfig, release.namespace,
                                      release.service_account("operator"),
                                      tmp_path / "operator.kubeconfig")



def apply_status(kubeconfig: Path, pool: str, status: dict[str, Any], manager: str,
                 check: bool = True) -> Any:
    """Server-side apply of ``status`` to the pool's status subresource, as ``manager``.

    With force, as both processes apply: a field another manager owns is taken over instead
    of being reported as a conflict, so a write that must be refused reaches admission.
    """
    body = {"apiVersion": "azurecni.io/v1alpha1", "kind": "NodeIPPool",
            "metadata": {"name": pool}, "status": status}
    return run_kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts",
                       f"--field-manager={manager}", "--subresource=status", "-f", "-",
                       input=json.dumps(body), check=check)


def refused(result: Any, fragment: str) -> None:
    assert result.returncode != 0, f"expected a refusal, got: {result.stdout}"
    assert "Forbidden" in result.stderr or "forbidden" in result.stderr, result.stderr
    assert fragment in result.stderr, result.stderr


def get_pool(release: Release, name: str) -> dict[str, Any]:
    pool: dict[str, Any] = json.loads(release.kube.kubectl(
        "get", "nodeippool", name, "-o", "json", "--show-managed-fields").stdout)
    return pool


def post_event(kubeconfig: Path, pool: str) -> None:
    """An Event about a pool as the operator posts it, twice: the recorder creates it, then
    patches its series (events.k8s.io/v1, in ``default``)."""
    async def post() -> list[str]:
        requests: list[str] = []
        api = await KubeClient.connect(kubeconfig)
        try:
            recorder = EventRecorder(api, controller="azure-cni-operator", instance="op-0",
                                     on_request=requests.append)
            for _ in range(2):
                await recorder.record(ObjectRef("azurecni.io/v1alpha1", "NodeIPPool", pool),
                                      "Normal", "Test", "posted by a chart token", "Reconcile")
        finally:
            await api.close()
        return requests

    with caplog_of("azure_cni.kubeevents") as logged:
        assert asyncio.run(post()) == ["create", "patch"]
    assert not logged, f"the chart's token was refused: {logged}"


@contextlib.contextmanager
def caplog_of(name: str) -> Iterator[list[str]]:
    """Warnings ``name`` logs meanwhile (the recorder logs a refusal, it never raises)."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def watch_once(kubeconfig: Path, path: str) -> Any:
    """A real watch request that the API server ends after a second."""
    sep = "&" if "?" in path else "?"
    return run_kubectl(kubeconfig, "get", "--raw", f"{path}{sep}watch=1&timeoutSeconds=1",
                       check=False)


OPERATOR_STATUS = {
    "nic": {"id": "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Network/"
                  "networkInterfaces/nic0", "primaryIP": "198.18.0.4",
            "subnetCIDR": "198.18.0.0/24"},
    "ips": [{"address": "198.18.0.10", "ipConfiguration": "azcni-0000", "state": "Available"},
            {"address": "198.18.0.11", "ipConfiguration": "azcni-0001", "state": "Releasing"}],
    "allocated": 2,
    "conditions": [{"type": "Ready", "status": "True", "reason": "Provisioned",
                    "message": "2 addresses"}],
}
AGENT_STATUS = {
    "used": 1, "cooling": 1, "releaseAcks": ["azcni-0001"],
    "conditions": [{"type": "AgentReady", "status": "True", "reason": "Serving",
                    "message": "agent up"}],
}


# -- the operator -------------------------------------------------------------------------------

def test_operator_token_can_do_what_the_operator_does(release: Release,
                                                      tmp_path: Path) -> None:
    kubeconfig = operator_kubeconfig(release, tmp_path)
    assert whoami(kubeconfig)["username"] == release.user(release.service_account("operator"))

    def ok(*args: str, **kwargs: Any) -> str:
        return run_kubectl(kubeconfig, *args, **kwargs).stdout

    # nodes and pools: list (in pages) and watch
    assert release.nodes[0] in ok("get", "nodes", "-o", "name", "--chunk-size=1")
    for path in ("/api/v1/nodes", "/apis/azurecni.io/v1alpha1/nodeippools"):
        result = watch_once(kubeconfig, path)
        assert result.returncode == 0, result.stderr

    # a pool for a new node, with the operator's finalizer, then its status
    pool = f"{release.nodes[0]}-op"
    release.nodes.append(pool)  # cleaned up with the release
    ok("create", "-f", "-", input=json.dumps({
        "apiVersion": "azurecni.io/v1alpha1", "kind": "NodeIPPool",
        "metadata": {"name": pool, "finalizers": ["azurecni.io/nic-cleanup"]},
        "spec": {"nodeName": pool, "minIPs": 2}}))
    apply_status(kubeconfig, pool, OPERATOR_STATUS, OPERATOR_FIELD_MANAGER)
    stored = get_pool(release, pool)
    assert stored["status"]["allocated"] == 2
    assert stored["metadata"]["finalizers"] == ["azurecni.io/nic-cleanup"]
    managers = {(m["manager"], m.get("subresource", "")) for m in
                stored["metadata"]["managedFields"]}
    assert (OPERATOR_FIELD_MANAGER, "status") in managers
    assert "2" in ok("get", "nodeippool", pool)  # the ALLOCATED column an admin sees

    # Events: in default, where an Event about a cluster-scoped object must be
    post_event(kubeconfig, pool)

    # the leader Lease in the release namespace: created, read and renewed
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "azure-cni-operator", "namespace": release.namespace},
             "spec": {"holderIdentity": "operator-0_test", "leaseDurationSeconds": 15}}
    ok("create", "-f", "-", input=json.dumps(lease))
    renewed = json.loads(ok("get", "lease", "azure-cni-operator", "-n", release.namespace,
                            "-o", "json"))
    renewed["spec"]["holderIdentity"] = "operator-1_test"
    ok("replace", "-f", "-", input=json.dumps(renewed))
    release.kube.kubectl("delete", "lease", "azure-cni-operator", "-n", release.namespace)

    # a deleted node's pool: the finalizer is removed (a tested JSON patch) once the NIC holds
    # nothing of it, then it goes
    ok("patch", "nodeippool", pool, "--type=json", "-p", json.dumps([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "azurecni.io/nic-cleanup"},
        {"op": "remove", "path": "/metadata/finalizers/0"}]))
    ok("delete", "nodeippool", pool, "--wait=true", "--timeout=60s")
    assert release.kube.kubectl("get", "nodeippool", pool, check=False).returncode != 0


def test_operator_token_is_refused_secrets_and_node_writes(release: Release,
                                                           tmp_path: Path) -> None:
    kubeconfig = operator_kubeconfig(release, tmp_path)
    node = release.nodes[0]

    def no(*args: str, fragment: str = "cannot") -> None:
        refused(run_kubectl(kubeconfig, *args, check=False), fragment)

    no("get", "secrets", "-n", release.namespace)
    no("get", "secrets", "--all-namespaces")
    no("label", "node", node, "azurecni.io/touched=yes")
    no("patch", "node", node, "--type=merge", "-p", '{"spec":{"unschedulable":true}}')
    no("delete", "node", node)
    no("get", "crd", "nodeippools.azurecni.io")
    no("get", "crd")  # it needs no discovery of resources: it watches exactly two
    no("delete", "crd", "nodeippools.azurecni.io")
    for namespace in (release.namespace, "kube-public"):
        can = run_kubectl(kubeconfig, "auth", "can-i", "create", "events.events.k8s.io", "-n",
                          namespace, check=False)
        assert can.stdout.strip() == "no", f"may post Events in {namespace}"
    no("get", "configmaps", "-n", release.namespace)
    no("create", "serviceaccount", "x", "-n", release.namespace)


# -- the agent ----------------------------------------------------------------------------------

def test_agent_token_names_its_node(release: Release, tmp_path: Path) -> None:
    node = release.nodes[0]
    user = whoami(agent_kubeconfig(release, tmp_path, node))
    assert user["username"] == release.user(release.service_account("agent"))
    assert user["extra"][NODE_NAME_EXTRA] == [node]  # type: ignore[index]


def test_agent_token_can_watch_its_pool_and_apply_its_status(release: Release,
                                                             tmp_path: Path) -> None:
    node = release.nodes[0]
    operator = operator_kubeconfig(release, tmp_path)
    agent = agent_kubeconfig(release, tmp_path, node)

    # the agent's watch: only its own pool, by field selector
    result = watch_once(agent, "/apis/azurecni.io/v1alpha1/nodeippools"
                               f"?fieldSelector=metadata.name%3D{node}")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [e["object"]["metadata"]["name"] for e in events] == [node]

    # both writers, each its own fields: neither erases the other's
    apply_status(operator, node, OPERATOR_STATUS, OPERATOR_FIELD_MANAGER)
    apply_status(agent, node, AGENT_STATUS, AGENT_FIELD_MANAGER)
    status = get_pool(release, node)["status"]
    assert status["used"] == 1 and status["releaseAcks"] == ["azcni-0001"]
    assert status["cooling"] == 1
    assert status["allocated"] == 2 and len(status["ips"]) == 2
    assert {c["type"] for c in status["conditions"]} == {"Ready", "AgentReady"}



def test_agent_token_is_refused_everything_else(release: Release, tmp_path: Path) -> None:
    own, other = release.nodes[0], release.nodes[1]
    agent = agent_kubeconfig(release, tmp_path, own)
    before = get_pool(release, other)

    refused(apply_status(agent, other, {"used": 7}, AGENT_FIELD_MANAGER, check=False),
            f"the azure-cni agent of node {own} may not write the NodeIPPool of node {other}")
    assert get_pool(release, other).get("status") == before.get("status")

    refused(apply_status(agent, own, {"allocated": 200}, AGENT_FIELD_MANAGER, check=False),
            "the azure-cni agent may only change status.used, status.cooling, "
            "status.releaseAcks,")
    refused(apply_status(agent, own, {"conditions": [{"type": "Ready", "status": "False"}]},
                         AGENT_FIELD_MANAGER, check=False),
            "the other status fields belong to the operator")

    def no(*args: str, fragment: str = "cannot", stdin: str | None = None) -> None:
        refused(run_kubectl(agent, *args, check=False, input=stdin), fragment)

    no("patch", "nodeippool", own, "--type=merge", "-p", '{"spec":{"minIPs":3}}')
    no("scale", "nodeippool", own, "--replicas=3")
    no("delete", "nodeippool", own)
    no("create", "-f", "-", stdin=json.dumps({
        "apiVersion": "azurecni.io/v1alpha1", "kind": "NodeIPPool",
        "metadata": {"name": f"{own}-x"}, "spec": {"nodeName": f"{own}-x"}}))
    no("get", "secrets", "-n", release.namespace)
    no("get", "secrets", "--all-namespaces")
    no("get", "nodes")
    no("get", "nodeippool", own)  # it lists and watches by field selector, never gets
    assert get_pool(release, own)["spec"]["minIPs"] == 0


def test_agent_tokens_bound_to_a_node_and_to_nothing(release: Release, tmp_path: Path) -> None:
    admin = release.kube.kubeconfig
    sa = release.service_account("agent")
    other = release.nodes[1]
    node_bound = service_account_kubeconfig(admin, release.namespace, sa,
                                            tmp_path / "node-bound.kubeconfig", node=other)
    apply_status(node_bound, other, {"used": 2}, AGENT_FIELD_MANAGER)
    assert get_pool(release, other)["status"]["used"] == 2

    unbound = service_account_kubeconfig(admin, release.namespace, sa,
                                         tmp_path / "unbound.kubeconfig")
    refused(apply_status(unbound, other, {"used": 3}, AGENT_FIELD_MANAGER, check=False),
            "the azure-cni agent's token names no node")


def test_admission_policy_holds_when_rbac_is_widened(release: Release, tmp_path: Path) -> None:
    """Were the agent ever granted writes on pools, the policy still allows only its status."""
    own = release.nodes[0]
    agent = agent_kubeconfig(release, tmp_path, own)
    widened = f"azcni-test-widened-{uuid.uuid4().hex[:6]}"
    kube = release.kube
    kube.kubectl("create", "clusterrole", widened, "--verb=get,patch,update,delete",
                 "--resource=nodeippools.azurecni.io,nodeippools.azurecni.io/scale")
    try:
        kube.kubectl("create", "clusterrolebinding", widened, f"--clusterrole={widened}",
                     f"--serviceaccount={release.namespace}:{release.service_account('agent')}")
        refused(run_kubectl(agent, "patch", "nodeippool", own, "--type=merge",
                            "-p", '{"spec":{"minIPs":3}}', check=False),
                "the azure-cni agent may only write the status of a NodeIPPool; update is for "
                "the operator and the admin")
        refused(run_kubectl(agent, "scale", "nodeippool", own, "--replicas=3", check=False),
                "update of scale is for the operator and the admin")
        refused(run_kubectl(agent, "delete", "nodeippool", own, check=False),
                "the azure-cni agent may only write the status of a NodeIPPool; delete")
        assert get_pool(release, own)["spec"]["minIPs"] == 0
    finally:
        kube.kubectl("delete", "clusterrolebinding", widened, "--ignore-not-found")
        kube.kubectl("delete", "clusterrole", widened, "--ignore-not-found")


# -- docs/rbac.md ---------------------------------------------------------------------------------

ROW = re.compile(r"^\| (operator|agent) \| `([^`]+)` \| (yes|no) \|", re.MULTILINE)


def test_rbac_doc_table_is_true(release: Release) -> None:
    rows = ROW.findall(RBAC_DOC.read_text())
    assert len(rows) >= 50, "the can-i tables of docs/rbac.md were not found"
    wrong = []
    for who, question, answer in rows:
        user = release.user(release.service_account(who))
        # the document speaks of a release installed in kube-system
        args = [release.namespace if a == "kube-system" else a for a in shlex.split(question)]
        result = release.kube.kubectl("auth", "can-i", *args, f"--as={user}", check=False)
        got = result.stdout.strip()
        if got != answer:
            wrong.append(f"{who}: can-i {question} -> {got or result.stderr.strip()}, "
                         f"docs say {answer}")
    assert not wrong, "docs/rbac.md is not true:\n" + "\n".join(wrong)


def can_i_list(kubeconfig: Path, namespace: str) -> dict[str, set[str]]:
    """``kubectl auth can-i --list`` as a mapping resource -> verbs (self-reviews left out)."""
    out = run_kubectl(kubeconfig, "auth", "can-i", "--list", "-n", namespace,
                      "--no-headers").stdout
    grants: dict[str, set[str]] = {}
    for line in out.splitlines():
        resource, rest = line.split(None, 1) if not line.startswith(" ") else ("", line)
        if not resource or resource.startswith("selfsubject"):
            continue
        verbs = re.findall(r"\[([^\]]*)\]\s*$", rest)[0].split()
        grants.setdefault(resource, set()).update(verbs)
    return grants


def test_can_i_list_of_each_token_is_exactly_the_documented_grants(release: Release,
                                                                   tmp_path: Path) -> None:
    operator = operator_kubeconfig(release, tmp_path)
    agent = agent_kubeconfig(release, tmp_path, release.nodes[0])
    pools = "nodeippools.azurecni.io"
    cluster_wide = {
        "nodes": {"get", "list", "watch"},
        pools: {"get", "list", "watch", "create", "patch", "delete"},
        f"{pools}/status": {"patch"},
        # node groups: the classes are read, never written
        "nodeippoolclasses.azurecni.io": {"list", "watch"},
    }
    assert can_i_list(operator, "default") == {**cluster_wide,
                                               "events.events.k8s.io": {"create", "patch"}}
    # the leader Lease: create any (it may not exist yet), read and renew only its own
    assert can_i_list(operator, release.namespace) == {
        **cluster_wide, "leases.coordination.k8s.io": {"create", "get", "update"}}
    assert can_i_list(operator, "kube-public").get("events.events.k8s.io") is None
    for namespace in (release.namespace, "default"):
        assert can_i_list(agent, namespace) == {pools: {"list", "watch"},
                                                f"{pools}/status": {"patch"}}
