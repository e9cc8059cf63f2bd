"""Loopback portals: make a TCP service of the host reachable on 127.0.0.1 inside a netns.

A simulated VM is a network namespace with no route to the machine's own namespace (the rules
of the simulation forbid one). Its agent still has to reach the API server, which listens on
the host's loopback. A portal listens on ``127.0.0.1:<port>`` *inside* the namespace (the
listening socket is created while this thread is switched into it) and relays each connection
to the target in the host namespace. No address, route or interface is added anywhere.

Run as ``python -m azure_cni_sim.portal --target 127.0.0.1:6443 NETNS[:PORT] ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
from collections.abc import Sequence

log = logging.getLogger(__name__)

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns failed: {os.strerror(err)}")


def listen_in_netns(netns: str, port: int, host: str = "127.0.0.1") -> socket.socket:
    """A listening TCP socket bound to ``host:port`` inside the named network namespace."""
    path = netns if netns.startswith("/") else f"/run/netns/{netns}"
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        _setns(target)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)
    return sock


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


async def serve(portals: Sequence[tuple[str, int]], target: tuple[str, int]) -> None:
    """Relay every portal to ``target`` until cancelled."""

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError as e:
            log.warning("event=portal_upstream_failed target=%s:%d error=%s", *target, e)
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    servers = []
    for netns, port in portals:
        sock = listen_in_netns(netns, port)
        servers.append(await asyncio.start_server(relay, sock=sock))
        log.info("event=portal_listening netns=%s port=%d target=%s:%d", netns, port, *target)
    try:
        await asyncio.Event().wait()
    finally:
        for server in servers:
            server.close()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="HOST:PORT in this namespace")
    parser.add_argument("portals", nargs="+", metavar="NETNS[:PORT]",
                        help="namespace to serve in; PORT defaults to the target's port")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    host, _, port_text = args.target.rpartition(":")
    target = (host, int(port_text))
    portals = []
    for spec in args.portals:
        name, _, port = spec.partition(":")
        portals.append((name, int(port) if port else target[1]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    async def run() -> None:
        task = asyncio.create_task(serve(portals, target))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())


if __name__ == "__main__":
    main()
