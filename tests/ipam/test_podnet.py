"""Per-pod Azure networking in the pure decision: each rule of ``ipam/podnet.py`` a row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from ipaddress import ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.api.test_crd import list_map_keys
from tests.ipam.test_decide import NOW, SUBNET, SUBNET_ID, ips, nic, pool, run

from azure_cni.api.nodeippool import ConditionType, PoolStatus
from azure_cni.api.podnet import (
    NOT_ALLOWED,
    NOT_TAGGED,
    UNATTRIBUTED,
    AttachmentState,
    PodAttachment,
    PodNetworkRequest,
)
from azure_cni.api.settings import PodNetworkingSettings
from azure_cni.cloud.port import (
    AttachmentRefused,
    AuthFailed,
    CloudError,
    IPConfigFeatures,
    IPConfiguration,
    NicSnapshot,
    NotFound,
    Throttled,
)
from azure_cni.ipam.decide import Decision, Observation, decide
from azure_cni.ipam.podnet import drifted, pending

SUB = "s"
PIP = f"/subscriptions/{SUB}/resourceGroups/pips/providers/Microsoft.Network/publicIPAddresses/web"
OTHER_RG_PIP = PIP.replace("/pips/", "/someone-else/")
OTHER_SUB_PIP = PIP.replace(f"/subscriptions/{SUB}/", "/subscriptions/other/")
POOL_A = (f"/subscriptions/{SUB}/resourceGroups/pips/providers/Microsoft.Network/loadBalancers/"
          "lb/backendAddressPools/a")
POOL_B = POOL_A[:-1] + "b"
POLICY = PodNetworkingSettings(resource_groups=("pips",), public_ip_namespaces=("web",),
                               load_balancer_namespaces=("web", "lb"))
LB = POOL_A.rsplit("/backendAddressPools/", 1)[0]
#: every resource the rows use, tagged for every namespace (the rows about tags say otherwise)
TAGGED = {r.lower(): {"azurecni-namespaces": "*"}
          for r in (PIP, LB, LB.replace("/lb", "/infra"), LB.replace("/lb", "/kubernetes"))}
INVENTORY = ips(8)
NAME, ADDRESS = INVENTORY[0].ip_configuration, INVENTORY[0].address


def request(pod: str = "web/a", public_ip: str = "web", pools: Sequence[str] = (),
            withdrawn: bool = False, name: str = NAME, address: str = ADDRESS
            ) -> PodNetworkRequest:
    return PodNetworkRequest(name, address, pod, public_ip, tuple(pools), withdrawn)


def carrying(features: dict[str, IPConfigFeatures]) -> NicSnapshot:
    """The NIC with the inventory, each ipConfiguration carrying ``features``."""
    base = nic(INVENTORY)
    configs = tuple(replace(c, public_ip_id=features[c.name].public_ip,
                            backend_pool_ids=features[c.name].backend_pools)
                    if c.name in features else c for c in base.ip_configurations)
    return replace(base, ip_configurations=configs)


def after(decision: Decision, obs: Observation) -> dict[str, IPConfigFeatures]:
    """What each ipConfiguration the decision's write edits carries afterwards."""
    assert decision.write is not None and obs.nic is not None
    on_nic = {c.name: c for c in obs.nic.secondary()}
    node_pools = obs.nic.primary.backend_pool_ids
    return {name: edit.applied(on_nic[name].features, node_pools)
            for name, edit in decision.write.features}


def observe(requests: Sequence[PodNetworkRequest] = (),
            answers: Sequence[PodAttachment] = (),
            on_nic: dict[str, IPConfigFeatures] | None = None,
            policy: PodNetworkingSettings = POLICY,
            tags: Mapping[str, Mapping[str, str] | CloudError] = TAGGED) -> Observation:
    the_pool = pool(INVENTORY, used=1, pod_requests=tuple(requests),
                    pod_networking=tuple(answers))
    return Observation(the_pool, NOW, carrying(on_nic or {}), SUBNET, policy, tags=tags)


def attached(pod: str = "web/a", public_ip: str = PIP, pools: Sequence[str] = ()
             ) -> PodAttachment:
    return PodAttachment(NAME, ADDRESS, pod, AttachmentState.ATTACHED, public_ip, tuple(pools))


def condition(status: PoolStatus | None) -> tuple[bool, str] | None:
    assert status is not None
    c = status.condition(ConditionType.POD_NETWORKING)
    return (c.status, c.reason) if c is not None else None


def test_a_bare_name_is_attached_from_the_first_allowed_group_and_reported() -> None:
    obs = observe([request()])
    decision, outcome = run(obs, written=carrying({NAME: IPConfigFeatures(PIP)}))
    assert after(decision, obs) == {NAME: IPConfigFeatures(PIP)}
    assert decision.write.add == () and decision.write.remove == ()
    assert outcome.status is not None
    assert outcome.status.pod_networking == (attached(),)
    assert condition(outcome.status) == (True, "Attached")
    (event,) = outcome.pod_events
    assert (event.namespace, event.pod, event.type, event.reason) == \
        ("web", "a", "Normal", "PodNetworkAttached")
    assert PIP in event.message and ADDRESS in event.message


@pytest.mark.parametrize(("name", "req", "why"), [
    ("a namespace not allowed public IPs", request(pod="tenant/x"),
     "namespace 'tenant' may not use public IPs"),
    ("a public IP outside the allowed resource groups", request(public_ip=OTHER_RG_PIP),
     "resource group 'someone-else'"),
    ("a resource ID of another type", request(public_ip=POOL_A),
     "is not a Microsoft.Network/publicIPAddresses resource ID"),
    ("a namespace not allowed backend pools", request(pod="db/x", public_ip="", pools=[POOL_A]),
     "namespace 'db' may not join load balancer backend pools"),
    # issue 22 row 1: these raised CloudError out of the decision
    ("a resource group and a name", request(public_ip="pips/web"),
     "'pips/web' is not an Azure resource ID"),
    ("a bare backend pool name", request(public_ip="", pools=["web-pool"]),
     "'web-pool' is not an Azure resource ID"),
    ("a path that is no resource ID", request(public_ip="/subscriptions/s/web"),
     "'/subscriptions/s/web' is not an Azure resource ID"),
    # issue 22 row 5: the resource group matched, the subscription was never looked at
    ("a public IP of another subscription", request(public_ip=OTHER_SUB_PIP),
     "subscription 'other' of"),
    ("a backend pool of another subscription",
     request(public_ip="", pools=[POOL_A.replace(f"/subscriptions/{SUB}/",
                                                 "/subscriptions/other/")]),
     "subscription 'other' of"),
])
def test_the_policy_refuses_before_azure_sees_anything(name, req, why) -> None:
    decision, outcome = run(observe([req]))
    assert decision.write is None, name
    assert outcome.status is not None
    (answer,) = outcome.status.pod_networking
    assert answer.state == AttachmentState.REFUSED and answer.reason == NOT_ALLOWED, name
    assert why in answer.message, answer.message
    assert condition(outcome.status) == (False, "Refused")
    c = outcome.status.condition(ConditionType.POD_NETWORKING)
    assert c is not None and why in c.message and c.message.startswith("0 attached, 1 refused")
    (event,) = outcome.pod_events
    assert (event.type, event.reason) == ("Warning", "PodNetworkRefused") and why in event.message


def test_a_pod_in_a_block_gets_no_public_ip_of_its_own() -> None:
    """A block's ipConfiguration is shared by 16 pods: a public IP there would reach them all."""
    obs = observe([request()])
    block = tuple(replace(c, prefix_length=28) if c.name == NAME else c
                  for c in obs.nic.ip_configurations)
    decision, outcome = run(replace(obs, nic=replace(obs.nic, ip_configurations=block)))
    assert decision.write is None
    assert outcome.status is not None
    (answer,) = outcome.status.pod_networking
    assert answer.state == AttachmentState.REFUSED and answer.reason == NOT_ALLOWED
    assert "Addresses mode" in answer.message
    (event,) = outcome.pod_events
    assert event.reason == "PodNetworkRefused"


def test_every_pod_in_a_block_gets_an_answer_of_its_own() -> None:
    """Pods of one block share its ipConfiguration: each is refused with its own Event, and a
    withdrawn one is Detached (only then does its agent hand the address out again)."""
    second, third = (str(ip_address(ADDRESS) + n) for n in (1, 2))
    obs = observe([request("web/a"), request("web/b", address=second),
                   request("web/c", address=third, withdrawn=True)])
    block = tuple(replace(c, prefix_length=28) if c.name == NAME else c
                  for c in obs.nic.ip_configurations)
    decision, outcome = run(replace(obs, nic=replace(obs.nic, ip_configurations=block)))
    assert decision.write is None
    assert outcome.status is not None
    answers = {a.pod: a for a in outcome.status.pod_networking}
    assert {p: (a.address, a.state) for p, a in answers.items()} == {
        "web/a": (ADDRESS, AttachmentState.REFUSED), "web/b": (second, AttachmentState.REFUSED),
        "web/c": (third, AttachmentState.DETACHED)}
    assert all(a.ip_configuration == NAME for a in answers.values())
    assert sorted((e.pod, e.reason) for e in outcome.pod_events) == [
        ("a", "PodNetworkRefused"), ("b", "PodNetworkRefused")]
    keys = list_map_keys("podNetworking")
    assert len({tuple(a.to_dict().get(k) for k in keys) for a in answers.values()}) == 3


def test_nobody_may_by_default() -> None:
    _, outcome = run(observe([request()], policy=PodNetworkingSettings()))
    assert outcome.status is not None
    assert outcome.status.pod_networking[0].state == AttachmentState.REFUSED


def test_azures_refusal_sticks_for_the_same_request_and_the_write_goes_on_without_it() -> None:
    in_use = AttachmentRefused(
        f"Resource {NAME} is referencing public IP address {PIP} that is already allocated to "
        "resource /x/ipConfigurations/ipconfig1.", resources=(PIP,),
        code="PublicIPAddressInUse", status=400)
    other = request(pod="web/b", public_ip="", pools=[POOL_A], name=INVENTORY[1].ip_configuration,
                    address=INVENTORY[1].address)
    decision, outcome = run(observe([request(), other]), error=in_use)
    assert outcome.failed and outcome.requeue_after is not None and outcome.requeue_after < 5
    assert outcome.status is not None
    refused = {a.ip_configuration: a for a in outcome.status.pod_networking}
    assert refused[NAME].state == AttachmentState.REFUSED
    assert refused[NAME].reason == "PublicIPAddressInUse" and PIP in refused[NAME].message
    assert other.ip_configuration not in refused  # the pool request was not what Azure refused
    assert [(e.pod, e.reason) for e in outcome.pod_events] == [("a", "PodNetworkRefused")]
    assert condition(outcome.status) == (False, "Refused")
    # the next reconcile writes the pool request alone, and never retries the refused one
    again = observe([request(), other], outcome.status.pod_networking)
    decision, _ = run(again, written=carrying({other.ip_configuration:
                                               IPConfigFeatures("", (POOL_A,))}))
    assert after(decision, again) == {other.ip_configuration: IPConfigFeatures("", (POOL_A,))}


def test_a_withdrawn_request_is_detached_before_it_is_reported_detached() -> None:
    obs = observe([request(withdrawn=True)], [attached()], on_nic={NAME: IPConfigFeatures(PIP)})
    decision, outcome = run(obs, written=carrying({}))
    assert after(decision, obs) == {NAME: IPConfigFeatures()}
    assert outcome.status is not None
    (answer,) = outcome.status.pod_networking
    assert answer.state == AttachmentState.DETACHED
    assert [e.reason for e in outcome.pod_events] == ["PodNetworkDetached"]


def test_a_withdrawn_request_still_on_the_nic_is_not_reported_detached() -> None:
    obs = observe([request(withdrawn=True)], [attached()], on_nic={NAME: IPConfigFeatures(PIP)})
    _, outcome = run(obs, written=carrying({NAME: IPConfigFeatures(PIP)}))
    assert outcome.status is None or outcome.status.pod_networking == (attached(),)


def test_a_detached_entry_goes_once_the_agent_forgot_the_request() -> None:
    detached = PodAttachment(NAME, ADDRESS, "web/a", AttachmentState.DETACHED)
    decision = decide(replace(observe([], [detached]), nic=None, subnet=None), lambda: "x")
    assert decision.read_nic  # an answer to drop is work
    _, outcome = run(observe([], [detached]))
    assert outcome.status is not None and outcome.status.pod_networking == ()


def test_while_the_pod_lives_only_the_pools_it_asked_for_come_and_go() -> None:
    foreign = POOL_A.replace("/lb/", "/infra/")
    obs = observe([request(public_ip="", pools=[POOL_B])],
                  on_nic={NAME: IPConfigFeatures("", (foreign,))})
    decision, _ = run(obs, written=carrying({NAME: IPConfigFeatures("", (foreign, POOL_B))}))
    assert after(decision, obs) == {NAME: IPConfigFeatures("", (foreign, POOL_B))}


def with_node_pool(snapshot: NicSnapshot, pool_id: str) -> NicSnapshot:
    """``snapshot`` with its primary ipConfiguration in ``pool_id`` (the node's own pool)."""
    return replace(snapshot, ip_configurations=tuple(
        replace(c, backend_pool_ids=(pool_id,)) if c.primary else c
        for c in snapshot.ip_configurations))


def test_a_released_address_keeps_nothing_but_the_nodes_own_pools() -> None:
    """Issue 22 row 2: what is on the ipConfiguration of a withdrawn request comes off whether
    or not the operator recorded attaching it (it may have been killed before the status
    write); the pools its primary is in are the node's (copyLoadBalancerPools) and stay."""
    node_pool = POOL_A.replace("/lb/", "/kubernetes/")
    foreign = POOL_A.replace("/lb/", "/infra/")
    on = {NAME: IPConfigFeatures(PIP, (node_pool, POOL_B, foreign))}
    for answers in ((), (attached(public_ip="", pools=[POOL_B]),)):
        obs = observe([request(withdrawn=True)], answers, on_nic=on)
        obs = replace(obs, nic=with_node_pool(obs.nic, node_pool))
        still = with_node_pool(carrying({NAME: IPConfigFeatures("", (node_pool, foreign))}),
                               node_pool)
        decision, outcome = run(obs, written=still)
        assert after(decision, obs) == {NAME: IPConfigFeatures("", (node_pool,))}
        assert outcome.status is None or all(
            a.state != AttachmentState.DETACHED for a in outcome.status.pod_networking), \
            "Detached while a pool of the old pod was still on the address"
        _, outcome = run(obs, written=with_node_pool(
            carrying({NAME: IPConfigFeatures("", (node_pool,))}), node_pool))
        assert outcome.status is not None
        (answer,) = outcome.status.pod_networking
        assert answer.state == AttachmentState.DETACHED


def test_pods_that_ask_nothing_cost_nothing() -> None:
    """No request: the reconcile takes the shortcut without the NIC, as before."""
    quiet = pool(INVENTORY, used=1)
    decision = decide(Observation(quiet, NOW, pod_networking=POLICY), lambda: "x")
    assert not decision.read_nic and decision.write is None
    decision, outcome = run(observe())
    assert decision.write is None
    # and a pool that never had a request gets no PodNetworking condition at all
    assert outcome.status is None or condition(outcome.status) is None


def test_answered_requests_do_not_read_the_nic_again() -> None:
    obs = replace(observe([request()], [attached()]), nic=None, subnet=None)
    decision = decide(obs, lambda: "x")
    assert not decision.read_nic and decision.write is None


def test_requests_for_addresses_outside_the_pool_are_ignored() -> None:
    stray = request(name="azcni-gone", address="198.18.0.250")
    decision, outcome = run(observe([stray]))
    assert decision.write is None
    assert outcome.status is None or outcome.status.pod_networking == ()


def test_the_primary_is_never_given_a_pods_features() -> None:
    primary = IPConfiguration("ipconfig1", "198.18.0.4", True, "Succeeded", SUBNET_ID)
    req = request(name="ipconfig1", address="198.18.0.4")
    decision, _ = run(replace(observe([req]), nic=replace(
        carrying({}), ip_configurations=(primary, *carrying({}).secondary()))))
    assert decision.write is None


_ANNOTATION = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["web", "pips/web", "/", "//", PIP, POOL_A, PIP + "/", PIP.upper(),
                     "/subscriptions/s/resourceGroups/pips", POOL_A.replace("/lb/", "/")]))


@settings(max_examples=300, deadline=None)
@given(public_ip=_ANNOTATION, pools=st.lists(_ANNOTATION, max_size=3),
       pod=st.sampled_from(["web/a", "lb/b", "tenant/c", "/", "web/"]))
def test_no_annotation_makes_the_decision_raise_and_every_request_is_answered(
        public_ip: str, pools: list[str], pod: str) -> None:
    """Whatever a pod writes, the decision answers it (Attached or Refused) and never raises:
    an exception would stall every reconcile of the node (issue 22 row 1)."""
    req = request(pod=pod, public_ip=public_ip.strip(), pools=[p for p in pools if p.strip()])
    if not (req.public_ip or req.backend_pools):
        return
    obs = observe([req])
    decision = decide(obs, lambda: "azcni-new")
    if decision.look_up:  # resources the rows do not tag: untagged
        obs = replace(obs, tags={**TAGGED, **{r.lower(): {} for r in decision.look_up}})
        decision = decide(obs, lambda: "azcni-new")
    written = carrying(after(decision, obs)) if decision.write is not None else obs.nic
    outcome = decision.settle(written) if decision.write is not None else decision.outcome
    assert outcome is not None and outcome.status is not None
    (answer,) = outcome.status.pod_networking
    assert answer.state in (AttachmentState.ATTACHED, AttachmentState.REFUSED)


def test_a_refusal_naming_a_resource_only_in_its_message_is_that_requests() -> None:
    """Issue 22 row 3: a refusal the classifier could not parse a resource out of matched no
    request, and the node's every write was refused again every 30 s."""
    other = request(pod="web/b", public_ip="", pools=[POOL_A], name=INVENTORY[1].ip_configuration,
                    address=INVENTORY[1].address)
    odd = AttachmentRefused(f"The public IP {PIP} may not be used here.", code="SomeNewCode",
                            status=400)
    _, outcome = run(observe([request(), other]), error=odd)
    assert outcome.status is not None
    refused = {a.ip_configuration: a for a in outcome.status.pod_networking}
    assert refused[NAME].state == AttachmentState.REFUSED and refused[NAME].reason == "SomeNewCode"
    assert other.ip_configuration not in refused
    assert outcome.requeue_after is not None and outcome.requeue_after < 5


UNNAMED = AttachmentRefused("The SKU of the public IP and the load balancer do not match.",
                            code="PublicIPAndLoadBalancerSkuDoNotMatch", status=400)


def test_a_refusal_naming_nothing_is_the_only_attachments_of_the_write() -> None:
    obs = observe([request()])
    _, outcome = run(obs, error=UNNAMED)
    assert outcome.status is not None
    (answer,) = outcome.status.pod_networking
    assert (answer.state, answer.reason) == (AttachmentState.REFUSED,
                                             "PublicIPAndLoadBalancerSkuDoNotMatch")
    assert [e.reason for e in outcome.pod_events] == ["PodNetworkRefused"]
    # it sticks: the next write goes without it
    decision, _ = run(observe([request()], outcome.status.pod_networking))
    assert decision.write is None


def test_a_refusal_naming_none_of_several_attachments_tries_each_alone() -> None:
    """Without knowing which pod's resource Azure refused, each is tried in a write of its
    own: the guilty one is refused for good, the others attached; the node never stalls."""
    second = INVENTORY[1]
    other = request(pod="web/b", public_ip="", pools=[POOL_A], name=second.ip_configuration,
                    address=second.address)
    both = [request(), other]
    obs = observe(both)
    decision, outcome = run(obs, error=UNNAMED)
    assert decision.write is not None and len(decision.write.features) == 2
    assert outcome.status is not None
    answers = {a.ip_configuration: a for a in outcome.status.pod_networking}
    assert {a.reason for a in answers.values()} == {UNATTRIBUTED}
    assert all("alone" in a.message for a in answers.values())
    assert outcome.requeue_after is not None and outcome.requeue_after < 5
    # the next write tries the first alone; Azure refuses it again: it is the guilty one
    obs = observe(both, outcome.status.pod_networking)
    decision, outcome = run(obs, error=UNNAMED)
    assert decision.write is not None and [n for n, _ in decision.write.features] == [NAME]
    assert outcome.status is not None
    answers = {a.ip_configuration: a for a in outcome.status.pod_networking}
    assert answers[NAME].reason == "PublicIPAndLoadBalancerSkuDoNotMatch"
    assert answers[second.ip_configuration].reason == UNATTRIBUTED
    # then the other, alone, goes through (a third would wait and follow at once)
    third = request(pod="web/c", public_ip="", pools=[POOL_B],
                    name=INVENTORY[2].ip_configuration, address=INVENTORY[2].address)
    waits = replace(observe([*both, third], outcome.status.pod_networking),
                    nic=carrying({}))
    _, waited = run(waits, written=carrying({second.ip_configuration:
                                             IPConfigFeatures("", (POOL_A,))}))
    assert waited.requeue_after is not None and waited.requeue_after < 5
    assert waited.status is not None
    assert INVENTORY[2].ip_configuration not in {
        a.ip_configuration for a in waited.status.pod_networking}
    obs = observe(both, outcome.status.pod_networking)
    decision, outcome = run(obs, written=carrying({second.ip_configuration:
                                                   IPConfigFeatures("", (POOL_A,))}))
    assert decision.write is not None
    assert [n for n, _ in decision.write.features] == [second.ip_configuration]
    assert outcome.status is not None
    answers = {a.ip_configuration: a for a in outcome.status.pod_networking}
    assert answers[second.ip_configuration].state == AttachmentState.ATTACHED
    assert answers[NAME].state == AttachmentState.REFUSED


def test_a_refused_resource_already_on_the_nic_comes_off() -> None:
    """Azure checks every reference of a NIC write: a public IP the operator may no longer
    join, left on the NIC, would fail every later write of the node."""
    linked = AttachmentRefused(
        "The client 'c' ... does not have permission to perform action 'Microsoft.Network/"
        f"publicIPAddresses/join/action' on the linked scope(s) '{PIP}'", resources=(PIP,),
        code="LinkedAuthorizationFailed", status=403)
    other = request(pod="web/b", public_ip="", pools=[POOL_A], name=INVENTORY[1].ip_configuration,
                    address=INVENTORY[1].address)
    obs = observe([request(), other], [attached()], on_nic={NAME: IPConfigFeatures(PIP)})
    _, outcome = run(obs, error=linked)
    assert outcome.status is not None
    answers = {a.ip_configuration: a for a in outcome.status.pod_networking}
    assert (answers[NAME].state, answers[NAME].reason) == (AttachmentState.REFUSED,
                                                           "LinkedAuthorizationFailed")
    again = observe([request(), other], outcome.status.pod_networking,
                    on_nic={NAME: IPConfigFeatures(PIP)})
    decision, _ = run(again, written=carrying({other.ip_configuration:
                                               IPConfigFeatures("", (POOL_A,))}))
    assert after(decision, again) == {NAME: IPConfigFeatures(),
                                      other.ip_configuration: IPConfigFeatures("", (POOL_A,))}


def test_a_pool_of_the_nodes_primary_is_not_a_pods_to_join() -> None:
    """The node's own pools stay on a released address (they are not its pod's): a pod may not
    ask for one, or its next pod would be in it unasked."""
    obs = observe([request(public_ip="", pools=[POOL_A])])
    decision, outcome = run(replace(obs, nic=with_node_pool(obs.nic, POOL_A)))
    assert decision.write is None and outcome.status is not None
    (answer,) = outcome.status.pod_networking
    assert answer.state == AttachmentState.REFUSED and "the node's own" in answer.message


def test_an_answer_to_an_earlier_pod_of_the_same_name_answers_nothing() -> None:
    """A StatefulSet pod recreated on the same address has the same name, not the same UID."""
    old = PodAttachment(NAME, ADDRESS, "web/a", AttachmentState.DETACHED, pod_uid="1")
    assert pending([replace(request(withdrawn=True), pod_uid="2")], [old])
    assert not pending([replace(request(withdrawn=True), pod_uid="1")], [old])
    assert pending([replace(request(), pod_uid="2")], [replace(attached(), pod_uid="1")])
    assert not pending([replace(request(public_ip=PIP), pod_uid="1")],
                       [replace(attached(), pod_uid="1")])
    # without a UID (an agent that does not publish it) the name decides, as before
    assert not pending([request(withdrawn=True)], [replace(old, pod_uid="")])
    # an Azure refusal sticks for the same pod only
    refused = PodAttachment(NAME, ADDRESS, "web/a", AttachmentState.REFUSED, PIP, (),
                            "PublicIPAddressInUse", "in use", pod_uid="1")
    decision, _ = run(observe([replace(request(public_ip=PIP), pod_uid="2")], [refused]),
                      written=carrying({NAME: IPConfigFeatures(PIP)}))
    assert decision.write is not None, "a new pod's request was refused for the old one's"


def test_a_public_ip_taken_off_outside_azure_cni_goes_back_on_with_an_event() -> None:
    obs = observe([request(public_ip=PIP)], [attached()], on_nic={NAME: IPConfigFeatures()})
    assert drifted(obs.pool.status.pod_networking, obs.nic)
    assert not drifted(obs.pool.status.pod_networking, carrying({NAME: IPConfigFeatures(PIP)}))
    decision, outcome = run(obs, written=carrying({NAME: IPConfigFeatures(PIP)}))
    assert after(decision, obs) == {NAME: IPConfigFeatures(PIP)}
    assert [(e.type, e.reason) for e in outcome.pod_events] == [
        ("Warning", "PodNetworkDriftRepaired")]



# -- who may use a resource: its tag (issue 22 row 12) ----------------------------------------

TAG = "azurecni-namespaces"


@pytest.mark.parametrize(("name", "tags", "attached_"), [
    ("tagged for the namespace", {TAG: "db, web"}, True),
    ("tagged for every namespace", {TAG: "*"}, True),
    ("the tag's name in other capitals", {"AzureCNI-Namespaces": "web"}, True),
    ("tagged for another namespace", {TAG: "webshop web-2"}, False),
    ("not tagged", {}, False),
])
def test_a_resource_is_a_namespaces_only_if_its_tag_says_so(name, tags, attached_) -> None:
    obs = observe([request(public_ip=PIP)], tags={})
    decision = decide(obs, lambda: "x")
    assert decision.look_up == (PIP,), name  # nothing is decided before the tag is read
    decision, outcome = run(replace(obs, tags={PIP.lower(): tags}),
                            written=carrying({NAME: IPConfigFeatures(PIP)}))
    assert outcome.status is not None
    (answer,) = outcome.status.pod_networking
    if attached_:
        assert answer.state == AttachmentState.ATTACHED, name
        return
    assert decision.write is None, name
    assert (answer.state, answer.reason) == (AttachmentState.REFUSED, NOT_TAGGED), name
    assert f"tag {TAG}" in answer.message and "'web'" in answer.message, answer.message
    (event,) = outcome.pod_events
    assert event.reason == "PodNetworkRefused" and TAG in event.message


def test_a_backend_pool_is_usable_by_what_its_load_balancer_says() -> None:
    obs = observe([request(public_ip="", pools=[POOL_A])], tags={})
    assert decide(obs, lambda: "x").look_up == (LB,)
    _, outcome = run(replace(obs, tags={LB.lower(): {TAG: "lb"}}))
    assert outcome.status is not None
    assert outcome.status.pod_networking[0].reason == NOT_TAGGED


def test_a_resource_group_granted_to_the_namespace_needs_no_tag() -> None:
    trusting = replace(POLICY, resource_groups=(), namespace_resource_groups={"web": ("pips",)})
    obs = observe([request()], policy=trusting, tags={})
    decision, outcome = run(obs, written=carrying({NAME: IPConfigFeatures(PIP)}))
    assert decision.look_up == () and after(decision, obs) == {NAME: IPConfigFeatures(PIP)}
    # and it is the namespace's alone: another namespace is not granted the group
    other = observe([request(pod="lb/x", public_ip="", pools=[POOL_A])], policy=trusting,
                    tags={})
    _, outcome = run(other)
    assert outcome.status is not None
    assert "resource group 'pips'" in outcome.status.pod_networking[0].message


def test_the_tag_is_read_on_every_attach_and_only_then() -> None:
    # answered and on the NIC: nothing to read
    quiet = observe([request()], [attached()], on_nic={NAME: IPConfigFeatures(PIP)}, tags={})
    assert decide(quiet, lambda: "x").look_up == ()
    # taken off behind our back: putting it back is an attach, the tag is read again
    drift = observe([request()], [attached()], tags={})
    assert decide(drift, lambda: "x").look_up == (PIP,)
    _, outcome = run(replace(drift, tags={PIP.lower(): {TAG: "db"}}))
    assert outcome.status is not None
    assert outcome.status.pod_networking[0].reason == NOT_TAGGED


def test_a_resource_that_cannot_be_read_is_refused_or_waits() -> None:
    other = request(pod="web/b", public_ip="", pools=[POOL_A], name=INVENTORY[1].ip_configuration,
                    address=INVENTORY[1].address)
    gone = NotFound("The Resource 'Microsoft.Network/publicIPAddresses/web' was not found.",
                    code="ResourceNotFound", status=404)
    denied = AuthFailed("does not have authorization to perform action "
                        "'Microsoft.Network/publicIPAddresses/read'", code="AuthorizationFailed",
                        status=403)
    for error, reason in ((gone, "ResourceNotFound"), (denied, "AuthorizationFailed")):
        obs = observe([request(public_ip=PIP), other], tags={**TAGGED, PIP.lower(): error})
        decision, outcome = run(obs, written=carrying({other.ip_configuration:
                                                       IPConfigFeatures("", (POOL_A,))}))
        assert outcome.status is not None
        answers = {a.ip_configuration: a for a in outcome.status.pod_networking}
        assert (answers[NAME].state, answers[NAME].reason) == (AttachmentState.REFUSED, reason)
        assert answers[other.ip_configuration].state == AttachmentState.ATTACHED
    # throttled: no answer yet, the others go on, and it is looked at again soon
    busy = Throttled("slow down", retry_after=3, code="SubscriptionRequestsThrottled")
    obs = observe([request(public_ip=PIP), other], tags={**TAGGED, PIP.lower(): busy})
    decision, outcome = run(obs, written=carrying({other.ip_configuration:
                                                   IPConfigFeatures("", (POOL_A,))}))
    assert decision.write is not None and NAME not in dict(decision.write.features)
    assert outcome.status is not None
    assert NAME not in {a.ip_configuration for a in outcome.status.pod_networking}
    assert outcome.requeue_after is not None and outcome.requeue_after <= 5
