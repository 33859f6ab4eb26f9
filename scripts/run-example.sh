#!/usr/bin/env bash
# The main job on a fresh machine: installs what is missing, creates the example table in
# the local PostgreSQL, and runs mqdb with examples/mqtt-json-postgres.yaml against the
# local Mosquitto until Ctrl-C. Publish to it from another terminal, e.g.
#   mosquitto_pub -q 1 -t sensors/plant1/dev7/temperature -m '{"value": 21.5, "ts": "2024-05-01T12:00:00+02:00"}'
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
psql -h 127.0.0.1 -U root -d test -v ON_ERROR_STOP=1 -q -f examples/mqtt-json-postgres.sql
cargo build --release
exec target/release/mqdb -c examples/mqtt-json-postgres.yaml run
