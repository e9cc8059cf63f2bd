"""The container images of the simulated cluster, built locally (no registry is reachable).

``hack/build-images.sh`` builds them with mmdebstrap and buildah, caches them by a hash of
their inputs and writes one ``<name>.json`` per image; this module runs it and reads those.
Nodes import the OCI archives into their containerd.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from azure_cni_sim.tools import source_root

IMAGES_CACHE_ENV = "AZURE_CNI_IMAGES_CACHE"
#: the images the simulated cluster runs: the product, its DNS, the test workload, the sandbox
ALL_IMAGES = ("pause", "sim-app", "coredns", "azure-cni")


class ImageBuildFailed(RuntimeError):
    """hack/build-images.sh failed; the message carries the end of its output."""


@dataclass(frozen=True)
class BuiltImage:
    name: str
    #: the reference pods use (``localhost/<repository>:<tag>``)
    image: str
    archive: Path

    @property
    def repository(self) -> str:
        return self.image.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.image.rsplit(":", 1)[1]


def _root() -> Path:
    root = source_root()
    if root is None:
        raise ImageBuildFailed("the images are built from a source checkout "
                               "(hack/build-images.sh); this installation has none")
    return root


def images_cache() -> Path:
    env = os.environ.get(IMAGES_CACHE_ENV)
    return Path(env) if env else _root() / ".cache" / "images"


def ensure_images(*names: str, timeout: float = 1200) -> dict[str, BuiltImage]:
    """Build (or find cached) the named images; return them by name."""
    wanted = names or ALL_IMAGES
    script = _root() / "hack" / "build-images.sh"
    result = subprocess.run([str(script), *wanted], capture_output=True, text=True,
                            timeout=timeout, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise ImageBuildFailed(f"{script} {' '.join(wanted)} failed:\n{tail}")
    built = {}
    for name in wanted:
        record = json.loads((images_cache() / f"{name}.json").read_text())
        built[name] = BuiltImage(name, str(record["image"]), Path(record["archive"]))
    return built
