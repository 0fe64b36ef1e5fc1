#!/usr/bin/env bash
# Builds helm from its Go module at the version pinned in go.mod, once, into a cache outside the
# repository keyed by that version, and prints the path of the binary.
#
# When HELM is set to an executable, that one is used instead.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
helm_version=v3.20.2
# The Kubernetes minor of helm's client-go (v0.35.x): what `helm template` and `helm lint` assume
# the cluster runs when none is asked (helm's own Makefile stamps it the same way).
kube_minor=35

if [ -n "${HELM:-}" ] && [ -x "$HELM" ]; then
  echo "$HELM"
  exit 0
fi

cache_root=${INSTANCE_REGISTRAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/instance-registrar}
out="$cache_root/helm/helm-$helm_version"
if [ -x "$out/helm" ]; then
  echo "$out/helm"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: the Go toolchain is needed to build helm" >&2; exit 1; }
grep -q "^require helm.sh/helm/v3 $helm_version\$" "$here/go.mod" \
  || { echo "build.sh: $here/go.mod does not pin helm $helm_version" >&2; exit 1; }
mkdir -p "$out.partial"
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
ldflags+=" -X helm.sh/helm/v3/internal/version.metadata= -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$kube_minor"
done
cd "$here"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
echo "build.sh: building helm $helm_version" >&2
go build -trimpath -ldflags "$ldflags" -o "$out.partial/helm" helm.sh/helm/v3/cmd/helm
rm -rf "$out"
mv "$out.partial" "$out"
echo "$out/helm"
