"""Starting azure-cni's own processes against the simulation (tests, benchmarks, the demo)."""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from azure_cni_sim.arm import ArmEmulator
from azure_cni_sim.cluster import free_port
from azure_cni_sim.procs import ManagedProcess, wait_for

# The SDK picks App Service / Arc / Cloud Shell identities when these are set (arm-api.md §3.3).
_FOREIGN_IDENTITY_ENV = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET",
                         "IMDS_ENDPOINT", "AZURE_CLIENT_ID", "AZURE_TENANT_ID",
                         "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE")


def operator_settings(emulator: ArmEmulator, *, pool: Mapping[str, Any] | None = None,
                      operator: Mapping[str, Any] | None = None,
                      azure: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A settings document pointing the operator at the emulator over HTTPS."""
    return {
        "pool": dict(pool or {}),
        "azure": {
            "armEndpoint": emulator.arm_url,
            "caBundle": str(emulator.ca_path),
            "credential": "managedIdentity",
            "pollingInterval": 0.2,
            **dict(azure or {}),
        },
        "operator": {"metricsPort": free_port(), "healthPort": free_port(),
                     **dict(operator or {})},
    }


def start_operator(
    workdir: Path,
    kubeconfig: Path,
    emulator: ArmEmulator,
    settings: Mapping[str, Any],
    *,
    owner: str,
    identity_vm: str,
    pod_name: str | None = None,
    pod_namespace: str | None = None,
) -> ManagedProcess:
    """Run ``azure-cni-operator`` with the managed identity of ``identity_vm`` (as on a node).

    ``pod_name`` is what the chart passes as ``POD_NAME``: the start of the replica's name in
    the leader Lease; ``pod_namespace`` what it passes as ``POD_NAMESPACE``: where the Lease
    is (else kube-system; the chart's token may use its own namespace only). Returns once the
    operator answers its health endpoint.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "operator.yaml"
    config.write_text(yaml.safe_dump(dict(settings), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_IDENTITY_ENV}
    env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = emulator.imds_url_for(identity_vm)
    env["KUBECONFIG"] = str(kubeconfig)
    if pod_name is not None:
        env["POD_NAME"] = pod_name
    if pod_namespace is not None:
        env["POD_NAMESPACE"] = pod_namespace
    exe = Path(sys.executable).with_name("azure-cni-operator")
    proc = ManagedProcess("azure-cni-operator", [str(exe), "--config", str(config)],
                          workdir / "operator.log", owner, env=env, inherit_env=False).start()
    health_port = int(settings["operator"]["healthPort"])

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz",
                                        timeout=1) as resp:
                return int(resp.status) == 200
        except OSError:
            return False

    wait_for("azure-cni-operator /healthz", healthy, timeout=60, alive=proc.check_running)
    return proc
