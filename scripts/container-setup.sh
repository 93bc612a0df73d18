#!/usr/bin/env bash
# Installs what the container test (node/tests/deploy.rs) and deploy/README.md need on a
# Debian bookworm machine, as root: podman with runc, netavark/aardvark-dns (name-based DNS on
# podman networks), debootstrap (a local base image when no registry is reachable),
# podman-compose, and systemd-analyze. Safe to run again.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

pkgs=(podman runc netavark aardvark-dns debootstrap podman-compose uidmap slirp4netns
  fuse-overlayfs iptables ca-certificates curl systemd python3 python3-venv)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# crun fails on kernels with hybrid cgroups (v1 + v2); runc works. The default nproc/nofile
# ulimits cannot be applied inside some sandboxes, so containers get the runtime's own.
conf=/etc/containers/containers.conf
marker="# written by exo-p2p scripts/container-setup.sh"
want="$marker
[containers]
default_ulimits = []

[engine]
runtime = \"runc\"

[network]
network_backend = \"netavark\"
"
mkdir -p /etc/containers
if [[ -f $conf ]] && ! grep -qF "$marker" "$conf"; then
  if grep -q '^default_ulimits *= *\[ *\]' "$conf" && grep -q '^runtime *= *"runc"' "$conf"; then
    echo "$conf already sets default_ulimits = [] and runtime = \"runc\"; left as is"
  else
    cp "$conf" "$conf.orig-$(date +%s)"
    echo "$conf saved to $conf.orig-*; replaced"
    printf '%s' "$want" >"$conf"
  fi
elif [[ "$(cat "$conf" 2>/dev/null)" != "${want%$'\n'}" ]]; then
  printf '%s' "$want" >"$conf"
fi

podman --version
podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.NetworkBackend}} cgroups {{.Host.CgroupsVersion}}'
