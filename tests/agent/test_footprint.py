"""What the agent process loads: not the libraries it has no use for (each costs MBs of RSS
on every node; the numbers are in bench/results/cni_latency.json, not here)."""

from __future__ import annotations

import json
import subprocess
import sys

AGENT_MODULES = ("azure_cni.agent.main", "azure_cni.agent.nodeagent", "azure_cni.agent.kube",
                 "azure_cni.agent.pool_source", "azure_cni.agent.vm.standalone",
                 "azure_cni.datapath.veth", "azure_cni.datapath.podnic",
                 "azure_cni.datapath.hostnic", "azure_cni.datapath.netns_sockets")


def loaded_by(modules: tuple[str, ...], then: str = "") -> set[str]:
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"{then}\n"
            "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)
    return set(json.loads(done.stdout))


def test_the_agent_loads_neither_kubernetes_asyncio_nor_all_of_pyroute2() -> None:
    loaded = loaded_by(AGENT_MODULES)
    assert "pyroute2.iproute.linux" in loaded, "the agent's netlink client is loaded"
    assert not {m for m in loaded if m.split(".")[0] == "kubernetes_asyncio"}
    assert not {m for m in loaded if m.startswith(("pyroute2.ndb", "pyroute2.ipdb",
                                                    "pyroute2.plan9"))}


def test_pyroute2_as_a_whole_is_still_there_for_whoever_asks() -> None:
    loaded = loaded_by(AGENT_MODULES, "from pyroute2 import NDB, IPRoute; import pyroute2\n"
                                      "assert pyroute2.IPRoute is IPRoute")
    assert "pyroute2.ndb.main" in loaded
