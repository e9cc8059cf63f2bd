"""Where a running process spends its CPU, by parts: its Python stacks sampled from outside.

``py-spy record --nonblocking`` reads the stacks of a process (the operator in its container,
by its host PID) without stopping it; each sample is one stack. Samples whose innermost frame
waits (the event loop's ``select``, an idle pool thread) are idle, the rest are CPU, and each
CPU sample goes to the first part, in the order given, that one of its frames names. A
benchmark says what its CPU seconds were spent on, not only how many there were.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

#: innermost frames (function name, file) of a thread that waits rather than runs
_WAITING = (("select", "selectors.py"), ("_worker", "thread.py"), ("wait", "threading.py"),
            ("poll", "selectors.py"))


def py_spy() -> str | None:
    """The py-spy beside this interpreter (the dev extras install it), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _frame(frame: str) -> tuple[str, str]:
    """``Class.method (path/file.py:12)`` -> (``Class.method``, ``file.py``)."""
    name, _, where = frame.partition(" (")
    return name, where.rsplit("/", 1)[-1].split(":", 1)[0]


def _waiting(frame: str) -> bool:
    name, file = _frame(frame)
    function = name.rsplit(".", 1)[-1]
    return any(function == w and file == f for w, f in _WAITING)


def by_part(raw: str, parts: Sequence[tuple[str, Sequence[str]]], rate: float
            ) -> dict[str, object]:
    """CPU seconds sampled, and each part's share of them, from py-spy's ``--format raw``
    output (one ``frame;frame;... count`` line per distinct stack, outermost first).

    ``parts``: (part, names) in order; a sample belongs to the first part one of whose names
    starts a frame's function name (``PoolController.sweep``, ``process_resource_event``).
    """
    shares: Counter[str] = Counter()
    busy = 0
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if _waiting(frames[-1]):
            continue
        n = int(count)
        busy += n
        names = [_frame(f)[0] for f in frames]
        part = next((p for p, prefixes in parts
                     if any(name.startswith(tuple(prefixes)) for name in names)), "other")
        shares[part] += n
    return {"cpu_seconds_sampled": round(busy / rate, 2),
            "share": {p: round(shares[p] / busy, 3) if busy else 0.0
                      for p in [p for p, _ in parts] + ["other"]}}


class StackSampler:
    """py-spy sampling ``pid`` for ``seconds`` at ``rate`` a second, in the background."""

    def __init__(self, pid: int, seconds: float, out: Path, rate: int = 100) -> None:
        self.out, self.rate = out, rate
        binary = py_spy()
        self._proc = None if binary is None else subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)),
             "--rate", str(rate), "--nonblocking", "--format", "raw", "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def result(self, parts: Sequence[tuple[str, Sequence[str]]]) -> Mapping[str, object]:
        """The parts' shares once sampling ended; why not, when py-spy is missing or failed."""
        if self._proc is None:
            return {"skipped": "py-spy is not installed (make venv installs it)"}
        _, err = self._proc.communicate(timeout=120)
        if self._proc.returncode != 0 or not self.out.exists():
            return {"skipped": f"py-spy failed ({self._proc.returncode}): {err[-300:]}"}
        return {"how": f"py-spy record --nonblocking at {self.rate}/s, idle stacks left out",
                **by_part(self.out.read_text(), parts, self.rate)}
