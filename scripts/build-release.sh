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
#   scripts/build-release.sh                   # x86-64-v3
#   TARGET_CPU=x86-64 scripts/build-release.sh # any x86-64 CPU (SSE2 only: much slower math)
#   scripts/build-release.sh --image           # also build the container image from it
#
# Environment: TARGET_CPU, PROFILE (default dist), CONTAINER_RUNTIME (podman or docker),
# IMAGE (default localhost/exo-p2p:<version>), BASE (runtime base image, see deploy/Dockerfile).
set -euo pipefail
cd "$(dirname "$0")/.."

image=false
for a in "$@"; do
  case $a in
    --image) image=true ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done

arch=$(uname -m)
case $arch in
  x86_64) cpu="${TARGET_CPU:-x86-64-v3}" ;;
  # No portable level beyond the baseline is as widespread on ARM: build for the generic target.
  aarch64) cpu="${TARGET_CPU:-generic}" ;;
  *) cpu="${TARGET_CPU:-generic}" ;;
esac
profile="${PROFILE:-dist}"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD 2>/dev/null; then commit="$commit-dirty"; fi

export RUSTFLAGS="-C target-cpu=$cpu"
export EXO_GIT_COMMIT="$commit"
echo "building exo-p2p $version ($commit), profile $profile, RUSTFLAGS=\"$RUSTFLAGS\"" >&2
cargo build --locked --profile "$profile" -p exo-p2p

bin="target/$profile/exo-p2p"
name="exo-p2p-$version-$arch-linux-gnu-$cpu"
out="target/release-artifacts"
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
"$out/$name/exo-p2p" --version >&2 || echo "note: this machine cannot run a $cpu binary" >&2
echo "$out/$name/exo-p2p"
echo "$out/$name.tar.gz" >&2

if $image; then
  runtime="${CONTAINER_RUNTIME:-podman}"
  tag="${IMAGE:-localhost/exo-p2p:$version}"
  fmt=()
  [[ $runtime == podman ]] && fmt=(--format docker)  # keep the HEALTHCHECK
  "$runtime" build "${fmt[@]}" -f deploy/Dockerfile --target prebuilt \
    ${BASE:+--build-arg "BASE=$BASE"} -t "$tag" "$out/$name" >&2
  echo "image $tag" >&2
fi
