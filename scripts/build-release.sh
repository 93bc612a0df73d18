#!/usr/bin/env bash
# Builds the portable release binary of exo-p2p and packs it:
#   target/release-artifacts/exo-p2p-<version>-<arch>-linux-gnu-<cpu>/exo-p2p (+ LICENSE, README)
#   target/release-artifacts/exo-p2p-<version>-<arch>-linux-gnu-<cpu>.tar.gz and .sha256
#
# Profile `dist` (fat LTO, one codegen unit). CPU target: x86-64-v3 (AVX2, FMA, F16C, BMI1/2;
# Intel Haswell 2013+, AMD Excavator/Zen 2015+). RUSTFLAGS in the environment overrides the
# target-cpu=native of .cargo/config.toml, which is meant for local builds only: a native
# binary may use instructions (AVX-512...) other machines lack and die with SIGILL there.
#
#   scripts/build-release.sh                   # x86-64-v3, and (on x86-64) aarch64 cross-built
#   TARGET_CPU=x86-64 scripts/build-release.sh # any x86-64 CPU (SSE2 only: much slower math)
#   scripts/build-release.sh --arch aarch64    # only the aarch64 binary (generic armv8-a; the
#                                              # NEON kernels pick dotprod/i8mm at run time)
#   scripts/build-release.sh --image           # also build the container image from it
#   BASE=localhost/exo-base:bookworm-arm64 scripts/build-release.sh --arch aarch64 --image
#                                              # the arm64 image (base: container-base.sh --arch arm64)
#
# The aarch64 cross build needs Debian's gcc-aarch64-linux-gnu, g++-aarch64-linux-gnu and
# libc6-dev-arm64-cross, and `rustup target add aarch64-unknown-linux-gnu` (.cargo/config.toml
# names the linker). Its artifact is ...-aarch64-linux-gnu-generic; qemu-user-static runs it here.
#
# Environment: TARGET_CPU (the host architecture's binary), PROFILE (default dist),
# CONTAINER_RUNTIME (podman or docker), IMAGE (default localhost/exo-p2p:<version>), BASE
# (runtime base image, see deploy/Dockerfile).
set -euo pipefail
cd "$(dirname "$0")/.."

image=false
host=$(uname -m)
archs=("$host")
[[ $host == x86_64 ]] && archs+=(aarch64)
while (($#)); do
  case $1 in
    --image) image=true ;;
    --arch) archs=("${2:?--arch needs x86_64 or aarch64}"); shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

profile="${PROFILE:-dist}"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD 2>/dev/null; then commit="$commit-dirty"; fi
export EXO_GIT_COMMIT="$commit"
out="target/release-artifacts"

# Builds and packs the binary for $1; prints the binary's path.
build_one() {
  local arch=$1 cpu triple=() bin
  case $arch in
    x86_64) cpu="${TARGET_CPU:-x86-64-v3}" ;;
    # No portable level beyond the baseline is as widespread on ARM: build for the generic
    # target; the engine's NEON kernels choose dotprod / i8mm at run time.
    aarch64) cpu=generic ;;
    *) cpu="${TARGET_CPU:-generic}" ;;
  esac
  [[ $arch == "$host" ]] || cpu=generic
  bin="target/$profile/exo-p2p"
  if [[ $arch != "$host" ]]; then
    [[ $arch == aarch64 ]] || { echo "cannot cross-build for $arch" >&2; exit 2; }
    command -v aarch64-linux-gnu-gcc >/dev/null || {
      echo "aarch64 cross build: apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross (or --arch $host)" >&2
      exit 1
    }
    rustup target list --installed | grep -qx aarch64-unknown-linux-gnu \
      || rustup target add aarch64-unknown-linux-gnu >&2
    triple=(--target aarch64-unknown-linux-gnu)
    bin="target/aarch64-unknown-linux-gnu/$profile/exo-p2p"
  fi
  echo "building exo-p2p $version ($commit) for $arch, profile $profile, RUSTFLAGS=\"-C target-cpu=$cpu\"" >&2
  RUSTFLAGS="-C target-cpu=$cpu" cargo build --locked --profile "$profile" -p exo-p2p "${triple[@]}" >&2
  pack "$arch" "$cpu" "$bin"
}

packed=()
# Packs binary $3 of architecture $1 / CPU $2 with the docs and unit files; checks it runs.
pack() {
  local arch=$1 cpu=$2 bin=$3 name
  name="exo-p2p-$version-$arch-linux-gnu-$cpu"
  rm -rf "${out:?}/$name"
  mkdir -p "$out/$name"
  cp "$bin" "$out/$name/exo-p2p"
  for f in LICENSE LICENSE-APACHE README.md; do
    if [[ -f $f ]]; then cp "$f" "$out/$name/"; fi
  done
  cp deploy/README.md "$out/$name/DEPLOY.md"
  cp deploy/systemd/exo-p2p.service deploy/systemd/exo-p2p.env "$out/$name/"
  tar -C "$out" -czf "$out/$name.tar.gz" "$name"
  (cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
  if [[ $arch == "$host" ]]; then
    "$out/$name/exo-p2p" --version >&2 || echo "note: this machine cannot run a $cpu binary" >&2
  elif command -v qemu-aarch64-static >/dev/null; then
    qemu-aarch64-static -L /usr/aarch64-linux-gnu "$out/$name/exo-p2p" --version >&2
  fi
  echo "$out/$name/exo-p2p"
  echo "$out/$name.tar.gz" >&2
  packed+=("$name")
}

for arch in "${archs[@]}"; do
  build_one "$arch"
done
# The image holds the first architecture's binary (the host's by default).
name=${packed[0]}

if $image; then
  runtime="${CONTAINER_RUNTIME:-podman}"
  tag="${IMAGE:-localhost/exo-p2p:$version}"
  fmt=()
  [[ $runtime == podman ]] && fmt=(--format docker)  # keep the HEALTHCHECK
  platform=()
  if [[ ${archs[0]} == aarch64 ]]; then
    platform=(--platform linux/arm64)
    # The image's RUN steps execute arm64 binaries: on another host, through qemu-user
    # registered with binfmt_misc (scripts/container-base.sh --arch arm64 registers it and
    # makes a local arm64 base: BASE=localhost/exo-base:bookworm-arm64).
    if [[ $host != aarch64 && ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
      echo "no qemu-aarch64 in binfmt_misc: run scripts/container-base.sh --arch arm64 first" >&2
      exit 1
    fi
  fi
  "$runtime" build "${fmt[@]}" "${platform[@]}" -f deploy/Dockerfile --target prebuilt \
    ${BASE:+--build-arg "BASE=$BASE"} -t "$tag" "$out/$name" >&2
  echo "image $tag" >&2
fi
