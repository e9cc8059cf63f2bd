"""Events that aggregate repeats: the pure series decisions, and the recorder against a real
API server (what ``kubectl describe`` and ``kubectl get events`` then show)."""

from __future__ import annotations

import json
import uuid

import pytest

from azure_cni.kubeclient import KubeClient
from azure_cni.kubeevents import (
    EventKey,
    EventRecorder,
    ObjectRef,
    Send,
    SeriesCache,
    micro_time,
)
from azure_cni_sim.cluster import ExistingCluster, LocalCluster

POOL = ObjectRef("azurecni.io/v1alpha1", "NodeIPPool", "vm1")
THROTTLED = EventKey("Warning", "Reconcile", "AzureThrottled", POOL)


def test_repeats_patch_the_series_once_then_only_count() -> None:
    cache = SeriesCache(finish_seconds=360, refresh_seconds=1800)
    sends = [cache.observe(THROTTLED, t, f"vm1.{t}", "default")[0] for t in (0, 5, 10, 15)]
    assert sends == [Send.CREATE, Send.PATCH_SERIES, Send.NOTHING, Send.NOTHING]
    series = cache.entries[THROTTLED]
    assert (series.name, series.count, series.last_seen) == ("vm1.0", 4, 15)


@pytest.mark.parametrize(("other", "why"), [
    (EventKey("Warning", "Reconcile", "SubnetExhausted", POOL), "another reason"),
    (EventKey("Normal", "Reconcile", "AzureThrottled", POOL), "another type"),
    (EventKey("Warning", "Reconcile", "AzureThrottled",
              ObjectRef("azurecni.io/v1alpha1", "NodeIPPool", "vm2")), "another object"),
])
def test_only_isomorphic_events_aggregate(other: EventKey, why: str) -> None:
    cache = SeriesCache()
    cache.observe(THROTTLED, 0, "a", "default")
    assert cache.observe(other, 1, "b", "default")[0] is Send.CREATE, why


def test_a_series_finishes_after_a_quiet_spell_and_the_next_one_is_new() -> None:
    cache = SeriesCache(finish_seconds=360, refresh_seconds=1800)
    for t in (0, 5, 10):
        cache.observe(THROTTLED, t, f"vm1.{t}", "default")
    cache.entries[THROTTLED].sent_count = 2  # the patch at t=5 went out
    assert cache.due(300) == [], "neither finished nor due for a refresh"
    (key, series), = cache.due(371)
    assert key == THROTTLED and series.count == 3, "its last count goes out as it finishes"
    assert THROTTLED not in cache.entries
    assert cache.observe(THROTTLED, 400, "vm1.400", "default")[0] is Send.CREATE


def test_a_long_series_is_refreshed_and_a_single_event_is_forgotten() -> None:
    cache = SeriesCache(finish_seconds=360, refresh_seconds=1800)
    lone = EventKey("Normal", "Reconcile", "AddressesAdded", POOL)
    cache.observe(lone, 0, "lone", "default")
    for t in range(0, 2000, 60):
        cache.observe(THROTTLED, t, f"vm1.{t}", "default")
    cache.entries[THROTTLED].sent_count = 2
    due = cache.due(1980)
    assert [k for k, _ in due] == [THROTTLED], "an ongoing series goes out every refresh"
    assert lone not in cache.entries, "nothing to send for a single Event: forgotten"


def test_micro_time_is_rfc3339_with_microseconds() -> None:
    assert micro_time(1.5) == "1970-01-01T00:00:01.500000Z"


@pytest.mark.cluster
async def test_a_retried_error_is_one_event_with_its_count(
        kube: LocalCluster | ExistingCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "azure-cni-operator-7d9c-x2x4q")
    node = f"vm-{uuid.uuid4().hex[:6]}"
    pod_ns = f"events-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", pod_ns)
    api = await KubeClient.connect(kube.kubeconfig)
    requests: list[str] = []
    recorder = EventRecorder(api, controller="azure-cni-operator", on_request=requests.append)
    pool = ObjectRef("azurecni.io/v1alpha1", "NodeIPPool", node)
    try:
        for attempt in range(5):
            await recorder.record(pool, "Warning", "AzureThrottled",
                                  f"ARM throttled the NIC write (attempt {attempt + 1})",
                                  action="Reconcile")
        await recorder.record(ObjectRef("v1", "Pod", "web-1", namespace=pod_ns), "Warning",
                              "PodNetworkRefused", "namespace not allowed",
                              action="PodNetworking")
        assert requests == ["create", "patch", "create"], "one create and one series patch"
        events = _events(kube, "default", node)
        assert len(events) == 1
        (event,) = events
        assert event["series"]["count"] == 2
        assert event["reportingInstance"] == "azure-cni-operator-7d9c-x2x4q"
        assert event["reportingController"] == "azure-cni-operator"
        assert event["note"] == "ARM throttled the NIC write (attempt 1)"
        await recorder.close()
        (event,) = _events(kube, "default", node)
        assert event["series"]["count"] == 5, "closing sends the last count"
        described = kube.kubectl("describe", "event", "-n", "default",
                                 event["metadata"]["name"]).stdout
        assert "AzureThrottled" in described
        (pod_event,) = _events(kube, pod_ns, "web-1")
        assert pod_event["regarding"]["namespace"] == pod_ns
        assert "series" not in pod_event
    finally:
        await api.close()
        kube.kubectl("delete", "namespace", pod_ns, "--wait=false", check=False)
        kube.kubectl("delete", "events.v1.events.k8s.io", "-n", "default",
                     "--field-selector", f"regarding.name={node}", check=False)


@pytest.mark.cluster
async def test_a_series_whose_event_was_deleted_is_created_again(
        kube: LocalCluster | ExistingCluster) -> None:
    node = f"vm-{uuid.uuid4().hex[:6]}"
    api = await KubeClient.connect(kube.kubeconfig)
    recorder = EventRecorder(api, controller="azure-cni-operator", instance="op-1")
    pool = ObjectRef("azurecni.io/v1alpha1", "NodeIPPool", node)
    try:
        await recorder.record(pool, "Warning", "AzureThrottled", "throttled", "Reconcile")
        (event,) = _events(kube, "default", node)
        kube.kubectl("delete", "events.v1.events.k8s.io", "-n", "default",
                     event["metadata"]["name"])
        await recorder.record(pool, "Warning", "AzureThrottled", "throttled", "Reconcile")
        (again,) = _events(kube, "default", node)
        assert again["series"]["count"] == 2 and again["note"] == "throttled"
        await recorder.close()
    finally:
        await api.close()
        kube.kubectl("delete", "events.v1.events.k8s.io", "-n", "default",
                     "--field-selector", f"regarding.name={node}", check=False)


def _events(kube: LocalCluster | ExistingCluster, namespace: str, name: str) -> list[dict]:
    out = kube.kubectl("get", "events.v1.events.k8s.io", "-n", namespace, "-o", "json",
                       "--field-selector", f"regarding.name={name}").stdout
    return list(json.loads(out)["items"])
