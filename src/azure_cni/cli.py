"""``azure-cni``: the admin and debugging command line.

Subcommands import what they need lazily, so ``azure-cni --help`` stays fast on a node.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]


def _status(args: argparse.Namespace) -> int:
    from azure_cni.agent.status_cli import AgentDown, fetch_status, render
    from azure_cni.api.settings import InvalidSettings, load_settings

    socket_path = args.socket
    if socket_path is None:
        try:
            socket_path = Path(load_settings(args.config).agent.socket_path)
        except InvalidSettings as e:
            print(f"azure-cni: {e}", file=sys.stderr)
            return 1
    try:
        status = fetch_status(socket_path)
    except AgentDown as e:
        print(f"azure-cni: {e}", file=sys.stderr)
        return 1
    if args.json:
        import json

        print(json.dumps(status, indent=2))
    else:
        render(status, sys.stdout)
    return 0 if status["ready"] else 2


def _install_standalone(args: argparse.Namespace) -> int:
    from azure_cni.agent.vm_install import UNIT_NAME, install_standalone
    from azure_cni.api.settings import InvalidSettings

    try:
        done = install_standalone(root=args.root, agent=args.agent,
                                  non_masquerade_cidrs=args.non_masquerade, force=args.force,
                                  enable=not args.no_start)
    except InvalidSettings as e:
        print(f"azure-cni: {e}", file=sys.stderr)
        return 1
    kept = "" if done.config_written else " (kept the existing file; --force replaces it)"
    print(f"settings:     {done.config}{kept}")
    print(f"systemd unit: {done.unit}")
    if done.enabled:
        print(f"started:      {UNIT_NAME}; check it with: azure-cni status")
    else:
        print(f"next:         systemctl daemon-reload && systemctl enable --now {UNIT_NAME}")
    print("then:         docker network create -d azure-cni --ipam-driver azure-cni azure")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="azure-cni", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    status = sub.add_parser("status", help="this node's pool, pod addresses and agent health "
                                           "(asks the local azure-cni agent)")
    status.add_argument("--socket", type=Path, default=None,
                        help="the agent's socket (default: agent.socketPath of --config)")
    status.add_argument("--config", type=Path, default=None,
                        help="settings file (default /etc/azure-cni/config.yaml if present)")
    status.add_argument("--json", action="store_true", help="print the raw status document")
    status.set_defaults(handler=_status)

    install = sub.add_parser("install", help="install the agent on this machine")
    targets = install.add_subparsers(dest="target", required=True)
    standalone = targets.add_parser(
        "standalone", help="a VM without Kubernetes: the settings file and a systemd unit; "
                           "containers of containerd and Docker get the NIC's addresses")
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
    standalone.set_defaults(handler=_install_standalone)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` with a parser whose subcommands set ``handler``, and run it."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    handler: Handler = args.handler
    return handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
