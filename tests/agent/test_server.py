"""The agent's socket is root-only, and a second agent cannot steal it."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from azure_cni.agent.server import InsecureSocketDirectory, SocketInUse, bind_socket


def test_socket_is_0600_in_a_0750_directory(tmp_path: Path) -> None:
    path = tmp_path / "run" / "azure-cni" / "agent.sock"
    sock = bind_socket(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    finally:
        sock.close()


def test_our_own_world_readable_directory_is_tightened(tmp_path: Path) -> None:
    """The kubelet creates a missing hostPath directory 0755: the agent narrows it."""
    directory = tmp_path / "open"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    sock = bind_socket(directory / "agent.sock")
    sock.close()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a directory to another user needs root")
def test_somebody_elses_open_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "open"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    os.chown(directory, 65534, 65534)
    with pytest.raises(InsecureSocketDirectory, match="0700 or 0750"):
        bind_socket(directory / "agent.sock")


def test_stale_socket_is_replaced_but_a_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "run" / "agent.sock"
    first = bind_socket(path)
    with pytest.raises(SocketInUse, match="already serving"):
        bind_socket(path)
    first.close()  # the agent died; its socket file stays
    assert path.exists()
    second = bind_socket(path)
    probe = socket.socket(socket.AF_UNIX)
    probe.connect(str(path))
    probe.close()
    second.close()


def test_something_else_at_the_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run" / "agent.sock"
    path.parent.mkdir(mode=0o700)
    path.write_text("not a socket")
    with pytest.raises(SocketInUse, match="not a socket"):
        bind_socket(path)
