#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what is missing, then runs the unit,
# property and integration tests against the local services, and a small reconciled run of
# the benchmark harness (it fails on a lost message, never on speed).
# scripts/docker-context.sh checks that the Dockerfile's build stage has every file it needs;
# scripts/image-test.sh builds the image on the debug binary and runs its demo inside it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
scripts/docker-context.sh
scripts/image-test.sh
cargo test --no-fail-fast
MQDB_BENCH_MESSAGES=5000 MQDB_BENCH_OUTAGE=5 MQDB_BENCH_SETTLE=5 cargo bench --bench bridge
