"""One simulated VM as a real Kubernetes node: it registers, is NotReady until a CNI conflist
is in its own /etc/cni/net.d, and leaves nothing behind when it powers off."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from azure_cni_sim.arm import ArmConfig, ArmEmulator
from azure_cni_sim.cluster import ControlPlaneNetwork, LocalCluster
from azure_cni_sim.images import ensure_images
from azure_cni_sim.kubenode import NODE_ENV, KubeNode, mounts_under, remove_cgroups
from azure_cni_sim.procs import owned_pids, wait_for
from azure_cni_sim.vnet import Fabric

pytestmark = [pytest.mark.cluster, pytest.mark.netns]

#: the smallest network a runtime accepts as configured
LOOPBACK_CONFLIST = {"cniVersion": "1.0.0", "name": "sim-test",
                     "plugins": [{"type": "loopback"}]}


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KubeNode, LocalCluster]]:
    workdir = tmp_path_factory.mktemp("kubenode")
    prefix, owner = f"azk{uuid.uuid4().hex[:4]}", f"kubenode-{uuid.uuid4().hex[:8]}"
    pause = ensure_images("pause")["pause"]
    fabric = Fabric(prefix, "198.18.0.0/22", workdir / "fabric", owner).create()
    cluster = node = None
    with ArmEmulator(ArmConfig(), state_dir=workdir / "arm") as emulator:
        try:
            cp = fabric.add_appliance("cp", "198.18.8.4/24")
            cluster = LocalCluster(workdir / "cluster", owner=owner,
                                   network=ControlPlaneNetwork(cp, "198.18.8.4")).start()
            subnet = emulator.add_vnet("vnet", "198.18.0.0/17", {"nodes": "198.18.0.0/22"}
                                       ).subnet_ids["nodes"]
            info = emulator.add_vm("vm0", subnet)
            node = KubeNode("vm0", fabric.add_vm(info).netns, info.primary_ip,
                            info.provider_id, workdir / "vm0", owner, "198.18.240.10", prefix,
                            sandbox_image=pause.image)
            node.provision(cluster)
            node.start([pause.archive])
            yield node, cluster
        finally:
            if node is not None:
                node.stop()
            if cluster is not None:
                cluster.stop()
            fabric.destroy()


def ready(cluster: LocalCluster) -> dict[str, str]:
    node = json.loads(cluster.kubectl("get", "node", "vm0", "-o", "json").stdout)
    return next(c for c in node["status"]["conditions"] if c["type"] == "Ready")


def test_the_kubelet_registers_the_vm_with_its_own_identity(vm) -> None:
    node, cluster = vm
    wait_for("vm0 to register", lambda: cluster.kubectl(
        "get", "node", "vm0", check=False).returncode == 0, 60, alive=node.check_running)
    obj = json.loads(cluster.kubectl("get", "node", "vm0", "-o", "json").stdout)
    assert obj["spec"]["providerID"] == node.provider_id
    assert {"type": "InternalIP", "address": node.address} in obj["status"]["addresses"]
    assert obj["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    # its credential is system:node:vm0, which may change its own Node
    kubeconfig = node.workdir / "kubelet.kubeconfig"
    other = cluster.kubectl(f"--kubeconfig={kubeconfig}", f"--server={cluster.server}",
                            "label", "node", "vm0", "sim-test=yes", check=False)
    assert other.returncode == 0, other.stderr


def test_not_ready_until_a_conflist_is_in_the_vms_own_cni_directory(vm) -> None:
    node, cluster = vm
    wait_for("vm0 to say why it is not ready", lambda: cluster.kubectl(
        "get", "node", "vm0", check=False).returncode == 0 and
        "cni plugin not initialized" in ready(cluster).get("message", ""), 60,
        alive=node.check_running)
    assert ready(cluster)["status"] == "False"
    node.exec("sh", "-c", f"cat > /etc/cni/net.d/10-test.conflist <<'EOF'\n"
                          f"{json.dumps(LOOPBACK_CONFLIST)}\nEOF")
    wait_for("vm0 to be Ready", lambda: ready(cluster)["status"] == "True", 90,
             interval=1, alive=node.check_running)
    # the file is the VM's: the machine's own /etc/cni has no such thing
    assert not Path("/etc/cni/net.d/10-test.conflist").exists()
    assert node.exec("cat", "/etc/cni/net.d/10-test.conflist").stdout.strip() == \
        json.dumps(LOOPBACK_CONFLIST)


def test_the_vm_has_a_hostname_of_its_own(vm) -> None:
    """What runs on the node (kubelet, containerd, hostNetwork containers) sees the VM's name,
    as on a VM, not the machine's: upstream's hostNetwork specs expect the node's name."""
    node, _ = vm
    assert node.exec("hostname").stdout.strip() == "vm0"
    assert node.exec("cat", "/proc/sys/kernel/hostname").stdout.strip() == "vm0"
    with open("/proc/sys/kernel/hostname") as machine:
        assert machine.read().strip() != "vm0"


def test_the_node_reports_ephemeral_storage(vm) -> None:
    """A pod that asks for ephemeral storage can be scheduled: the node has some."""
    node, cluster = vm

    def reported() -> bool:
        out = cluster.kubectl("get", "node", "vm0", "-o", "json", check=False)
        return out.returncode == 0 and "ephemeral-storage" in \
            json.loads(out.stdout)["status"].get("allocatable", {})

    wait_for("vm0 to report ephemeral-storage", reported, 60, interval=1,
             alive=node.check_running)
    status = json.loads(cluster.kubectl("get", "node", "vm0", "-o", "json").stdout)["status"]
    for field in ("capacity", "allocatable"):
        assert _bytes(status[field]["ephemeral-storage"]) > 2**30, status[field]


def _bytes(quantity: str) -> int:
    """A Kubernetes quantity of bytes (``123``, ``10Gi``, ``96Mi``, ``5G``) as an int."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6,
             "G": 10**9, "T": 10**12}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity.removesuffix(suffix)) * factor
    return int(quantity)


def test_power_off_leaves_nothing(vm) -> None:
    node, _ = vm
    node.stop()
    assert owned_pids(node.marker, NODE_ENV) == []
    assert remove_cgroups(node.cgroup_root.strip("/"), kill=False, remove=False) == []
    assert mounts_under(node.workdir) == []
