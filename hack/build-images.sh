#!/usr/bin/env bash
# Build the container images of the simulated cluster without any registry, into .cache/images:
#
#   azure-cni  the product, from the Containerfile at the root, exactly as a user builds it; its
#              PYTHON_IMAGE is a Debian bookworm + python3 base made here with mmdebstrap
#   coredns    the cluster DNS: the pinned CoreDNS of hack/build-tools.sh, FROM scratch
#   prometheus the cluster's Prometheus: the pinned build of hack/build-tools.sh, FROM scratch
#   sim-app    the test workload: Debian's static busybox (httpd, wget, nslookup, ping)
#   pause      the pod sandbox: hack/images/pause/pause.c, compiled statically
#
# and, only when named (make conformance and the e2e tier ask for them):
#
#   e2e-agnhost, e2e-shell, e2e-nginx, e2e-boom-server
#              Kubernetes' e2e test images: the targets of hack/images/e2e/Containerfile, on
#              one Debian base made here with mmdebstrap, with the pinned agnhost and CoreDNS
#              of hack/build-tools.sh
#   traefik    the Ingress controller: the pinned Traefik of hack/build-tools.sh, FROM scratch
#
#   hack/build-images.sh [NAME...]     (default: the first five, prometheus once it is built;
#                                      `make images` runs it)
#
# Each image is tagged and exported as an OCI archive named after a hash of its inputs, so a
# run whose inputs did not change rebuilds nothing. For every image, .cache/images/NAME.json says
# {"image": "localhost/...:<tag>", "archive": ".../NAME-<hash>.tar"}; nodes import the archive
# with `ctr images import`. buildah keeps its storage under .cache/images too, never in
# /var/lib/containers.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${AZURE_CNI_IMAGES_CACHE:-$root/.cache/images}
tools=${AZURE_CNI_TOOLS_DIR:-$root/.cache/tools/bin}
# shellcheck source=tools/versions.env
. "$root/hack/tools/versions.env"

BASE_SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
# what upstream's agnhost image installs (test/images/agnhost/Dockerfile: bind-tools, curl,
# netcat-openbsd, iproute2, iperf, bash), plus wget and ping, nginx for the nginx image and
# passwd for the user the agnhost image defines
E2E_PACKAGES=bash,curl,wget,dnsutils,netcat-openbsd,iproute2,iputils-ping,iperf,nginx-light,passwd,ca-certificates

die() { echo "build-images: $*" >&2; exit 1; }
for tool in buildah mmdebstrap gcc; do
  command -v "$tool" >/dev/null || die "$tool is missing; run hack/install-deps.sh"
done
[ "$(id -u)" -eq 0 ] || die "needs root (buildah's chroot isolation and mmdebstrap's root mode)"

mkdir -p "$cache"
bah() { buildah --root "$cache/storage/root" --runroot "$cache/storage/run" "$@"; }

# hash FILE_OR_DIR...: 12 hex of the names and contents of every file (bytecode left out),
# plus whatever the caller pipes in (e.g. the base image's name)
hash_inputs() {
  local f
  {
    for f in "$@"; do
      if [ -d "$f" ]; then
        find "$f" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' ! -path '*.egg-info/*' \
          | LC_ALL=C sort
      else
        echo "$f"
      fi
    done | while read -r f; do
      printf '%s  %s\n' "$(sha256sum < "$f" | cut -c1-64)" "${f#"$root"/}"
    done
    [ -t 0 ] || cat
  } | sha256sum | cut -c1-12
}

# record NAME IMAGE ARCHIVE: what the simulation reads
record() {
  printf '{"image": "%s", "archive": "%s"}\n' "$2" "$3" > "$cache/$1.json.tmp"
  mv "$cache/$1.json.tmp" "$cache/$1.json"
}

# export NAME IMAGE ARCHIVE: the OCI archive every node imports
export_archive() {
  rm -f "$3.tmp"
  bah push -q "$2" "oci-archive:$3.tmp:$2" >/dev/null
  mv "$3.tmp" "$3"
  record "$1" "$2" "$3"
  # earlier builds of this image are of no further use
  local old
  for old in "$cache/$1"-*.tar; do [ "$old" = "$3" ] || rm -f "$old"; done
}

# cached NAME IMAGE ARCHIVE: true (and recorded) when the archive of these inputs exists
cached() {
  if [ -f "$3" ]; then
    record "$1" "$2" "$3"
    echo "build-images: $1 cached ($2)"
    return 0
  fi
  echo "build-images: building $1 ($2) ..."
  return 1
}

# debian_image PACKAGES: a Debian base with PACKAGES, from the Debian package registry (the
# PYTHON_IMAGE of the Containerfile, the e2e test images' base)
debian_image() {
  local packages=$1
  local tag; tag=$(echo "$BASE_SUITE $packages" | sha256sum | cut -c1-12)
  local image=localhost/azure-cni-base:$BASE_SUITE-$tag
  if ! bah inspect --type image "$image" >/dev/null 2>&1; then
    local start=$SECONDS work; work=$(mktemp -d "$cache/base.XXXXXX")
    mmdebstrap --quiet --variant=minbase --include="$packages" "$BASE_SUITE" \
      "$work/rootfs.tar" >&2 || die "mmdebstrap of $BASE_SUITE failed (see above)"
    local ctr; ctr=$(bah from scratch)
    bah add "$ctr" "$work/rootfs.tar" / >/dev/null
    bah config --cmd /bin/bash "$ctr"
    bah commit -q "$ctr" "$image" >/dev/null
    bah rm "$ctr" >/dev/null
    rm -rf "$work"
    echo "build-images: base image $image made in $((SECONDS - start))s" >&2
  fi
  echo "$image"
}

build_azure_cni() {
  # the inputs the Containerfile copies (.containerignore keeps the rest out of the context)
  local base; base=$(debian_image "$BASE_PACKAGES")
  local hash; hash=$(echo "$base" | hash_inputs "$root/Containerfile" \
    "$root/.containerignore" "$root/pyproject.toml" "$root/constraints.txt" "$root/README.md" \
    "$root/src")
  local image=localhost/azure-cni:dev-$hash archive=$cache/azure-cni-$hash.tar
  cached azure-cni "$image" "$archive" && return
  local start=$SECONDS
  # The machine's CA bundle: package registries may be reached through TLS interception that
  # only this bundle trusts (harmless elsewhere). --isolation chroot: no daemon, no user ns.
  bah bud --quiet --isolation chroot --layers=false \
    --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    --build-arg "PYTHON_IMAGE=$base" -t "$image" -f "$root/Containerfile" "$root" >/dev/null \
    || die "buildah bud of the Containerfile failed (see above)"
  export_archive azure-cni "$image" "$archive"
  echo "build-images: azure-cni built in $((SECONDS - start))s"
}

# build_small NAME REPO [FILE...]: the FROM-scratch image of hack/images/NAME/Containerfile;
# its build context is that directory plus FILEs (a C source there is compiled statically)
build_small() {
  local name=$1 repo=$2; shift 2
  local dir=$root/hack/images/$name
  local hash; hash=$(hash_inputs "$dir" "$@" </dev/null)
  local image=$repo:$hash archive=$cache/$name-$hash.tar
  cached "$name" "$image" "$archive" && return
  local start=$SECONDS context; context=$(mktemp -d "$cache/$name.XXXXXX")
  cp -a "$dir"/. "$context/"
  local f; for f in "$@"; do cp "$f" "$context/"; done
  for f in "$context"/*.c; do
    [ -e "$f" ] && gcc -static -O2 -o "${f%.c}" "$f"
  done
  bah bud --quiet --isolation chroot --layers=false -t "$image" -f "$context/Containerfile" \
    "$context" >/dev/null || die "buildah bud of $name failed (see above)"
  rm -rf "$context"
  export_archive "$name" "$image" "$archive"
  echo "build-images: $name built in $((SECONDS - start))s"
}

# kubernetes_module_dir: the pinned Kubernetes module's source (checked against go.sum)
kubernetes_module_dir() {
  (cd "$root/hack/tools/kubernetes-e2e" && go mod download -json k8s.io/kubernetes) \
    | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'
}

# e2e_inputs: the e2e images' base, the files of their context and the hash of both, in
# E2E_BASE, E2E_FILES and E2E_HASH (once per run: the four images share them)
e2e_inputs() {
  [ -z "${E2E_HASH:-}" ] || return 0
  local bin
  for bin in agnhost regression-issue-74839 coredns; do
    [ -x "$tools/$bin" ] || die "$tools/$bin is missing; build it with hack/build-tools.sh"
  done
  local module; module=$(kubernetes_module_dir) || true
  [ -f "$module/test/images/agnhost/porter/localhost.crt" ] \
    || die "no Kubernetes $KUBERNETES_VERSION module source (go mod download failed?)"
  E2E_FILES=("$(readlink -f "$tools/agnhost")" "$(readlink -f "$tools/regression-issue-74839")"
             "$(readlink -f "$tools/coredns")"
             "$module/test/images/agnhost/porter/localhost.crt"
             "$module/test/images/agnhost/porter/localhost.key")
  E2E_BASE=$(debian_image "$E2E_PACKAGES")
  E2E_HASH=$(echo "$E2E_BASE" | hash_inputs "$root/hack/images/e2e" "${E2E_FILES[@]}")
}

# build_e2e TARGET: one image of hack/images/e2e/Containerfile (agnhost, shell, nginx,
# boom-server)
build_e2e() {
  local target=$1
  e2e_inputs
  local image=localhost/azure-cni-e2e-$target:$E2E_HASH archive=$cache/e2e-$target-$E2E_HASH.tar
  cached "e2e-$target" "$image" "$archive" && return
  local start=$SECONDS context; context=$(mktemp -d "$cache/e2e.XXXXXX")
  cp -a "$root/hack/images/e2e"/. "${E2E_FILES[@]}" "$context/"
  chmod u+w "$context"/*
  bah bud --quiet --isolation chroot --layers=false --build-arg "BASE=$E2E_BASE" \
    --target "$target" -t "$image" -f "$context/Containerfile" "$context" >/dev/null \
    || die "buildah bud of e2e-$target failed (see above)"
  rm -rf "$context"
  export_archive "e2e-$target" "$image" "$archive"
  echo "build-images: e2e-$target built in $((SECONDS - start))s"
}

names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  # Prometheus only once it is built (make demo builds it in the background)
  names=(pause sim-app coredns azure-cni)
  if [ -x "$tools/prometheus" ]; then names+=(prometheus)
  else echo "build-images: prometheus is not built yet; its image is left out"; fi
fi
for name in "${names[@]}"; do
  case $name in
    azure-cni) build_azure_cni ;;
    coredns)
      [ -x "$tools/coredns" ] || die "$tools/coredns is missing; build it with 'make tools'"
      build_small coredns "localhost/coredns" "$(readlink -f "$tools/coredns")" ;;
    prometheus)
      [ -x "$tools/prometheus" ] || die "$tools/prometheus is missing; build it with 'make tools'"
      build_small prometheus "localhost/prometheus" "$(readlink -f "$tools/prometheus")" ;;
    sim-app) build_small sim-app localhost/azure-cni-sim-app /bin/busybox ;;
    pause) build_small pause localhost/azure-cni-pause ;;
    e2e-agnhost|e2e-shell|e2e-nginx|e2e-boom-server) build_e2e "${name#e2e-}" ;;
    traefik)
      [ -x "$tools/traefik" ] || die "$tools/traefik is missing; build it with hack/build-tools.sh traefik"
      build_small traefik "localhost/traefik" "$(readlink -f "$tools/traefik")" ;;
    *) die "unknown image '$name' (azure-cni, coredns, prometheus, sim-app, pause," \
           "e2e-agnhost, e2e-shell, e2e-nginx, e2e-boom-server, traefik)" ;;
  esac
done
