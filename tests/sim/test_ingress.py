"""What the Ingress check deploys and how it judges the answers (the check itself runs in
make conformance against the demo)."""

from __future__ import annotations

import yaml

from azure_cni_sim.ingress import (
    CONTROLLER,
    HOST,
    INGRESS_CLASS,
    NAMESPACE,
    Answer,
    IngressResult,
    manifests,
)

NODES = {"vm0", "vm1", "vm2"}


def result(*answers: tuple[str, str, str]) -> IngressResult:
    return IngressResult("traefik-abc", "198.18.0.9", "vm1",
                         tuple(Answer(*a) for a in answers))


def test_every_node_answering_with_the_controllers_address_is_right() -> None:
    ok = result(("whoami-1", "vm0", "198.18.0.9"), ("whoami-2", "vm1", "198.18.0.9"),
                ("whoami-3", "vm2", "198.18.0.9"))
    assert ok.problems(NODES) == []
    assert ok.to_dict()["answered_by_node"] == {"vm0": 1, "vm1": 1, "vm2": 1}


def test_a_node_address_seen_by_a_pod_is_snat_inside_the_vnet() -> None:
    snat = result(("whoami-1", "vm0", "198.18.0.5"), ("whoami-2", "vm1", "198.18.0.9"),
                  ("whoami-3", "vm2", "198.18.0.5"))
    (problem,) = snat.problems(NODES)
    assert "SNAT inside the VNet" in problem
    assert "198.18.0.5 (on vm0)" in problem and "198.18.0.5 (on vm2)" in problem


def test_answers_from_some_nodes_only_are_not_enough() -> None:
    (problem,) = result(("whoami-1", "vm0", "198.18.0.9")).problems(NODES)
    assert "not on every node" in problem


def test_the_controller_sees_only_its_namespace_and_its_class() -> None:
    docs = [d for d in yaml.safe_load_all(manifests("localhost/traefik:x",
                                                    "localhost/app:y", 3)) if d]
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    # namespaced permissions in its namespace; cluster-wide only to read IngressClasses and
    # Nodes (Traefik's Ingress provider watches both, and routes nothing until it can)
    (role,) = by_kind["Role"]
    assert role["metadata"]["namespace"] == NAMESPACE
    (cluster_role,) = by_kind["ClusterRole"]
    assert cluster_role["rules"] == [{"apiGroups": ["networking.k8s.io"],
                                      "resources": ["ingressclasses"],
                                      "verbs": ["get", "list", "watch"]},
                                     {"apiGroups": [""], "resources": ["nodes"],
                                      "verbs": ["get", "list", "watch"]}]
    (ingress_class,) = by_kind["IngressClass"]
    assert ingress_class["spec"]["controller"] == CONTROLLER
    deployment = next(d for d in by_kind["Deployment"] if d["metadata"]["name"] == "traefik")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--providers.kubernetesingress.namespaces={NAMESPACE}" in args
    assert f"--providers.kubernetesingress.ingressClass={INGRESS_CLASS}" in args
    (ingress,) = by_kind["Ingress"]
    assert ingress["spec"]["ingressClassName"] == INGRESS_CLASS
    assert ingress["spec"]["rules"][0]["host"] == HOST
    backend = next(d for d in by_kind["Deployment"] if d["metadata"]["name"] == "whoami")
    assert backend["spec"]["replicas"] == 6
    assert all(d["metadata"].get("namespace", NAMESPACE) == NAMESPACE for d in docs
               if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding",
                                    "IngressClass"))
