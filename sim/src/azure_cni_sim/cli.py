"""``azure-cni-sim``: the simulated Azure and the local control plane, from the command line.

``make demo`` runs ``azure-cni-sim demo up``. Nothing here ships in the product's wheel or image.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from azure_cni.cli import run
from azure_cni.commandline import add_common_options


def _default_state_dir(name: str) -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / "azure-cni" / name


def _cluster_up(args: argparse.Namespace) -> int:
    from azure_cni_sim.cluster import ClusterError, ClusterState, LocalCluster

    state_dir: Path = args.state_dir
    try:
        existing = ClusterState.read(state_dir)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        print(f"a cluster is already up in {state_dir} (server {existing.server}); "
              f"stop it with: azure-cni-sim cluster down --state-dir {state_dir}", file=sys.stderr)
        return 1
    try:
        cluster = LocalCluster(state_dir, controller_manager=not args.no_controller_manager)
        cluster.start(timeout=args.timeout)
    except ClusterError as e:
        print(f"azure-cni-sim: the control plane did not start: {e}", file=sys.stderr)
        return 1
    print(f"control plane ready at {cluster.server}")
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    print(f"stop it with: azure-cni-sim cluster down --state-dir {state_dir}")
    return 0


def _cluster_down(args: argparse.Namespace) -> int:
    from azure_cni_sim.cluster import LocalCluster

    if LocalCluster.down(args.state_dir):
        print(f"control plane in {args.state_dir} stopped")
    else:
        print(f"no control plane recorded in {args.state_dir}; nothing to stop")
    return 0


def _sim_arm(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import signal

    import yaml

    from azure_cni_sim.arm import ArmConfig, ArmEmulator, Topology

    config = ArmConfig(lro_polls=args.lro_polls, poll_retry_after=args.poll_retry_after,
                       throttling=not args.no_throttling, read_qps=args.read_qps,
                       read_burst=args.read_burst, write_qps=args.write_qps,
                       write_burst=args.write_burst,
                       static_tokens=tuple(args.static_token or ArmConfig.static_tokens))
    try:
        if args.topology is not None:
            topology = Topology.from_mapping(yaml.safe_load(args.topology.read_text()) or {})
        else:
            topology = Topology.from_mapping({
                "vnets": [{"name": "vnet1", "addressSpace": [args.vnet_cidr],
                           "subnets": {"nodes": args.subnet_cidr}}],
                "vms": [{"name": f"{args.vm_prefix}{i}", "subnet": "vnet1/nodes"}
                        for i in range(args.vms)]})
    except (OSError, yaml.YAMLError, ValueError) as e:
        print(f"azure-cni-sim: bad topology: {e}", file=sys.stderr)
        return 2

    async def serve() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        emulator = ArmEmulator(config, arm_port=args.arm_port, imds_port=args.imds_port,
                               state_dir=args.state_dir)
        async with emulator:
            try:
                vms = topology.apply(emulator)
            except ValueError as e:
                print(f"azure-cni-sim: bad topology: {e}", file=sys.stderr)
                return 2
            described = {**emulator.endpoints(), "vms": [
                {"name": vm.name, "providerID": vm.provider_id, "nicID": vm.nic_id,
                 "primaryIP": vm.primary_ip, "imds": emulator.imds_url_for(vm.name)}
                for vm in vms]}
            (args.state_dir / "endpoints.json").write_text(json.dumps(described, indent=2))
            print(f"ARM endpoint    {emulator.arm_url}")
            print(f"IMDS endpoint   {emulator.imds_url}  (per VM: {emulator.imds_url}/vms/<vm>)")
            print(f"CA bundle       {emulator.ca_path}")
            print(f"static token    {config.static_tokens[0]}")
            print(f"admin API       {emulator.arm_url}_sim/state")
            for vm in vms:
                print(f"VM {vm.name}: primary IP {vm.primary_ip}, providerID {vm.provider_id}")
            print(f"described in    {args.state_dir / 'endpoints.json'}")
            print("ready; stop with SIGTERM or Ctrl-C", flush=True)
            await stop.wait()
        print("ARM emulator stopped", flush=True)
        return 0

    return asyncio.run(serve())


def _demo_up(args: argparse.Namespace) -> int:
    from azure_cni_sim import demo

    return demo.up(args.state_dir, args.prefix, timeout=args.timeout)


def _demo_down(args: argparse.Namespace) -> int:
    from azure_cni_sim import demo

    return demo.down(args.state_dir)


def _conformance(args: argparse.Namespace) -> int:
    from azure_cni_sim import conformance

    return conformance.run_on_demo(args.state_dir, args.results_dir, args.work_dir,
                                   wide=args.wide, procs=args.procs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="azure-cni-sim", description=__doc__)
    add_common_options(parser, log_level="warning")
    sub = parser.add_subparsers(dest="command", required=True)

    cluster = sub.add_parser(
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

    demo = sub.add_parser("demo", help="azure-cni on a simulated VNet (make demo)")
    demo_sub = demo.add_subparsers(dest="demo_command", required=True)
    demo_up = demo_sub.add_parser("up", help="start it in the background and show it working")
    demo_up.add_argument("--state-dir", type=Path, default=_default_state_dir("demo"))
    demo_up.add_argument("--prefix", default="azdemo",
                         help="prefix of every network namespace the demo creates")
    demo_up.add_argument("--timeout", type=float, default=600.0)
    demo_up.set_defaults(handler=_demo_up)
    demo_down = demo_sub.add_parser("down", help="stop it and remove everything it created")
    demo_down.add_argument("--state-dir", type=Path, default=_default_state_dir("demo"))
    demo_down.set_defaults(handler=_demo_down)

    conformance = sub.add_parser(
        "conformance", help="Kubernetes' own networking specs and an Ingress against the "
                            "running demo (make conformance)")
    conformance.add_argument("--state-dir", type=Path, default=_default_state_dir("demo"),
                             help="the demo's (make demo's .cache/demo)")
    conformance.add_argument("--results-dir", type=Path, required=True,
                             help="where conformance.json and its JUnit report go")
    conformance.add_argument("--work-dir", type=Path, required=True,
                             help="ginkgo's output and the full JUnit report")
    conformance.add_argument("--wide", action="store_true",
                             help="the wider [sig-network] set instead (conformance-wide.json)")
    conformance.add_argument("--procs", type=int, default=3, help="parallel ginkgo processes")
    conformance.set_defaults(handler=_conformance)

    arm = sub.add_parser(
        "arm", help="the Azure Resource Manager + IMDS emulator, in the foreground",
        description="Serve ARM over HTTPS (a CA of its own, written to --state-dir) and IMDS "
                    "over HTTP on 127.0.0.1, with a VNet and VMs from flags or a YAML file.")
    arm.add_argument("--state-dir", type=Path, default=_default_state_dir("arm"),
                     help="where the CA and endpoints.json are written")
    arm.add_argument("--arm-port", type=int, default=0, help="0: any free port")
    arm.add_argument("--imds-port", type=int, default=0, help="0: any free port")
    arm.add_argument("--topology", type=Path,
                     help="YAML: {vnets: [{name, addressSpace, subnets: {name: cidr}}], "
                          "vms: [{name, subnet: <vnet>/<subnet>, primaryIP?, scaleSet?}]}")
    arm.add_argument("--vnet-cidr", default="198.18.0.0/16")
    arm.add_argument("--subnet-cidr", default="198.18.0.0/20")
    arm.add_argument("--vms", type=int, default=1, help="VMs to create without --topology")
    arm.add_argument("--vm-prefix", default="node")
    arm.add_argument("--lro-polls", type=int, default=1,
                     help="InProgress answers before an operation completes")
    arm.add_argument("--poll-retry-after", type=float, default=None,
                     help="Retry-After seconds on operation polls (fractions allowed)")
    arm.add_argument("--no-throttling", action="store_true")
    arm.add_argument("--read-qps", type=float, default=25.0)
    arm.add_argument("--read-burst", type=int, default=250)
    arm.add_argument("--write-qps", type=float, default=10.0)
    arm.add_argument("--write-burst", type=int, default=200)
    arm.add_argument("--static-token", action="append",
                     help="a bearer token to accept besides IMDS-issued ones (repeatable)")
    arm.set_defaults(handler=_sim_arm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
