"""``azure-cni``: the admin's command line (node status, preflight checks, the standalone VM
install). Subcommands import what they need only when they run, so the help stays fast on a
node.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from azure_cni.commandline import ExitCode, add_log_level, command_parser, configure_logging

if TYPE_CHECKING:
    from azure_cni.preflight.findings import Finding

DESCRIPTION = """\
The azure-cni admin command: what a node's agent holds, whether a cluster and its nodes are
ready for azure-cni, and azure-cni on a VM without Kubernetes.

Run a command with --help for its options."""


class CliExit(ExitCode):
    """What ``azure-cni`` returns (listed in its help)."""

    OK = 0, "done (status: the agent is ready)"
    FAILED = 1, "the command could not do its job (bad settings, the agent unreachable)"
    USAGE = 2, "bad arguments (see --help)"
    NOT_READY = 3, "status: the agent answers, but is not ready to network pods (it says why)"
    CHECKS_FAILED = 4, "preflight: at least one check failed (each says what to do)"


Handler = Callable[[argparse.Namespace], int]


def _fail(message: object) -> int:
    print(f"azure-cni: {message}", file=sys.stderr)
    return CliExit.FAILED


def _status(args: argparse.Namespace) -> int:
    from azure_cni.agent.status import AgentStatus
    from azure_cni.agent.status_cli import AgentDown, fetch_status, render
    from azure_cni.api.settings import InvalidSettings, load_settings

    socket_path = args.socket
    if socket_path is None:
        try:
            socket_path = Path(load_settings(args.config).agent.socket_path)
        except InvalidSettings as e:
            return _fail(e)
    try:
        document = fetch_status(socket_path)
    except AgentDown as e:
        return _fail(e)
    # machines get the document as the agent sent it; people, and the exit code, the typed value
    status = AgentStatus.from_dict(document)
    if args.output == "json":
        import json

        print(json.dumps(document, indent=2))
    elif args.output == "yaml":
        import yaml

        print(yaml.safe_dump(document, sort_keys=False), end="")
    else:
        render(status, sys.stdout)
    return CliExit.OK if status.ready else CliExit.NOT_READY


def _install_standalone(args: argparse.Namespace) -> int:
    from azure_cni.agent.vm.install import UNIT_NAME, install_standalone
    from azure_cni.api.settings import InvalidSettings

    try:
        done = install_standalone(root=args.root, agent=args.agent,
                                  non_masquerade_cidrs=args.non_masquerade, force=args.force,
                                  enable=not args.no_start)
    except InvalidSettings as e:
        return _fail(e)
    kept = "" if done.config_written else " (kept the existing file; --force replaces it)"
    print(f"settings:     {done.config}{kept}")
    print(f"systemd unit: {done.unit}")
    if done.enabled:
        print(f"started:      {UNIT_NAME}; check it with: azure-cni status")
    else:
        print(f"next:         systemctl daemon-reload && systemctl enable --now {UNIT_NAME}")
    print("then:         docker network create -d azure-cni --ipam-driver azure-cni azure")
    return CliExit.OK


def _uninstall_standalone(args: argparse.Namespace) -> int:
    from azure_cni.agent.vm.install import UninstallFailed, uninstall_standalone

    try:
        done = uninstall_standalone(root=args.root, agent=args.agent, purge=args.purge)
    except UninstallFailed as e:
        return _fail(e)
    for line in done.report():
        print(line)
    return CliExit.OK


def _print_findings(findings: Sequence[Finding], output: str) -> int:
    from azure_cni.preflight.findings import failed, render_json, render_text

    if output == "json":
        print(render_json(findings), end="")
    elif output == "yaml":
        import json

        import yaml

        print(yaml.safe_dump(json.loads(render_json(findings)), sort_keys=False), end="")
    else:
        print(render_text(findings), end="")
    return CliExit.CHECKS_FAILED if failed(findings) else CliExit.OK


def _preflight(args: argparse.Namespace) -> int:
    import asyncio
    import socket

    from azure_cni.api.settings import InvalidSettings, load_settings

    try:
        settings = load_settings(args.config)
    except InvalidSettings as e:
        return _fail(e)
    if args.scope == "node":
        # only the node's files: not the Kubernetes client or the Azure SDK, seconds to
        # import on a busy node
        from azure_cni.preflight.node import node_findings

        node = args.node or socket.gethostname()
        return _print_findings(node_findings(settings.agent, node, host_root=args.host_root),
                               args.output)
    from azure_cni.kubeclient import KubeConfigError
    from azure_cni.preflight.run import check_cluster

    try:
        findings = asyncio.run(check_cluster(settings, args.kubeconfig, azure=not args.no_azure))
    except KubeConfigError as e:
        return _fail(e)
    return _print_findings(findings, args.output)


def _uninstall_node(args: argparse.Namespace) -> int:
    from azure_cni.agent.install import uninstall_node
    from azure_cni.api.settings import InvalidSettings, load_settings
    from azure_cni.datapath.snat import teardown_snat

    try:
        settings = load_settings(args.config)
    except InvalidSettings as e:
        return _fail(e)
    for path in uninstall_node(settings.agent, args.host_root):
        print(f"removed:      {path}")
    if not args.keep_rules:
        try:
            teardown_snat()
        except OSError as e:
            return _fail(f"the iptables chains could not be removed: {e}")
        print("removed:      the agent's iptables chains (AZURE-CNI-*)")
    print("pods that still run keep their network until they stop; a reboot clears the rest")
    return CliExit.OK


def _subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                help: str, description: str, handler: Handler | None
                ) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=description,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_log_level(parser, "warning", subcommand=True)
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("azure-cni", DESCRIPTION, CliExit, log_level="warning")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    status = _subcommand(
        sub, "status", "this node's pool, pod addresses and agent health",
        "What the azure-cni agent on this node says: its pool, which pod holds which\n"
        "address, and whether it is ready. It asks the agent over its socket, so run it as\n"
        "root on the node, or in the agent's pod:\n\n"
        "  kubectl -n kube-system exec ds/azure-cni-agent -- azure-cni status", _status)
    status.add_argument("--socket", type=Path, default=None,
                        help="the agent's socket (default: agent.socketPath of --config)")
    status.add_argument("--config", type=Path, default=None,
                        help="settings file (default /etc/azure-cni/config.yaml if present)")
    status.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text",
                        help="text for people (default), or the agent's status document as "
                             "json or yaml")

    preflight = _subcommand(
        sub, "preflight", "is the cluster, or this node, ready for azure-cni?",
        "Check what azure-cni needs; each failure says what to do.\n\n"
        "azure-cni preflight       the cluster: every node's providerID names its VM, kubelet's\n"
        "                          --max-pods fits the pool's maxIPs, what the agents found on\n"
        "                          their nodes, and, with the operator's Azure credential, that\n"
        "                          it may read and write each node's NIC and join its subnet.\n"
        "                          The chart runs it as its Helm test:\n"
        "                            helm test azure-cni -n kube-system --logs\n"
        "azure-cni preflight node  this node: python3 for the CNI plugin, portmap and the other\n"
        "                          chained plugins, no network configuration that sorts first.\n"
        "                          Before installing, on each node:\n"
        "                            kubectl debug node/<node> --attach --image=<image> --\n"
        "                              azure-cni preflight node --host-root /host",
        _preflight)
    preflight.add_argument("scope", nargs="?", choices=("cluster", "node"), default="cluster",
                           help="what to check (default: cluster)")
    preflight.add_argument("--config", type=Path, default=None,
                           help="settings file (default /etc/azure-cni/config.yaml if present)")
    preflight.add_argument("--kubeconfig", default=None,
                           help="cluster: kubeconfig file (default: $KUBECONFIG, else "
                                "in-cluster)")
    preflight.add_argument("--no-azure", action="store_true",
                           help="cluster: skip the checks that need the operator's Azure "
                                "credential")
    preflight.add_argument("--host-root", type=Path, default=Path("/"),
                           help="node: where the node's root filesystem is (default: /)")
    preflight.add_argument("--node", default="",
                           help="node: its name in the report (default: the host name)")
    preflight.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text",
                           help="text for people (default), json or yaml")

    install = _subcommand(sub, "install", "install azure-cni on this machine",
                          "Install azure-cni on this machine.", None)
    targets = install.add_subparsers(dest="target", metavar="TARGET", required=True)
    standalone = _subcommand(
        targets, "standalone", "a VM without Kubernetes, as a systemd service",
        "azure-cni on a VM without Kubernetes: writes /etc/azure-cni/config.yaml and the\n"
        "systemd unit azure-cni-agent.service, and starts it. Containers of containerd and\n"
        "Docker then get the NIC's secondary addresses.", _install_standalone)
    standalone.add_argument("--non-masquerade", action="append", default=[], metavar="CIDR",
                            help="a range containers reach with their own address (the VNet, "
                                 "peered VNets, on-premises); repeatable")
    standalone.add_argument("--root", type=Path, default=Path("/"),
                            help="install under this directory instead of / (no start)")
    standalone.add_argument("--agent", type=Path, default=None,
                            help="the azure-cni-agent executable (default: this installation's)")
    standalone.add_argument("--force", action="store_true",
                            help="replace an existing /etc/azure-cni/config.yaml")
    standalone.add_argument("--no-start", action="store_true",
                            help="write the files but do not enable and start the unit")

    uninstall = _subcommand(sub, "uninstall", "remove azure-cni from this machine",
                            "Remove azure-cni from this machine.", None)
    targets = uninstall.add_subparsers(dest="target", metavar="TARGET", required=True)
    standalone = _subcommand(
        targets, "standalone", "undo `azure-cni install standalone`",
        "Stop and remove the azure-cni-agent service, the CNI plugin and its conflist, and\n"
        "the agent's iptables chains. Containers that still run keep their interfaces and\n"
        "addresses until they stop; remove Docker networks of driver azure-cni first\n"
        "(docker network rm). The settings file and the agent's state stay unless --purge.",
        _uninstall_standalone)
    node = _subcommand(
        targets, "node", "what a Kubernetes node keeps after helm uninstall",
        "Remove what the azure-cni agent put on a Kubernetes node, after helm uninstall: the\n"
        "conflist, the CNI plugin, the agent's store and socket directory, and its iptables\n"
        "chains. Run it as root on each node, e.g. with root.json {\"securityContext\":\n"
        "{\"runAsUser\": 0}}:\n\n"
        "  kubectl debug node/<node> --attach --profile=sysadmin --custom=root.json \\\n"
        "    --image=<azure-cni image> -- azure-cni uninstall node --host-root /host",
        _uninstall_node)
    node.add_argument("--host-root", type=Path, default=Path("/"),
                      help="where the node's root filesystem is (default: /)")
    node.add_argument("--config", type=Path, default=None,
                      help="the settings the chart used (default: its defaults)")
    node.add_argument("--keep-rules", action="store_true",
                      help="leave the iptables chains (e.g. when not in the node's network)")
    standalone.add_argument("--purge", action="store_true",
                            help="also remove /etc/azure-cni/config.yaml and /var/lib/azure-cni")
    standalone.add_argument("--root", type=Path, default=Path("/"),
                            help="remove from under this directory instead of / (files only)")
    standalone.add_argument("--agent", type=Path, default=None,
                            help="the azure-cni-agent executable (default: this installation's)")
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` with a ``command_parser`` whose subcommands set ``handler``, and run
    it; without a command, print the help."""
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return CliExit.OK
    return int(handler(args))


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
