"""The pure parts of running Kubernetes' e2e specs here: which images stand for which upstream
names, what a focus matches, and what ginkgo's JUnit report says."""

from __future__ import annotations

import re
from pathlib import Path
from xml.etree import ElementTree

import pytest

from azure_cni_sim.conformance import (
    CONFORMANCE_FOCUS,
    QUICK_SPECS,
    SKIPS,
    SUITE,
    SpecRun,
    exact,
    read_junit,
    results,
    trim_junit,
    upstream_names,
)

#: the shape of ``e2e.test --list-images`` (one reference per line, sorted)
LISTING = """\
gcr.io/k8s-authenticated-test/agnhost:2.6
invalid.registry.k8s.io/invalid/alpine:3.1
registry.k8s.io/e2e-test-images/agnhost:2.55
registry.k8s.io/e2e-test-images/agnhost:2.63.0
registry.k8s.io/e2e-test-images/busybox:1.37.0-1
registry.k8s.io/e2e-test-images/glibc-dns-testing:2.0.0
registry.k8s.io/e2e-test-images/nginx:1.15-4
registry.k8s.io/e2e-test-images/nginx:1.27-0
registry.k8s.io/e2e-test-images/regression-issue-74839:1.4
registry.k8s.io/e2e-test-images/sample-apiserver:1.29.2
registry.k8s.io/etcd:3.6.8-0
registry.k8s.io/pause:3.10.2
registry.k8s.io/sig-storage/nfs-provisioner:v4.0.8
"""


def test_each_local_image_stands_for_its_upstream_names() -> None:
    assert upstream_names(LISTING) == {
        "e2e-agnhost": ("registry.k8s.io/e2e-test-images/agnhost:2.55",
                        "registry.k8s.io/e2e-test-images/agnhost:2.63.0"),
        "e2e-boom-server": ("registry.k8s.io/e2e-test-images/regression-issue-74839:1.4",),
        "e2e-nginx": ("registry.k8s.io/e2e-test-images/nginx:1.15-4",
                      "registry.k8s.io/e2e-test-images/nginx:1.27-0"),
        "e2e-shell": ("registry.k8s.io/e2e-test-images/busybox:1.37.0-1",
                      "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.0.0"),
        "pause": ("registry.k8s.io/pause:3.10.2",),
    }


@pytest.mark.parametrize("reference", [
    "gcr.io/k8s-authenticated-test/agnhost:2.6",  # a spec expects this pull to fail
    "invalid.registry.k8s.io/invalid/alpine:3.1",
    "registry.k8s.io/sig-storage/nfs-provisioner:v4.0.8",
    "registry.k8s.io/etcd:3.6.8-0",
    "docker.io/library/busybox:1.37.0",
])
def test_images_no_spec_here_needs_are_not_faked(reference: str) -> None:
    assert upstream_names(reference) == {}


def test_exact_focus_matches_only_the_named_specs() -> None:
    focus = re.compile(exact(QUICK_SPECS))
    for name in QUICK_SPECS:  # what ginkgo matches: the suite's description, then the text
        assert focus.search(f"{SUITE} {name}")
        assert not focus.search(f"{SUITE} {name} [Slow]")
        assert not focus.search(f"{SUITE} [sig-network] Foo {name}")
    assert not focus.search(f"{SUITE} [sig-network] DNS should provide DNS for the cluster "
                            "[Conformance]")


@pytest.mark.parametrize(("name", "focused", "skipped"), [
    ("[sig-network] DNS should provide DNS for services [Conformance]", True, False),
    ("[sig-network] Networking Granular Checks: Pods should function for intra-pod "
     "communication: udp [NodeConformance] [Conformance]", True, False),
    ("[sig-network] Services should serve endpoints on same port and different protocols "
     "[Conformance]", True, False),
    ("[sig-network] DNS should support configurable pod resolv.conf", True, False),
    ("[sig-network] LoadBalancers should be able to change the type and ports of a TCP "
     "service [Slow]", False, True),
    ("[sig-network] Services should work after restarting kube-proxy [Disruptive]", False,
     True),
    ("[sig-network] [Feature:IPv6DualStack] should create pod, add ipv6 and ipv4 ip to pod "
     "ips", False, True),
    ("[sig-network] DNS should provide DNS for the cluster [Provider:GCE]", True, True),
    ("[sig-storage] ConfigMap should be consumable from pods in volume [Conformance]", False,
     False),
])
def test_focus_and_skips(name: str, focused: bool, skipped: bool) -> None:
    assert bool(re.search(CONFORMANCE_FOCUS, name)) is focused
    assert any(re.search(s.pattern, name) for s in SKIPS) is skipped


def case(name: str, status: str, inner: str = "") -> str:
    return (f'<testcase name="{name}" classname="Kubernetes e2e suite" status="{status}" '
            f'time="1">{inner}</testcase>')


def junit(path: Path, before_suite: str = "passed") -> Path:
    """A parallel ginkgo run's report, as ginkgo v2 writes it."""
    cases = [
        case("[SynchronizedBeforeSuite]", before_suite),
        case("[It] [sig-network] DNS should provide DNS for services [Conformance] "
             "[Conformance, sig-network]", "passed", "<system-err>STEP: dig</system-err>"),
        case("[It] [sig-network] HostPort validates [Conformance]", "failed",
             '<failure message="boom" type="failed">boom</failure>'
             "<system-err>STEP: curl hostIP</system-err>"),
        case("[It] [sig-network] Services should be rejected [Conformance]", "timedout",
             '<failure message="timed out" type="timedout"></failure>'),
        case("[It] [sig-network] Networking should reach two nodes", "skipped",
             '<skipped message="skipped - Requires at least 2 nodes (not 1)"></skipped>'),
        case("[It] [sig-storage] ConfigMap should be consumable", "skipped",
             '<skipped message="skipped"></skipped>'),
        case("[SynchronizedAfterSuite]", "passed"),
        case("[ReportAfterSuite] Kubernetes e2e suite report", "passed"),
    ]
    path.write_text('<?xml version="1.0" encoding="UTF-8"?>\n'
                    '<testsuites tests="7" disabled="4" errors="0" failures="1" time="300.5">'
                    '<testsuite name="Kubernetes e2e suite" tests="7" skipped="4" failures="1" '
                    f'errors="0">{"".join(cases)}</testsuite></testsuites>\n')
    return path


def test_the_junit_report_counts_specs_not_suite_nodes(tmp_path: Path) -> None:
    run = read_junit(junit(tmp_path / "junit.xml"), 300.5)
    assert run.passed == ("[sig-network] DNS should provide DNS for services [Conformance] "
                          "[Conformance, sig-network]",)
    assert run.failed == ("[sig-network] HostPort validates [Conformance]",
                          "[sig-network] Services should be rejected [Conformance]")
    assert run.skipped == (("[sig-network] Networking should reach two nodes",
                            "Requires at least 2 nodes (not 1)"),)
    assert run.ran == 3


def test_a_failed_suite_set_up_fails_the_run(tmp_path: Path) -> None:
    path = junit(tmp_path / "junit.xml", before_suite="failed")
    assert "[SynchronizedBeforeSuite]" in read_junit(path).failed


def test_the_kept_report_has_only_the_focused_specs(tmp_path: Path) -> None:
    trim_junit(junit(tmp_path / "junit.xml"), tmp_path / "kept.xml")
    names = [c.get("name") for c in ElementTree.parse(tmp_path / "kept.xml").iter("testcase")]
    assert "[It] [sig-storage] ConfigMap should be consumable" not in names
    assert "[It] [sig-network] Networking should reach two nodes" in names
    assert len(names) == 7


def test_the_kept_report_has_the_output_of_failed_specs_only(tmp_path: Path) -> None:
    trim_junit(junit(tmp_path / "junit.xml"), tmp_path / "kept.xml")
    output = {c.get("name", "").split(" [sig-network] ")[-1]: c.findtext("system-err")
              for c in ElementTree.parse(tmp_path / "kept.xml").iter("testcase")}
    assert output["HostPort validates [Conformance]"] == "STEP: curl hostIP"
    assert output["DNS should provide DNS for services [Conformance] "
                  "[Conformance, sig-network]"] is None


def test_results_count_and_explain_every_skip(tmp_path: Path) -> None:
    run = SpecRun(passed=("a [Conformance]",), failed=("b [Conformance]",),
                  skipped=(("c", "Requires at least 2 nodes"),), seconds=61.4,
                  junit=tmp_path / "junit.xml")
    focused = ["a [Conformance]", "b [Conformance]", "c", "d [Serial]", "e [Feature:SCTP]"]
    document = results(version="v1.36.3", binary="e2e.test", focus="x", focused=focused,
                       run=run, procs=3, ingress={"passed": True})
    assert document["specs"] == {"focused": 5, "run": 2, "passed": 1, "failed": 1,
                                 "skipped": 3}
    assert document["failed"] == ["b [Conformance]"]
    assert document["skipped"] == {
        "c": "Requires at least 2 nodes",
        "d [Serial]": next(s.reason for s in SKIPS if s.pattern == r"\[Serial\]"),
        "e [Feature:SCTP]": next(s.reason for s in SKIPS if s.pattern == r"\[Feature:")}
    assert document["wall_seconds"] == 61
    assert document["kubernetes"] == "v1.36.3"


def test_the_readme_gives_every_skip_its_reason() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme.partition("Skipped, because they cannot apply here:")[2].split("\n\n")[1]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == len(SKIPS), rows
    for skip, row in zip(SKIPS, rows, strict=True):
        assert row.rstrip(" |").endswith(skip.reason), (skip, row)
        documented = re.findall(r"`([^`]+)`", row.split(" | ")[0])
        assert documented == [p.replace("\\", "") for p in skip.pattern.split("|")], (skip, row)
