"""The bandwidth plugin chained after azure-cni (``agent.extraPlugins``, as the simulation's
chart values set it) shapes a pod's traffic as its ``kubernetes.io/ingress-bandwidth`` and
``kubernetes.io/egress-bandwidth`` annotations say.

What an admin sees: ``tc`` on the node has a token bucket at the pod's rate on the pod's veth
(traffic to the pod) and on the plugin's ifb device (traffic from it), and a download through
a shaped direction cannot be faster than the bucket lets it: at most ``burst`` bytes at once,
then ``rate``. That bound comes from the configuration, not from how fast this machine is: an
unshaped transfer of the same size takes a fraction of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from azure_cni_sim import workloads
from azure_cni_sim.world import World

pytestmark = pytest.mark.e2e

RATE = "1M"  # bits per second: kubernetes.io/*-bandwidth is a quantity of bit/s
RATE_BITS = 1_000_000
#: seconds the download must take beyond what the bucket's burst lets through at once
SHAPED_SECONDS = 6
SHAPED, PLAIN = "shaped", "plain"


def pod_manifest(name: str, node: str, image: str, wanted: dict[str, str]) -> str:
    lines = "".join(f"\n    {k}: {v!r}" for k, v in wanted.items())
    return f"""\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  annotations:{lines or " {}"}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
    - name: web
      image: {image}
      imagePullPolicy: IfNotPresent
"""


@pytest.fixture(scope="module")
def pods(world: World, namespace: str) -> Iterator[dict[str, workloads.RunningPod]]:
    image = world.images["sim-app"].image
    shaped = {"kubernetes.io/ingress-bandwidth": RATE, "kubernetes.io/egress-bandwidth": RATE}
    for name, node, wanted in ((SHAPED, "vm0", shaped), (PLAIN, "vm1", {})):
        world.kubectl("apply", "-n", namespace, "-f", "-",
                      input=pod_manifest(name, node, image, wanted))
    world.kubectl("wait", "-n", namespace, "pod", SHAPED, PLAIN, "--for=condition=Ready",
                  "--timeout=120s", timeout=150)
    found = {p.name: p for p in workloads.pod_network_pods(world) if p.namespace == namespace}
    yield found
    world.kubectl("delete", "-n", namespace, "pod", SHAPED, PLAIN, "--wait=false")


def tbf(world: World, vm: str, device: str) -> dict[str, int]:
    """The token bucket on ``device`` of the VM: its rate in bit/s and burst in bytes."""
    shown = world.in_netns(world.nodes[vm].netns, "tc", "-d", "qdisc", "show", "dev", device)
    match = re.search(r"qdisc tbf .*rate (\d+)([KMG]?)bit burst (\d+)([KMG]?)b", shown.stdout)
    assert match, f"no token bucket on {device}: {shown.stdout}{shown.stderr}"
    scale = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3}
    burst_scale = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
    return {"rate": int(match[1]) * scale[match[2]],
            "burst": int(match[3]) * burst_scale[match[4]]}


def download_seconds(world: World, namespace: str, client: str, server_ip: str) -> float:
    """How long ``client`` takes to fetch the big file, timed inside the pod."""
    script = ("read a _ < /proc/uptime; wget -q -O /dev/null "
              f"http://{server_ip}:{workloads.WEB_PORT}/big; read b _ < /proc/uptime; "
              "echo $a $b")
    done = world.exec_in(client, "sh", "-c", script, namespace=namespace, timeout=120)
    assert done.returncode == 0, done.stderr
    start, end = (float(x) for x in done.stdout.split())
    return end - start


def host_veth(world: World, pod: workloads.RunningPod) -> str:
    status = workloads.agent_status(world, pod.node)
    (veth,) = [a["hostVeth"] for a in status["assignments"] if a["address"] == pod.ip]
    return str(veth)


def ifb_of(world: World, vm: str, veth: str) -> str:
    """The ifb device the plugin redirects ``veth``'s ingress (the pod's egress) to."""
    shown = world.in_netns(world.nodes[vm].netns, "tc", "filter", "show", "dev", veth,
                           "parent", "ffff:")
    match = re.search(r"Redirect to device (\S+)\)", shown.stdout)
    assert match, f"no redirect of {veth}'s ingress: {shown.stdout}{shown.stderr}"
    return match[1]


def test_the_pod_s_annotations_shape_both_directions(world: World, namespace: str,
                                                     pods: dict[str, workloads.RunningPod]
                                                     ) -> None:
    shaped, plain = pods[SHAPED], pods[PLAIN]
    veth = host_veth(world, shaped)
    into = tbf(world, shaped.node, veth)
    out_of = tbf(world, shaped.node, ifb_of(world, shaped.node, veth))
    assert into["rate"] == RATE_BITS and out_of["rate"] == RATE_BITS
    # a pod without annotations has no bucket
    plain_veth = host_veth(world, plain)
    shown = world.in_netns(world.nodes[plain.node].netns, "tc", "qdisc", "show", "dev",
                           plain_veth)
    assert "tbf" not in shown.stdout
    # a file to serve, larger than either bucket's burst (the runtime asks for a burst of its
    # own, about 20 MiB, which the plugin keeps) by SHAPED_SECONDS at the rate
    size = max(into["burst"], out_of["burst"]) + SHAPED_SECONDS * RATE_BITS // 8
    for pod in (shaped, plain):
        world.exec_in(pod.name, "dd", "if=/dev/zero", "of=/www/big", "bs=4096",
                      f"count={-(-size // 4096)}", namespace=namespace, timeout=120)
    for bucket, client, server in ((into, shaped, plain), (out_of, plain, shaped)):
        floor = max(0, size - bucket["burst"]) * 8 / bucket["rate"]
        assert floor > SHAPED_SECONDS - 1, f"the bucket lets most of it through: {bucket}"
        took = download_seconds(world, namespace, client.name, server.ip)
        # /proc/uptime counts in hundredths of a second
        assert took >= floor - 0.02, f"{size} bytes in {took:.2f}s through {bucket}"
