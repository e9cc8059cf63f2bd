"""Processes the simulation starts, and the guarantee that none of them outlives it.

Every process started here carries an owner marker in its environment. Children inherit
the environment, so a scan of ``/proc`` finds every descendant (containerd shims included)
even after its parent died or re-parented it. ``stop_owned`` uses that scan, not a pid list.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

OWNER_ENV = "AZURE_CNI_SIM_OWNER"


class ProcessFailed(RuntimeError):
    """A managed process exited while it was expected to run."""


@dataclass
class ManagedProcess:
    """One long-running child with its log file, started in its own session."""

    name: str
    argv: Sequence[str]
    log_path: Path
    owner: str
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    #: False: ``env`` is the whole environment (plus the owner marker), not an overlay
    inherit_env: bool = True
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        base = os.environ if self.inherit_env else {}
        env = {**base, **self.env, OWNER_ENV: self.owner}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as logf:
            self.popen = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        log.info("event=process_started name=%s pid=%d", self.name, self.popen.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_running(self) -> None:
        """Raise ProcessFailed with the tail of the log if the process has exited."""
        if self.popen is None:
            raise ProcessFailed(f"{self.name} was never started")
        rc = self.popen.poll()
        if rc is not None:
            raise ProcessFailed(
                f"{self.name} exited with code {rc}; last log lines:\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` seconds."""
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def owned_pids(owner: str, variable: str = OWNER_ENV) -> list[int]:
    """Pids of every live process whose environment has ``variable=owner``."""
    needle = f"{variable}={owner}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read()
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if state == b"Z":  # a zombie holds no resources; its parent will reap it
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def stop_owned(owner: str, timeout: float = 10.0, variable: str = OWNER_ENV) -> list[int]:
    """Terminate every process carrying the owner marker (``variable=owner``), SIGKILL what
    is left after ``timeout`` seconds (0: at once); return those that needed SIGKILL."""
    pids = owned_pids(owner, variable)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and owned_pids(owner, variable):
        time.sleep(0.1)
    stubborn = owned_pids(owner, variable)
    for pid in stubborn:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and owned_pids(owner, variable):
        time.sleep(0.05)
    return stubborn


def wait_for(
    what: str,
    condition: Callable[[], bool],
    timeout: float,
    interval: float = 0.1,
    alive: Callable[[], None] | None = None,
) -> None:
    """Poll ``condition`` until true; on timeout raise TimeoutError naming ``what``.

    ``alive`` is called on every round so that a crashed dependency fails fast with its
    own message instead of a bare timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        if condition():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
