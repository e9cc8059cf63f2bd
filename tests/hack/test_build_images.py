"""The images build without a registry, once: a second run of hack/build-images.sh reuses
every archive, and each archive is an OCI image named as the simulation's pods use it."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from azure_cni_sim.images import ALL_IMAGES, ensure_images

pytestmark = pytest.mark.e2e  # needs root (buildah); make builds the images before this tier

ROOT = Path(__file__).resolve().parents[2]


def test_second_build_reuses_every_image() -> None:
    built = ensure_images()
    out = subprocess.run([str(ROOT / "hack" / "build-images.sh")], capture_output=True,
                         text=True, timeout=600, check=True).stdout
    assert "building" not in out, out
    assert out.count(" cached (") == len(ALL_IMAGES), out
    for name, image in built.items():
        assert f"build-images: {name} cached ({image.image})" in out
        with tarfile.open(image.archive) as archive:
            index = json.loads(archive.extractfile("index.json").read())  # type: ignore[union-attr]
        refs = [m["annotations"]["org.opencontainers.image.ref.name"]
                for m in index["manifests"]]
        assert refs == [image.image], refs
    assert built["azure-cni"].repository == "localhost/azure-cni"
    assert built["azure-cni"].tag.startswith("dev-")
