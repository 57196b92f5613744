#!/usr/bin/env bash
# deploy/demo.sh — run a paystream cluster end to end with nothing installed: an embedded broker
# (librdkafka's mock cluster), the traffic generator, and `--instances N` (default 3) instances in
# one group with standbys, each with its HTTP API (ports 8080, 8081, ...; the instances run
# at_least_once, which is all the embedded broker supports). It prints curl commands and a
# `kill -9 <pid>` to try. Arguments go to `paystream demo` (e.g.
# `deploy/demo.sh --instances 5 --orders 50000 --http-addr 127.0.0.1:9000`; `--help` lists them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/paystream/target}"
bash deploy/setup.sh --build-only
# Build exactly what the test suite builds (--workspace --all-targets): a narrower build resolves
# other features for shared dependencies and would compile RocksDB a second time.
cargo build --quiet --workspace --all-targets
exec "$CARGO_TARGET_DIR/debug/paystream" demo "$@"
