"""Portals: relay TCP between the machine's own network namespace and a simulated one.

A simulated VM is a network namespace with no route to the machine's own namespace (the rules
of the simulation forbid one), so a portal carries connections across instead. Sockets are
created while the thread is switched into the namespace they belong to, and keep it; no
address, route or interface is added anywhere. Two directions:

- into a namespace: a service on the host's loopback (an API server on 127.0.0.1) appears on
  ``127.0.0.1:<port>`` inside each namespace named::

      python -m azure_cni_sim.portal --target 127.0.0.1:6443 NETNS[:PORT] ...

- out of a namespace: a service inside one (the simulated control plane on its VNet address)
  appears on the host's loopback, for the test harness and a user's kubectl::

      python -m azure_cni_sim.portal --target NETNS@198.18.8.4:6443 --listen 127.0.0.1:PORT
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
from dataclasses import dataclass

log = logging.getLogger(__name__)

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns failed: {os.strerror(err)}")


def socket_in_netns(netns: str | None) -> socket.socket:
    """A non-blocking TCP socket that belongs to the named network namespace (None: this
    thread's own), whatever namespace later uses it."""
    if netns is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        return sock
    path = netns if netns.startswith("/") else f"/run/netns/{netns}"
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        _setns(target)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)
    sock.setblocking(False)
    return sock


def listen_in_netns(netns: str | None, port: int, host: str = "127.0.0.1") -> socket.socket:
    """A listening TCP socket bound to ``host:port`` inside the named network namespace."""
    sock = socket_in_netns(netns)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


async def connect_in_netns(netns: str | None, host: str, port: int
                           ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to ``host:port`` as seen from inside the named network namespace."""
    sock = socket_in_netns(netns)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except OSError:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


@dataclass(frozen=True)
class Endpoint:
    """``host:port`` in a network namespace (None: the machine's own)."""

    netns: str | None
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.netns + '@' if self.netns else ''}{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, default_host: str = "127.0.0.1") -> Endpoint:
        """``[NETNS@]HOST:PORT``."""
        netns, _, address = text.rpartition("@")
        host, _, port = address.rpartition(":")
        return cls(netns or None, host or default_host, int(port))


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


async def serve(portals: Sequence[Endpoint], target: Endpoint) -> None:
    """Relay every portal to ``target`` until cancelled."""

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await connect_in_netns(target.netns, target.host,
                                                          target.port)
        except OSError as e:
            log.warning("event=portal_upstream_failed target=%s error=%s", target, e)
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    servers = []
    for portal in portals:
        sock = listen_in_netns(portal.netns, portal.port, portal.host)
        servers.append(await asyncio.start_server(relay, sock=sock))
        log.info("event=portal_listening netns=%s port=%d target=%s", portal.netns or "host",
                 portal.port, target)
    try:
        await asyncio.Event().wait()
    finally:
        for server in servers:
            server.close()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True,
                        help="[NETNS@]HOST:PORT: where connections go (default: this namespace)")
    parser.add_argument("--listen", action="append", default=[], metavar="HOST:PORT",
                        help="also listen in this namespace (repeatable)")
    parser.add_argument("portals", nargs="*", metavar="NETNS[:PORT]",
                        help="loopback of a namespace to serve in; PORT defaults to the target's")
    args = parser.parse_args(argv)
    if not args.portals and not args.listen:
        parser.error("name at least one namespace or --listen address")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    target = Endpoint.parse(args.target)
    portals = [Endpoint.parse(spec) for spec in args.listen]
    for spec in args.portals:
        name, _, port = spec.partition(":")
        portals.append(Endpoint(name, "127.0.0.1", int(port) if port else target.port))
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
