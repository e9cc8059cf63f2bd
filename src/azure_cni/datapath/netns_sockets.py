"""Netlink sockets opened inside other network namespaces, without forking per socket.

A netlink socket talks to the namespace it was created in, so configuring a pod's interface
needs a socket created inside the pod's namespace. pyroute2's ``IPRoute(netns=...)`` forks a
child for every socket (~8 ms on a small VM); the agent instead starts one helper process
when it starts and asks it for sockets: the helper receives the namespace as a file
descriptor, enters it, creates the socket, returns to its own namespace and passes the socket
back over a unix socket (SCM_RIGHTS), in ~0.2 ms. No thread of the agent ever changes
namespace, and the helper does nothing else.

The same way it opens a file under ``/proc/sys/net`` inside a namespace (those files belong
to the namespace of whoever opens them), for per-interface sysctls netlink cannot set, when
the agent drives a host namespace other than its own (tests, tools).

This module imports only the standard library because the helper runs it as a script
(``python -I -S netns_sockets.py <fd>``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import threading

_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_REPLY_SIZE = 512


class NetnsSocketError(OSError):
    """A socket could not be created in the requested namespace."""


class NetnsSocketFactory:
    """Hands out NETLINK_ROUTE sockets living in a given network namespace."""

    def __init__(self, timeout: float = 5.0) -> None:
        self._timeout = timeout
        self._lock = threading.Lock()
        self._channel: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the helper process (done lazily by the first request otherwise)."""
        with self._lock:
            self._ensure_helper()

    def _ensure_helper(self) -> socket.socket:
        if self._proc is not None and self._proc.poll() is None and self._channel is not None:
            return self._channel
        self._stop_helper()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__), str(theirs.fileno()),
                 str(os.getpid())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        ours.settimeout(self._timeout)
        self._channel = ours
        return ours

    def netlink_socket(self, netns_path: str) -> socket.socket:
        """A new NETLINK_ROUTE socket inside the namespace mounted at ``netns_path``.

        Raises FileNotFoundError if the path does not exist and NetnsSocketError if it is not
        a network namespace or the helper fails.
        """
        fd = self._ask(netns_path, b"route", "a netlink socket")
        return socket.socket(fileno=fd)

    def sysctl_file(self, netns_path: str, relative: str) -> int:
        """A read-write descriptor of ``/proc/sys/net/<relative>`` of that namespace.

        Raises FileNotFoundError when the namespace or the entry does not exist.
        """
        if relative.startswith("/") or ".." in relative.split("/"):
            raise ValueError(f"not a path below /proc/sys/net: {relative!r}")
        return self._ask(netns_path, b"sysctl " + relative.encode(), f"net/{relative}")

    def _ask(self, netns_path: str, request: bytes, what: str) -> int:
        target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with self._lock:
                channel = self._ensure_helper()
                try:
                    socket.send_fds(channel, [request], [target])
                    reply, fds, _, _ = socket.recv_fds(channel, _REPLY_SIZE, 1)
                except OSError as e:
                    self._stop_helper()
                    raise NetnsSocketError(e.errno or errno.EIO,
                                           f"the netns socket helper failed: {e}") from e
        finally:
            os.close(target)
        if reply != b"ok" or not fds:
            for fd in fds:
                os.close(fd)
            code, _, text = reply.decode(errors="replace").partition(" ")
            number = int(code) if code.isdigit() else errno.EIO
            if number == errno.ENOENT:
                raise FileNotFoundError(number, f"{what} does not exist in {netns_path}")
            raise NetnsSocketError(number, f"cannot open {what} in {netns_path}: "
                                           f"{text or 'nothing returned'}")
        return fds[0]

    def _stop_helper(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            self._stop_helper()


def _serve(channel: socket.socket, parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the agent died before prctl took effect
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when the helper stops
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    while True:
        try:
            request, fds, _, _ = socket.recv_fds(channel, _REPLY_SIZE, 1)
        except OSError:
            return
        if not request:
            return  # the agent closed its end
        if not fds:
            channel.send(f"{errno.EINVAL} no namespace descriptor".encode())
            continue
        try:
            if libc.setns(fds[0], _CLONE_NEWNET) != 0:
                number = ctypes.get_errno()
                raise OSError(number, f"setns: {os.strerror(number)} (not a network namespace?)")
            try:
                if request.startswith(b"sysctl "):
                    # a /proc/sys/net entry resolves to the namespace of the opener
                    path = "/proc/sys/net/" + request[7:].decode()
                    made = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                else:
                    made = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM,
                                         socket.NETLINK_ROUTE).detach()
            finally:
                if libc.setns(home, _CLONE_NEWNET) != 0:
                    os._exit(3)  # never keep serving from the wrong namespace
            try:
                socket.send_fds(channel, [b"ok"], [made])
            finally:
                os.close(made)
        except OSError as e:
            channel.send(f"{e.errno or errno.EIO} {e.strerror or e}".encode()[:_REPLY_SIZE])
        finally:
            os.close(fds[0])


if __name__ == "__main__":
    _serve(socket.socket(fileno=int(sys.argv[1])), int(sys.argv[2]))
