#!/usr/bin/env bash
# Builds kube-apiserver, kubectl and etcd from their Go modules at the versions pinned in go.mod,
# once, into a cache outside the repository keyed by those versions, and prints the directory
# (the layout envtest's KUBEBUILDER_ASSETS uses: kube-apiserver, etcd, kubectl side by side).
#
# When KUBEBUILDER_ASSETS is set and holds all three binaries, that directory is used instead.
#
#   build.sh --node   builds what a node and the controllers of Deployments and Pods need (kubelet,
#                     kube-controller-manager, kube-scheduler; the same Kubernetes version) the
#                     same way, into a directory of their own in the same cache, and prints it:
#                     for the pod tests (tests/node.rs, tests/local-env's node module) only.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
kube_version=v1.35.4
etcd_version=v3.6.5
cache_root=${INSTANCE_REGISTRAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/instance-registrar}
minor=${kube_version#v1.}; minor=${minor%%.*}
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"

case "${1:-}" in
  --node)
    out="$cache_root/control-plane/node-$kube_version"
    if [ ! -x "$out/kubelet" ] || [ ! -x "$out/kube-controller-manager" ] || [ ! -x "$out/kube-scheduler" ]; then
      command -v go >/dev/null || { echo "build.sh: the Go toolchain is needed to build kubelet" >&2; exit 1; }
      mkdir -p "$out.partial"
      cd "$here"
      for target in kubelet kube-controller-manager kube-scheduler; do
        echo "build.sh: building $target $kube_version" >&2
        CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$out.partial/$target" \
          "k8s.io/kubernetes/cmd/$target"
      done
      rm -rf "$out"
      mv "$out.partial" "$out"
    fi
    echo "$out"
    exit 0
    ;;
  "") ;;
  *) echo "usage: build.sh [--node]" >&2; exit 2 ;;
esac

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kube-apiserver" ] \
   && [ -x "$KUBEBUILDER_ASSETS/etcd" ] && [ -x "$KUBEBUILDER_ASSETS/kubectl" ]; then
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

out="$cache_root/control-plane/kubernetes-$kube_version-etcd-$etcd_version"
if [ -x "$out/kube-apiserver" ] && [ -x "$out/etcd" ] && [ -x "$out/kubectl" ]; then
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: the Go toolchain is needed to build the control plane" >&2; exit 1; }
mkdir -p "$out.partial"
cd "$here"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
for target in k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl; do
  echo "build.sh: building $(basename "$target") $kube_version" >&2
  go build -trimpath -ldflags "$ldflags" -o "$out.partial/$(basename "$target")" "$target"
done
echo "build.sh: building etcd $etcd_version" >&2
go build -trimpath -ldflags "-s -w" -o "$out.partial/etcd" go.etcd.io/etcd/server/v3
rm -rf "$out"
mv "$out.partial" "$out"
echo "$out"
