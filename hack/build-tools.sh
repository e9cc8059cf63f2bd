#!/usr/bin/env bash
# Build the pinned Go tools into the project's tool cache. A tool whose directory already
# holds a verified build is not rebuilt; the directory name carries the version and a hash of
# its go.mod and go.sum, so changing a pin rebuilds exactly that tool.
#
#   hack/build-tools.sh [TOOL...]
#
# TOOL is one of: kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet, kube-proxy, kubectl: links to one binary), etcd, helm, crictl, coredns (the simulated nodes' cluster DNS),
# cnitool (libcni's command line), promtool, prometheus, prometheus-operator-crds (the
# Prometheus Operator's CRDs, copied from its pinned module); for Kubernetes' own e2e specs
# (hack/tools/kubernetes-e2e, the same Kubernetes version): e2e (e2e.test), e2e-network
# (e2e-network.test, the networking specs only), ginkgo (their runner) and agnhost (the
# binaries of the test images); traefik (an Ingress controller). Without arguments: every one
# but e2e and traefik.
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

# without arguments: what make test needs; e2e.test and Traefik (make conformance's, most of an
# hour to build on 2 cores) only when named
default_tools=(kubernetes etcd helm crictl coredns cnitool promtool prometheus prometheus-operator-crds
               e2e-network ginkgo agnhost)
all_tools=("${default_tools[@]}" e2e traefik)
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=("${default_tools[@]}")
for tool in "${wanted[@]}"; do
  [[ " ${all_tools[*]} " == *" $tool "* ]] || die "unknown tool '$tool' (known: ${all_tools[*]})"
done
wants() { [[ " ${wanted[*]} " == *" $1 "* ]]; }

mkdir -p "$cache/bin"
export GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
export CGO_ENABLED=0

# locked NAME: one build of a tool at a time, across every process using this cache (two
# runs at once, from two checkouts sharing it or make -j, would build into the same .tmp
# directory and remove each other's work; the second waits, then finds the first one's
# build). Per tool, not per cache: make demo builds Prometheus in the background while the
# Kubernetes tools build in the foreground, and one lock for the cache would make either
# wait for the whole of the other.
locked() {
  exec {lock}>"$cache/.build-$1.lock"
  if ! flock -n "$lock"; then
    echo "build-tools: another build of $1 holds $cache/.build-$1.lock; waiting for it ..."
    flock "$lock"
  fi
}

# build NAME VERSION CHECK_PATTERN [--module DIR] [--ldflags FLAGS] [--tags TAGS] [--test]
#       [--links "NAME..."] BINARY=PACKAGE...
# (DIR under hack/tools holds go.mod and go.sum; it defaults to NAME. --test: each BINARY is a
# package's compiled tests, `go test -c`. A PACKAGE given as ./DIR is source of this project:
# its files count in the cache key too. --links: names that are symlinks to the one BINARY,
# which runs as the command its name says)
build() {
  local name=$1 version=$2 pattern=$3; shift 3
  local dir="$tools/$name"
  local bins=() pkgs=() ldflags="-s -w" tags="" links=() gocmd=(go build)
  while [ $# -gt 0 ]; do
    case "$1" in
      --module) dir="$tools/$2"; shift 2 ;;
      --ldflags) ldflags="$ldflags $2"; shift 2 ;;
      --tags) tags=$2; shift 2 ;;
      --links) read -r -a links <<<"$2"; shift 2 ;;
      --test) gocmd=(go test -c); shift ;;
      *=*) bins+=("${1%%=*}"); pkgs+=("${1#*=}"); shift ;;
      *) die "bad argument $1" ;;
    esac
  done
  # the commands a user runs: the binaries, or the links to the one binary
  local commands=("${bins[@]}")
  [ ${#links[@]} -eq 0 ] || commands=("${links[@]}")
  local own=() pkg
  for pkg in "${pkgs[@]}"; do
    [[ $pkg == ./* ]] && own+=("$dir/${pkg#./}"/*)
  done
  # the directory name changes with the pins, the flags and the layout, so any change rebuilds
  local hash; hash=$( { cat "$dir/go.mod" "$dir/go.sum" ${own[@]+"${own[@]}"}; echo "$ldflags${tags:+ tags=$tags}${links[*]:+ links=${links[*]}}"; } | sha256sum | cut -c1-10)
  local dest="$cache/$name-$version-$hash"
  locked "$name"
  if [ -f "$dest/.verified" ]; then
    echo "build-tools: $name $version cached in $dest"
  else
    echo "build-tools: building $name $version (first run only) ..."
    local start=$SECONDS
    rm -rf "$dest.tmp"; mkdir -p "$dest.tmp"
    local i
    for i in "${!bins[@]}"; do
      (cd "$dir" && "${gocmd[@]}" -tags "$tags" -ldflags "$ldflags" -o "$dest.tmp/${bins[$i]}" "${pkgs[$i]}") \
        || die "go build of ${pkgs[$i]} ($name $version) failed; see the output above"
    done
    for i in "${links[@]}"; do ln -s "${bins[0]}" "$dest.tmp/$i"; done
    local -A pkg_of=()  # each command's package (a link's is that of the one binary)
    for i in "${!bins[@]}"; do pkg_of[${bins[$i]}]=${pkgs[$i]}; done
    for i in "${links[@]}"; do pkg_of[$i]=${pkgs[0]}; done
    for i in "${commands[@]}"; do
      local out
      local expected=$pattern
      if [ "${VERSION_ARGS[$i]}" = @buildinfo ]; then
        # a server without flags: its build information says what it is, it is not run
        out=$(go version -m "$dest.tmp/$i" 2>&1 | grep -m1 "^[[:space:]]*path" || true)
        expected="path[[:space:]]*${pkg_of[$i]}\$"
      else
        out=$("$dest.tmp/$i" "${VERSION_ARGS[$i]}" 2>&1 | head -n 3 || true)
      fi
      grep -q -- "$expected" <<<"$out" \
        || die "$i was built but reports '$out', expected '$expected'"
    done
    rm -rf "$dest"; mv "$dest.tmp" "$dest"; touch "$dest/.verified"
    local old
    for old in "$cache/$name"-v*; do  # builds of earlier pins are of no further use
      [ "$old" = "$dest" ] || rm -rf "$old"
    done
    echo "build-tools: $name $version built in $((SECONDS - start))s"
  fi
  for i in "${commands[@]}"; do ln -sfn "$dest/$i" "$cache/bin/$i"; done
  exec {lock}>&-
}

# copy_module_files NAME MODULE VERSION SUBDIR: files of a pinned module (checked against the
# go.sum in hack/tools/NAME) into the cache, linked as bin/NAME
copy_module_files() {
  local name=$1 module=$2 version=$3 subdir=$4
  local dir="$tools/$name"
  local hash; hash=$(cat "$dir/go.mod" "$dir/go.sum" | sha256sum | cut -c1-10)
  local dest="$cache/$name-$version-$hash"
  locked "$name"
  if [ -f "$dest/.verified" ]; then
    echo "build-tools: $name $version cached in $dest"
  else
    local src
    src=$(cd "$dir" && go mod download -json "$module" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p') \
      || die "go mod download of $module $version failed; see the output above"
    [ -d "$src/$subdir" ] || die "$module $version has no $subdir"
    rm -rf "$dest.tmp"; mkdir -p "$dest.tmp"
    cp "$src/$subdir"/*.yaml "$dest.tmp/"
    chmod -R u+w "$dest.tmp"
    rm -rf "$dest"; mv "$dest.tmp" "$dest"; touch "$dest/.verified"
    local old
    for old in "$cache/$name"-v*; do
      [ "$old" = "$dest" ] || rm -rf "$old"
    done
    echo "build-tools: $name $version copied to $dest"
  fi
  ln -sfn "$dest" "$cache/bin/$name"
  exec {lock}>&-
}

declare -A VERSION_ARGS=(
  [kube-apiserver]=--version [kube-controller-manager]=--version [kube-scheduler]=--version
  [kubelet]=--version [kube-proxy]=--version [kubectl]=version
  [etcd]=--version [helm]=version [crictl]=--version [coredns]=-version [cnitool]=--help
  [promtool]=--version [prometheus]=--version
  [e2e.test]=--version [e2e-network.test]=--version [ginkgo]=version [agnhost]=--version
  [regression-issue-74839]=@buildinfo [traefik]=version
)

k8s_minor=${KUBERNETES_VERSION#v1.}; k8s_minor=${k8s_minor%%.*}
k8s_ldflags="-X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$k8s_minor -X k8s.io/component-base/version.gitTreeState=clean"
# One binary for the six (hack/tools/kubernetes/main.go, as hyperkube was): they share most
# packages, so one `go build` compiles each once with the build's whole parallelism and links
# once instead of six times.
wants kubernetes && build kubernetes "$KUBERNETES_VERSION" "$KUBERNETES_VERSION" kube=. \
  --links "kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl" \
  --ldflags "$k8s_ldflags"

# Kubernetes' e2e suite at the same version, from a module of its own (hack/tools/kubernetes
# keeps its go.mod, so its cached build stays valid). e2e.test is the whole suite (make
# conformance); e2e-network.test links only the networking specs, a fraction of the build, for
# the e2e tier; agnhost's version is that of the image the pinned specs ask for
# (test/images/agnhost/VERSION); regression-issue-74839 is the boom-server of one Conntrack spec.
wants e2e && build e2e "$KUBERNETES_VERSION" "$KUBERNETES_VERSION" --module kubernetes-e2e \
  --test --ldflags "$k8s_ldflags" e2e.test=k8s.io/kubernetes/test/e2e
wants e2e-network && build e2e-network "$KUBERNETES_VERSION" "$KUBERNETES_VERSION" \
  --module kubernetes-e2e --test --ldflags "$k8s_ldflags" e2e-network.test=./network
ginkgo_version=$(sed -n 's#^\t*github.com/onsi/ginkgo/v2 \(v[^ ]*\).*#\1#p' "$tools/kubernetes-e2e/go.mod")
wants ginkgo && build ginkgo "$ginkgo_version" "Ginkgo Version ${ginkgo_version#v}" \
  --module kubernetes-e2e ginkgo=github.com/onsi/ginkgo/v2/ginkgo
wants agnhost && build agnhost "$AGNHOST_VERSION" "$AGNHOST_VERSION" --module kubernetes-e2e \
  --ldflags "-X main.Version=$AGNHOST_VERSION" agnhost=k8s.io/kubernetes/test/images/agnhost \
  regression-issue-74839=k8s.io/kubernetes/test/images/regression-issue-74839
wants etcd && build etcd "$ETCD_VERSION" "etcd Version: ${ETCD_VERSION#v}" etcd=.
# helm's idea of the cluster version (for `helm template` and `helm lint`) is the pinned one
wants helm && build helm "$HELM_VERSION" "$HELM_VERSION" helm=helm.sh/helm/v3/cmd/helm \
  --ldflags "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor"
wants crictl && build crictl "$CRI_TOOLS_VERSION" "$CRI_TOOLS_VERSION" crictl=sigs.k8s.io/cri-tools/cmd/crictl \
  --ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRI_TOOLS_VERSION"
# Prometheus module v0.3MM.P is Prometheus 3.MM.P. promtool and prometheus are separate cache
# entries from one go.mod, so each is built only where it is needed (see the Makefile);
# whichever comes second reuses the Go build cache of the first. The web UI is not built
# (it needs the npm-built assets and the builtinassets tag); the HTTP API is complete.
prometheus_release=${PROMETHEUS_VERSION#v0.}
prometheus_release="${prometheus_release:0:1}.$((10#${prometheus_release:1:2})).${prometheus_release#*.}"
# Only the service discoveries a cluster's Prometheus uses (Kubernetes; file, static and HTTP
# always stay): Prometheus's own build tags, documented in its README. The cloud providers' SDKs
# of the other discoveries were 40% of a cold build and 0.8 of its 1.9 GB of modules.
prometheus_tags=remove_all_sd,enable_kubernetes_sd
prometheus_ldflags="-X github.com/prometheus/common/version.Version=$prometheus_release -X github.com/prometheus/common/version.Revision=$PROMETHEUS_VERSION -X github.com/prometheus/common/version.Branch=module"
wants promtool && build promtool "$PROMETHEUS_VERSION" "version $prometheus_release" \
  --module prometheus --ldflags "$prometheus_ldflags" --tags "$prometheus_tags" \
  promtool=github.com/prometheus/prometheus/cmd/promtool
wants prometheus && build prometheus "$PROMETHEUS_VERSION" "version $prometheus_release" \
  --module prometheus --ldflags "$prometheus_ldflags" --tags "$prometheus_tags" \
  prometheus=github.com/prometheus/prometheus/cmd/prometheus
wants prometheus-operator-crds && copy_module_files prometheus-operator-crds \
  github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION" \
  example/prometheus-operator-crd

# the cluster DNS of the simulated nodes (its version is a constant of its source)
wants coredns && build coredns "$COREDNS_VERSION" "CoreDNS-${COREDNS_VERSION#v}" \
  coredns=github.com/coredns/coredns

# libcni's own command line: what nerdctl's -p does (portMappings capability args), for
# containers that containerd's ctr starts without Kubernetes
wants cnitool && build cnitool "$CNI_VERSION" "CNI Tool" cnitool=github.com/containernetworking/cni/cnitool

# the Ingress controller of make conformance (hack/tools/traefik/go.mod says why this version)
wants traefik && build traefik "$TRAEFIK_VERSION" "Version:.*${TRAEFIK_VERSION#v}" traefik=github.com/traefik/traefik/v3/cmd/traefik \
  --ldflags "-X github.com/traefik/traefik/v3/pkg/version.Version=${TRAEFIK_VERSION#v} -X github.com/traefik/traefik/v3/pkg/version.Codename=module"

# a new file, never a rewrite in place: a cache copied with hard links shares its inode
# (two builds may run at once: each writes its own temporary file)
cat > "$cache/bin/versions.json.tmp.$$" <<JSON
{"kubernetes": "$KUBERNETES_VERSION", "etcd": "$ETCD_VERSION", "helm": "$HELM_VERSION", "cri-tools": "$CRI_TOOLS_VERSION", "coredns": "$COREDNS_VERSION", "cni": "$CNI_VERSION", "prometheus": "$PROMETHEUS_VERSION", "prometheus-operator": "$PROMETHEUS_OPERATOR_VERSION", "agnhost": "$AGNHOST_VERSION", "traefik": "$TRAEFIK_VERSION"}
JSON
mv "$cache/bin/versions.json.tmp.$$" "$cache/bin/versions.json"
echo "build-tools: ${wanted[*]} ready in $cache/bin"
