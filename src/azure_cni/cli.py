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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
