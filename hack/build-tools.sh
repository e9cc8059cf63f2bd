#!/usr/bin/env bash
# Build the pinned Go tools (kube-apiserver, kube-controller-manager, kubectl, etcd, helm,
# crictl, cnitool) into the project's tool cache. A tool whose directory already holds a verified
# build is not rebuilt; the directory name carries the version and a hash of its go.mod and
# go.sum, so changing a pin rebuilds exactly that tool.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="$root/hack/tools"
cache=${AZURE_CNI_TOOLS_CACHE:-$root/.cache/tools}
# shellcheck source=tools/versions.env
. "$tools/versions.env"

die() { echo "build-tools: $*" >&2; exit 1; }

command -v go >/dev/null || die "Go is not installed; it is needed to build the Kubernetes tools (Go >= 1.26)"
gov=$(go env GOVERSION)
case "$gov" in
  go1.2[6-9]*|go1.[3-9][0-9]*) ;;
  *) die "Go $gov is too old: the pinned Kubernetes $KUBERNETES_VERSION needs Go >= 1.26" ;;
esac

mkdir -p "$cache/bin"
export GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
export CGO_ENABLED=0

# build NAME VERSION CHECK_PATTERN -- BINARY=PACKAGE... -- LDFLAGS
build() {
  local name=$1 version=$2 pattern=$3; shift 3
  local dir="$tools/$name"
  local bins=() pkgs=() ldflags="-s -w"
  while [ $# -gt 0 ]; do
    case "$1" in
      --ldflags) ldflags="$ldflags $2"; shift 2 ;;
      *=*) bins+=("${1%%=*}"); pkgs+=("${1#*=}"); shift ;;
      *) die "bad argument $1" ;;
    esac
  done
  # the directory name changes with the pins and the flags, so either change rebuilds
  local hash; hash=$( { cat "$dir/go.mod" "$dir/go.sum"; echo "$ldflags"; } | sha256sum | cut -c1-10)
  local dest="$cache/$name-$version-$hash"
  if [ -f "$dest/.verified" ]; then
    echo "build-tools: $name $version cached in $dest"
  else
    echo "build-tools: building $name $version (first run only) ..."
    local start=$SECONDS
    rm -rf "$dest.tmp"; mkdir -p "$dest.tmp"
    local i
    for i in "${!bins[@]}"; do
      (cd "$dir" && go build -ldflags "$ldflags" -o "$dest.tmp/${bins[$i]}" "${pkgs[$i]}") \
        || die "go build of ${pkgs[$i]} ($name $version) failed; see the output above"
    done
    for i in "${!bins[@]}"; do
      local out
      out=$("$dest.tmp/${bins[$i]}" "${VERSION_ARGS[${bins[$i]}]}" 2>&1 | head -n 3 || true)
      grep -q -- "$pattern" <<<"$out" \
        || die "${bins[$i]} was built but reports '$out', expected '$pattern'"
    done
    rm -rf "$dest"; mv "$dest.tmp" "$dest"; touch "$dest/.verified"
    local old
    for old in "$cache/$name"-*; do  # builds of earlier pins are of no further use
      [ "$old" = "$dest" ] || rm -rf "$old"
    done
    echo "build-tools: $name $version built in $((SECONDS - start))s"
  fi
  for i in "${!bins[@]}"; do ln -sfn "$dest/${bins[$i]}" "$cache/bin/${bins[$i]}"; done
}

declare -A VERSION_ARGS=(
  [kube-apiserver]=--version [kube-controller-manager]=--version [kubectl]=version
  [etcd]=--version [helm]=version [crictl]=--version [cnitool]=--help
)

k8s_minor=${KUBERNETES_VERSION#v1.}; k8s_minor=${k8s_minor%%.*}
build kubernetes "$KUBERNETES_VERSION" "$KUBERNETES_VERSION" \
  kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
  kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
  kubectl=k8s.io/kubernetes/cmd/kubectl \
  --ldflags "-X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$k8s_minor -X k8s.io/component-base/version.gitTreeState=clean"
build etcd "$ETCD_VERSION" "etcd Version: ${ETCD_VERSION#v}" etcd=.
# helm's idea of the cluster version (for `helm template` and `helm lint`) is the pinned one
build helm "$HELM_VERSION" "$HELM_VERSION" helm=helm.sh/helm/v3/cmd/helm \
  --ldflags "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor"
build crictl "$CRI_TOOLS_VERSION" "$CRI_TOOLS_VERSION" crictl=sigs.k8s.io/cri-tools/cmd/crictl \
  --ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRI_TOOLS_VERSION"

# libcni's own command line: what nerdctl's -p does (portMappings capability args), for
# containers that containerd's ctr starts without Kubernetes
build cnitool "$CNI_VERSION" "CNI Tool" cnitool=github.com/containernetworking/cni/cnitool

cat > "$cache/bin/versions.json" <<JSON
{"kubernetes": "$KUBERNETES_VERSION", "etcd": "$ETCD_VERSION", "helm": "$HELM_VERSION", "cri-tools": "$CRI_TOOLS_VERSION", "cni": "$CNI_VERSION"}
JSON
echo "build-tools: tools ready in $cache/bin"
