#!/usr/bin/env bash
# Makes a local Debian bookworm base image for deploy/Dockerfile where no container registry is
# reachable (only Debian's package mirror): debootstrap --variant=minbase, then `podman import`.
# The root filesystem tarball is cached, so a rerun only imports it (or does nothing when the
# image exists).
#
#   scripts/container-base.sh [IMAGE]      default IMAGE: localhost/exo-base:bookworm
#   EXO_BASE_CACHE=DIR                      cache directory (default ~/.cache/exo-p2p/container)
#   DEBIAN_MIRROR=URL                       mirror for debootstrap (default: apt's, else debootstrap's)
#
# Then: podman build --build-arg BASE=localhost/exo-base:bookworm -f deploy/Dockerfile ...
set -euo pipefail
image="${1:-localhost/exo-base:bookworm}"
runtime="${CONTAINER_RUNTIME:-podman}"
cache="${EXO_BASE_CACHE:-$HOME/.cache/exo-p2p/container}"
tarball="$cache/debian-bookworm-minbase.tar"

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
  echo "debootstrap bookworm ${mirror:+from $mirror }(a few minutes)..."
  debootstrap --variant=minbase bookworm "$root" ${mirror:+"$mirror"} >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
  # Smaller and reproducible-ish: no package caches or lists in the base.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*
  tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi
"$runtime" import -q --change 'CMD ["/bin/bash"]' "$tarball" "$image" >/dev/null
echo "$image imported from $tarball"
