"""``azure-cni-operator``: run the operator (cluster-wide; one replica acts, the holder of the
leader Lease, and the others stand by)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from azure_cni.api.settings import InvalidSettings, Settings, load_settings
from azure_cni.commandline import command_parser, configure_logging
from azure_cni.operator.usage import DESCRIPTION, OperatorExit

# kopf imports kubernetes_asyncio.client whenever it is installed (kopf/_cogs/helpers/
# thirdparty.py: only to recognise that client's model objects, which the operator never hands
# it), and those generated models are most of the operator's memory at rest: importing kopf
# cost 72.2 MB of RSS with them, 33.8 MB without (issue 21). The operator talks to the API
# server through azure_cni.kubeclient; kubernetes_asyncio stays installed for the cluster
# preflight. A None entry makes ``import kubernetes_asyncio`` raise ModuleNotFoundError, which
# kopf takes as "not installed". Before kopf is imported: kopf looks once, at its import.
sys.modules.setdefault("kubernetes_asyncio", None)  # type: ignore[arg-type]  # see above

# kopf and the Azure SDK are imported once the arguments are parsed: they take seconds to
# import on a busy node, and --help and --version need none of them.


async def _run(settings: Settings, kubeconfig: str | None) -> OperatorExit:
    from azure_cni.operator.runtime import Operator

    operator = await Operator.start(settings, kubeconfig)
    return await operator.run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser("azure-cni-operator", DESCRIPTION, OperatorExit)
    parser.add_argument("--config", type=Path, help="settings file (the chart's ConfigMap); "
                        "default /etc/azure-cni/config.yaml if present")
    parser.add_argument("--kubeconfig", help="default: $KUBECONFIG, else in-cluster")
    args = parser.parse_args(argv)
    from azure_cni.kubeclient import KubeConfigError, connection
    configure_logging(args.log_level)
    # the Azure SDK logs every request at INFO, kopf every watch it starts; keep ours readable
    logging.getLogger("azure").setLevel(logging.WARNING)
    kopf_level = logging.DEBUG if args.log_level == "debug" else logging.WARNING
    logging.getLogger("kopf").setLevel(kopf_level)
    try:
        settings = load_settings(args.config)
    except (InvalidSettings, ValueError) as e:
        print(f"azure-cni-operator: invalid configuration: {e}", file=sys.stderr)  # noqa: T201
        return OperatorExit.INVALID_SETTINGS
    if args.kubeconfig:
        # kopf logs in from KUBECONFIG (operator/kopf_events.py), the client from the flag
        os.environ["KUBECONFIG"] = args.kubeconfig
    try:
        connection(args.kubeconfig)  # fail at once, clearly, when there is no way to the API
    except KubeConfigError as e:
        print(f"azure-cni-operator: {e}", file=sys.stderr)  # noqa: T201
        return OperatorExit.INVALID_SETTINGS
    return asyncio.run(_run(settings, args.kubeconfig))


if __name__ == "__main__":
    sys.exit(main())
