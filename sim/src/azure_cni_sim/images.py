"""Container images of the simulation, built here: no registry is reachable.

Two kinds:

- the images of the simulated cluster (``ensure_images``): ``hack/build-images.sh`` builds
  them with mmdebstrap and buildah (azure-cni from the Containerfile, CoreDNS, Prometheus, the
  ``sim-app`` test workload, the pause sandbox), caches them by a hash of their inputs and
  writes one ``<name>.json`` per image; nodes import the OCI archives into their containerd;
- one-layer images written here in Python for runtimes outside Kubernetes (``busybox_image``):
  containerd imports an OCI image archive (``ctr images import``); Docker Engine 20.10 loads
  only its own format (``docker load`` of a docker-archive: ``manifest.json``, the config and
  the layer). Both are written from the same layer and config. Debian's statically linked
  busybox (package ``busybox-static``) gives a shell, ``httpd``, ``wget``, ``nc``, ``ip`` and
  ``ping``: enough to show a container's network from the inside.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from azure_cni_sim.tools import source_root

BUSYBOX = Path("/bin/busybox")
BUSYBOX_IMAGE = "localhost/azure-cni-busybox:sim"
BUSYBOX_APPLETS = ("sh", "sleep", "httpd", "wget", "nc", "ip", "ping", "cat", "echo", "ls",
                   "hostname", "ifconfig", "route")


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: Mapping[str, tuple[bytes, int]],
              symlinks: Mapping[str, str] | None = None) -> bytes:
    """A layer with ``files`` (path -> (content, mode)) and ``symlinks`` (path -> target)."""
    symlinks = symlinks or {}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories = sorted({str(Path(p).parent) for p in [*files, *symlinks]} - {"."})
        for directory in directories:
            entry = tarfile.TarInfo(directory)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(entry)
        for path, (data, mode) in sorted(files.items()):
            entry = tarfile.TarInfo(path)
            entry.size, entry.mode = len(data), mode
            tar.addfile(entry, io.BytesIO(data))
        for path, target in sorted(symlinks.items()):
            entry = tarfile.TarInfo(path)
            entry.type, entry.linkname = tarfile.SYMTYPE, target
            tar.addfile(entry)
    return buffer.getvalue()


def image_config(layer: bytes, entrypoint: Sequence[str], env: Sequence[str] = ()) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux",
                       "config": {"Entrypoint": list(entrypoint), "Env": list(env)},
                       "rootfs": {"type": "layers", "diff_ids": [digest(layer)]}}).encode()


def _write_tar(path: Path, members: Sequence[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as out:
        for name, data in members:
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            out.addfile(entry, io.BytesIO(data))
    return path


def write_oci_archive(path: Path, name: str, layer: bytes, config: bytes) -> Path:
    """An OCI image layout in a tar, named ``name`` for ``ctr images import``."""
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest(layer), "size": len(layer)}]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest(manifest), "size": len(manifest),
        "annotations": {"io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rpartition(":")[2]}}]}
                       ).encode()
    return _write_tar(path, [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                             ("index.json", index),
                             *((f"blobs/sha256/{digest(d)[7:]}", d)
                               for d in (layer, config, manifest))])


def write_docker_archive(path: Path, name: str, layer: bytes, config: bytes) -> Path:
    """Docker's own image tar (``docker save`` format), tagged ``name``, for ``docker load``."""
    layer_path = f"{digest(layer)[7:]}/layer.tar"
    config_path = f"{digest(config)[7:]}.json"
    manifest = json.dumps([{"Config": config_path, "RepoTags": [name],
                            "Layers": [layer_path]}]).encode()
    return _write_tar(path, [(layer_path, layer), (config_path, config),
                             ("manifest.json", manifest)])


@dataclass(frozen=True)
class Image:
    name: str
    oci_archive: Path
    docker_archive: Path


def busybox_image(workdir: Path, busybox: Path = BUSYBOX) -> Image:
    """Debian's static busybox as an image (``/bin/sh`` is its entry point)."""
    if not busybox.is_file():
        raise FileNotFoundError(f"{busybox} is missing: install Debian's busybox-static "
                                "(hack/install-deps.sh does)")
    layer = layer_tar({"bin/busybox": (busybox.read_bytes(), 0o755)},
                      {f"bin/{applet}": "busybox" for applet in BUSYBOX_APPLETS})
    config = image_config(layer, ["/bin/sh"], ["PATH=/bin"])
    return Image(BUSYBOX_IMAGE,
                 write_oci_archive(workdir / "busybox-oci.tar", BUSYBOX_IMAGE, layer, config),
                 write_docker_archive(workdir / "busybox-docker.tar", BUSYBOX_IMAGE, layer,
                                      config))


# -- the simulated cluster's images, from hack/build-images.sh --------------------

IMAGES_CACHE_ENV = "AZURE_CNI_IMAGES_CACHE"
#: the images the simulated cluster runs: the product, its DNS and Prometheus, the test
#: workload, the sandbox
ALL_IMAGES = ("pause", "sim-app", "coredns", "prometheus", "azure-cni")


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


def archived_image(name: str, archive: Path) -> BuiltImage:
    """The image ``name`` in an OCI archive (e.g. an earlier build of it), named as it was
    built: containerd's annotation of the full name, else the OCI one (buildah writes the
    full name there; the OCI spec has only the tag there)."""
    with tarfile.open(archive) as tar:
        try:
            member = tar.extractfile("index.json")
        except KeyError:
            member = None
        if member is None:
            raise ImageBuildFailed(f"{archive} is not an OCI archive (no index.json)")
        index = json.load(member)
    annotations = index["manifests"][0].get("annotations") or {}
    ref = str(annotations.get("io.containerd.image.name")
              or annotations.get("org.opencontainers.image.ref.name") or "")
    if ":" not in ref.rpartition("/")[2]:
        raise ImageBuildFailed(f"{archive}: its name {ref!r} has no tag")
    return BuiltImage(name, ref, archive)
