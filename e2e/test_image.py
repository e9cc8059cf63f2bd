"""The built image, run as the chart runs it (``chartrun``): nothing is compiled at start.

The root filesystem is read-only and the image sets PYTHONDONTWRITEBYTECODE, so a module
whose ``.pyc`` Python finds stale or missing is compiled in memory at every start, and never
cached: seconds of CPU and, for the Azure SDK's model modules, a lot of memory (issue 21:
359 MB RSS for an operator that needs about 150). Each test fails on an image whose ``.pyc``
record source mtimes one second off the installed sources.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from azure_cni_sim.chartrun import chart_container, render_chart
from azure_cni_sim.images import BuiltImage, ensure_images

pytestmark = pytest.mark.e2e

ENTRY_POINTS = {"operator": ("Deployment", "azure_cni.operator.main"),
                "agent": ("DaemonSet", "azure_cni.agent.main")}

#: every .py the image's Python can import (its venv and its standard library) and whether
#: its .pyc is one the import system accepts without compiling: a hash-based .pyc holds the
#: source's hash, a timestamp one its mtime and size
CHECK_BYTECODE = r"""
import importlib.util, json, os, re, sysconfig
skip = re.compile(r"/(test|tests|idle_test)(/|$)")  # the stdlib's own tests (never imported)
bad, checked = [], 0
for root in ("/opt/azure-cni", sysconfig.get_path("stdlib")):
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if root != "/opt/azure-cni" and skip.search(directory):
            continue
        for name in files:
            if not name.endswith(".py"):
                continue
            source = os.path.join(directory, name)
            checked += 1
            try:
                with open(importlib.util.cache_from_source(source), "rb") as f:
                    head = f.read(16)
            except FileNotFoundError:
                bad.append(["no .pyc", source])
                continue
            if int.from_bytes(head[4:8], "little") & 1:
                with open(source, "rb") as f:
                    valid = head[8:16] == importlib.util.source_hash(f.read())
            else:
                st = os.stat(source)
                valid = (int.from_bytes(head[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
                         and int.from_bytes(head[12:16], "little") == st.st_size & 0xFFFFFFFF)
            if not valid:
                bad.append(["stale .pyc", source])
print(json.dumps({"checked": checked, "bad": bad}))
"""


@pytest.fixture(scope="module")
def images() -> dict[str, BuiltImage]:
    return ensure_images("azure-cni", "pause")


@pytest.fixture(scope="module")
def manifests(images: dict[str, BuiltImage], tmp_path_factory: pytest.TempPathFactory
              ) -> list[dict[str, Any]]:
    image = images["azure-cni"]
    return render_chart({"image": {"repository": image.repository, "tag": image.tag}},
                        tmp_path_factory.mktemp("chart"))


def run_in_chart_container(manifests: list[dict[str, Any]], images: dict[str, BuiltImage],
                           container: str, command: list[str], workdir: Path) -> str:
    """Run ``command`` in the chart's ``container`` (its user, read-only root, mounts) and
    return its output; fail if it exits non-zero."""
    kind, _ = ENTRY_POINTS[container]
    with chart_container(manifests, kind, container, image=images["azure-cni"],
                         pause=images["pause"], workdir=workdir, cluster=None,
                         wait_ready=False, command=command,
                         host_root=workdir / "node") as run:
        code = run.wait_exit(180)
        output = run.logs()
        described = run.describe()
    assert described["read_only_root"], described
    assert code == 0, f"exit {code}:\n{output[-3000:]}"
    return output


@pytest.mark.parametrize("container", sorted(ENTRY_POINTS))
def test_the_entry_point_imports_from_bytecode_only(
        container: str, manifests: list[dict[str, Any]], images: dict[str, BuiltImage],
        tmp_path: Path) -> None:
    """``python -v`` says for each module whether its code came from its .pyc ("<pyc>
    matches <py>", then "code object from '<pyc>'") or was compiled from the source ("code
    object from <py>")."""
    _, module = ENTRY_POINTS[container]
    output = run_in_chart_container(manifests, images, container,
                                    ["python", "-v", "-c", f"import {module}"], tmp_path)
    lines = output.splitlines()
    compiled = [line.removeprefix("# code object from ") for line in lines
                if line.startswith("# code object from ") and line.endswith(".py")]
    from_pyc = [line for line in lines if line.startswith("# ") and " matches " in line]
    main = f"/azure_cni/{container}/main.py"
    assert any(main in line for line in [*from_pyc, *compiled]), \
        f"python -v did not report {module} at all:\n{output[-2000:]}"
    assert compiled == [], f"{len(compiled)} modules compiled from source at import " \
                           f"({len(from_pyc)} from their .pyc), e.g. {compiled[:3]}"


def test_every_module_in_the_image_has_bytecode_python_accepts(
        manifests: list[dict[str, Any]], images: dict[str, BuiltImage], tmp_path: Path) -> None:
    """Also the modules imported later (an SDK's lazy imports): none would be compiled."""
    output = run_in_chart_container(manifests, images, "operator",
                                    ["python", "-c", CHECK_BYTECODE], tmp_path)
    found = json.loads(output.strip().splitlines()[-1])
    assert found["checked"] > 1000, found  # the venv and the stdlib were walked
    assert found["bad"] == [], f"{len(found['bad'])} of {found['checked']} sources, e.g. " \
                               f"{found['bad'][:5]}"


def test_the_operator_in_the_image_does_not_load_kubernetes_asyncio(
        manifests: list[dict[str, Any]], images: dict[str, BuiltImage], tmp_path: Path) -> None:
    """kopf imports kubernetes_asyncio's models on its own when they are installed (tens of MB
    of the operator's memory, issue 21); the operator's entry point refuses them. The
    operator's imports: its entry point, then its runtime (kopf, the Azure SDK)."""
    code = ("import json, sys\nimport azure_cni.operator.main\nimport azure_cni.operator.runtime\n"
            "print(json.dumps(sorted(m for m, v in sys.modules.items() if v is not None)))")
    output = run_in_chart_container(manifests, images, "operator", ["python", "-c", code],
                                    tmp_path)
    loaded = set(json.loads(output.strip().splitlines()[-1]))
    assert {"kopf", "azure.mgmt.network", "aiohttp"} <= loaded, sorted(loaded)[:20]
    assert not {m for m in loaded if m.split(".")[0] == "kubernetes_asyncio"}
