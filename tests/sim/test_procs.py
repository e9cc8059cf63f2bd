"""Process management: failures say what they waited for, and nothing outlives stop_owned."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from azure_cni_sim.procs import (
    OWNER_ENV,
    ManagedProcess,
    ProcessFailed,
    owned_pids,
    stop_owned,
    wait_for,
)


def test_wait_for_names_what_it_waited_for() -> None:
    with pytest.raises(TimeoutError, match="the moon to turn blue"):
        wait_for("the moon to turn blue", lambda: False, timeout=0.2, interval=0.05)


def test_wait_for_fails_fast_when_a_dependency_died(tmp_path) -> None:
    proc = ManagedProcess("dies", ["sh", "-c", "echo boom; exit 3"], tmp_path / "dies.log",
                          owner=uuid.uuid4().hex).start()
    proc.popen.wait(5)  # type: ignore[union-attr]
    started = time.monotonic()
    with pytest.raises(ProcessFailed, match=r"dies exited with code 3[\s\S]*boom"):
        wait_for("never", lambda: False, timeout=30, alive=proc.check_running)
    assert time.monotonic() - started < 5


def test_stop_owned_reaches_grandchildren_that_left_the_process_group(tmp_path) -> None:
    owner = uuid.uuid4().hex
    # The grandchild starts its own session, as containerd shims do, so killpg cannot see it.
    script = "setsid sleep 300 & sleep 300"
    proc = ManagedProcess("parent", ["sh", "-c", script], tmp_path / "p.log", owner).start()

    def left_the_session() -> bool:
        return any(_session_of(pid) not in (None, proc.pid) for pid in owned_pids(owner))

    # setsid forks before it calls setsid(): wait for the sleep that really has left
    wait_for("a grandchild in a session of its own", left_the_session, timeout=10)
    proc.stop(timeout=2)
    assert owned_pids(owner), "the setsid grandchild should survive a process-group kill"
    stop_owned(owner, timeout=5)
    assert owned_pids(owner) == []


def _session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the fields after the command name, which is in parentheses and may hold spaces
            return int(f.read().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def test_owner_marker_is_in_the_child_environment(tmp_path) -> None:
    owner = uuid.uuid4().hex
    proc = ManagedProcess("env", ["sh", "-c", f'echo "${OWNER_ENV}"'], tmp_path / "env.log",
                          owner).start()
    proc.popen.wait(5)  # type: ignore[union-attr]
    assert proc.log_path.read_text().strip() == owner
    assert os.environ.get(OWNER_ENV) != owner


def test_stop_escalates_to_sigkill(tmp_path) -> None:
    owner = uuid.uuid4().hex
    proc = ManagedProcess("stubborn", ["sh", "-c", "trap '' TERM; sleep 300"],
                          tmp_path / "s.log", owner).start()
    time.sleep(0.2)
    started = time.monotonic()
    proc.stop(timeout=0.5)
    assert not proc.running()
    assert time.monotonic() - started < 5
    gone = subprocess.run(["kill", "-0", str(proc.pid)], capture_output=True, check=False)
    assert gone.returncode != 0
