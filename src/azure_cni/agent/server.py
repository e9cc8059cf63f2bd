"""The agent's HTTP API on a root-only unix socket, and the one place errors become CNI codes.

Routes:
- ``POST /v1/cni``: one CNI request from the shim (protocol in ``azure_cni.cni.request``);
- ``GET /v1/status``: the pool, the assignments and the agent's health (``azure-cni status``);
- ``GET /healthz``, ``GET /readyz``: the same probes as on the metrics port.

The socket is created with mode 0600 inside a directory of mode 0750 at most: on a node, only
root (the container runtime) may ask the agent to configure networks.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from azure_cni.agent.cni_handler import CniHandler, Reply
from azure_cni.agent.metrics import AgentMetrics, Stopwatch, probe_handler
from azure_cni.agent.status import AgentStatus
from azure_cni.cni.errors import (
    CniError,
    Code,
    DecodingFailure,
    InvalidConfig,
    TryAgainLater,
    UnknownContainer,
)
from azure_cni.cni.request import parse_request
from azure_cni.datapath.netns_sockets import NetnsSocketError
from azure_cni.datapath.rtnl import NetlinkRequestFailed
from azure_cni.datapath.veth import InterfaceTaken, NetnsMissing
from azure_cni.ipam.store import StoreError

log = logging.getLogger(__name__)

WARNING_HEADER = "X-Azure-CNI-Warning"
#: pending connections the kernel queues while the agent is busy (many pods start at once)
BACKLOG = 1024


class SocketInUse(RuntimeError):
    """Another agent already serves on the socket path."""


class InsecureSocketDirectory(RuntimeError):
    """The socket's directory would let others reach the socket."""


def cni_error_for(exc: BaseException) -> CniError:
    """Every failure of a CNI request, as the CNI error the runtime should see."""
    if isinstance(exc, CniError):
        return exc
    if isinstance(exc, NetnsMissing):
        return UnknownContainer("the pod's network namespace does not exist", str(exc))
    if isinstance(exc, InterfaceTaken):
        return InvalidConfig("the pod already has an interface with that name", str(exc))
    if isinstance(exc, NetlinkRequestFailed | NetnsSocketError):
        return TryAgainLater("configuring the pod's network failed", str(exc))
    if isinstance(exc, StoreError):
        return TryAgainLater("the agent's address store failed", str(exc))
    if isinstance(exc, TimeoutError):
        return TryAgainLater("the agent timed out", str(exc) or type(exc).__name__)
    if isinstance(exc, OSError):
        return TryAgainLater("the agent hit an operating system error",
                             f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, '?')})")
    return CniError("internal error in the azure-cni agent", f"{type(exc).__name__}: {exc}")


def error_response(error: CniError, cni_version: str = "1.1.0") -> web.Response:
    body = {"cniVersion": cni_version, "code": int(error.code), "msg": error.msg,
            "details": error.details}
    return web.json_response(body, status=400 if error.code < 100 else 500)


def prepare_socket_path(path: Path) -> None:
    """Create the directory (0750) and remove a stale socket; refuse unsafe or busy paths."""
    directory = path.parent
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o750)
        directory.chmod(0o750)
    mode = directory.stat().st_mode
    unsafe = stat.S_IWGRP | stat.S_IWOTH | stat.S_IROTH | stat.S_IXOTH
    if mode & unsafe and directory.stat().st_uid == os.geteuid():
        # the kubelet creates a missing hostPath directory 0755; ours to tighten
        directory.chmod(0o750)
        mode = directory.stat().st_mode
    if mode & unsafe:
        raise InsecureSocketDirectory(
            f"{directory} has mode {stat.filemode(mode)}; the agent's socket needs a directory "
            "that only root can enter (0700 or 0750)")
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise SocketInUse(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(path))
        except OSError:
            path.unlink()  # left behind by an agent that died
        else:
            raise SocketInUse(f"another agent is already serving on {path}")
        finally:
            probe.close()


def bind_socket(path: Path) -> socket.socket:
    """A listening unix socket at ``path`` with mode 0600."""
    prepare_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    path.chmod(0o600)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


class AgentServer:
    """The aiohttp application behind the unix socket."""

    def __init__(self, handler: CniHandler, metrics: AgentMetrics,
                 status: Callable[[], Awaitable[AgentStatus]],
                 health: Callable[[], str], readiness: Callable[[], str]) -> None:
        self.handler = handler
        self.metrics = metrics
        self.status = status
        self.health = health
        self.readiness = readiness
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/v1/cni", self.serve_cni)
        app.router.add_get("/v1/status", self.serve_status)
        app.router.add_get("/healthz", probe_handler(self.health))
        app.router.add_get("/readyz", probe_handler(self.readiness))
        return app

    async def start(self, path: Path) -> None:
        sock = bind_socket(path)
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        log.info("event=socket_listening path=%s", path)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def serve_cni(self, http: web.Request) -> web.Response:
        watch = Stopwatch()
        command = "UNKNOWN"
        version = "1.1.0"
        try:
            try:
                body = json.loads(await http.read())
            except ValueError as e:
                raise DecodingFailure("the request is not valid JSON", str(e)) from None
            request = parse_request(body)
            command, version = request.command, request.cni_version
            # finish what was started even if the shim is killed meanwhile: a half-built
            # datapath is worse than a complete one the runtime will DEL
            reply = await asyncio.shield(self.handler.handle(request))
        except Exception as e:  # every failure becomes a CNI error object
            error = cni_error_for(e)
            level = logging.ERROR if error.code in (Code.INTERNAL,) else logging.WARNING
            log.log(level, "event=cni_error command=%s code=%d msg=%r details=%r", command,
                    int(error.code), error.msg, error.details,
                    exc_info=error.code == Code.INTERNAL)
            self.metrics.observe(command, f"error_{int(error.code)}", watch.seconds())
            return error_response(error, version)
        self.metrics.observe(command, "ok", watch.seconds())
        return _reply_response(reply)

    async def serve_status(self, _: web.Request) -> web.Response:
        return web.json_response((await self.status()).to_dict())


def _reply_response(reply: Reply) -> web.Response:
    headers = {}
    if reply.warning:
        headers[WARNING_HEADER] = reply.warning.replace("\r", " ").replace("\n", " ")[:2000]
    return web.Response(body=reply.output, headers=headers,
                        content_type="application/json" if reply.output else None)

