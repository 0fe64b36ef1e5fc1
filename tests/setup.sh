#!/usr/bin/env bash
# Installs and builds what the test suite needs, idempotently, on a fresh Debian machine as root
# (or as a user who already has the packages): Debian packages, and the Kubernetes control plane
# built from its Go modules into a cache outside the repository. Safe to run again: what is
# already there is kept.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Debian packages: ssh-keygen (test keys), setpriv (test processes die with the test binary).
packages=(openssh-client util-linux)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "setup.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

for tool in cargo go; do
  command -v "$tool" >/dev/null || { echo "setup.sh: $tool is needed" >&2; exit 1; }
done

# kube-apiserver, etcd and kubectl (minutes the first time, then cached).
dir=$("$here/control-plane/build.sh")
echo "setup.sh: control plane binaries in $dir" >&2
