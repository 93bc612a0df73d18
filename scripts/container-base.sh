#!/usr/bin/env bash
# Makes a local Debian bookworm base image for deploy/Dockerfile where no container registry is
# reachable (only Debian's package mirror): debootstrap --variant=minbase, then `podman import`.
# The root filesystem tarball is cached, so a rerun only imports it (or does nothing when the
# image exists).
#
#   scripts/container-base.sh [IMAGE]                default IMAGE: localhost/exo-base:bookworm
#   scripts/container-base.sh --arch arm64 [IMAGE]   an arm64 base on any host, default IMAGE:
#                                                    localhost/exo-base:bookworm-arm64
#   EXO_BASE_CACHE=DIR                      cache directory (default ~/.cache/exo-p2p/container)
#   DEBIAN_MIRROR=URL                       mirror for debootstrap (default: apt's, else debootstrap's)
#
# A foreign architecture (arm64 on an x86-64 host) is bootstrapped in two stages: the first
# (--foreign) only unpacks the packages; the second runs the arm64 maintainer scripts inside
# the root through qemu-user, so it needs qemu-user-static's qemu-aarch64 registered with
# binfmt_misc (see ensure_binfmt below). The image is imported with --arch, so `podman build
# --platform linux/arm64 --build-arg BASE=...` finds it.
#
# Then: podman build --build-arg BASE=localhost/exo-base:bookworm -f deploy/Dockerfile ...
set -euo pipefail
arch=$(dpkg --print-architecture)
host_arch=$arch
if [[ ${1:-} == --arch ]]; then
  arch=${2:?--arch needs a Debian architecture (amd64, arm64)}
  shift 2
fi
default_image=localhost/exo-base:bookworm
[[ $arch == "$host_arch" ]] || default_image=$default_image-$arch
image="${1:-$default_image}"
runtime="${CONTAINER_RUNTIME:-podman}"
cache="${EXO_BASE_CACHE:-$HOME/.cache/exo-p2p/container}"
tarball="$cache/debian-bookworm-minbase.tar"
[[ $arch == "$host_arch" ]] || tarball="$cache/debian-bookworm-minbase-$arch.tar"

# qemu-user for $arch registered with the kernel: mounts binfmt_misc and registers
# qemu-user-static's handler (its F flag keeps the interpreter open, so it works in chroots and
# containers too) when they are not there yet.
ensure_binfmt() {
  local q=${1/arm64/aarch64} dir=/proc/sys/fs/binfmt_misc
  [[ -e $dir/qemu-$q ]] && return 0
  [[ -e $dir/register ]] || mount -t binfmt_misc binfmt_misc "$dir" || {
    echo "cannot mount binfmt_misc: $arch binaries cannot run on this host" >&2
    return 1
  }
  [[ -e $dir/qemu-$q ]] && return 0
  local conf=/usr/lib/binfmt.d/qemu-$q.conf
  [[ -f $conf ]] || { echo "$conf missing: apt-get install qemu-user-static" >&2; return 1; }
  cat "$conf" >"$dir/register"
  echo "registered qemu-$q with binfmt_misc" >&2
}

if "$runtime" image exists "$image" 2>/dev/null; then
  echo "$image exists"
  exit 0
fi
mkdir -p "$cache"
if [[ ! -s $tarball ]]; then
  command -v debootstrap >/dev/null || { echo "debootstrap missing: run scripts/container-setup.sh" >&2; exit 1; }
  [[ $(id -u) == 0 ]] || { echo "debootstrap needs root" >&2; exit 1; }
  mirror="${DEBIAN_MIRROR:-}"
  if [[ -z $mirror ]]; then
    mirror=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
      | head -1 | grep -oE 'https?://[^ ]+' || true)
  fi
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$root" "$tarball.tmp"' EXIT
  log="$cache/debootstrap-$arch.log"
  echo "debootstrap bookworm for $arch ${mirror:+from $mirror }(a few minutes)..."
  if [[ $arch == "$host_arch" ]]; then
    debootstrap --variant=minbase bookworm "$root" ${mirror:+"$mirror"} >"$log" 2>&1 \
      || { tail -20 "$log" >&2; exit 1; }
  else
    ensure_binfmt "$arch"
    debootstrap --foreign --arch "$arch" --variant=minbase bookworm "$root" ${mirror:+"$mirror"} \
      >"$log" 2>&1 || { tail -20 "$log" >&2; exit 1; }
    chroot "$root" /debootstrap/debootstrap --second-stage >>"$log" 2>&1 \
      || { tail -20 "$log" >&2; exit 1; }
  fi
  # Smaller and reproducible-ish: no package caches or lists in the base.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*
  tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi
"$runtime" import -q --arch "$arch" --change 'CMD ["/bin/bash"]' "$tarball" "$image" >/dev/null
echo "$image ($arch) imported from $tarball"
