#!/usr/bin/env bash
# deploy/demo.sh — run paystream end to end with nothing installed: an embedded broker, the
# traffic generator, one instance and its HTTP API. Arguments go to `paystream demo`
# (e.g. `deploy/demo.sh --orders 50000 --http-addr 127.0.0.1:9000`; `--help` lists them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/paystream/target}"
bash deploy/setup.sh --build-only
# Build exactly what the test suite builds (--workspace --all-targets): a narrower build resolves
# other features for shared dependencies and would compile RocksDB a second time.
cargo build --quiet --workspace --all-targets
exec "$CARGO_TARGET_DIR/debug/paystream" demo "$@"
