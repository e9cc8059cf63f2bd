"""Finding the Go-built tools (kube-apiserver, etcd, kubectl, helm, crictl, ...) before use.

``hack/build-tools.sh`` puts them in ``.cache/tools/bin`` of the source tree together with a
``versions.json``. ``AZURE_CNI_TOOLS_DIR`` points elsewhere. A missing or wrong binary is
reported before anything is started, so a bad tool never leaves a half-started cluster.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

TOOLS_DIR_ENV = "AZURE_CNI_TOOLS_DIR"


class ToolMissing(RuntimeError):
    """A required tool is absent or unusable; the message says how to get it."""


def source_root() -> Path | None:
    """The checkout this package runs from (editable install), or None when installed."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "hack" / "build-tools.sh").is_file():
            return parent
    return None


def tools_dir() -> Path | None:
    env = os.environ.get(TOOLS_DIR_ENV)
    if env:
        return Path(env)
    root = source_root()
    return root / ".cache" / "tools" / "bin" if root else None


def find_tool(name: str) -> Path:
    """Path of an executable tool: the project's tool cache first, then PATH."""
    directory = tools_dir()
    if directory is not None:
        candidate = directory / name
        if candidate.exists():
            if not os.access(candidate, os.X_OK):
                raise ToolMissing(f"{candidate} is not executable; rebuild it with 'make tools'")
            return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    where = f" (looked in {directory} and PATH)" if directory else " (looked in PATH)"
    raise ToolMissing(f"{name} not found{where}; build the pinned tools with 'make tools'")


def pinned_versions() -> dict[str, str]:
    """The versions hack/build-tools.sh recorded, or an empty dict if unknown."""
    directory = tools_dir()
    if directory is None:
        return {}
    try:
        data = json.loads((directory / "versions.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {str(k): str(v) for k, v in data.items()}
