"""An earlier build of an image, found by the name its OCI archive records."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from azure_cni_sim.images import (
    ImageBuildFailed,
    archived_image,
    image_config,
    layer_tar,
    write_oci_archive,
)


def _layer() -> bytes:
    return layer_tar({"hello": (b"hi\n", 0o644)})


def test_an_archive_written_for_containerd_is_named_by_its_full_name(tmp_path: Path) -> None:
    layer = _layer()
    archive = write_oci_archive(tmp_path / "a.tar", "localhost/azure-cni:dev-0123",
                                layer, image_config(layer, ["/hello"]))
    image = archived_image("azure-cni", archive)
    assert (image.image, image.repository, image.tag) == (
        "localhost/azure-cni:dev-0123", "localhost/azure-cni", "dev-0123")
    assert image.archive == archive


def _index_only(path: Path, annotations: dict[str, str]) -> Path:
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json",
         "digest": "sha256:" + "0" * 64, "size": 1, "annotations": annotations}]}).encode()
    with tarfile.open(path, "w") as tar:
        entry = tarfile.TarInfo("index.json")
        entry.size = len(index)
        tar.addfile(entry, io.BytesIO(index))
    return path


def test_an_archive_buildah_wrote_is_named_by_its_ref_name(tmp_path: Path) -> None:
    archive = _index_only(tmp_path / "b.tar", {
        "org.opencontainers.image.ref.name": "localhost/azure-cni:dev-4567"})
    assert archived_image("azure-cni", archive).image == "localhost/azure-cni:dev-4567"


def test_an_archive_without_a_tag_or_an_index_is_refused(tmp_path: Path) -> None:
    untagged = _index_only(tmp_path / "c.tar", {
        "org.opencontainers.image.ref.name": "localhost/azure-cni"})
    with pytest.raises(ImageBuildFailed, match="has no tag"):
        archived_image("azure-cni", untagged)
    not_oci = tmp_path / "d.tar"
    with tarfile.open(not_oci, "w"):
        pass
    with pytest.raises(ImageBuildFailed, match="not an OCI archive"):
        archived_image("azure-cni", not_oci)
