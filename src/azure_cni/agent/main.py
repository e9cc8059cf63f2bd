"""``azure-cni-agent``: the per-node agent (a DaemonSet with hostNetwork on a real cluster).

    azure-cni-agent --config /etc/azure-cni/config.yaml --node-name "$NODE_NAME"
                    [--kubeconfig PATH] [--host-root /host] [--metrics-address IP]
                    [--uninstall]

With ``standalone.enabled`` in the settings file (a VM without Kubernetes, installed by
``azure-cni install standalone``) it needs no Kubernetes API: the pool is the NIC's
secondary addresses from the instance metadata service, and ``--node-name`` defaults to the
host name.

Exit codes: 0 stopped cleanly (SIGTERM/SIGINT), 1 bad configuration, 2 the host has no python
for the shim, 3 refused to start (the store and the host disagree: duplicate addresses),
4 the socket is taken by another agent or unsafe.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from azure_cni.api.settings import InvalidSettings, Settings, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="azure-cni-agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None,
                        help="the settings file (default /etc/azure-cni/config.yaml if present)")
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME", ""),
                        help="this node's name, also its NodeIPPool's (default: $NODE_NAME; "
                             "standalone: the host name)")
    parser.add_argument("--kubeconfig", type=Path,
                        default=Path(os.environ["KUBECONFIG"]) if os.environ.get("KUBECONFIG")
                        else None,
                        help="kubeconfig file (default: $KUBECONFIG, else in-cluster)")
    parser.add_argument("--host-root", type=Path, default=Path("/"),
                        help="where the host's root filesystem is mounted (to check hostPython)")
    parser.add_argument("--metrics-address", default="",
                        help="also serve /metrics, /healthz and /readyz on this address (the "
                             "node's, for Prometheus); they are always on 127.0.0.1")
    parser.add_argument("--uninstall", action="store_true",
                        help="remove the conflist, the shim and the SNAT chains, then exit")
    parser.add_argument("--log-level", default="INFO")
    return parser


def _uninstall(settings: Settings) -> int:
    from azure_cni.agent import install  # noqa: PLC0415 - keep --help fast
    from azure_cni.datapath.snat import teardown_snat  # noqa: PLC0415

    install.uninstall(settings.agent)
    teardown_snat()
    logging.getLogger(__name__).info("event=uninstalled")
    return 0


async def _serve(settings: Settings, args: argparse.Namespace, mtu: int) -> int:
    from azure_cni.agent.nodeagent import AgentStartupError  # noqa: PLC0415 - keep --help fast
    from azure_cni.agent.server import InsecureSocketDirectory, SocketInUse  # noqa: PLC0415
    from azure_cni.datapath.sysctls import proc_sys_net  # noqa: PLC0415
    from azure_cni.datapath.veth import VethDatapath  # noqa: PLC0415

    log = logging.getLogger("azure_cni.agent")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    closers: list[Callable[[], Awaitable[None]]] = []
    datapath = VethDatapath(sysctl_root=proc_sys_net(args.host_root))
    datapath.sockets.start()
    try:
        if settings.standalone.enabled:
            from azure_cni.agent.standalone import StandaloneAgent  # noqa: PLC0415

            run = StandaloneAgent(settings=settings, node_name=args.node_name,
                                  datapath=datapath, mtu=mtu, host_root=args.host_root,
                                  metrics_address=args.metrics_address).run
        else:
            from azure_cni.agent.kube import KubePoolApi  # noqa: PLC0415
            from azure_cni.agent.nodeagent import NodeAgent  # noqa: PLC0415
            from azure_cni.agent.pool_source import NodeIPPoolSource  # noqa: PLC0415
            from azure_cni.kubeclient import KubeConfigError  # noqa: PLC0415

            try:
                api = await KubePoolApi.connect(args.kubeconfig)
            except KubeConfigError as e:
                log.error("event=not_starting reason=NoKubernetesAccess exit=1 error=%s", e)
                return 1
            closers.append(api.close)
            run = NodeAgent(settings=settings, node_name=args.node_name,
                            source=NodeIPPoolSource(api, args.node_name), datapath=datapath,
                            mtu=mtu, host_root=args.host_root,
                            metrics_address=args.metrics_address).run
        await run(stop)
    except AgentStartupError as e:
        log.error("event=not_starting reason=%s exit=%d\n%s", e.reason, e.exit_code, e)
        return e.exit_code
    except (SocketInUse, InsecureSocketDirectory) as e:
        log.error("event=not_starting reason=SocketUnavailable exit=4 error=%s", e)
        return 4
    finally:
        datapath.close()
        for close in closers:
            await close()
    log.info("event=stopped node=%s", args.node_name)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    try:
        settings = load_settings(args.config)
    except InvalidSettings as e:
        logging.getLogger(__name__).error("event=bad_configuration error=%s", e)
        return 1
    if args.uninstall:
        return _uninstall(settings)
    if not args.node_name and settings.standalone.enabled:
        args.node_name = socket.gethostname()
    if not args.node_name:
        logging.getLogger(__name__).error(
            "event=bad_configuration error=--node-name (or $NODE_NAME) is required")
        return 1
    # pyroute2's synchronous IPRoute cannot run inside an event loop: ask before starting one
    from azure_cni.datapath.hostnic import HostInterfaceUnknown, resolve_mtu  # noqa: PLC0415

    log = logging.getLogger("azure_cni.agent")
    try:
        mtu, source = resolve_mtu(settings.agent)
    except HostInterfaceUnknown as e:
        log.error("event=bad_configuration error=%s", e)
        return 1
    log.info("event=starting node=%s mtu=%d mtu_from=%r socket=%s state=%s", args.node_name,
             mtu, source, settings.agent.socket_path, settings.agent.state_dir)
    return asyncio.run(_serve(settings, args, mtu))


if __name__ == "__main__":
    sys.exit(main())
