#!/usr/bin/env bash
# No Docker engine runs in CI, so the image's build stage is checked without one: the files
# the Dockerfile COPYs before `cargo build` go into an empty directory, and the same cargo
# command must accept them (a missing file, such as a bench target the manifest names,
# fails here instead of in `docker build`). The packages come from scripts/setup.sh, which
# CI runs anyway.
set -euo pipefail
cd "$(dirname "$0")/.."

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
# COPY lines of the build stage (up to the second FROM), without --from copies.
awk '/^FROM /{n++} n==1 && /^COPY / && !/--from/ {for (i = 2; i < NF; i++) print $i}' Dockerfile | while read -r src; do
  mkdir -p "$context/$(dirname "$src")"
  cp -r "$src" "$context/$src"
done
build=$(awk '/^FROM /{n++} n==1 && /^RUN cargo build/' Dockerfile | sed -e "s/^RUN cargo build/cargo check/" -e "s/ --release//")
[ -n "$build" ] || { echo "docker-context: no 'RUN cargo build' in the Dockerfile's build stage" >&2; exit 1; }
echo "docker-context: $build (in a copy of the build context)"
target="$PWD/target"
(cd "$context" && CARGO_TARGET_DIR="$target" eval "$build")
