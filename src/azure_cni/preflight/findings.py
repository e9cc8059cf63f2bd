"""What a preflight check found, and how it is shown."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


class Check(enum.StrEnum):
    """What is checked; each name is stable (scripts may select on it)."""

    PROVIDER_ID = "ProviderID"
    NIC = "NIC"
    PERMISSIONS = "Permissions"
    MAX_PODS = "MaxPods"
    HOST_PYTHON = "HostPython"
    PORTMAP = "Portmap"
    CHAINED_PLUGINS = "ChainedPlugins"
    CNI_CONFIG_ORDER = "CNIConfigOrder"


class Result(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - a result, not a password
    FAIL = "fail"
    #: could not be checked from here (the message says where it can be)
    SKIP = "skip"


@dataclass(frozen=True)
class Finding:
    check: Check
    #: what was checked: a node, a scope
    subject: str
    result: Result
    message: str
    #: what to do about a failure
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {key: str(value) for key, value in asdict(self).items() if value != ""}


def failed(findings: Sequence[Finding]) -> list[Finding]:
    return [f for f in findings if f.result is Result.FAIL]


def render_text(findings: Sequence[Finding]) -> str:
    """One line per finding, failures first with what to do, then a count."""
    order = {Result.FAIL: 0, Result.SKIP: 1, Result.PASS: 2}
    lines = []
    for f in sorted(findings, key=lambda f: (order[f.result], f.check, f.subject)):
        lines.append(f"{f.result.upper():<4}  {f.check:<15} {f.subject}: {f.message}")
        if f.fix:
            lines.append(f"      fix: {f.fix}")
    failures = len(failed(findings))
    skipped = sum(1 for f in findings if f.result is Result.SKIP)
    lines.append(f"{len(findings)} checks: {failures} failed, {skipped} skipped")
    return "\n".join(lines) + "\n"


def render_json(findings: Sequence[Finding]) -> str:
    return json.dumps({"findings": [f.to_dict() for f in findings],
                       "failed": len(failed(findings))}, indent=2) + "\n"
