"""``azure-cni-agent``: the per-node agent (a DaemonSet with hostNetwork on a real cluster,
a systemd service on a VM without Kubernetes). The help text is ``DESCRIPTION``; the exit
codes are ``AgentExit``.
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

from azure_cni.agent.exitcodes import AgentExit
from azure_cni.api.settings import InvalidSettings, Settings, load_settings
from azure_cni.commandline import command_parser, configure_logging

DESCRIPTION = """\
The azure-cni node agent: hands the node's VNet addresses to pods, builds their network and
serves the CNI plugin on a root-only unix socket. The chart's DaemonSet runs it as

  azure-cni-agent --config /etc/azure-cni/config.yaml --node-name "$NODE_NAME"

With standalone.enabled in the settings file (a VM without Kubernetes, set up by
azure-cni install standalone) it needs no Kubernetes API: the pool is the NIC's secondary
addresses from the instance metadata service, and --node-name defaults to the host name."""


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("azure-cni-agent", DESCRIPTION, AgentExit)
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
                        help="remove the conflist, the shim and the iptables chains, then exit")
    parser.add_argument("--purge", action="store_true",
                        help="with --uninstall: also the store and the socket directory")
    parser.add_argument("--wait", action="store_true",
                        help="with --uninstall: then wait for SIGTERM (the chart's "
                             "agentDaemonSet.uninstall: a DaemonSet's pods keep running)")
    return parser


def _uninstall(settings: Settings, *, purge: bool, wait: bool) -> int:
    from azure_cni.agent import install  # noqa: PLC0415 - keep --help fast
    from azure_cni.datapath.snat import teardown_snat  # noqa: PLC0415

    # the chains first: they are what keeps acting on the node's traffic
    teardown_snat()
    if purge:
        install.uninstall_node(settings.agent)
    else:
        install.uninstall(settings.agent)
    logging.getLogger(__name__).info("event=uninstalled purge=%s", purge)
    if wait:
        stop = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        signal.sigwait(stop)
    return AgentExit.OK


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
            from azure_cni.agent.vm.standalone import StandaloneAgent  # noqa: PLC0415

            run = StandaloneAgent(settings=settings, node_name=args.node_name,
                                  datapath=datapath, mtu=mtu, host_root=args.host_root,
                                  metrics_address=args.metrics_address).run
        else:
            from azure_cni.agent.kube import KubeConfigError, KubePoolApi  # noqa: PLC0415
            from azure_cni.agent.nodeagent import NodeAgent  # noqa: PLC0415
            from azure_cni.agent.pool_source import NodeIPPoolSource  # noqa: PLC0415

            try:
                api = await KubePoolApi.connect(args.kubeconfig)
            except KubeConfigError as e:
                log.error("event=not_starting reason=NoKubernetesAccess exit=%d error=%s",
                          AgentExit.BAD_CONFIGURATION, e)
                return AgentExit.BAD_CONFIGURATION
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
        log.error("event=not_starting reason=SocketUnavailable exit=%d error=%s",
                  AgentExit.SOCKET_UNAVAILABLE, e)
        return AgentExit.SOCKET_UNAVAILABLE
    finally:
        datapath.close()
        for close in closers:
            await close()
    log.info("event=stopped node=%s", args.node_name)
    return AgentExit.OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = load_settings(args.config)
    except InvalidSettings as e:
        logging.getLogger(__name__).error("event=bad_configuration error=%s", e)
        return AgentExit.BAD_CONFIGURATION
    if args.uninstall:
        return _uninstall(settings, purge=args.purge, wait=args.wait)
    if not args.node_name and settings.standalone.enabled:
        args.node_name = socket.gethostname()
    if not args.node_name:
        logging.getLogger(__name__).error(
            "event=bad_configuration error=--node-name (or $NODE_NAME) is required")
        return AgentExit.BAD_CONFIGURATION
    # pyroute2's synchronous IPRoute cannot run inside an event loop: ask before starting one
    from azure_cni.datapath.hostnic import HostInterfaceUnknown, resolve_mtu  # noqa: PLC0415

    log = logging.getLogger("azure_cni.agent")
    try:
        mtu, source = resolve_mtu(settings.agent)
    except HostInterfaceUnknown as e:
        log.error("event=bad_configuration error=%s", e)
        return AgentExit.BAD_CONFIGURATION
    log.info("event=starting node=%s mtu=%d mtu_from=%r socket=%s state=%s", args.node_name,
             mtu, source, settings.agent.socket_path, settings.agent.state_dir)
    return asyncio.run(_serve(settings, args, mtu))


if __name__ == "__main__":
    sys.exit(main())
