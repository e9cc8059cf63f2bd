"""``azure-cni-operator``: run the operator (cluster-wide; one replica acts, the holder of the
leader Lease, and the others stand by)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from azure_cni.api.settings import InvalidSettings, Settings, load_settings
from azure_cni.kubeclient import KubeConfigError, connect
from azure_cni.operator.runtime import ExitCode, Operator


async def _check_kubernetes_access(kubeconfig: str | None) -> None:
    """Fail at once, with a clear message, when there is no way to the API."""
    api = await connect(kubeconfig)
    await api.close()


async def _run(settings: Settings, kubeconfig: str | None) -> ExitCode:
    operator = await Operator.start(settings, kubeconfig)
    return await operator.run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="azure-cni-operator", description=__doc__)
    parser.add_argument("--config", type=Path, help="settings file (the chart's ConfigMap); "
                        "default /etc/azure-cni/config.yaml if present")
    parser.add_argument("--kubeconfig", help="default: $KUBECONFIG, else in-cluster")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # the Azure SDK logs every request at INFO, kopf every watch it starts; keep ours readable
    logging.getLogger("azure").setLevel(logging.WARNING)
    logging.getLogger("kopf").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        settings = load_settings(args.config)
    except (InvalidSettings, ValueError) as e:
        print(f"azure-cni-operator: invalid configuration: {e}", file=sys.stderr)  # noqa: T201
        return ExitCode.INVALID_SETTINGS
    if args.kubeconfig:
        # kopf logs in from KUBECONFIG (operator/kopf_events.py), the client from the flag
        os.environ["KUBECONFIG"] = args.kubeconfig
    try:
        asyncio.run(_check_kubernetes_access(args.kubeconfig))
    except KubeConfigError as e:
        print(f"azure-cni-operator: {e}", file=sys.stderr)  # noqa: T201
        return ExitCode.INVALID_SETTINGS
    return asyncio.run(_run(settings, args.kubeconfig))


if __name__ == "__main__":
    sys.exit(main())
