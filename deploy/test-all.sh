#!/usr/bin/env bash
# deploy/test-all.sh — the whole test suite, from a fresh machine.
#
# Installs what is missing (deploy/setup.sh), fetches Apache Kafka with Maven and starts a real
# broker on 127.0.0.1:19092 (deploy/kafka.sh), builds Jaeger with Go once (deploy/jaeger.sh, for
# tests/tracing.rs), runs every test of the workspace, and stops the broker. Cargo's target directory lives outside the clone ($CARGO_TARGET_DIR, default
# ~/.cache/paystream/target) so a second run does not rebuild RocksDB.
# Extra arguments go to `cargo test` (e.g. `deploy/test-all.sh --test foundation`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/paystream/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

bash deploy/setup.sh
bash deploy/kafka.sh fetch
bash deploy/jaeger.sh fetch
started_here=0
if ! bash deploy/kafka.sh status >/dev/null 2>&1; then
  bash deploy/kafka.sh start >/dev/null
  started_here=1
fi
cleanup() { if [ "$started_here" = 1 ]; then bash deploy/kafka.sh stop; fi; }
trap cleanup EXIT
export PAYSTREAM_TEST_BOOTSTRAP="$(bash deploy/kafka.sh bootstrap)"

cargo build --workspace --all-targets
# --no-fail-fast: a failing test binary must not hide the results of the ones after it.
cargo test --workspace --all-targets --no-fail-fast "$@"
