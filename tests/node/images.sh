#!/usr/bin/env bash
# The container images of the pod tests (tests/node.rs), made on this machine: no container
# registry is reachable, so nothing is pulled.
#
#   images.sh base              the runtime base image's root file system, from Debian bookworm
#                               packages (mmdebstrap): glibc and libgcc_s (what the controller
#                               links), CA certificates, a non-root user 65532, and no shell nor
#                               package manager; made once into the cache, prints the tarball.
#   images.sh build BINARY DIR  builds, with buildah from the project's Dockerfile (target
#                               `prebuilt`, on the base above), the controller's image holding
#                               BINARY, and a pause image (the pod sandbox, from pause.c built
#                               statically); writes DIR/instance-registrar.tar and DIR/pause.tar
#                               (docker-archive, for `ctr images import`) and DIR/images.env
#                               (their names), and prints what the controller's image holds.
#
# buildah keeps its storage in DIR/storage (vfs: no mounts left behind) and it is removed at the
# end; nothing is written to the system's container storage.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache_root=${INSTANCE_REGISTRAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/instance-registrar}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Bump when what goes into the base changes: a new name makes it again.
base_version=2
base_tar="$cache_root/node/base-$suite-$base_version.tar"
controller_image=localhost/instance-registrar:test
pause_image=localhost/instance-registrar-test/pause:3.10

make_base() {
  [ -s "$base_tar" ] && { echo "$base_tar"; return; }
  for tool in mmdebstrap apt-get dpkg-deb ldconfig; do
    command -v "$tool" >/dev/null || { echo "images.sh: $tool is needed (bash tests/setup.sh)" >&2; exit 1; }
  done
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  echo "images.sh: making the $suite base root file system" >&2
  # extract: the packages' files (and their dependencies'), no maintainer script run, so nothing
  # Essential (no shell) comes with them.
  mmdebstrap --quiet --variant=extract --include=libc6,libgcc-s1 --mode=root "$suite" "$work/root" "$mirror" >&2
  # ca-certificates without its dependencies (openssl, debconf and perl only serve its scripts):
  # the bundle its script would make is the certificates it ships, one after another, as
  # distroless makes it.
  if ! (cd "$work" && apt-get download -q=2 ca-certificates >/dev/null 2>&1); then
    # No package lists yet (a fresh machine whose packages were all there): fetch them once.
    [ "$(id -u)" -eq 0 ] && apt-get update -qq >&2
    (cd "$work" && apt-get download -q=2 ca-certificates >/dev/null 2>&1) \
      || { echo "images.sh: apt-get download ca-certificates failed" >&2; exit 1; }
  fi
  dpkg-deb -x "$work"/ca-certificates_*.deb "$work/root"
  mkdir -p "$work/root/etc/ssl/certs"
  cat "$work/root/usr/share/ca-certificates/mozilla/"*.crt >"$work/root/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$work/root/usr/share/ca-certificates" "$work/root/etc/ca-certificates.conf"
  # glibc's character set converters (iconv): 8 MB the controller never loads.
  rm -rf "$work/root/usr/lib/x86_64-linux-gnu/gconv"
  # What a container runtime provides, or only the package manager uses.
  rm -rf "$work/root"/{dev,var,etc/apt,etc/dpkg,etc/fstab,etc/hostname,etc/resolv.conf,usr/share/doc,usr/share/lintian,usr/share/man,usr/sbin}
  mkdir -p "$work/root"/{dev,proc,sys,etc,tmp,home/nonroot}
  chmod 1777 "$work/root/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$work/root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$work/root/etc/group"
  chown 65532:65532 "$work/root/home/nonroot"
  chmod 0700 "$work/root/home/nonroot"
  ldconfig -r "$work/root"
  if find "$work/root" \( -name sh -o -name bash -o -name dash -o -name busybox \) | grep -q .; then
    echo "images.sh: the base has a shell" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$base_tar")"
  tar --numeric-owner --sort=name -C "$work/root" -cf "$base_tar.partial" .
  mv -f "$base_tar.partial" "$base_tar"
  echo "$base_tar"
}

build() {
  local binary=$1 out=$2
  [ -x "$binary" ] || { echo "images.sh: $binary is not a program" >&2; exit 1; }
  command -v buildah >/dev/null || { echo "images.sh: buildah is needed (bash tests/setup.sh)" >&2; exit 1; }
  local base
  base=$(make_base)
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  storage="$out/storage"
  b() { buildah --root "$storage/root" --runroot "$storage/run" --storage-driver vfs "$@"; }
  # Only this script's storage is removed: vfs leaves no mounts.
  trap 'rm -rf "$storage"' EXIT

  # The runtime base image, from the root file system.
  local c
  c=$(b from --quiet scratch)
  b add --quiet "$c" "$base" / >/dev/null
  b config --user 65532:65532 "$c"
  b commit --quiet --rm "$c" localhost/instance-registrar-test/base:"$suite" >/dev/null

  # The pause image: one static program.
  cc -static -O2 -s -o "$out/pause" "$here/pause.c"
  c=$(b from --quiet scratch)
  b copy --quiet "$c" "$out/pause" /pause >/dev/null
  b config --entrypoint '["/pause"]' --user 65535:65535 "$c"
  b commit --quiet --rm "$c" "$pause_image" >/dev/null

  # The controller's image, from the Dockerfile, with the binary built outside.
  local context="$out/context"
  rm -rf "$context"
  mkdir -p "$context"
  cp "$binary" "$context/instance-registrar"
  chmod 0755 "$context/instance-registrar"
  b bud --quiet --pull-never --target prebuilt -f "$repo/Dockerfile" \
    --build-arg RUNTIME_IMAGE=localhost/instance-registrar-test/base:"$suite" \
    --build-arg REVISION="$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)" \
    -t "$controller_image" "$context" >/dev/null
  rm -rf "$context"

  rm -f "$out/instance-registrar.tar" "$out/pause.tar"
  b push --quiet "$controller_image" "docker-archive:$out/instance-registrar.tar:$controller_image"
  b push --quiet "$pause_image" "docker-archive:$out/pause.tar:$pause_image"
  printf 'CONTROLLER_IMAGE=%s\nPAUSE_IMAGE=%s\n' "$controller_image" "$pause_image" >"$out/images.env"

  # What the controller's image holds.
  echo "image $controller_image: $(b images --format '{{.Size}}' "$controller_image")"
  echo "config: $(b inspect --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}' "$controller_image")"
  echo "archive: $(du -h "$out/instance-registrar.tar" | cut -f1), base root file system: $(du -h "$base" | cut -f1)"
  c=$(b from --quiet --pull-never "$controller_image")
  local mnt
  mnt=$(b mount "$c")
  echo "files (bytes, path):"
  (cd "$mnt" && find . \( -type f -o -type l \) -printf '%s %p\n' | sort -k2 | awk '{printf "  %10d %s\n", $1, $2}')
  b umount "$c" >/dev/null
  b rm "$c" >/dev/null
}

case "${1:-}" in
  base) make_base ;;
  build) [ $# -eq 3 ] || { echo "usage: images.sh build BINARY DIR" >&2; exit 2; }; build "$2" "$3" ;;
  *) echo "usage: images.sh base | build BINARY DIR" >&2; exit 2 ;;
esac
