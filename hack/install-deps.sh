#!/usr/bin/env bash
# Install the Debian packages azure-cni's tests and demo need, if any is missing.
# The datapath runs as root in network namespaces, so this expects root (CI runs as root).
set -euo pipefail

packages=(
  iproute2 iptables iputils-ping conntrack tcpdump   # datapath and its checks
  containerd runc containernetworking-plugins        # a real runtime and the reference plugins
  docker.io busybox-static                           # Docker Engine; busybox for the test images
  python3-venv gcc libc6-dev                         # the venv; the locally built pause image
  mmdebstrap buildah                                 # the images, built without a registry
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: Debian packages present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages start no daemon here (no systemd), and tests run their own containerd and
# dockerd anyway.
echo "install-deps: done"
