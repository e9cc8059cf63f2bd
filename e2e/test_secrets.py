"""No credential of an e2e run ends up in a log, an Event or a custom resource."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from azure_cni_sim.world import Pod, World

pytestmark = pytest.mark.e2e


def _secrets(world: World) -> dict[str, str]:
    """Every credential the run handed out, by where it came from."""
    assert world.emulator is not None and world.cluster is not None
    found = {f"ARM token for {t.principal}": token
             for token, t in world.emulator.tokens.issued().items()}
    found.update({f"static ARM token {i}": t
                  for i, t in enumerate(world.emulator.config.static_tokens)})
    kubeconfig = yaml.safe_load(Path(world.cluster.kubeconfig).read_text())
    key_pem = base64.b64decode(kubeconfig["users"][0]["user"]["client-key-data"]).decode()
    body = "".join(line for line in key_pem.splitlines() if "PRIVATE KEY" not in line)
    found["admin client key"] = body[:48]
    found["admin client key (base64)"] = kubeconfig["users"][0]["user"]["client-key-data"][:48]
    return found


def test_no_credential_in_logs_events_or_pools(world: World, pods: dict[str, Pod]) -> None:
    secrets = _secrets(world)
    assert any(k.startswith("ARM token for vm") for k in secrets), (
        "the operator should have fetched a managed-identity token from IMDS")
    logs = sorted(world.workdir.rglob("*.log"))
    assert any("operator" in p.name for p in logs) and any("agent" in p.name for p in logs)
    leaks = []
    for path in logs:
        text = path.read_text(errors="replace")
        leaks += [f"{what} in {path}" for what, value in secrets.items() if value in text]
        if "Authorization: Bearer" in text or "Bearer azcni-sim" in text:
            leaks.append(f"a bearer header in {path}")
    resources = "\n".join(world.kubectl("get", kind, "-A", "-o", "yaml").stdout
                          for kind in ("nodeippools", "events", "configmaps"))
    leaks += [f"{what} in a Kubernetes object" for what, value in secrets.items()
              if value in resources]
    assert leaks == []
