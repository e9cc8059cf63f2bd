"""Injected faults: one-shot error answers, operations that end Failed, added latency."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass
class Fault:
    """Answer the next ``remaining`` matching requests with this error instead of serving them."""

    method: str
    pattern: str
    status: int
    code: str
    message: str
    headers: dict[str, str]
    remaining: int


@dataclass
class OperationFailure:
    """The next NIC write matching ``pattern`` is accepted, then its operation ends badly."""

    pattern: str
    outcome: str
    code: str
    message: str


class FaultBook:
    """Every fault queued for the emulator; the caller holds the emulator's lock."""

    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self.operation_failures: list[OperationFailure] = []
        self.latency: dict[str, float] = {}

    def add(self, method: str, path: str, status: int, code: str, *, message: str,
            headers: Mapping[str, str] | None, count: int) -> None:
        self.faults.append(Fault(method.upper(), path.lower(), status, code, message or code,
                                 dict(headers or {}), count))

    def fail_operation(self, path: str, code: str, message: str, outcome: str) -> None:
        if outcome not in ("Failed", "Canceled"):
            raise ValueError("outcome must be Failed or Canceled")
        self.operation_failures.append(
            OperationFailure(path.lower(), outcome, code, message or code))

    def clear(self) -> None:
        self.faults.clear()
        self.operation_failures.clear()

    def take(self, method: str, path: str) -> Fault | None:
        """The fault answering this request, if one matches (it is used up once)."""
        for fault in self.faults:
            if fault.method in (method, "*") and fnmatch.fnmatchcase(path.lower(), fault.pattern):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def take_operation_failure(self, path: str) -> tuple[str, str, str] | None:
        """(outcome, code, message) for the operation a write to ``path`` starts, if planned."""
        for planned in self.operation_failures:
            if fnmatch.fnmatchcase(path.lower(), planned.pattern):
                self.operation_failures.remove(planned)
                return planned.outcome, planned.code, planned.message
        return None

    def delay(self, method: str) -> float:
        return self.latency.get(method, self.latency.get("*", 0.0))
