#!/usr/bin/env bash
# The tour on a fresh machine: installs the ODBC drivers if they are missing, builds mqdb,
# and runs `mqdb demo` (an embedded MQTT broker and a SQLite file; no servers needed).
#   scripts/demo.sh [DIR]   keeps the demo's config, database and state in DIR (default mqdb-demo)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --packages
cargo build --release --quiet
exec target/release/mqdb demo --dir "${1:-mqdb-demo}"
