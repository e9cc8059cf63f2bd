"""docs/install-azure.md, followed as written on a simulated Azure where role assignments are
enforced: from the operator's identity and role to a pod with a VNet address, upgrade,
rollback, the preflight finding faults planted on purpose, and an uninstall that leaves every
NIC with only its own ipConfigurations.

Every ``sh`` block of the guide runs in bash, in order, with the guide's variables set to the
simulation's. ``az`` on the PATH is ``azure_cni_sim.azcli``: it sends each command's ARM
requests to the emulator with an admin's token. ``kubectl`` and ``helm`` are the pinned ones;
``helm install`` and ``helm upgrade`` get one more values file, the emulator's endpoint and CA
(what differs from Azure). ``sh azure-only`` blocks (login, registry, the cluster's names)
are not run: the test provides what they set.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from azure_cni_sim import azcli, workloads
from azure_cni_sim.armstate import DEFAULT_SUBSCRIPTION
from azure_cni_sim.procs import wait_for
from azure_cni_sim.tools import find_tool
from azure_cni_sim.world import ARM_CA_CONFIGMAP, NAMESPACE, SUBNET, World

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "install-azure.md"
MACHINES = ("standalone", "flexible", "uniform")
STANDALONE, FLEXIBLE, UNIFORM = "vm0", "flex1", "pool000000"
#: the commands an ``azure-only`` block may hold: what the simulation has no part of
AZURE_ONLY = ("az login", "az account", "az acr", "az aks")


@dataclass(frozen=True)
class Block:
    section: str
    azure_only: bool
    text: str


def guide_blocks(text: str) -> list[Block]:
    """The guide's ``sh`` blocks with the ``##`` section each is in."""
    blocks: list[Block] = []
    section, fence, lines = "", None, []
    for line in text.splitlines():
        if fence is None and line.startswith("## "):
            section = line[3:].strip()
        elif fence is None and line.startswith("```sh"):
            fence, lines = line[3:].split(), []
        elif fence is not None and line.startswith("```"):
            blocks.append(Block(section, "azure-only" in fence, "\n".join(lines) + "\n"))
            fence = None
        elif fence is not None:
            lines.append(line)
    return blocks


def assigned(text: str) -> set[str]:
    return set(re.findall(r"^\s*([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


def test_azure_only_blocks_hold_only_what_the_simulation_has_no_part_of() -> None:
    blocks = guide_blocks(GUIDE.read_text())
    provided: set[str] = set()
    for block in blocks:
        if not block.azure_only:
            continue
        for line in block.text.splitlines():
            command = line.split("#")[0].strip()
            if not command or (re.match(r"^[A-Z][A-Z0-9_]*=", command)
                               and "$(" not in command):
                continue
            inner = re.sub(r"^[A-Z][A-Z0-9_]*=\$\((.*)\)$", r"\1", command)
            assert inner.startswith(AZURE_ONLY), f"{block.section}: {line!r} could run here"
        provided |= assigned(block.text)
    assert provided == set(Guide.VARIABLES), "the test sets what azure-only blocks set"
    assert sum(1 for b in blocks if not b.azure_only) >= 10


class Guide:
    """The guide's shell, on the simulation."""

    VARIABLES = ("SUBSCRIPTION", "NODE_RG", "VNET_RG", "REGISTRY", "TEST_IMAGE",
                 "IMAGE_REPOSITORY", "IMAGE_TAG")

    def __init__(self, world: World, workdir: Path) -> None:
        assert world.emulator is not None and world.cluster is not None
        self.world = world
        self.workdir = workdir
        self.blocks = guide_blocks(GUIDE.read_text())
        bin_dir = workdir / "bin"
        bin_dir.mkdir(parents=True)
        (workdir / "charts").symlink_to(ROOT / "charts")
        (bin_dir / "kubectl").symlink_to(find_tool("kubectl"))
        az = bin_dir / "az"
        az.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m azure_cni_sim.azcli "
                      '"$@"\n')
        az.chmod(0o755)
        sim_values = workdir / "sim-values.yaml"
        sim_values.write_text(yaml.safe_dump(self.sim_values(), sort_keys=False))
        helm = bin_dir / "helm"
        helm.write_text("#!/bin/sh\n# the guide's helm, plus the emulator's endpoint and CA\n"
                        'case "$1" in\n'
                        f'  install|upgrade) exec {find_tool("helm")} "$@" -f {sim_values} ;;\n'
                        f'  *) exec {find_tool("helm")} "$@" ;;\nesac\n')
        helm.chmod(0o755)
        image = world.images["azure-cni"]
        self.env = {
            "PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(workdir / "home"), "KUBECONFIG": str(world.cluster.kubeconfig),
            azcli.ENV_ARM: world.emulator.arm_url, azcli.ENV_CA: str(world.emulator.ca_path),
            azcli.ENV_TOKEN: world.emulator.issue_token("portal-admin"),
            azcli.ENV_WORKDIR: str(workdir), "PYTHONPATH": ":".join(sys.path),
        }
        self.variables = {
            "SUBSCRIPTION": DEFAULT_SUBSCRIPTION, "NODE_RG": world.node_resource_group,
            "VNET_RG": world.vnet_resource_group, "REGISTRY": "localhost",
            "TEST_IMAGE": world.images["sim-app"].image,
            "IMAGE_REPOSITORY": image.repository, "IMAGE_TAG": image.tag,
            "POD_IP_RG": "pod-ips"}
        world.emulator.add_resource_group("pod-ips")
        #: the variables set so far, kept from block to block
        self.known = set(self.variables)
        self.state = workdir / "variables.sh"
        self.state.write_text("".join(f"{k}={shlex.quote(v)}\n"
                                      for k, v in self.variables.items()))

    def sim_values(self) -> dict[str, object]:
        """What the simulation differs in from Azure: ARM's address and CA, faster polls."""
        values = self.world.chart_values()
        return {"azure": {k: values["azure"][k]  # type: ignore[index]
                          for k in ("armEndpoint", "caBundle", "pollingInterval")},
                "operator": values["operator"],
                "operatorDeployment": values["operatorDeployment"]}

    def run(self, section: str, *, check: bool = True) -> str:
        """Every runnable block of the section whose title starts with ``section``; the
        variables a block sets stay for the next. Returns their output."""
        blocks = [b for b in self.blocks if b.section.startswith(section) and not b.azure_only]
        assert blocks, f"no runnable block in section {section!r}"
        out = []
        for block in blocks:
            self.known |= assigned(block.text)
            names = " ".join(sorted(self.known))
            script = (f"set -euo pipefail\nsource {self.state}\n{block.text}\n"
                      f"for v in {names}; do printf '%s=%q\\n' \"$v\" \"${{!v:-}}\"; "
                      f"done > {self.state}.new\n")
            done = subprocess.run(["bash", "-c", script], cwd=self.workdir, env=self.env,
                                  capture_output=True, text=True, timeout=1200,
                                  stdin=subprocess.DEVNULL, check=False)
            out.append(done.stdout + done.stderr)
            if check and done.returncode != 0:
                raise AssertionError(f"the guide's block in {block.section!r} failed "
                                     f"({done.returncode}):\n{block.text}\n{out[-1]}")
            new = Path(f"{self.state}.new")
            if new.exists():
                new.replace(self.state)
        return "\n".join(out)

    def value(self, name: str) -> str:
        for line in self.state.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == name:
                return str(shlex.split(value)[0]) if value else ""
        raise KeyError(name)

    def helm_test(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["helm", "test", "azure-cni", "-n", NAMESPACE, "--logs"],
                              cwd=self.workdir, env=self.env, capture_output=True, text=True,
                              timeout=600, check=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Nodes of the three kinds, no network plugin yet, role assignments enforced."""
    w = World(tmp_path_factory.mktemp("guide"), machines=MACHINES, drift_check_seconds=10,
              install_azure_cni=False, enforce_rbac=True, monitoring=False,
              vnet_resource_group="network",
              node_resource_group="nodes")
    with w:  # started, and stopped whatever the tests did
        # the emulator's CA, which the extra values file mounts (on Azure: the system's)
        assert w.emulator is not None
        w.kubectl("-n", NAMESPACE, "create", "configmap", ARM_CA_CONFIGMAP,
                  f"--from-file=ca.crt={w.emulator.ca_path}")
        yield w
    assert not any(w.leftovers().values()), f"the world left things behind: {w.leftovers()}"


@pytest.fixture(scope="module")
def guide(cluster: World, tmp_path_factory: pytest.TempPathFactory) -> Guide:
    return Guide(cluster, tmp_path_factory.mktemp("guide-shell"))


def test_1_identity_and_role(guide: Guide) -> None:
    guide.run("3.")
    emu = guide.world.emulator
    assert emu is not None
    client_id = guide.value("CLIENT_ID")
    for vm in guide.world.vms.values():
        vm_state = emu.state.vms[vm.vm_id.lower()]
        assert client_id in vm_state.identities, f"{vm.name} got the identity"
    scopes = {a["properties"]["scope"].rsplit("/", 1)[-1]
              for a in azcli.AzCli(emu.arm_url, emu.ca_path, emu.issue_token("portal-admin"))
              .role_assignment_list(guide.value("PRINCIPAL_ID"),
                                    f"/subscriptions/{DEFAULT_SUBSCRIPTION}")}
    assert scopes == {"nodes", "network", "pod-ips"}


def test_2_the_nodes_are_checked_before_installing(guide: Guide) -> None:
    out = guide.run("4.")
    assert "PROVIDER-ID" in out
    for node in guide.world.vms:
        for check in ("HostPython", "Portmap", "CNIConfigOrder"):
            assert re.search(rf"^PASS\s+{check}\s+{node}: ", out, re.MULTILINE), (check, out)
    assert out.count("3 checks: 0 failed") == len(guide.world.vms), out
    assert "FAIL" not in out
    assert "node-debugger-" not in guide.world.kubectl("get", "pods", "-o", "name").stdout


def test_3_install_gives_a_pod_a_vnet_address(guide: Guide) -> None:
    guide.run("5.")
    out = guide.run("6.")
    assert "Phase:          Succeeded" in out and "0 failed" in out
    pod = guide.world.get_json("pod", "vnet-check")
    address, node = pod["status"]["podIP"], pod["spec"]["nodeName"]
    assert address.startswith(SUBNET.rsplit(".", 2)[0]), address
    assert address in guide.world.nic_addresses(node), "an ipConfiguration of its node's NIC"


def test_4_upgrade_and_rollback(guide: Guide) -> None:
    out = guide.run("7.")
    assert "ACTION NEEDED" not in out, "the CRD was applied before the upgrade"
    guide.run("8.")
    revisions = guide.world.helm("history", "azure-cni", "-n", NAMESPACE, "-o", "json")
    assert [r["status"] for r in json.loads(revisions.stdout)][-1] == "deployed"
    assert len(json.loads(revisions.stdout)) == 3


def test_5_the_preflight_finds_each_fault_planted(guide: Guide) -> None:
    world = guide.world
    passed = guide.helm_test()
    assert passed.returncode == 0, passed.stdout + passed.stderr
    with contextlib.ExitStack() as faults:
        plant = Faults(guide, faults)
        plant.role_assignment_removed("network")
        plant.node_object({"metadata": {"name": "ghost-a"}})
        plant.node_object({"metadata": {"name": "ghost-b"}, "spec": {"providerID": (
            f"azure:///subscriptions/{DEFAULT_SUBSCRIPTION}/resourceGroups/nodes/providers/"
            "Microsoft.Compute/virtualMachines/ghost-b")}}, max_pods=300)
        plant.file_moved(STANDALONE, "/opt/cni/bin/portmap")
        plant.file_written(FLEXIBLE, "/etc/cni/net.d/05-other.conflist", json.dumps(
            {"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "loopback"}]}))
        plant.python_hidden(UNIFORM)
        wait_for("the agents to report what they found", lambda: agent_reasons(world) == {
            STANDALONE: "PortmapMissing", FLEXIBLE: "OtherNetworkFirst",
            UNIFORM: "HostPythonMissing"}, 180, interval=2)
        result = guide.helm_test()
    assert result.returncode != 0
    failures = failed_checks(result.stdout)
    expected = {
        ("Permissions", STANDALONE): "virtualNetworks/subnets/join/action",
        ("Permissions", FLEXIBLE): "virtualNetworks/subnets/join/action",
        ("ProviderID", "ghost-a"): "no spec.providerID",
        ("NIC", "ghost-b"): "ghost-b",
        ("MaxPods", "ghost-b"): "kubelet accepts 300 pods",
        ("Portmap", STANDALONE): "portmap is not in /opt/cni/bin",
        ("CNIConfigOrder", FLEXIBLE): "05-other.conflist",
        ("HostPython", UNIFORM): "/usr/bin/python3",
    }
    for key, fragment in expected.items():
        assert key in failures, f"{key} not reported:\n{result.stdout}"
        assert fragment in failures[key] and "| fix: " in failures[key], failures[key]
    wait_for("the agents to report their nodes in order again", lambda: agent_reasons(world) == {
        name: "Serving" for name in world.vms}, 180, interval=2)
    again = guide.helm_test()
    assert again.returncode == 0, again.stdout + again.stderr


def agent_reasons(world: World) -> dict[str, str]:
    """Each real node's pool's AgentReady reason."""
    reasons = {}
    for pool in world.get_json("nodeippools")["items"]:
        for condition in (pool.get("status") or {}).get("conditions") or ():
            if condition["type"] == "AgentReady" and pool["metadata"]["name"] in world.vms:
                reasons[pool["metadata"]["name"]] = condition["reason"]
    return reasons


@dataclass
class Faults:
    """Faults planted in the simulation, each undone when ``stack`` closes."""

    guide: Guide
    stack: contextlib.ExitStack

    def _az(self, line: str) -> None:
        subprocess.run(["bash", "-c", line], env=self.guide.env, check=True,
                       capture_output=True, timeout=60)

    def role_assignment_removed(self, group: str) -> None:
        scope = f"/subscriptions/{DEFAULT_SUBSCRIPTION}/resourceGroups/{group}"
        who = f"--assignee-object-id {self.guide.value('PRINCIPAL_ID')} --scope {scope}"
        self._az(f"az role assignment delete {who}")
        self.stack.callback(self._az, f"az role assignment create {who} --assignee-principal-"
                                      "type ServicePrincipal --role 'azure-cni operator'")

    def node_object(self, node: dict[str, Any], max_pods: int | None = None) -> None:
        """A Node no kubelet runs, as a node with a broken set-up would register."""
        world = self.guide.world
        name = str(node["metadata"]["name"])
        world.kubectl("create", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "Node", **node}))
        self.stack.callback(world.kubectl, "delete", "node", name, "--wait=false")
        if max_pods is not None:
            world.kubectl("patch", "node", name, "--subresource=status", "--type=merge", "-p",
                          json.dumps({"status": {"capacity": {"pods": str(max_pods)}}}))

    def file_moved(self, vm: str, path: str) -> None:
        node = self.guide.world.nodes[vm]
        away = f"{path}.away"
        node.exec("mv", path, away)
        self.stack.callback(node.exec, "mv", away, path)

    def file_written(self, vm: str, path: str, content: str) -> None:
        node = self.guide.world.nodes[vm]
        node.exec("sh", "-c", f"cat > {shlex.quote(path)}", input=content)
        self.stack.callback(node.exec, "rm", "-f", path)

    def python_hidden(self, vm: str) -> None:
        """The node's python3 gone (an empty file mounted over it, in the VM only), and the
        agent restarted to find out."""
        node = self.guide.world.nodes[vm]
        node.exec("sh", "-c", ": > /run/no-python && mount --bind /run/no-python "
                              "/usr/bin/python3")
        self._restart_agent(vm)
        self.stack.callback(self._restart_agent, vm)
        self.stack.callback(node.exec, "umount", "/usr/bin/python3")

    def _restart_agent(self, vm: str) -> None:
        self.guide.world.kubectl("-n", NAMESPACE, "delete", "pod", "--wait=false",
                                 workloads.agent_pod(self.guide.world, vm))


def failed_checks(output: str) -> dict[tuple[str, str], str]:
    """(check, subject) -> message and fix of each FAIL line of the preflight's report."""
    found: dict[tuple[str, str], str] = {}
    last: tuple[str, str] | None = None
    for line in output.splitlines():
        match = re.match(r"^FAIL\s+(\S+)\s+([^:]+): (.*)$", line)
        if match:
            last = (match[1], match[2])
            found[last] = match[3]
        elif last and line.strip().startswith("fix: "):
            found[last] += " | " + line.strip()
    return found


def test_6_uninstall_leaves_every_nic_with_only_its_own_ipconfigurations(guide: Guide) -> None:
    world = guide.world
    assert world.emulator is not None
    before = {name: world.emulator.nic(vm.nic_id)["properties"]["ipConfigurations"]
              for name, vm in world.vms.items()}
    assert any(len(configs) > 1 for configs in before.values()), "pools held addresses"
    operators = world.kubectl("-n", "kube-system", "get", "pods", "-o", "name", "-l",
                              "app.kubernetes.io/component=operator").stdout.split()
    assert len(operators) == 2, f"a leader and a standby before the uninstall: {operators}"
    guide.run("9.")
    # nothing of the release is left: no operator replica that could take the Lease over and
    # give a Node a pool again, and not the Lease, which the operator (not the chart) made
    left = world.kubectl("-n", "kube-system", "get", "pods,leases.coordination.k8s.io",
                         "-o", "name").stdout.split()
    assert not [o for o in left if "azure-cni" in o], left
    for name, vm in world.vms.items():
        configs = world.emulator.nic(vm.nic_id)["properties"]["ipConfigurations"]
        assert [c["name"] for c in configs] == ["ipconfig1"], f"{name}'s NIC: {configs}"
    assert world.kubectl("get", "crd", "nodeippools.azurecni.io", check=False).returncode != 0
    for name, node in world.nodes.items():
        left = node.exec("ls", "/etc/cni/net.d", "/opt/cni/bin").stdout.split()
        assert "10-azure.conflist" not in left and "azure-vnet" not in left, (name, left)
        rules = node.exec("iptables-save").stdout
        assert "AZURE-CNI" not in rules, name
    wait_for("the nodes to report their network gone", lambda: all(
        c["status"] != "True" for n in world.get_json("nodes")["items"]
        for c in n["status"]["conditions"] if c["type"] == "Ready"), 120, interval=2)
