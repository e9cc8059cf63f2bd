"""The pinned helm, run the way an admin would, with its own throwaway home and no network.

``Helm(tmp_dir)`` points HELM_CACHE_HOME / HELM_CONFIG_HOME / HELM_DATA_HOME into ``tmp_dir``
so nothing is read from or written to the user's helm set-up, and no repository is ever used.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from azure_cni_sim.tools import find_tool

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "azure-cni"


def pinned_kubernetes_version() -> str:
    """The Kubernetes version the tools are built at (hack/tools/versions.env)."""
    for line in (ROOT / "hack" / "tools" / "versions.env").read_text().splitlines():
        if line.startswith("KUBERNETES_VERSION="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("KUBERNETES_VERSION missing from hack/tools/versions.env")


class HelmFailed(subprocess.CalledProcessError):
    """helm exited non-zero; ``str()`` carries its stderr so a failing test says why."""

    def __str__(self) -> str:
        return f"{' '.join(str(a) for a in self.cmd)} exited {self.returncode}: " \
               f"{str(self.stderr).strip()}"


class Helm:
    """The pinned helm binary with a private home under ``home``."""

    def __init__(self, home: Path, kubeconfig: Path | None = None) -> None:
        self.binary = find_tool("helm")
        self.kubeconfig = kubeconfig
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
        for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"),
                         ("HELM_DATA_HOME", "data")):
            path = home / sub
            path.mkdir(parents=True, exist_ok=True)
            self.env[var] = str(path)
        if kubeconfig is not None:
            self.env["KUBECONFIG"] = str(kubeconfig)
        self._values_dir = home / "values"
        self._values_dir.mkdir(exist_ok=True)
        self._counter = itertools.count()

    def run(self, *args: str, check: bool = True, timeout: float = 180
            ) -> subprocess.CompletedProcess[str]:
        """Run helm; raise HelmFailed (with stderr) when ``check`` and it fails."""
        cmd = [str(self.binary), *args]
        result = subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                                check=False, timeout=timeout)
        if check and result.returncode != 0:
            raise HelmFailed(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def template(self, values: Mapping[str, Any] | None = None, *, release: str = "azure-cni",
                 namespace: str = "kube-system", extra: Sequence[str] = (),
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        """``helm template`` of the chart with ``values`` (a values file), at the pinned version."""
        return self.run("template", release, str(CHART), "--namespace", namespace,
                        f"--kube-version={pinned_kubernetes_version()}",
                        *self._values_args(values), *extra, check=check)

    def render(self, values: Mapping[str, Any] | None = None, **kwargs: Any
               ) -> list[dict[str, Any]]:
        """The objects ``helm template`` produces (CRDs not included, as in helm template)."""
        return list(parse_manifests(self.template(values, **kwargs).stdout))

    def _values_args(self, values: Mapping[str, Any] | None) -> list[str]:
        if not values:
            return []
        # a JSON document is a YAML values file; --values keeps types exactly (no --set parsing)
        path = self._values_dir / f"values-{next(self._counter)}.json"
        path.write_text(json.dumps(values))
        return ["--values", str(path)]

    def install(self, release: str, namespace: str, values: Mapping[str, Any] | None = None,
                *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run("install", release, str(CHART), "--namespace", namespace,
                        "--create-namespace", *self._values_args(values), *extra)

    def upgrade(self, release: str, namespace: str, values: Mapping[str, Any] | None = None,
                *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run("upgrade", release, str(CHART), "--namespace", namespace,
                        *self._values_args(values), *extra)

    def uninstall(self, release: str, namespace: str) -> None:
        """Uninstall if installed; a missing release is not an error (cleanup path)."""
        result = self.run("uninstall", release, "--namespace", namespace, "--timeout=60s",
                          check=False)
        if result.returncode != 0 and "not found" not in result.stderr:
            raise HelmFailed(result.returncode, ["helm", "uninstall", release], result.stdout,
                             result.stderr)


def parse_manifests(text: str) -> Iterator[dict[str, Any]]:
    """The non-empty YAML documents of a multi-document manifest."""
    for doc in yaml.safe_load_all(text):
        if doc:
            yield doc


def find(objects: Sequence[Mapping[str, Any]], kind: str, name_suffix: str = ""
         ) -> dict[str, Any]:
    """The one object of ``kind`` whose name ends with ``name_suffix``."""
    found = [o for o in objects if o["kind"] == kind
             and o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, found " \
                            f"{[o['metadata']['name'] for o in found]}"
    return dict(found[0])
