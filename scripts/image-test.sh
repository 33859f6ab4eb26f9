#!/usr/bin/env bash
# Builds the Dockerfile's image and runs mqdb inside it, on a machine with no Docker engine
# and no image registry:
# - podman builds it; RUN steps need `--isolation chroot` (the default runtime cannot set
#   its resource limits here) and then share the host's network;
# - the debian:bookworm-slim base becomes a bookworm made with debootstrap from the host's
#   Debian mirror (RUNTIME_BASE), cached as a tarball so the next run skips it;
# - the Rust build stage, whose base cannot be pulled either, becomes the binary built on
#   the host: `--build-context build=DIR` serves `COPY --from=build` from DIR.
# A second build on top of the image then runs `mqdb --version` and `mqdb demo` in a RUN
# step as the image's own user, with its drivers, so a missing library, driver or
# permission fails here instead of in production.
#   scripts/image-test.sh          builds the debug binary (cargo build --bin mqdb) first
#   scripts/image-test.sh BINARY   tests that binary instead (e.g. target/release/mqdb)
# Needs root, or sudo, for debootstrap and podman.
set -euo pipefail
cd "$(dirname "$0")/.."

base=localhost/mqdb-image-test-base:bookworm
image=localhost/mqdb-image-test:latest
cache=/var/cache/mqdb-image-test
rootfs_tar=$cache/bookworm-minbase.tar

as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)

install_tools() {
  local missing=() p
  for p in podman debootstrap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "image-test: installing ${missing[*]}"
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The mirror the host installs bookworm from, so the image build reaches the same one.
debian_mirror() {
  local uri
  uri=$(apt-get indextargets --format '$(REPO_URI)' 'ORIGIN: Debian' 'CODENAME: bookworm' \
    'IDENTIFIER: Packages' 2>/dev/null | head -n 1)
  echo "${uri:-http://deb.debian.org/debian/}"
}

make_base() {
  "${as_root[@]}" podman image exists "$base" && return 0
  if [ ! -s "$rootfs_tar" ]; then
    local mirror work
    mirror=$(debian_mirror)
    work=$("${as_root[@]}" mktemp -d)
    echo "image-test: debootstrap bookworm from $mirror"
    if ! "${as_root[@]}" debootstrap --variant=minbase bookworm "$work/root" "$mirror" \
      >"$work.log" 2>&1; then
      cat "$work.log" >&2
      echo "image-test: debootstrap failed (log above)" >&2
      exit 1
    fi
    "${as_root[@]}" mkdir -p "$cache"
    # Written aside and renamed, so an interrupted run never leaves half a tarball behind.
    "${as_root[@]}" tar -C "$work/root" -cf "$rootfs_tar.partial" .
    "${as_root[@]}" mv "$rootfs_tar.partial" "$rootfs_tar"
    "${as_root[@]}" rm -rf "$work" "$work.log"
  fi
  echo "image-test: importing $rootfs_tar as $base"
  "${as_root[@]}" podman import --quiet "$rootfs_tar" "$base" >/dev/null
}

install_tools

if [ $# -ge 1 ]; then
  binary=$1
else
  cargo build --quiet --bin mqdb
  binary=${CARGO_TARGET_DIR:-target}/debug/mqdb
fi
[ -x "$binary" ] || { echo "image-test: no executable mqdb at $binary" >&2; exit 1; }

make_base

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Laid out like the build stage's file system, where COPY --from=build finds the binary.
mkdir -p "$work/build/src/target/release"
cp "$binary" "$work/build/src/target/release/mqdb"

echo "image-test: building the Dockerfile on $base with $binary"
old=$("${as_root[@]}" podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
"${as_root[@]}" podman build --isolation chroot --format docker \
  --build-arg RUNTIME_BASE="$base" --build-context build="$work/build" \
  --iidfile "$work/image.id" --tag "$image" . \
  || { echo "image-test: the Dockerfile does not build (podman's output above)" >&2; exit 1; }
new=$(cat "$work/image.id")
new=${new#sha256:}
# The previous run's image only takes disk space; the layers it shares with this one (the
# packages, when neither setup.sh nor the Dockerfile changed) stay cached.
if [ -n "$old" ] && [ "$old" != "$new" ]; then
  "${as_root[@]}" podman rmi --force "$old" >/dev/null 2>&1 || true
fi

# Inherits the image's USER and WORKDIR; the demo writes into the state volume's directory.
mkdir -p "$work/smoke"
cat >"$work/smoke/Containerfile" <<EOF
FROM $new
RUN set -e; \\
    echo "image-test: running as \$(id -un) in \$(pwd)"; \\
    [ "\$(id -u)" -ne 0 ] || { echo "image-test: the image runs as root" >&2; exit 1; }; \\
    for driver in "PostgreSQL Unicode" "MariaDB Unicode" "SQLite3"; do \\
      odbcinst -q -d -n "\$driver" >/dev/null \\
        || { echo "image-test: ODBC driver \$driver is not registered" >&2; exit 1; }; \\
    done; \\
    mqdb --version; \\
    mqdb demo --dir demo
EOF
echo "image-test: running mqdb --version and mqdb demo in the image"
"${as_root[@]}" podman build --isolation chroot --format docker --layers=false \
  --iidfile "$work/smoke.id" "$work/smoke" \
  || { echo "image-test: mqdb fails inside the image (podman's output above)" >&2; exit 1; }
"${as_root[@]}" podman rmi --force "$(cat "$work/smoke.id")" >/dev/null
echo "image-test: ok"
