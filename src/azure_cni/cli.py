"""``azure-cni``: the admin and debugging command line.

Subcommands import what they need lazily, so ``azure-cni --help`` stays fast on a node.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]


def _default_state_dir(name: str) -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / "azure-cni" / name


def _cluster_up(args: argparse.Namespace) -> int:
    from azure_cni.sim.cluster import ClusterError, ClusterState, LocalCluster

    state_dir: Path = args.state_dir
    try:
        existing = ClusterState.read(state_dir)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        print(f"a cluster is already up in {state_dir} (server {existing.server}); "
              f"stop it with: azure-cni sim cluster down --state-dir {state_dir}", file=sys.stderr)
        return 1
    try:
        cluster = LocalCluster(state_dir, controller_manager=not args.no_controller_manager)
        cluster.start(timeout=args.timeout)
    except ClusterError as e:
        print(f"azure-cni: the control plane did not start: {e}", file=sys.stderr)
        return 1
    print(f"control plane ready at {cluster.server}")
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    print(f"stop it with: azure-cni sim cluster down --state-dir {state_dir}")
    return 0


def _cluster_down(args: argparse.Namespace) -> int:
    from azure_cni.sim.cluster import LocalCluster

    if LocalCluster.down(args.state_dir):
        print(f"control plane in {args.state_dir} stopped")
    else:
        print(f"no control plane recorded in {args.state_dir}; nothing to stop")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="azure-cni", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("sim", help="the simulated Azure and local control plane")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True)

    cluster = sim_sub.add_parser(
        "cluster", help="a local etcd + kube-apiserver + kube-controller-manager")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    up = cluster_sub.add_parser("up", help="start it in the background and print KUBECONFIG")
    up.add_argument("--state-dir", type=Path, default=_default_state_dir("cluster"))
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    up.add_argument("--no-controller-manager", action="store_true",
                    help="start only etcd and kube-apiserver")
    up.set_defaults(handler=_cluster_up)
    down = cluster_sub.add_parser("down", help="stop it and remove its state")
    down.add_argument("--state-dir", type=Path, default=_default_state_dir("cluster"))
    down.set_defaults(handler=_cluster_down)
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
