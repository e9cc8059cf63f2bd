"""What the operator process loads: not kubernetes_asyncio, whose generated models kopf would
import on its own (issue 21: 38 MB of the operator's resident memory). The numbers are in
docs/design-notes.md, not here."""

from __future__ import annotations

import json
import subprocess
import sys

#: what ``azure-cni-operator`` imports, in its order: its entry point, then (once the
#: arguments are parsed) the runtime, which imports kopf
OPERATOR_IMPORTS = "import azure_cni.operator.main\nimport azure_cni.operator.runtime\n"


def loaded_by(code: str) -> set[str]:
    """The modules loaded (a None entry in sys.modules is a module refused, not loaded)."""
    listing = "print(json.dumps(sorted(m for m, v in sys.modules.items() if v is not None)))"
    done = subprocess.run([sys.executable, "-c", f"{code}import json, sys\n{listing}"],
                          capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(done.stdout))


def test_the_operator_loads_kopf_but_not_kubernetes_asyncio() -> None:
    loaded = loaded_by(OPERATOR_IMPORTS)
    assert "kopf" in loaded and "aiohttp" in loaded
    assert not {m for m in loaded if m.split(".")[0] == "kubernetes_asyncio"}


def test_kubernetes_asyncio_is_still_there_for_the_preflight() -> None:
    """Installed (the cluster preflight Job uses it), only kept out of the operator."""
    loaded = loaded_by("import azure_cni.preflight.run\n")
    assert "kubernetes_asyncio.client" in loaded
