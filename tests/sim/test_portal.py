"""A portal makes a host loopback service reachable inside a namespace, and nothing else."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import uuid

import pytest

from azure_cni_sim.cluster import free_port
from azure_cni_sim.procs import ManagedProcess, wait_for

pytestmark = pytest.mark.netns


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"echo:" + conn.recv(100))

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def _connect_from(netns: str, port: int) -> subprocess.CompletedProcess[str]:
    code = (f"import socket,sys; s=socket.create_connection(('127.0.0.1',{port}),timeout=3);"
            "s.sendall(b'hi'); sys.stdout.write(s.recv(100).decode())")
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=20, check=False)


def test_portal_relays_into_the_namespace_without_routes(netns_factory, tmp_path) -> None:
    vm = netns_factory.create("vm")
    srv, port = _echo_server()
    inner = free_port()
    before = _connect_from(vm, inner)
    assert before.returncode != 0, "nothing should listen in a fresh namespace"
    portal = ManagedProcess(
        "portal", [sys.executable, "-m", "azure_cni_sim.portal", "--target", f"127.0.0.1:{port}",
                   f"{vm}:{inner}"], tmp_path / "portal.log", owner=uuid.uuid4().hex).start()
    try:
        wait_for("the portal to listen", lambda: "portal_listening" in
                 portal.log_path.read_text(), timeout=10, alive=portal.check_running)
        result = _connect_from(vm, inner)
        assert result.stdout == "echo:hi", result.stderr
        routes = subprocess.run(["ip", "-n", vm, "route", "show"], capture_output=True,
                                text=True, check=True).stdout
        assert routes.strip() == "", "the portal must not add routes"
    finally:
        portal.stop()
        srv.close()
