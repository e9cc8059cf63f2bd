"""No credential of an e2e run ends up in a log, an Event or a custom resource."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from azure_cni_sim.world import NAMESPACE, World

pytestmark = pytest.mark.e2e


def _secrets(world: World) -> dict[str, str]:
    """Every credential the run handed out, by where it came from."""
    assert world.emulator is not None and world.cluster is not None
    found = {f"ARM token for {t.principal}": token
             for token, t in world.emulator.tokens.issued().items()}
    found.update({f"static ARM token {i}": t
                  for i, t in enumerate(world.emulator.config.static_tokens)})
    kubeconfigs = {"admin": Path(world.cluster.kubeconfig)}
    kubeconfigs.update({f"kubelet of {vm}": node.workdir / "kubelet.kubeconfig"
                        for vm, node in world.nodes.items()})
    for who, path in kubeconfigs.items():
        user = yaml.safe_load(path.read_text())["users"][0]["user"]
        key_pem = base64.b64decode(user["client-key-data"]).decode()
        body = "".join(line for line in key_pem.splitlines() if "PRIVATE KEY" not in line)
        found[f"{who} client key"] = body[:48]
        found[f"{who} client key (base64)"] = user["client-key-data"][:48]
    return found


def test_no_credential_in_logs_events_or_pools(world: World) -> None:
    world.wait_pools_ready()
    secrets = _secrets(world)
    assert any(k.startswith("ARM token for vm/") for k in secrets), (
        "the operator should have fetched its VM's managed-identity token from IMDS")
    # the chart's pods, as `kubectl logs` shows them; the nodes' and control plane's own logs
    logs = {f"{pod}": world.kubectl("logs", "-n", NAMESPACE, pod, "--all-containers").stdout
            for pod in world.kubectl("get", "pods", "-n", NAMESPACE, "-o", "name",
                                     "-l", "app.kubernetes.io/part-of=azure-cni"
                                     ).stdout.split()}
    assert any("operator" in p for p in logs) and any("agent" in p for p in logs), list(logs)
    # (the kubelet's /var/log/containers links point into its own mount namespace)
    logs.update({str(p): p.read_text(errors="replace")
                 for p in sorted(world.workdir.rglob("*.log")) if not p.is_symlink()})
    leaks = []
    for where, text in logs.items():
        leaks += [f"{what} in {where}" for what, value in secrets.items() if value in text]
        if "Authorization: Bearer" in text or "Bearer azcni-sim" in text:
            leaks.append(f"a bearer header in {where}")
    resources = "\n".join(world.kubectl("get", kind, "-A", "-o", "yaml").stdout
                          for kind in ("nodeippools", "events", "configmaps"))
    leaks += [f"{what} in a Kubernetes object" for what, value in secrets.items()
              if value in resources]
    assert leaks == []
